/**
 * Where a group snapshot goes: a narrow interface the coordinator and its agents use, which the
 * local Store satisfies through a tiny adapter (below) and the network server's client will too
 * (the same session shape: begin, write pages, prepare, commit the group or abort).
 */
import type { Store } from '../store/store.js';
import type { PreparedSnapshot } from '../store/session.js';
import { VnstoreError } from '../util/errors.js';
import { readGroupImages, storeGroupSource } from './group-source.js';

export interface TargetSession<P> {
  /** Whole pages at arbitrary indices (a round's dirty list); the last write of a page wins. */
  writeScattered(pageIndices: ArrayLike<number>, bytes: Uint8Array): Promise<void>;
  writePages(firstPage: number, bytes: Uint8Array): Promise<void>;
  /** Durable but invisible until the group commits. */
  prepare(options: { byteLength: number }): Promise<P>;
  abort(): Promise<void>;
}

export interface SnapshotTarget<P = unknown> {
  beginSession(options: { vm: string; group: string; epoch: number; memoryBytes: number }): Promise<TargetSession<P>>;
  /** Publishes every prepared member of the group at once, or none. */
  commitGroup(groupId: string, prepared: P[]): Promise<void>;
  abortPrepared(prepared: P[]): Promise<void>;
}

/** Reads a committed group back: each member's exact image, by VM name; undefined if no such group. */
export interface GroupReader {
  readGroup(groupId: string): Promise<Map<string, Uint8Array> | undefined>;
}

export function storeTarget(store: Store): SnapshotTarget<PreparedSnapshot> & GroupReader {
  return {
    async beginSession(o) {
      const s = await store.beginSession({ vm: o.vm, group: o.group, epoch: o.epoch, memoryBytes: o.memoryBytes, parent: 'auto' });
      return {
        writeScattered: (i, b) => s.writeScattered(i, b),
        writePages: (first, b) => s.writePages(first, b),
        prepare: (p) => s.prepare({ byteLength: p.byteLength }),
        abort: () => s.abort(),
      };
    },
    async commitGroup(groupId, prepared) {
      await store.commitPrepared(prepared, { id: groupId });
    },
    abortPrepared: (prepared) => store.abortPrepared(prepared),
    readGroup: (groupId) => readGroupImages(storeGroupSource(store), groupId),
  };
}

interface MemoryPrepared {
  vm: string;
  group: string;
  image: Uint8Array;
  state: 'prepared' | 'committed' | 'aborted';
}

/**
 * An in-memory target with the store's semantics (last write wins, prepare then all-or-nothing
 * group commit), for the hundreds of randomized runs the consistency test makes; the store-backed
 * runs use storeTarget. `failCommits` makes the next group commits fail (fault injection).
 */
export class MemoryTarget implements SnapshotTarget<MemoryPrepared>, GroupReader {
  readonly groups = new Map<string, Map<string, Uint8Array>>();
  failCommits = 0;
  openSessions = 0;

  async beginSession(o: { vm: string; group: string; epoch: number; memoryBytes: number }): Promise<TargetSession<MemoryPrepared>> {
    const pages = new Map<number, Uint8Array>();
    let open = true;
    this.openSessions++;
    const close = () => {
      if (open) this.openSessions--;
      open = false;
    };
    const put = (index: number, page: Uint8Array) => {
      if (!open) throw new VnstoreError('E_SESSION', 'write to a closed session');
      pages.set(index, page);
    };
    return {
      // one copy per call (the caller may reuse its buffer), pages kept as views of it
      writeScattered: async (indices, bytes) => {
        const copy = bytes.slice();
        for (let k = 0; k < indices.length; k++) put(indices[k], copy.subarray(k * 4096, (k + 1) * 4096));
      },
      writePages: async (first, bytes) => {
        const copy = bytes.slice();
        for (let k = 0; k * 4096 < copy.length; k++) put(first + k, copy.subarray(k * 4096, (k + 1) * 4096));
      },
      prepare: async ({ byteLength }) => {
        const image = new Uint8Array(byteLength);
        for (const [i, p] of pages) image.set(p.subarray(0, Math.max(0, Math.min(4096, byteLength - i * 4096))), i * 4096);
        close();
        return { vm: o.vm, group: o.group, image, state: 'prepared' };
      },
      abort: async () => close(),
    };
  }

  async commitGroup(groupId: string, prepared: MemoryPrepared[]): Promise<void> {
    if (this.failCommits > 0) {
      this.failCommits--;
      throw new VnstoreError('E_IO', 'injected commit failure');
    }
    if (prepared.some((p) => p.state !== 'prepared')) throw new VnstoreError('E_SESSION', 'a member is not prepared');
    if (this.groups.has(groupId)) throw new VnstoreError('E_EXISTS', `group ${groupId} exists`);
    this.groups.set(groupId, new Map(prepared.map((p) => [p.vm, p.image])));
    for (const p of prepared) p.state = 'committed';
  }

  async abortPrepared(prepared: MemoryPrepared[]): Promise<void> {
    for (const p of prepared) if (p.state === 'prepared') p.state = 'aborted';
  }

  async readGroup(groupId: string): Promise<Map<string, Uint8Array> | undefined> {
    return this.groups.get(groupId);
  }
}
