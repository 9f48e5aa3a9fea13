/**
 * Reading a whole pack's data back, for check --read-data and repair: structure, payload checksum,
 * and every chunk decoded and verified (against its full digest where the index knows it).
 */
import { promises as fsp } from 'node:fs';
import { crc32 } from 'node:zlib';
import { packFileName, PACK_HEADER_BYTES, TOC_PREFIX_BYTES, type PackEntry } from '../format/pack.js';
import { PAGE_SIZE } from '../format/pages.js';
import { nameChunk, type WholePack } from '../store/pack-reader.js';
import { ContainerCache } from '../chunk/container.js';
import type { Store } from '../store/store.js';
import { CorruptError } from '../util/errors.js';
import { verifyChunks, type StoredChunk } from './pack-io.js';

export interface BadChunk {
  index: number;
  offset: number;
  digest?: Buffer;
  why: string;
}

export interface PackData {
  error?: string;
  chunks: number;
  bytes: number;
  payloadCrcOk: boolean;
  bad: BadChunk[];
  /** Every chunk that verified, with its full digest. */
  good: { entry: PackEntry; digest: Buffer }[];
}

/** The key of `indexedAt`: a chunk's offset, and its member inside a container (0 otherwise). */
export function locationKey(offset: number, member = 0): number {
  return offset * 16 + member;
}

/**
 * Reads a whole pack, checks its structure and payload checksum, and verifies every chunk: indexed
 * chunks (`indexedAt`, by locationKey) against their full digest (in the page workers), the others by
 * decoding and re-hashing against the digest prefix in the table of contents.
 */
export async function readPackData(store: Store, id: number, indexedAt: Map<number, Buffer>): Promise<PackData> {
  let whole: WholePack;
  try {
    whole = await store.packs.readWhole(id);
  } catch (err) {
    if (err instanceof CorruptError) {
      const bytes = await fsp.stat(store.packs.packPath(id)).then(
        (st) => st.size,
        () => 0,
      );
      return { error: err.message, chunks: 0, bytes, payloadCrcOk: false, bad: [], good: [] };
    }
    return {
      error: `pack ${packFileName(id)}: cannot be read (${(err as Error).message})`,
      chunks: 0,
      bytes: 0,
      payloadCrcOk: false,
      bad: [],
      good: [],
    };
  }
  const { data, entries, payloadCrc } = whole;
  const end = entries.length > 0 ? entries[entries.length - 1].offset + entries[entries.length - 1].storedLength : PACK_HEADER_BYTES;
  const payloadCrcOk = crc32(data.subarray(PACK_HEADER_BYTES, end)) === payloadCrc >>> 0;
  const bad: BadChunk[] = [];
  const good: PackData['good'] = [];
  const withDigest: { i: number; chunk: StoredChunk }[] = [];
  const page = new Uint8Array(PAGE_SIZE);
  const containers = new ContainerCache();
  entries.forEach((e, i) => {
    const payload = data.subarray(e.offset, e.offset + e.storedLength);
    const d = indexedAt.get(locationKey(e.offset, e.member));
    if (d) {
      withDigest.push({ i, chunk: { digest: d, payload, codec: e.codec, member: e.member, pages: e.pages } });
      return;
    }
    const named = nameChunk(payload, e, page, containers);
    if ('why' in named) bad.push({ index: i, offset: e.offset, why: named.why });
    else good.push({ entry: e, digest: named.digest });
  });
  const badIdx = new Set(
    await verifyChunks(
      store,
      withDigest.map((w) => w.chunk),
    ),
  );
  withDigest.forEach((w, k) => {
    const e = entries[w.i];
    if (badIdx.has(k))
      bad.push({ index: w.i, offset: e.offset, digest: Buffer.from(w.chunk.digest), why: 'is corrupt (does not decode to its digest)' });
    else if (!Buffer.from(w.chunk.digest).subarray(0, TOC_PREFIX_BYTES).equals(e.digestPrefix))
      bad.push({ index: w.i, offset: e.offset, digest: Buffer.from(w.chunk.digest), why: 'does not match its table of contents' });
    else good.push({ entry: e, digest: Buffer.from(w.chunk.digest) });
  });
  bad.sort((a, b) => a.index - b.index);
  good.sort((a, b) => a.entry.offset - b.entry.offset);
  return { chunks: entries.length, bytes: data.length, payloadCrcOk, bad, good };
}
