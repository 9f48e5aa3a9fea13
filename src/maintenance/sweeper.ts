/**
 * The store's sweeper (src/store/reclaim.ts): gc, limited to the packs the store names, injected at
 * Store.open so the store layer never imports maintenance. Pass it as `Store.open(dir, { sweeper:
 * gcSweeper })`; every vnstore command and the server do.
 */
import type { PackSweeper } from '../store/reclaim.js';
import { DEFAULT_MAX_UNUSED } from './gc-plan.js';
import { dropDeadPacks, runGc } from './gc.js';

export const gcSweeper: PackSweeper = {
  numbered: true, // gc dispatches on the store's format (gc-v3.ts for format 3)
  dropDead: (store, packs) => dropDeadPacks(store, packs),
  // gc's default target for unused bytes, over these packs only: what a full gc would accept.
  reclaim: (store, packs) => runGc(store, { packs, maxUnused: DEFAULT_MAX_UNUSED }),
};
