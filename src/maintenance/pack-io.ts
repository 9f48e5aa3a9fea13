/**
 * Pack I/O for gc and repair: copy chunks as stored (no recompression) after verifying each against
 * its digest, write a new pack in the rule's order, remove packs nothing uses.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { DIGEST_BYTES } from '../format/pages.js';
import { packFileName } from '../format/pack.js';
import { BatchPool, PackFile, type SealedPack } from '../store/pack-file.js';
import { Store } from '../store/store.js';
import { fsyncDir } from '../util/durable.js';
import { CorruptError, fromSystemError } from '../util/errors.js';
import type { ChunkLocation } from '../index/chunk-table.js';

export interface StoredChunk {
  digest: Uint8Array;
  payload: Uint8Array;
  codec: number;
}

const VERIFY_BATCH = 1024;

/**
 * Decodes every chunk and checks it against its digest (in the page workers); returns the indices of
 * chunks that do not decode or do not match.
 */
export async function verifyChunks(store: Store, chunks: readonly StoredChunk[]): Promise<number[]> {
  const bad: number[] = [];
  for (let start = 0; start < chunks.length; start += VERIFY_BATCH) {
    const part = chunks.slice(start, start + VERIFY_BATCH);
    const total = part.reduce((s, c) => s + c.payload.length, 0);
    const payload = new Uint8Array(total);
    const lengths = new Uint32Array(part.length);
    const codecs = new Uint8Array(part.length);
    const digests = new Uint8Array(part.length * DIGEST_BYTES);
    let pos = 0;
    part.forEach((c, i) => {
      payload.set(c.payload, pos);
      pos += c.payload.length;
      lengths[i] = c.payload.length;
      codecs[i] = c.codec;
      digests.set(c.digest, i * DIGEST_BYTES);
    });
    const slots = Uint32Array.from(part.keys());
    const r = await store.pool.decode({ kind: 'decode', payload, lengths, codecs, digests, slots, windowPages: part.length });
    for (const i of r.bad) bad.push(start + i);
  }
  return bad;
}

/**
 * Writes `chunks` as a new sealed pack through the one pack writer (PackFile): temp file, fsync,
 * rename into packs/, fsync packs/. The pack is durable but not indexed when this returns (the
 * caller's index batch does that; a crash before it leaves a pack that recovery indexes, which is
 * harmless: every chunk in it is a valid copy).
 */
export async function writePack(store: Store, packId: number, chunks: Iterable<StoredChunk>): Promise<SealedPack> {
  const p = Store.paths(store.dir);
  const pack = new PackFile(packId, p.tmp, new BatchPool(1));
  try {
    for (const c of chunks) pack.append(c.digest, c.payload, c.codec);
    return (await pack.seal(p.packs, () => undefined)).sealed;
  } catch (err) {
    await pack.discard(p.packs);
    if (err instanceof RangeError) throw err;
    throw fromSystemError(err, `writing pack ${packFileName(packId)}`);
  }
}

/** A chunk as the index places it: what gc copies. */
export interface PlacedChunk {
  digest: Uint8Array;
  loc: ChunkLocation;
}

/** Bytes of an old pack read (and verified) at once when copying: memory does not follow pack size. */
export const COPY_WINDOW_BYTES = 1024 * 1024;

/**
 * Copies `chunks` (as stored, no recompression) from their packs into one new pack, streaming: they
 * are read in windows of at most COPY_WINDOW_BYTES in pack and offset order, each window verified
 * against its digests in the page workers, then appended; the pack is sealed (durable, not indexed).
 * Returns the sealed pack and the chunks in the order they were written (chunk k of the new pack is
 * order[k]). A chunk that does not verify throws CorruptError and leaves no file behind.
 */
export async function copyChunks<T extends PlacedChunk>(
  store: Store,
  packId: number,
  chunks: readonly T[],
): Promise<{ sealed: SealedPack; order: T[] }> {
  const order = [...chunks].sort((a, b) => a.loc.pack - b.loc.pack || a.loc.offset - b.loc.offset);
  const p = Store.paths(store.dir);
  const pack = new PackFile(packId, p.tmp, new BatchPool(1));
  try {
    for (let i = 0; i < order.length;) {
      const first = order[i].loc;
      let j = i + 1;
      while (
        j < order.length &&
        order[j].loc.pack === first.pack &&
        order[j].loc.offset + order[j].loc.storedLength - first.offset <= COPY_WINDOW_BYTES
      )
        j++;
      const last = order[j - 1].loc;
      const window = await store.packs.read(first.pack, first.offset, last.offset + last.storedLength - first.offset);
      const part: StoredChunk[] = order.slice(i, j).map((c) => ({
        digest: c.digest,
        payload: window.subarray(c.loc.offset - first.offset, c.loc.offset - first.offset + c.loc.storedLength),
        codec: c.loc.codec,
      }));
      const bad = await verifyChunks(store, part);
      if (bad.length > 0) {
        const e = order[i + bad[0]];
        throw new CorruptError(
          `chunk ${Buffer.from(e.digest).toString('hex')} in pack ${packFileName(e.loc.pack)} at offset ${e.loc.offset} is corrupt (${bad.length} bad chunk(s)); run 'vnstore check --read-data'`,
        );
      }
      for (const c of part) pack.append(c.digest, c.payload, c.codec);
      // Wait for the window's bytes to reach the file before reading the next: at most one window
      // and one write batch in memory, whatever the pack's size.
      await pack.written();
      i = j;
    }
    return { sealed: (await pack.seal(p.packs, () => undefined)).sealed, order };
  } catch (err) {
    await pack.discard(p.packs);
    throw fromSystemError(err, `writing pack ${packFileName(packId)}`);
  }
}

/** Removes pack files (after their index entries are gone) and syncs the directory. */
export async function removePackFiles(store: Store, ids: readonly number[]): Promise<void> {
  if (ids.length === 0) return;
  const dir = Store.paths(store.dir).packs;
  store.pool.forgetPacks(store.packs.packsDir, ids); // the key page jobs cache descriptors under
  for (const id of ids) await fsp.rm(path.join(dir, packFileName(id)), { force: true });
  await fsyncDir(dir);
}
