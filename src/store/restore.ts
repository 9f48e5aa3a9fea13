/**
 * Restore: manifest → chunk locations (in-memory table, exact index when ambiguous) → pack reads
 * sorted by (pack, offset) and coalesced → decode + BLAKE3 verify in the page workers → bytes in
 * page order. Every chunk is verified; nothing unverified is ever handed to the sink.
 */
import { packFileName } from '../format/pack.js';
import { DIGEST_BYTES, PAGE_SIZE, PageKind, type PageTable } from '../format/pages.js';
import type { ChunkLocation } from '../index/chunk-table.js';
import { hashPage, imageDigest, hex } from '../chunk/hash.js';
import { getCodec, type ChunkCodec } from '../chunk/codec.js';
import { CorruptError } from '../util/errors.js';
import type { Store } from './store.js';
import type { SnapshotRecord } from './db.js';

export const WINDOW_PAGES = 1024;
const MAX_WINDOWS_IN_FLIGHT = 4;
const COALESCE_GAP_BYTES = 16 * 1024;

export interface RestoreSink {
  /** Receives verified bytes in order; may apply backpressure by returning a promise. */
  write(chunk: Uint8Array): Promise<void> | void;
}

export interface RestoreProgress {
  (bytesDone: number, bytesTotal: number): void;
}

export async function restoreSnapshot(store: Store, record: SnapshotRecord, sink: RestoreSink, onProgress?: RestoreProgress): Promise<void> {
  const pages = await store.loadPages(record.id);
  const header = await store.readManifestHeader(record.id);
  if (header.byteLength !== record.byteLength || pages.pageCount !== record.pageCount) {
    throw new CorruptError(`snapshot ${record.id}: manifest disagrees with the catalog about the image size`);
  }
  // The page digest list must be the one committed: check it before a single byte goes out.
  const expected = Buffer.from(header.imageDigest).toString('hex');
  if (imageDigest(pages, header.byteLength).toString('hex') !== expected || expected !== record.imageDigest) {
    throw new CorruptError(`snapshot ${record.id}: manifest does not match its image digest`);
  }
  const windows: Promise<Uint8Array>[] = [];
  let done = 0;
  const total = header.byteLength;
  for (let first = 0; first < pages.pageCount || windows.length > 0; ) {
    while (first < pages.pageCount && windows.length < MAX_WINDOWS_IN_FLIGHT) {
      const n = Math.min(WINDOW_PAGES, pages.pageCount - first);
      const w = restoreWindow(store, record.id, pages, first, n);
      w.catch(() => undefined); // surfaced when awaited, in order
      windows.push(w);
      first += n;
    }
    const out = await windows.shift()!;
    const remaining = total - done;
    const bytes = out.length > remaining ? out.subarray(0, remaining) : out;
    await sink.write(bytes);
    done += bytes.length;
    onProgress?.(done, total);
  }
}

async function restoreWindow(store: Store, snapshotId: string, pages: PageTable, first: number, n: number): Promise<Uint8Array> {
  const slots: number[] = [];
  for (let i = 0; i < n; i++) if (pages.kinds[first + i] === PageKind.Digest) slots.push(i);
  if (slots.length === 0) return new Uint8Array(n * PAGE_SIZE);
  const digestOf = (slot: number) => pages.digests.subarray((first + slot) * DIGEST_BYTES, (first + slot + 1) * DIGEST_BYTES);

  // Locate every chunk: the table hint, or the exact index when the hint is missing or ambiguous.
  const locs: (ChunkLocation | undefined)[] = new Array(slots.length);
  const exact: number[] = [];
  for (let k = 0; k < slots.length; k++) {
    const hit = store.table.get(digestOf(slots[k]));
    if (hit && !hit.ambiguous) locs[k] = hit.location;
    else exact.push(k);
  }
  if (exact.length > 0) {
    const found = await store.lookupExact(exact.map((k) => digestOf(slots[k])));
    exact.forEach((k, j) => (locs[k] = found[j]));
  }
  for (let k = 0; k < slots.length; k++) {
    if (!locs[k]) throw new CorruptError(`snapshot ${snapshotId}: chunk ${hex(digestOf(slots[k]))} (page ${first + slots[k]}) is not in the index; run 'vnstore check'`);
  }

  // Read in (pack, offset) order, coalescing near neighbours into one read.
  const order = slots.map((_, k) => k).sort((a, b) => locs[a]!.pack - locs[b]!.pack || locs[a]!.offset - locs[b]!.offset);
  const payloads: Uint8Array[] = new Array(slots.length);
  const reads: Promise<void>[] = [];
  for (let a = 0; a < order.length; ) {
    const start = locs[order[a]]!;
    let end = start.offset + start.storedLength;
    let b = a + 1;
    while (b < order.length) {
      const l = locs[order[b]]!;
      if (l.pack !== start.pack || l.offset > end + COALESCE_GAP_BYTES) break;
      end = Math.max(end, l.offset + l.storedLength);
      b++;
    }
    const members = order.slice(a, b);
    reads.push(
      store.packs.read(start.pack, start.offset, end - start.offset).then((buf) => {
        for (const k of members) payloads[k] = buf.subarray(locs[k]!.offset - start.offset, locs[k]!.offset - start.offset + locs[k]!.storedLength);
      }),
    );
    a = b;
  }
  await Promise.all(reads);

  const total = payloads.reduce((s, p) => s + p.length, 0);
  const payload = new Uint8Array(total);
  const lengths = new Uint32Array(slots.length);
  const codecs = new Uint8Array(slots.length);
  const digests = new Uint8Array(slots.length * DIGEST_BYTES);
  let pos = 0;
  for (let k = 0; k < slots.length; k++) {
    payload.set(payloads[k], pos);
    pos += payloads[k].length;
    lengths[k] = payloads[k].length;
    codecs[k] = locs[k]!.codec;
    digests.set(digestOf(slots[k]), k * DIGEST_BYTES);
  }
  const result = await store.pool.decode({ kind: 'decode', payload, lengths, codecs, digests, slots: Uint32Array.from(slots), windowPages: n });
  for (const k of result.bad) {
    // A table hint can point at the wrong chunk only through a fingerprint clash: retry exactly once.
    const [loc] = await store.lookupExact([digestOf(slots[k])]);
    const prev = locs[k]!;
    if (loc && (loc.pack !== prev.pack || loc.offset !== prev.offset)) {
      const buf = await store.packs.read(loc.pack, loc.offset, loc.storedLength);
      const dst = result.out;
      try {
        getCodec().decodePage(buf, loc.codec as ChunkCodec, dst, slots[k] * PAGE_SIZE);
        if (hashPage(dst.subarray(slots[k] * PAGE_SIZE, (slots[k] + 1) * PAGE_SIZE)).equals(digestOf(slots[k]))) continue;
      } catch {
        // fall through to the corruption error
      }
    }
    throw new CorruptError(
      `snapshot ${snapshotId}: chunk ${hex(digestOf(slots[k]))} (page ${first + slots[k]}) in pack ${packFileName(prev.pack)} is corrupt (digest mismatch); run 'vnstore check'`,
    );
  }
  return result.out;
}
