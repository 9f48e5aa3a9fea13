/** The store's identity file `vnstore.json`: written last by init, checked on every open. */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { PAGE_SIZE } from '../format/pages.js';
import { writeFileDurable } from '../util/durable.js';
import { VnstoreError } from '../util/errors.js';

export const STORE_FORMAT = 'vnstore';
/** The first store format: chunks named by digest, indexed by LevelDB `c` entries, LZ4 packs only. */
export const STORE_FORMAT_VERSION = 1;
/**
 * The version of a store that may hold version-2 packs (zstd containers): compact raises it before
 * writing the first such pack, so that an older vnstore refuses the whole store with one line instead
 * of reporting its compacted packs as damage (or quarantining one that recovery finds unindexed).
 */
export const STORE_FORMAT_VERSION_CONTAINERS = 2;
/**
 * Store format 3: chunks named by number, the packs' tables of contents are the index (docs/FORMAT.md,
 * "Store format 3"). Versions 1 and 2 are still opened and written; `vnstore upgrade` converts them.
 */
export const STORE_FORMAT_VERSION_NUMBERED = 3;
/** The version `init` writes unless told otherwise (its metadata is a few times smaller). */
export const DEFAULT_STORE_FORMAT_VERSION = STORE_FORMAT_VERSION_NUMBERED;
/** The versions `init` can create: 1 and 2 only for tests and benches of the legacy layouts. */
export const CREATABLE_STORE_FORMAT_VERSIONS: readonly number[] = [
  STORE_FORMAT_VERSION,
  STORE_FORMAT_VERSION_CONTAINERS,
  STORE_FORMAT_VERSION_NUMBERED,
];
export const CONFIG_FILE = 'vnstore.json';

export interface StoreConfig {
  format: typeof STORE_FORMAT;
  version: number;
  storeId: string;
  created: string;
  pageSize: typeof PAGE_SIZE;
  chunkDigest: 'blake3-256';
}

export async function readConfig(dir: string): Promise<StoreConfig> {
  let text: string;
  try {
    text = await fsp.readFile(path.join(dir, CONFIG_FILE), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new VnstoreError('E_NOT_STORE', `${dir} is not a vnstore store (no ${CONFIG_FILE}; create one with 'vnstore init')`);
    }
    if (code === 'EACCES') throw new VnstoreError('E_IO', `${dir}: permission denied reading ${CONFIG_FILE}`);
    throw new VnstoreError('E_IO', `${dir}: cannot read ${CONFIG_FILE}: ${(err as Error).message}`);
  }
  let cfg: Partial<StoreConfig>;
  try {
    cfg = JSON.parse(text) as Partial<StoreConfig>;
  } catch {
    throw new VnstoreError('E_NOT_STORE', `${dir} is not a vnstore store (${CONFIG_FILE} is not valid JSON)`);
  }
  if (cfg.format !== STORE_FORMAT)
    throw new VnstoreError('E_NOT_STORE', `${dir} is not a vnstore store (${CONFIG_FILE} has format ${JSON.stringify(cfg.format)})`);
  if (
    cfg.version !== STORE_FORMAT_VERSION &&
    cfg.version !== STORE_FORMAT_VERSION_CONTAINERS &&
    cfg.version !== STORE_FORMAT_VERSION_NUMBERED
  ) {
    throw new VnstoreError(
      'E_FORMAT_VERSION',
      `${dir}: store format version ${String(cfg.version)} is not supported (this vnstore reads versions ${STORE_FORMAT_VERSION} to ${STORE_FORMAT_VERSION_NUMBERED}; a newer vnstore wrote it)`,
    );
  }
  if (cfg.pageSize !== PAGE_SIZE || cfg.chunkDigest !== 'blake3-256') {
    throw new VnstoreError(
      'E_FORMAT_VERSION',
      `${dir}: unsupported store parameters (page size ${String(cfg.pageSize)}, digest ${String(cfg.chunkDigest)})`,
    );
  }
  return cfg as StoreConfig;
}

/** Whether the store names chunks by number (store format 3). */
export function isNumberedStore(config: StoreConfig): boolean {
  return config.version === STORE_FORMAT_VERSION_NUMBERED;
}

/** Raises a version-1 store to version 2 (durably: temp file, fsync, rename) before its first v2 pack. */
export async function allowContainerPacks(dir: string, tmpDir: string, config: StoreConfig): Promise<void> {
  if (config.version >= STORE_FORMAT_VERSION_CONTAINERS) return;
  const next: StoreConfig = { ...config, version: STORE_FORMAT_VERSION_CONTAINERS };
  await writeFileDurable(
    path.join(dir, CONFIG_FILE),
    Buffer.from(JSON.stringify(next, null, 2) + '\n'),
    path.join(tmpDir, `${CONFIG_FILE}.tmp`),
  );
  config.version = STORE_FORMAT_VERSION_CONTAINERS;
}
