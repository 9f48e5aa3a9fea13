/**
 * The CPU work of ingest and restore, as pure functions over one block of pages. They run inside
 * worker threads (page-worker.ts) or inline, and a hash job also with its heavy steps on the libuv
 * thread pool (runHashJobOnThreadPool); the store sees the same results every way.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { getSystemErrorName } from 'node:util';
import { DIGEST_BYTES, digestsEqual, PAGE_SIZE } from '../format/pages.js';
import { CONTAINER_CODEC, packFileName } from '../format/pack.js';
import { tableHasDigest, tableLocation } from '../index/chunk-table.js';
import { getCodec, slotPrefetch, type ChunkCodec, type CompressedPages } from './codec.js';
import { decodeContainer, decodeStoredChunks, MAX_CONTAINER_BYTES } from './container.js';
import { hashPage, hashPages, pageScanner, type PageScanner } from './hash.js';
import { zeroFill } from '../util/shared-bytes.js';

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
  /**
   * The chunk table's location for this fingerprint holds exactly these bytes (read, decoded and
   * compared in the worker): the chunk is known without an index lookup.
   */
  KnownVerified = 5,
}

export interface HashJob {
  kind: 'hash';
  /**
   * pageCount * PAGE_SIZE bytes at the start of a buffer the job owns (a lent slab, or a caller's
   * transferred block): the whole buffer moves to the worker and comes back as the result's `pages`,
   * for reuse. Empty with `file` set.
   */
  pages: Uint8Array;
  /** Read the pages from this file range instead (the worker reads it: the main thread stays free). */
  file?: { path: string; offset: number; length: number };
  pageCount: number;
  /**
   * Parent digests for these page indices (up to pageCount * 32, 4-byte aligned: a slice of the
   * parent's table) and whether each is a digest page.
   */
  parentDigests?: Uint8Array;
  parentHasDigest?: Uint8Array;
  /** Bytes of each parent digest to compare (default 32): 24 on store format 3, whose TOCs keep a prefix. */
  parentDigestBytes?: number;
  table?: Uint32Array; // shared chunk table words
  /** With `table`: verify fingerprint hits by comparing with the stored chunk (reads packs here). */
  packsDir?: string;
  /** Lent slab (pageCount * PAGE_SIZE bytes) to compress into; handed back as the result's `slab`. */
  payloadSlab?: Uint8Array;
  /**
   * The pages' digests as a client claims them (pageCount * 32; a zero page's is the zero page's
   * digest): the job hashes the pages itself, and if any page's bytes do not hash to its claimed
   * digest it stores nothing of the block and answers `refusedAt` instead. A server checks received
   * pages so, on the pool's threads rather than its main thread. Not with `file`.
   */
  claimedDigests?: Uint8Array;
}

export interface HashResult {
  /**
   * Raw bytes of the MaybeKnown and KnownVerified pages, in page order (4 KiB each): if the exact index says a page is
   * absent after all, the store compresses it from here. Sending only these, not the whole block
   * back, keeps megabytes of buffers per block from churning through the main thread's heap.
   */
  maybeRaw: Uint8Array;
  digests: Uint8Array;
  status: Uint8Array;
  /** For New pages, in page order. */
  payload: Uint8Array;
  lengths: Uint32Array;
  codecs: Uint8Array;
  /** The job's payloadSlab, handed back (`payload` is a view of it when there are New pages). */
  slab?: Uint8Array;
  /** The job's `pages` buffer, handed back (jobs fed with bytes, not a file range). */
  pages?: Uint8Array;
  /**
   * With `claimedDigests`: the first page whose bytes do not hash to its claimed digest. The job then
   * classified and compressed nothing (every other field is empty): nothing of the block is stored.
   */
  refusedAt?: number;
}

let readBuffer = new Uint8Array(0);

/** pread()s until `length` bytes are in or the file ends; returns the bytes read. */
function preadFully(fd: number, buf: Uint8Array, length: number, position: number): number {
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/** Decodes one stored payload into `out` at `dstOff`; false if it does not decode to a page. */
/**
 * Checks decoded pages against their expected digests in one hashing pass. Chunk c sits in page
 * slot `slots[c]` of `out` and its digest's first `compare` bytes must be `digests[32c..]`'s (all 32,
 * or a format-3 TOC's 24-byte prefix); chunks whose `failed[c]` is 1 (as decodeChunks sets it) already
 * failed. Returns the failed chunk indices, in order, and the digests computed (32 B a page slot).
 */
function verifyDecoded(
  out: Uint8Array,
  windowPages: number,
  slots: Uint32Array,
  digests: Uint8Array,
  failed: Uint8Array,
  compare = DIGEST_BYTES,
): { bad: number[]; actual: Buffer } {
  const ok = new Uint32Array(slots.length);
  let n = 0;
  for (let c = 0; c < slots.length; c++) if (!failed[c]) ok[n++] = slots[c];
  const actual = Buffer.alloc(windowPages * DIGEST_BYTES);
  hashPages(out, ok.subarray(0, n), actual);
  const want = Buffer.from(digests.buffer, digests.byteOffset, digests.length);
  const bad: number[] = [];
  for (let c = 0; c < slots.length; c++) {
    const a = slots[c] * DIGEST_BYTES;
    if (failed[c] || actual.compare(want, c * DIGEST_BYTES, c * DIGEST_BYTES + compare, a, a + compare) !== 0) bad.push(c);
  }
  return { bad, actual };
}

/** verifyDecoded's result without the hash: each slot gets the digest it was asked for. */
function unverifiedDigests(
  windowPages: number,
  slots: Uint32Array,
  digests: Uint8Array,
  failed: Uint8Array,
): { bad: number[]; actual: Buffer } {
  const actual = Buffer.alloc(windowPages * DIGEST_BYTES);
  const bad: number[] = [];
  for (let c = 0; c < slots.length; c++) {
    if (failed[c]) bad.push(c);
    else actual.set(digests.subarray(c * DIGEST_BYTES, (c + 1) * DIGEST_BYTES), slots[c] * DIGEST_BYTES);
  }
  return { bad, actual };
}

/** Whether the first `words` words of the digests at word `at` are equal in both arrays. */
function sameWords(a: Uint32Array, b: Uint32Array, at: number, words: number): boolean {
  if (at + 8 > b.length) return false;
  for (let k = 0; k < words; k++) if (a[at + k] !== b[at + k]) return false;
  return true;
}

/** Reads a file range into zero-padded whole pages (a per-thread buffer, reused by the next call). */
function readFileRange(file: { path: string; offset: number; length: number }, pageCount: number): Uint8Array {
  // One read buffer per worker, reused: nothing is transferred back, so nothing needs a new one.
  if (readBuffer.length < pageCount * PAGE_SIZE) readBuffer = new Uint8Array(pageCount * PAGE_SIZE);
  const pages = readBuffer.subarray(0, pageCount * PAGE_SIZE);
  pages.fill(0, file.length); // zero-pad a short last page
  // A descriptor per job, not one kept by path: in a long-lived process the path may name another
  // file by the next put (an image renamed into place), and a kept descriptor would read the old one.
  const fd = openSync(file.path, 'r');
  try {
    if (preadFully(fd, pages, file.length, file.offset) !== file.length) throw new Error(`${file.path}: file shrank while being read`);
  } finally {
    closeSync(fd);
  }
  return pages;
}

export function runHashJob(job: HashJob): HashResult {
  const { pageCount } = job;
  const pages = job.file ? readFileRange(job.file, pageCount) : job.pages;
  const digests = new Uint8Array(pageCount * DIGEST_BYTES);
  const zero = getCodec().zeroMask(pages, pageCount);
  const nonZero = new Uint32Array(pageCount);
  let nonZeroCount = 0;
  for (let i = 0; i < pageCount; i++) if (!zero[i]) nonZero[nonZeroCount++] = i;
  hashPages(pages, nonZero.subarray(0, nonZeroCount), digests);
  const refusedAt = firstMismatch(job, zero, digests);
  if (refusedAt >= 0) return refusedResult(job, refusedAt);
  const { status, newOffsets } = classifyPages(job, pages, zero, digests);
  const c = newOffsets.length > 0 ? getCodec().compressPages(pages, newOffsets, job.payloadSlab) : undefined;
  return finishHashJob(job, pages, digests, status, c);
}

const ZERO_PAGE_DIGEST = hashPage(new Uint8Array(PAGE_SIZE));

/**
 * The first page of the job whose computed digest is not its claimed one, or -1 (also without
 * claimed digests). Zero pages are not hashed (their digest bytes stay zero): theirs must be claimed
 * as the zero page's digest.
 */
function firstMismatch(job: HashJob, zero: Uint8Array, digests: Uint8Array): number {
  const claimed = job.claimedDigests;
  if (!claimed) return -1;
  if (claimed.length !== job.pageCount * DIGEST_BYTES)
    throw new RangeError(`claimedDigests: ${claimed.length} bytes for ${job.pageCount} pages`);
  for (let i = 0; i < job.pageCount; i++) {
    const at = i * DIGEST_BYTES;
    if (!(zero[i] ? digestsEqual(ZERO_PAGE_DIGEST, 0, claimed, at) : digestsEqual(digests, at, claimed, at))) return i;
  }
  return -1;
}

/** A job refused for page `at` (firstMismatch): nothing classified, the buffers handed back. */
function refusedResult(job: HashJob, at: number): HashResult {
  return {
    maybeRaw: new Uint8Array(0),
    digests: new Uint8Array(0),
    status: new Uint8Array(0),
    payload: new Uint8Array(0),
    lengths: new Uint32Array(0),
    codecs: new Uint8Array(0),
    slab: job.payloadSlab,
    pages: job.file ? undefined : job.pages,
    refusedAt: at,
  };
}

/**
 * runHashJob with its heavy steps (reading a file range, the zero scan and BLAKE3, LZ4) on the libuv
 * thread pool, for callers with no worker to send the job to: the calling thread stays free to read
 * and apply other blocks meanwhile, and the pool's threads are already running (a worker thread
 * costs ~90 ms to start; docs/DESIGN.md, "Thread-pool jobs"). Same results as runHashJob. A file
 * job reads into `readBuffer` (pageCount pages or more), which is free again once this settles.
 * Returns undefined when the addons cannot serve (no native codec or page hasher): run runHashJob.
 */
export function runHashJobOnThreadPool(job: HashJob, readBuffer: () => Uint8Array): Promise<HashResult> | undefined {
  if (!threadPoolServes()) return undefined;
  if (!job.file && job.pages.byteOffset % 8 !== 0) return undefined; // the scanner reads 8-byte words
  return hashOnThreadPool(job, readBuffer, pageScanner()!, getCodec());
}

async function hashOnThreadPool(
  job: HashJob,
  readBuffer: () => Uint8Array,
  scan: PageScanner,
  codec: ReturnType<typeof getCodec>,
): Promise<HashResult> {
  const { pageCount } = job;
  const zero = new Uint8Array(pageCount);
  const digests = new Uint8Array(pageCount * DIGEST_BYTES);
  let pages = job.pages;
  if (job.file) {
    pages = readBuffer().subarray(0, pageCount * PAGE_SIZE);
    // A descriptor per job (one openat, next to a 4 MiB read): jobs of several sessions may be
    // reading different files at once, so none may close a descriptor another is using. The read
    // and the scan are one thread-pool job (each job queued costs the main thread a thread wake-up).
    const fd = openSync(job.file.path, 'r');
    try {
      const got = await scan.scanFileAsync(fd, job.file.offset, job.file.length, pages, pageCount, zero, digests);
      if (got < 0) throw errnoError(-got, 'read', job.file.path);
      if (got !== job.file.length) throw new Error(`${job.file.path}: file shrank while being read`);
    } finally {
      closeSync(fd);
    }
  } else {
    await scan.scanPagesAsync(pages, pageCount, zero, digests);
  }
  const refusedAt = firstMismatch(job, zero, digests);
  if (refusedAt >= 0) return refusedResult(job, refusedAt);
  const { status, newOffsets } = classifyPages(job, pages, zero, digests);
  const c =
    newOffsets.length > 0
      ? await codec.compressPagesAsync!(pages, newOffsets, job.payloadSlab ?? new Uint8Array(newOffsets.length * PAGE_SIZE))
      : undefined;
  return finishHashJob(job, pages, digests, status, c);
}

/** Whether runHashJobOnThreadPool can serve (the native page hasher and codec both loaded). */
export function threadPoolServes(): boolean {
  return pageScanner() !== undefined && getCodec().compressPagesAsync !== undefined;
}

/** The error Node's fs calls throw for `errno` (code such as 'EIO', errno, syscall, path). */
function errnoError(errno: number, syscall: string, file: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(-errno);
  return Object.assign(new Error(`${code}: ${syscall} failed, '${file}'`), { code, errno: -errno, syscall, path: file });
}

/** The addon's chunk-table line requests (null without it), looked up at the first job, not at import. */
let prefetchSlots: ReturnType<typeof slotPrefetch> | null | undefined;

/**
 * Decides each page's status from its zero flag and digest (see PageStatus), and lists the byte
 * offsets of the New pages, which are the ones to compress.
 */
function classifyPages(
  job: HashJob,
  pages: Uint8Array,
  zero: Uint8Array,
  digests: Uint8Array,
): { status: Uint8Array; newOffsets: Uint32Array } {
  const { pageCount } = job;
  const status = new Uint8Array(pageCount);
  const newOffsets = new Uint32Array(pageCount);
  let newCount = 0;
  const seen = new Set<string>();
  const digestView = Buffer.from(digests.buffer, digests.byteOffset, digests.length);
  // Every non-zero page is probed below: their table lines are requested together first.
  if (job.table && pageCount > 0) (prefetchSlots ??= slotPrefetch() ?? null)?.(job.table, digests, 0, DIGEST_BYTES, pageCount);
  // Word views for the same-as-parent test: most pages of a consecutive snapshot take it, so it
  // compares 8 words in place instead of making two views and a native call per page.
  const ownWords = new Uint32Array(digests.buffer, digests.byteOffset, pageCount * 8);
  const parentWords =
    job.parentDigests && new Uint32Array(job.parentDigests.buffer, job.parentDigests.byteOffset, job.parentDigests.length >>> 2);
  const parentCompareWords = (job.parentDigestBytes ?? DIGEST_BYTES) >>> 2;
  for (let i = 0; i < pageCount; i++) {
    const off = i * PAGE_SIZE;
    if (zero[i]) {
      status[i] = PageStatus.Zero;
      continue;
    }
    // Same as the parent: known durable without a lookup, provided the store still holds the chunk
    // (a repaired store may have lost one: then the page takes the normal path and is stored again).
    if (
      parentWords &&
      job.parentHasDigest?.[i] &&
      sameWords(ownWords, parentWords, i * 8, parentCompareWords) &&
      (!job.table || tableHasDigest(job.table, digests, i * DIGEST_BYTES))
    ) {
      status[i] = PageStatus.SameAsParent;
      continue;
    }
    const d = digestView.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
    const key = d.toString('latin1');
    if (seen.has(key)) {
      status[i] = PageStatus.DuplicateInBlock;
      continue;
    }
    seen.add(key);
    if (job.table && tableHasDigest(job.table, d)) {
      status[i] =
        job.packsDir && storedCopyEquals(job.packsDir, job.table, d, pages, off) ? PageStatus.KnownVerified : PageStatus.MaybeKnown;
      continue;
    }
    status[i] = PageStatus.New;
    newOffsets[newCount++] = off;
  }
  return { status, newOffsets: newOffsets.subarray(0, newCount) };
}

/** The job's result: copies out the raw bytes of the pages the store may still need (see maybeRaw). */
function finishHashJob(
  job: HashJob,
  pages: Uint8Array,
  digests: Uint8Array,
  status: Uint8Array,
  c: CompressedPages | undefined,
): HashResult {
  const { pageCount } = job;
  let maybeCount = 0;
  const maybe = (st: number) => st === PageStatus.MaybeKnown || st === PageStatus.KnownVerified;
  for (let i = 0; i < pageCount; i++) if (maybe(status[i])) maybeCount++;
  const maybeRaw = new Uint8Array(maybeCount * PAGE_SIZE);
  for (let i = 0, k = 0; i < pageCount; i++) {
    if (maybe(status[i])) maybeRaw.set(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), PAGE_SIZE * k++);
  }
  return {
    maybeRaw,
    digests,
    status,
    payload: c ? c.payload : new Uint8Array(0),
    lengths: c ? c.lengths : new Uint32Array(0),
    codecs: c ? c.codecs : new Uint8Array(0),
    slab: job.payloadSlab,
    pages: job.file ? undefined : job.pages,
  };
}

const comparePage = new Uint8Array(PAGE_SIZE);

/**
 * The zstd container decoded last by this thread's dedup checks, by pack and frame offset (sealed
 * packs never change; gc's forgetPacks drops it with the descriptors): pages another VM stored first
 * sit in its containers, and the next pages of an image usually fall in the same one.
 */
const lastContainer = { key: '', pages: 0, bytes: new Uint8Array(MAX_CONTAINER_BYTES) };

/**
 * True when the chunk the table locates for this digest's fingerprint decodes to exactly the page's
 * bytes. Exact by content: if the bytes are equal, so are their digests, so the index holds this
 * digest. Anything unusual (ambiguous slot, pack not sealed yet or gone, short read) answers false
 * and the page takes the exact-index path instead.
 */
function storedCopyEquals(packsDir: string, table: Uint32Array, digest: Uint8Array, pages: Uint8Array, off: number): boolean {
  const loc = tableLocation(table, digest);
  if (!loc) return false;
  let stored: Uint8Array;
  try {
    if (loc.codec === CONTAINER_CODEC) stored = containerPage(packsDir, loc.pack, loc.offset, loc.storedLength, loc.member ?? 0);
    else {
      if (scratch.length < loc.storedLength) scratch = Buffer.allocUnsafe(Math.max(loc.storedLength, 1 << 16));
      const n = preadFully(packFd(packsDir, loc.pack), scratch, loc.storedLength, loc.offset);
      if (n !== loc.storedLength) return false;
      getCodec().decodePage(scratch.subarray(0, n), loc.codec as ChunkCodec, comparePage, 0);
      stored = comparePage;
    }
  } catch {
    return false;
  }
  return (
    Buffer.compare(
      Buffer.from(stored.buffer, stored.byteOffset, PAGE_SIZE),
      Buffer.from(pages.buffer, pages.byteOffset + off, PAGE_SIZE),
    ) === 0
  );
}

/** Page `member` of the container frame at (pack, offset), decoded once for its neighbours; throws when unreadable. */
function containerPage(packsDir: string, pack: number, offset: number, length: number, member: number): Uint8Array {
  const key = `${packsDir}\0${pack}\0${offset}`;
  if (lastContainer.key !== key) {
    lastContainer.key = '';
    if (scratch.length < length) scratch = Buffer.allocUnsafe(Math.max(length, 1 << 16));
    if (preadFully(packFd(packsDir, pack), scratch, length, offset) !== length) throw new Error('short read');
    lastContainer.pages = decodeContainer(scratch.subarray(0, length), lastContainer.bytes);
    lastContainer.key = key;
  }
  if (member >= lastContainer.pages) throw new Error(`container has no page ${member}`);
  return lastContainer.bytes.subarray(member * PAGE_SIZE, (member + 1) * PAGE_SIZE);
}

export interface DecodeJob {
  kind: 'decode';
  /** Stored payloads, back to back (or where `offsets` says: pages of one container share its frame). */
  payload: Uint8Array;
  offsets?: Uint32Array;
  lengths: Uint32Array;
  codecs: Uint8Array;
  /** Member numbers of container pages (codec 2); absent when there are none. */
  members?: Uint8Array;
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
  // The payloads lie back to back: one decode call for the window, as restore windows do.
  let offsets = job.offsets;
  if (!offsets) {
    offsets = new Uint32Array(job.lengths.length);
    for (let i = 1; i < offsets.length; i++) offsets[i] = offsets[i - 1] + job.lengths[i - 1];
  }
  const failed = new Uint8Array(offsets.length);
  decodeStoredChunks(codec, job.payload, offsets, job.lengths, job.codecs, job.members, job.slots, out, failed);
  return { out, bad: verifyDecoded(out, job.windowPages, job.slots, job.digests, failed).bad };
}

/**
 * Restore of one window, done entirely in a worker: positional reads of the planned pack ranges
 * (page cache reads are cheap; doing them here keeps the main thread free), decode, verify.
 */
export interface RestoreJob {
  kind: 'restore';
  packsDir: string;
  windowPages: number;
  /** Coalesced reads: pack id, offset and length of each range. */
  readPack: Uint32Array;
  readOffset: Float64Array;
  readLength: Uint32Array;
  /** Per chunk, in read order: its range, offset inside the range, stored length, codec, slot, digest. */
  chunkRead: Uint32Array;
  chunkOffset: Uint32Array;
  lengths: Uint32Array;
  codecs: Uint8Array;
  /** Member numbers of container pages (codec 2: their offset and length name the frame); absent when none. */
  members?: Uint8Array;
  slots: Uint32Array;
  digests: Uint8Array;
  /** Bytes of each digest to compare (default 32): 24 on store format 3, whose TOCs keep a prefix. */
  digestBytes?: number;
  /**
   * False: decode only, no hash (the reader verifies every page and the image digest itself);
   * `actual` then holds each slot's digest from `digests` as given. Never with `output`.
   */
  verify?: boolean;
  /** Lent slab (windowPages * PAGE_SIZE bytes) to restore into when there is no `output`; it comes back as `out`. */
  window?: Uint8Array;
  /**
   * Write the verified window straight into this file (a new regular file: positional writes of the
   * non-zero page runs, zero pages left as holes, nothing past `limit`), instead of handing it back.
   * Nothing is written unless every chunk of the window verified.
   */
  output?: { path: string; position: number; limit: number };
}

export interface RestoreResult {
  /** The window's bytes; empty when the worker wrote them to `output` itself. */
  out: Uint8Array;
  /** Writing to `output` failed (e.g. ENOSPC). */
  writeError?: { code?: string; message: string };
  /** Chunk indices that failed to decode or verify. */
  bad: number[];
  /** A range that could not be read (missing or truncated pack). */
  readError?: { pack: number; message: string };
  /**
   * Each page slot's digest as computed from its bytes by the verification (32 B a slot; zero where
   * no chunk): format 3's image digest needs them (a TOC keeps 24 bytes), and a streaming restore
   * sends them. Absent only with a writeError.
   */
  actual?: Uint8Array;
}

const packFds = new Map<string, number>();
const MAX_FDS = 64;
let scratch = Buffer.allocUnsafe(1 << 20);

/**
 * Closes this thread's cached descriptors of packs that are about to be removed (gc): an open
 * descriptor keeps a removed file's blocks allocated, and in a long-lived process the cache would
 * hold up to MAX_FDS packs' worth of space that gc reported as reclaimed.
 */
export function forgetPacks(packsDir: string, ids: readonly number[]): void {
  lastContainer.key = ''; // a decoded container of a removed pack must not answer for its successor
  for (const id of ids) {
    const file = path.join(packsDir, packFileName(id));
    const fd = packFds.get(file);
    if (fd === undefined) continue;
    packFds.delete(file);
    closeSync(fd);
  }
}

/**
 * Closes this thread's cached descriptors of every pack under `packsDir` (the store is closing):
 * the cache is per thread, not per store, and a closed store's descriptors would otherwise stay
 * open in a long-lived process (keeping removed packs' blocks, and the store's file system, busy).
 */
export function forgetPackDir(packsDir: string): void {
  lastContainer.key = '';
  const prefix = packsDir + path.sep;
  for (const [file, fd] of [...packFds]) {
    if (!file.startsWith(prefix)) continue;
    packFds.delete(file);
    closeSync(fd);
  }
}

function packFd(packsDir: string, pack: number): number {
  const file = path.join(packsDir, packFileName(pack));
  let fd = packFds.get(file);
  if (fd !== undefined) return fd;
  if (packFds.size >= MAX_FDS) {
    const [oldFile, oldFd] = packFds.entries().next().value as [string, number];
    packFds.delete(oldFile);
    closeSync(oldFd);
  }
  fd = openSync(file, 'r');
  packFds.set(file, fd);
  return fd;
}

/**
 * Window buffer reused across restore jobs that write their output file themselves: a fresh buffer
 * per window costs a page fault per page (as much as the LZ4 decode). Slots a window does not name
 * keep stale bytes, which is harmless: only named slots are verified and written. A window that has
 * to go back to the main thread after all goes back as a fresh copy of its named slots.
 */
let windowBuffer = new Uint8Array(0);

export function runRestoreJob(job: RestoreJob): RestoreResult {
  const codec = getCodec();
  const bytes = job.windowPages * PAGE_SIZE;
  let out: Uint8Array;
  if (job.output) {
    // Grown, never shrunk: an image's short last window reuses it, and so does the next restore.
    if (windowBuffer.byteLength < bytes) windowBuffer = new Uint8Array(bytes);
    out = windowBuffer.subarray(0, bytes);
  } else if (job.window) {
    out = job.window; // a reused slab: the pages this window does not name must read as zeros
    zeroOutsideSlots(out, job.windowPages, job.slots);
  } else {
    out = new Uint8Array(bytes);
  }
  // Every read range of the window back to back in one buffer, then one decode call for the window
  // (a call per page cost as much as the LZ4 decoding itself).
  const m = job.chunkRead.length;
  const rangeStart = new Float64Array(job.readPack.length);
  let storedBytes = 0;
  for (let r = 0; r < job.readPack.length; r++) {
    rangeStart[r] = storedBytes;
    storedBytes += job.readLength[r];
  }
  if (scratch.length < storedBytes) scratch = Buffer.allocUnsafe(storedBytes);
  const bad: number[] = [];
  for (let r = 0; r < job.readPack.length; r++) {
    const len = job.readLength[r];
    try {
      if (
        preadFully(packFd(job.packsDir, job.readPack[r]), scratch.subarray(rangeStart[r], rangeStart[r] + len), len, job.readOffset[r]) !==
        len
      )
        return { out, bad, readError: { pack: job.readPack[r], message: `short read at offset ${job.readOffset[r]} (truncated pack)` } };
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      return { out, bad, readError: { pack: job.readPack[r], message: e.code === 'ENOENT' ? 'pack is missing' : e.message } };
    }
  }
  const offsets = new Uint32Array(m);
  for (let c = 0; c < m; c++) offsets[c] = rangeStart[job.chunkRead[c]] + job.chunkOffset[c];
  const failed = new Uint8Array(m);
  // A container's pages are consecutive here (sorted by pack and offset): each frame is decoded once.
  decodeStoredChunks(codec, scratch, offsets, job.lengths, job.codecs, job.members, job.slots, out, failed);
  const verified =
    job.verify === false && !job.output
      ? unverifiedDigests(job.windowPages, job.slots, job.digests, failed)
      : verifyDecoded(out, job.windowPages, job.slots, job.digests, failed, job.digestBytes);
  bad.push(...verified.bad);
  const actual = verified.actual;
  if (!job.output) return { out, bad, actual };
  if (bad.length > 0) {
    // The main thread mends and writes this window itself: hand over named slots only, in a fresh
    // zeroed buffer (the reused one holds stale bytes where this window has zero pages).
    const fresh = new Uint8Array(bytes);
    for (const slot of job.slots) fresh.set(out.subarray(slot * PAGE_SIZE, (slot + 1) * PAGE_SIZE), slot * PAGE_SIZE);
    return { out: fresh, bad, actual };
  }
  try {
    writeWindow(job.output, out, job.slots);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { out: new Uint8Array(0), bad, writeError: { code: e.code, message: e.message } };
  }
  return { out: new Uint8Array(0), bad, actual };
}

/** Zeroes the pages of a window that no chunk fills (zero pages of the image). */
function zeroOutsideSlots(out: Uint8Array, windowPages: number, slots: Uint32Array): void {
  const named = new Uint8Array(windowPages);
  for (const s of slots) named[s] = 1;
  for (let i = 0; i < windowPages;) {
    if (named[i]) {
      i++;
      continue;
    }
    let j = i + 1;
    while (j < windowPages && !named[j]) j++;
    zeroFill(out, i * PAGE_SIZE, j * PAGE_SIZE);
    i = j;
  }
}

/**
 * pwrite()s the runs of consecutive non-zero slots of a window; zero pages stay holes. A descriptor
 * per window, not one kept by path: a long-lived process restores to the same path again after the
 * last output was moved or removed, and a kept descriptor would write into the old file.
 */
function writeWindow(output: { path: string; position: number; limit: number }, out: Uint8Array, slots: Uint32Array): void {
  const fd = openSync(output.path, 'r+');
  try {
    const sorted = Uint32Array.from(slots).sort();
    for (let a = 0; a < sorted.length;) {
      let b = a + 1;
      while (b < sorted.length && sorted[b] === sorted[b - 1] + 1) b++;
      const start = sorted[a] * PAGE_SIZE;
      const end = Math.min(sorted[b - 1] * PAGE_SIZE + PAGE_SIZE, output.limit - output.position);
      for (let off = start; off < end;) {
        const n = writeSync(fd, out, off, end - off, output.position + off);
        if (n <= 0) throw Object.assign(new Error('write made no progress'), { code: 'ENOSPC' });
        off += n;
      }
      a = b;
    }
  } finally {
    closeSync(fd);
  }
}
