/**
 * The layout of a store directory (the tree is drawn in src/store/store.ts). A module of its own so
 * that code below the Store (recovery) finds the same places without importing it.
 */
import path from 'node:path';
import { CONFIG_FILE } from './config.js';

export interface StorePaths {
  config: string;
  lock: string;
  db: string;
  packs: string;
  manifests: string;
  tmp: string;
  quarantine: string;
}

export function storePaths(dir: string): StorePaths {
  return {
    config: path.join(dir, CONFIG_FILE),
    lock: path.join(dir, 'lock'),
    db: path.join(dir, 'db'),
    packs: path.join(dir, 'packs'),
    manifests: path.join(dir, 'manifests'),
    tmp: path.join(dir, 'tmp'),
    quarantine: path.join(dir, 'quarantine'),
  };
}
