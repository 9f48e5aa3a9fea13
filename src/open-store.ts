/**
 * `openStore`: `Store.open` with the defaults a library user wants. The store itself cannot import gc
 * (maintenance sits above it), so it takes gc as an injected sweeper; this package-level entry point
 * passes it, so that a daemon's store removes the garbage it made (a killed put's packs, superseded
 * pre-copy chunks) without knowing that seam exists.
 */
import { gcSweeper } from './maintenance/sweeper.js';
import { Store, type OpenOptions } from './store/store.js';

export function openStore(dir: string, options: OpenOptions = {}): Promise<Store> {
  return Store.open(dir, { sweeper: gcSweeper, ...options });
}
