/**
 * The last step of `upgrade` (docs/FORMAT.md, "Upgrade"), below the store so that every open of a
 * format-3 store can finish it under its lock before it reads anything: once vnstore.json says
 * version 3, each of db, packs, manifests is replaced by its upgrade/ copy, then upgrade/ and
 * chunk-table.bin go. Every step is idempotent, so a run killed anywhere is finished by the next.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { exists, fsyncDir } from '../util/durable.js';
import { trace } from '../util/trace.js';
import { CONFIG_FILE, readConfig, STORE_FORMAT_VERSION_NUMBERED, type StoreConfig } from './config.js';

export const UPGRADE_DIR = 'upgrade';
/** The parts the swap replaces, in this order. */
const SWAPPED = ['db', 'packs', 'manifests'] as const;

/** The raw vnstore.json, whatever its version (its one-line errors when missing or unreadable). */
export async function readRawConfig(dir: string): Promise<StoreConfig> {
  const text = await fsp.readFile(path.join(dir, CONFIG_FILE), 'utf8').catch(() => undefined);
  const parsed = text === undefined ? undefined : parseJson(text);
  return parsed === undefined ? readConfig(dir) : (parsed as StoreConfig); // readConfig says what is wrong
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** Replaces the old parts by the upgrade's once vnstore.json says version 3 (idempotent). */
export async function finishUpgradeSwap(dir: string): Promise<void> {
  const up = path.join(dir, UPGRADE_DIR);
  if (!(await exists(up))) return;
  if ((await readRawConfig(dir)).version !== STORE_FORMAT_VERSION_NUMBERED) return; // not committed: the old store stands
  for (const part of SWAPPED) {
    if (!(await exists(path.join(up, part)))) continue; // swapped by an earlier run
    await fsp.rm(path.join(dir, part), { recursive: true, force: true });
    await fsp.rename(path.join(up, part), path.join(dir, part));
    await fsyncDir(dir);
    trace(`upgrade: swapped ${part}`);
  }
  await fsp.rm(path.join(dir, 'chunk-table.bin'), { force: true });
  await fsp.rm(up, { recursive: true, force: true });
  await fsyncDir(dir);
}
