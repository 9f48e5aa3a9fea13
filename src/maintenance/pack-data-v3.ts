/**
 * Reading a version-3 pack's data back (check --read-data, repair): its structure, its payload
 * checksum, and every chunk decoded and hashed against the digest prefix its TOC keeps (its whole
 * digest kept, for the image digests check --read-data verifies).
 */
import { promises as fsp } from 'node:fs';
import { crc32 } from 'node:zlib';
import { getCodec, type ChunkCodec } from '../chunk/codec.js';
import { decodeContainer } from '../chunk/container.js';
import { hashPage } from '../chunk/hash.js';
import { CONTAINER_CODEC, MAX_CONTAINER_PAGES, PACK_HEADER_BYTES } from '../format/pack.js';
import { TOC_DIGEST_BYTES, tocDigestsEqual, type TocV3 } from '../format/pack-v3.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import type { PackReader } from '../store/pack-reader.js';
import { CorruptError } from '../util/errors.js';
import { tocItems, tocNumbers } from './pack-copy-v3.js';

export interface NumberedPackData {
  /** The pack cannot be used at all (its TOC or trailer fails, or it cannot be read). */
  error?: string;
  toc?: TocV3;
  bytes: number;
  chunks: number;
  payloadCrcOk: boolean;
  /** Chunks that do not decode or do not match their digest. */
  bad: { entry: number; number: number; why: string }[];
  /** Each entry's whole digest, hashed from its bytes (32 B an entry; zeros for a bad one). */
  digests?: Uint8Array;
}

/** Reads pack `id` whole and verifies every chunk; memory: the pack's size (a rare, whole-pack pass). */
export async function readNumberedPackData(packs: PackReader, id: number): Promise<NumberedPackData> {
  let read;
  try {
    read = await packs.readTocV3(id);
  } catch (err) {
    if (!(err instanceof CorruptError)) throw err;
    const bytes = await fsp.stat(packs.packPath(id)).then(
      (st) => st.size,
      () => 0,
    );
    return { error: err.message, bytes, chunks: 0, payloadCrcOk: false, bad: [] };
  }
  const { toc, tocOffset, payloadCrc } = read;
  const payload = await packs.read(id, PACK_HEADER_BYTES, tocOffset - PACK_HEADER_BYTES);
  const out: NumberedPackData = {
    toc,
    bytes: tocOffset,
    chunks: toc.count,
    payloadCrcOk: crc32(payload) >>> 0 === payloadCrc >>> 0,
    bad: [],
  };
  const pages = new Uint8Array(MAX_CONTAINER_PAGES * PAGE_SIZE);
  const numbers = tocNumbers(toc);
  const digests = (out.digests = new Uint8Array(toc.count * DIGEST_BYTES));
  for (const item of tocItems(toc)) {
    const stored = payload.subarray(item.offset - PACK_HEADER_BYTES, item.offset - PACK_HEADER_BYTES + item.storedLength);
    let decoded = 0;
    try {
      if (item.codec === CONTAINER_CODEC) decoded = decodeContainer(stored, pages);
      else {
        getCodec().decodePage(stored, item.codec as ChunkCodec, pages, 0);
        decoded = 1;
      }
    } catch {
      decoded = -1;
    }
    for (let m = 0; m < item.pages; m++) {
      const k = item.entry + m;
      const digest = decoded > m ? hashPage(pages.subarray(m * PAGE_SIZE, (m + 1) * PAGE_SIZE)) : undefined;
      const why =
        decoded < 0
          ? 'does not decode'
          : !digest
            ? `is missing from its container (${decoded} pages)`
            : tocDigestsEqual(digest, 0, toc.digests, k * TOC_DIGEST_BYTES)
              ? undefined
              : 'does not match its digest';
      if (why) out.bad.push({ entry: k, number: numbers[k], why });
      else digests.set(digest!, k * DIGEST_BYTES);
    }
  }
  return out;
}
