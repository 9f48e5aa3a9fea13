/**
 * The CPU work of ingest and restore, as pure functions over one block of pages. They run inside
 * worker threads (page-worker.ts) or inline; the store sees the same results either way.
 */
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { fingerprint, tableHasFingerprint } from '../index/chunk-table.js';
import { getCodec, type ChunkCodec } from './codec.js';
import { hashPage } from './hash.js';

/** Per-page outcome of hashing, decided as far as a worker can without the exact index. */
export enum PageStatus {
  Zero = 0,
  /** Same digest as the parent snapshot at this page index: known durable, no lookup. */
  SameAsParent = 1,
  /** Fingerprint present in the chunk table: the store must confirm against the exact index. */
  MaybeKnown = 2,
  /** Unknown to the table: compressed payload included. */
  New = 3,
  /** Same digest as an earlier page of this block that is New or MaybeKnown. */
  DuplicateInBlock = 4,
}

export interface HashJob {
  kind: 'hash';
  pages: Uint8Array; // pageCount * PAGE_SIZE bytes, own ArrayBuffer (transferable)
  pageCount: number;
  /** Parent digests for these page indices (pageCount * 32) and whether each is a digest page. */
  parentDigests?: Uint8Array;
  parentHasDigest?: Uint8Array;
  table?: Uint32Array; // shared chunk table words
}

export interface HashResult {
  pages: Uint8Array; // handed back (transferred) so rare paths can still compress
  digests: Uint8Array;
  status: Uint8Array;
  /** For New pages, in page order. */
  payload: Uint8Array;
  lengths: Uint32Array;
  codecs: Uint8Array;
}

export function runHashJob(job: HashJob): HashResult {
  const { pages, pageCount } = job;
  const digests = new Uint8Array(pageCount * DIGEST_BYTES);
  const status = new Uint8Array(pageCount);
  const newOffsets: number[] = [];
  const seen = new Map<string, number>();
  const zero = getCodec().zeroMask(pages, pageCount);
  for (let i = 0; i < pageCount; i++) {
    const off = i * PAGE_SIZE;
    if (zero[i]) {
      status[i] = PageStatus.Zero;
      continue;
    }
    const d = hashPage(pages.subarray(off, off + PAGE_SIZE));
    digests.set(d, i * DIGEST_BYTES);
    if (job.parentDigests && job.parentHasDigest?.[i] && d.equals(job.parentDigests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES))) {
      status[i] = PageStatus.SameAsParent;
      continue;
    }
    const key = d.toString('latin1');
    if (seen.has(key)) {
      status[i] = PageStatus.DuplicateInBlock;
      continue;
    }
    seen.set(key, i);
    if (job.table && tableHasFingerprint(job.table, fingerprint(d))) {
      status[i] = PageStatus.MaybeKnown;
      continue;
    }
    status[i] = PageStatus.New;
    newOffsets.push(off);
  }
  const c = newOffsets.length > 0 ? getCodec().compressPages(pages, newOffsets) : undefined;
  return {
    pages,
    digests,
    status,
    payload: c ? c.payload : new Uint8Array(0),
    lengths: c ? c.lengths : new Uint32Array(0),
    codecs: c ? c.codecs : new Uint8Array(0),
  };
}

export interface DecodeJob {
  kind: 'decode';
  /** Stored payloads, back to back. */
  payload: Uint8Array;
  lengths: Uint32Array;
  codecs: Uint8Array;
  /** Expected digest of each payload (count * 32). */
  digests: Uint8Array;
  /** Page slot of each payload inside the output window. */
  slots: Uint32Array;
  windowPages: number;
}

export interface DecodeResult {
  /** windowPages * PAGE_SIZE bytes; slots not named stay zero. */
  out: Uint8Array;
  /** Indices (into the payload list) whose bytes failed to decode or to match their digest. */
  bad: number[];
}

export function runDecodeJob(job: DecodeJob): DecodeResult {
  const codec = getCodec();
  const out = new Uint8Array(job.windowPages * PAGE_SIZE);
  const bad: number[] = [];
  let p = 0;
  for (let i = 0; i < job.lengths.length; i++) {
    const len = job.lengths[i];
    const dstOff = job.slots[i] * PAGE_SIZE;
    try {
      codec.decodePage(job.payload.subarray(p, p + len), job.codecs[i] as ChunkCodec, out, dstOff);
      const d = hashPage(out.subarray(dstOff, dstOff + PAGE_SIZE));
      if (!d.equals(job.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES))) bad.push(i);
    } catch {
      bad.push(i);
    }
    p += len;
  }
  return { out, bad };
}
