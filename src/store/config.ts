/** The store's identity file `vnstore.json`: written last by init, checked on every open. */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { PAGE_SIZE } from '../format/pages.js';
import { VnstoreError } from '../util/errors.js';

export const STORE_FORMAT = 'vnstore';
export const STORE_FORMAT_VERSION = 1;
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
  if (cfg.version !== STORE_FORMAT_VERSION) {
    throw new VnstoreError(
      'E_FORMAT_VERSION',
      `${dir}: store format version ${String(cfg.version)} is not supported (this vnstore reads version ${STORE_FORMAT_VERSION})`,
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
