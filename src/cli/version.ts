/**
 * `vnstore version` and `vnstore --version`: vnstore's own version and which hashing and codec paths
 * are active, with their versions, so a slow or odd run can be traced to a fallback (a missing
 * compiler at install, VNSTORE_NATIVE=0, a CPU without AVX2).
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { activePaths, type ActivePaths } from '../chunk/active-paths.js';
import { action } from './common.js';

export interface VersionReport extends ActivePaths {
  vnstore: string;
  node: string;
  /** Node's own flags in this process (the executable, bin/vnstore, gives some). */
  nodeFlags: string[];
  /**
   * $GLIBC_TUNABLES as this process started with it (bin/vnstore adds glibc.malloc.hugetlb=1:
   * docs/OPERATIONS.md, "Huge pages"), or null when unset.
   */
  glibcTunables: string | null;
}

export function versionReport(): VersionReport {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return {
    vnstore: pkg.version,
    node: process.version,
    nodeFlags: [...process.execArgv],
    glibcTunables: process.env.GLIBC_TUNABLES ?? null,
    ...activePaths(),
  };
}

/** `vnstore version`: one line per path, and why a fallback serves. */
export function formatVersion(r: VersionReport): string {
  const h = r.hashing;
  const c = r.codec;
  const hashing =
    h.path === 'native-simd'
      ? `native SIMD BLAKE3, ${h.kernel ?? '?'} kernel (vnstore_hash ABI ${h.addonAbi})`
      : `${h.library}, one call per page (native hasher not used: ${h.reason ?? 'unknown'})`;
  const codec =
    c.path === 'native'
      ? `native LZ4, system liblz4 ${c.liblz4 ?? '?'} (vnstore_native ABI ${c.addonAbi})`
      : `TypeScript over ${c.library} (native codec not used: ${c.reason ?? 'unknown'})`;
  const z = r.zstd;
  const zstd =
    z.path === 'native'
      ? `native, system libzstd ${z.libzstd ?? '?'} (compress and decompress)`
      : `${z.library}, decompress only (native zstd not used: ${z.reason ?? 'unknown'})`;
  return `vnstore ${r.vnstore} (node ${r.node})\nhashing: ${hashing}\ncodec:   ${codec}\nzstd:    ${zstd}\n`;
}

/** `vnstore --version`: one line (scripts and bench reports take it whole); reasons are in `version`. */
export function formatVersionLine(r: VersionReport): string {
  const h = r.hashing;
  const c = r.codec;
  const hashing = h.path === 'native-simd' ? `native SIMD BLAKE3 ${h.kernel ?? '?'}` : `${h.library} per page`;
  const codec = c.path === 'native' ? `native LZ4, liblz4 ${c.liblz4 ?? '?'}` : `TypeScript, ${c.library}`;
  const zstd = r.zstd.path === 'native' ? `libzstd ${r.zstd.libzstd ?? '?'}` : `${r.zstd.library}, decompress only`;
  return `vnstore ${r.vnstore} (node ${r.node}; hashing: ${hashing}; codec: ${codec}; zstd: ${zstd})\n`;
}

export function printVersion(form: 'line' | 'lines' | 'json'): void {
  const r = versionReport();
  process.stdout.write(form === 'json' ? JSON.stringify(r, null, 2) + '\n' : form === 'line' ? formatVersionLine(r) : formatVersion(r));
}

export function registerVersion(program: Command): void {
  program
    .command('version')
    .description("print vnstore's version and which hashing and codec paths are active (native addons or fallbacks)")
    .option(
      '--json',
      'print {vnstore, node, nodeFlags, glibcTunables, hashing: {path, kernel, addon, ...}, codec: {path, liblz4, addon, ...}, zstd: {path, libzstd, ...}}',
    )
    .action(
      action((opts: { json?: boolean }) => {
        printVersion(opts.json === true ? 'json' : 'lines');
        return Promise.resolve();
      }),
    );
}
