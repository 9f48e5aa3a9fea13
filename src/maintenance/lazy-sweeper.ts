/**
 * gcSweeper, loaded on first use: the CLI and the server open stores with it, and most commands never
 * sweep anything, so gc's modules stay unloaded at their start.
 */
import type { PackSweeper } from '../store/reclaim.js';

const load = async () => (await import('./sweeper.js')).gcSweeper;

export const lazyGcSweeper: PackSweeper = {
  numbered: true, // as gcSweeper: gc dispatches on the store's format
  dropDead: async (store, packs) => (await load()).dropDead(store, packs),
  reclaim: async (store, packs) => (await load()).reclaim(store, packs),
};
