/**
 * One configuration switch for a snapshot daemon: a local store directory or a server. Both give
 * sessions of the same shape (writePages, writeScattered, writePage, commit, abort).
 */
import { Store, type OpenOptions } from '../store/store.js';
import { lazyGcSweeper } from '../maintenance/lazy-sweeper.js';
import type { SnapshotRecord } from '../store/db.js';
import type { CommitOptions, SessionOptions } from '../store/session.js';
import { AgentClient, type ConnectOptions } from './client.js';

export type BackendConfig = { store: string; open?: OpenOptions } | ConnectOptions;

export interface SnapshotSession {
  writePages(firstPage: number, data: Uint8Array): Promise<void>;
  writeScattered(pageIndices: ArrayLike<number>, data: Uint8Array): Promise<void>;
  writePage(pageIndex: number, page: Uint8Array): Promise<void>;
  commit(options?: CommitOptions): Promise<SnapshotRecord>;
  abort(): Promise<void>;
}

export interface SnapshotBackend {
  beginSession(options: SessionOptions): Promise<SnapshotSession>;
  listSnapshots(vm?: string): Promise<SnapshotRecord[]>;
  close(): Promise<void>;
}

export async function openBackend(config: BackendConfig): Promise<SnapshotBackend> {
  if ('store' in config) return Store.open(config.store, { sweeper: lazyGcSweeper, ...config.open });
  return AgentClient.connect(config);
}
