/**
 * Reading a committed group back, from a local store or through a server: its members' records and
 * each member's exact image, verified as it is read (the store checks every chunk and the image
 * digest; the agent client every page and the image digest).
 */
import type { AgentClient } from '../agent/client.js';
import type { SnapshotRecord } from '../store/db.js';
import type { Store } from '../store/store.js';
import { restoreSnapshot } from '../store/restore.js';

export interface GroupSource {
  /** The group's members, in catalog order; empty if there is no such group. */
  members(group: string): Promise<SnapshotRecord[]>;
  /** Streams one member's image to `write` in order (the chunk is lent until `write` settles). */
  restore(record: SnapshotRecord, write: (chunk: Uint8Array) => Promise<void> | void): Promise<void>;
}

export function storeGroupSource(store: Store): GroupSource {
  return {
    members: async (group) => (await store.listSnapshots()).filter((r) => r.group === group),
    restore: async (record, write) => void (await restoreSnapshot(store, record, { write })),
  };
}

export function serverGroupSource(client: AgentClient): GroupSource {
  return {
    members: async (group) => (await client.listSnapshots()).filter((r) => r.group === group),
    restore: async (record, write) => void (await client.restore(record.id, write)),
  };
}

/** Every member's image by VM name, or undefined if there is no such group. */
export async function readGroupImages(source: GroupSource, group: string): Promise<Map<string, Uint8Array> | undefined> {
  const members = await source.members(group);
  if (members.length === 0) return undefined;
  const images = new Map<string, Uint8Array>();
  for (const r of members) {
    const parts: Buffer[] = [];
    await source.restore(r, (chunk) => void parts.push(Buffer.from(chunk)));
    images.set(r.vm, Buffer.concat(parts));
  }
  return images;
}
