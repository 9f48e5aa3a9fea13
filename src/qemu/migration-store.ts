/**
 * Where a QEMU migration is stored and read back from: the local store, or a `vnstore serve` through
 * the agent client. Both give the same narrow shape, so receive and send do not know which.
 */
import type { AgentClient } from '../agent/client.js';
import type { RemotePrepared } from '../agent/session.js';
import type { SnapshotRecord } from '../store/db.js';
import type { PreparedSnapshot } from '../store/session.js';
import type { Store } from '../store/store.js';
import { restoreSnapshot } from '../store/restore.js';
import { VnstoreError } from '../util/errors.js';

export interface MigrationSession {
  /** Page k of `bytes` goes to `pageIndices[k]`; the bytes are copied (the caller reuses its buffer). */
  writeScattered(pageIndices: ArrayLike<number>, bytes: Uint8Array): Promise<void>;
  writePages(firstPage: number, bytes: Uint8Array): Promise<void>;
  /** Durable but invisible until committed; resolves to the snapshot id it will have. */
  prepare(options: { byteLength?: number; unwritten: 'zero' }): Promise<string>;
  abort(): Promise<void>;
}

export interface MigrationStore {
  beginSession(options: { vm: string; group: string; memoryBytes?: number }): Promise<MigrationSession>;
  /** Publishes the prepared snapshots (by id) as one group, all or none; the records in that order. */
  commitGroup(group: string, ids: string[]): Promise<SnapshotRecord[]>;
  abortPrepared(ids: string[]): Promise<void>;
  resolveSnapshot(idOrPrefix: string): Promise<SnapshotRecord>;
  listSnapshots(vm?: string): Promise<SnapshotRecord[]>;
  /** The image's exact bytes in order, verified (the chunk is lent until `write` settles). */
  restore(record: SnapshotRecord, write: (chunk: Uint8Array) => Promise<void> | void): Promise<void>;
}

/** Records in the order of `ids` (a group commit's answer is not promised to keep it). */
function inOrder(ids: string[], records: SnapshotRecord[]): SnapshotRecord[] {
  const byId = new Map(records.map((r) => [r.id, r]));
  return ids.map((id) => {
    const r = byId.get(id);
    if (!r) throw new VnstoreError('E_SESSION', `the group commit did not return snapshot ${id}`);
    return r;
  });
}

export function storeMigrations(store: Store): MigrationStore {
  const prepared = new Map<string, PreparedSnapshot>();
  const take = (ids: string[]) => ids.map((id) => prepared.get(id)).filter((p): p is PreparedSnapshot => p !== undefined);
  return {
    async beginSession(o) {
      const s = await store.beginSession({ vm: o.vm, group: o.group, parent: 'auto', memoryBytes: o.memoryBytes });
      return {
        writeScattered: (i, b) => s.writeScattered(i, b),
        writePages: (first, b) => s.writePages(first, b),
        async prepare(p) {
          const handle = await s.prepare(p);
          prepared.set(handle.record.id, handle);
          return handle.record.id;
        },
        abort: () => s.abort(),
      };
    },
    commitGroup: async (group, ids) => inOrder(ids, await store.commitPrepared(take(ids), { id: group })),
    abortPrepared: (ids) => store.abortPrepared(take(ids)),
    resolveSnapshot: (id) => store.resolveSnapshot(id),
    listSnapshots: (vm) => store.listSnapshots(vm),
    restore: async (record, write) => void (await restoreSnapshot(store, record, { write })),
  };
}

export function serverMigrations(client: AgentClient): MigrationStore {
  const prepared = new Map<string, RemotePrepared>();
  const handles = (ids: string[]) => ids.map((id) => prepared.get(id) ?? id);
  return {
    async beginSession(o) {
      const s = await client.beginSession({ vm: o.vm, group: o.group, parent: 'auto', memoryBytes: o.memoryBytes });
      return {
        writeScattered: (i, b) => s.writeScattered(i, b),
        writePages: (first, b) => s.writePages(first, b),
        async prepare(p) {
          const handle = await s.prepare(p);
          prepared.set(handle.id, handle);
          return handle.id;
        },
        abort: () => s.abort(),
      };
    },
    commitGroup: async (group, ids) => inOrder(ids, await client.commitPrepared(handles(ids), { id: group })),
    abortPrepared: (ids) => client.abortPrepared(handles(ids)),
    resolveSnapshot: (id) => client.resolveSnapshot(id),
    listSnapshots: (vm) => client.listSnapshots(vm),
    restore: async (record, write) => void (await client.restore(record.id, write)),
  };
}
