/**
 * The protocol's messages (docs/PROTOCOL.md): a typed union, its encoder and its checking decoder.
 * Integers are big-endian; strings are u32 length + UTF-8; u64 fields must be safe integers. Every
 * count is checked against its limit and against the bytes present before anything is allocated.
 */
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { ProtocolError } from './errors.js';
import { frameHeader, type RawFrame } from './frames.js';
import {
  DATA_DIGEST_PREFIX_BYTES,
  HELLO_MAGIC,
  MAX_DATA_PAGES,
  MAX_JSON_BYTES,
  MAX_OFFERS_PER_BATCH,
  MAX_PAGES_PER_BATCH,
  MAX_STRING_BYTES,
  MAX_ZERO_RANGES,
} from './limits.js';

export const MSG = {
  HELLO: 1,
  BEGIN: 2,
  OFFER: 3,
  PAGES: 4,
  ZERO: 5,
  PREPARE: 6,
  COMMIT: 7,
  ABORT: 8,
  GROUP_COMMIT: 9,
  CALL: 10,
  RESTORE: 11,
  WELCOME: 64,
  RESULT: 65,
  MISSING: 66,
  ERROR: 67,
  DATA: 68,
  END: 69,
  SPARSE_DATA: 70,
} as const;

export type Unwritten = 'parent' | 'zero' | 'error';
const UNWRITTEN: (Unwritten | undefined)[] = [undefined, 'parent', 'zero', 'error'];

export type Message =
  | { t: 'hello'; minVersion: number; maxVersion: number; token: string }
  | { t: 'begin'; req: number; sid: number; vm: string; group?: string; parent: string; memoryBytes?: number }
  /** `indices[k]` is offered with digest k of `digests` (32 bytes each). */
  | { t: 'offer'; req: number; sid: number; indices: Uint32Array; digests: Uint8Array }
  /**
   * Page k of `data` (4096 bytes each) goes to `indices[k]`; its BLAKE3 must be digest k. `runs`
   * (encoding only): the page bytes as views to send one after another instead of `data`, so an
   * agent sends runs of its caller's pages without copying them into one buffer.
   */
  | { t: 'pages'; req: number; sid: number; indices: Uint32Array; digests: Uint8Array; data: Uint8Array; runs?: readonly Uint8Array[] }
  /** Pairs (first page, page count) of pages that are all zero. */
  | { t: 'zero'; req: number; sid: number; ranges: Uint32Array }
  | { t: 'prepare'; req: number; sid: number; byteLength?: number; unwritten?: Unwritten }
  | { t: 'commit'; req: number; sid: number }
  | { t: 'abort'; req: number; sid: number }
  /** Commits prepared snapshots (of any connections) under one group id, all or none. */
  | { t: 'group-commit'; req: number; group: string; ids: string[] }
  | { t: 'call'; req: number; method: string; args: string }
  | { t: 'restore'; req: number; id: string }
  | { t: 'welcome'; version: number; window: number; maxFrameBytes: number; maxPagesPerBatch: number; serverId: string }
  | { t: 'result'; req: number; json: string }
  /** Positions (into the OFFER's list) of the pages whose bytes the server lacks. */
  | { t: 'missing'; req: number; positions: Uint32Array }
  | { t: 'error'; req: number; code: string; message: string }
  /**
   * Restore: image pages `firstPage ..` in order, with each page's digest (32 zero bytes for a zero
   * page); the image's last page may be short.
   */
  | { t: 'data'; req: number; firstPage: number; digests: Uint8Array; data: Uint8Array }
  /**
   * Restore (version 2): image pages `firstPage ..` in order; `zero[k]` is 1 for a zero page (no
   * bytes, no digest), 0 for a data page; each data page's digest prefix (DATA_DIGEST_PREFIX_BYTES),
   * then the data pages' bytes back to back, given as one or more runs (decoded: one run). The
   * image's last page may be short.
   */
  | { t: 'sparse-data'; req: number; firstPage: number; zero: Uint8Array; prefixes: Uint8Array; runs: readonly Uint8Array[] }
  | { t: 'end'; req: number; json: string };

// ------------------------------------------------------------------ encoding

class Writer {
  private readonly parts: Buffer[] = [];
  /** Parts written out as views whatever their size (page runs of a SPARSE_DATA frame); made when first needed. */
  private views: Set<Buffer> | undefined;
  u8(v: number): this {
    this.parts.push(Buffer.of(v));
    return this;
  }
  u16(v: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16BE(v);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(v >>> 0);
    this.parts.push(b);
    return this;
  }
  /** u64 with a presence flag byte first (absent = 0). */
  optU64(v: number | undefined): this {
    if (v === undefined) return this.u8(0);
    const b = Buffer.allocUnsafe(9);
    b[0] = 1;
    b.writeBigUInt64BE(BigInt(v), 1);
    this.parts.push(b);
    return this;
  }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    this.u32(b.length);
    this.parts.push(b);
    return this;
  }
  bytes(b: Uint8Array): this {
    this.parts.push(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    return this;
  }
  /**
   * Like bytes(), but always a view of the caller's memory, however small: a restore's runs of
   * data pages are mostly a few pages long between zero pages, and copying them into the frame
   * took a tenth of the server's main thread (bench/RESULTS.md, issue 12, session 17).
   */
  view(b: Uint8Array): this {
    const v = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    this.parts.push(v);
    (this.views ??= new Set()).add(v);
    return this;
  }
  u32s(a: Uint32Array): this {
    const b = Buffer.allocUnsafe(a.length * 4);
    for (let i = 0; i < a.length; i++) b.writeUInt32BE(a[i], i * 4);
    this.parts.push(b);
    return this;
  }
  /**
   * The frame as buffers to write in order: the header with the small fields, then each large byte
   * field as a view of the caller's memory (no copy; it must not change until written).
   */
  frame(type: number): Buffer[] {
    const out: Buffer[] = [];
    let small: Buffer[] = [];
    let bodyBytes = 0;
    for (const p of this.parts) {
      bodyBytes += p.length;
      if (p.length < LARGE_PART_BYTES && !this.views?.has(p)) small.push(p);
      else {
        out.push(Buffer.concat(small), p);
        small = [];
      }
    }
    out.push(Buffer.concat(small));
    out[0] = Buffer.concat([frameHeader(type, bodyBytes), out[0]]);
    return out.filter((b) => b.length > 0);
  }
}

/** Fields this large go out as views rather than being copied into the frame. */
const LARGE_PART_BYTES = 16 * 1024;

/** One frame (header included) for `m`, as one buffer. Throws ProtocolError when `m` breaks a limit. */
export function encodeMessage(m: Message): Buffer {
  const parts = encodeMessageParts(m);
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

/**
 * One frame (header included) for `m` as buffers to write in order; large byte fields (page data,
 * digests) are views of `m`'s own memory, which must not change until the buffers are written.
 * Throws ProtocolError when `m` breaks a limit.
 */
export function encodeMessageParts(m: Message): Buffer[] {
  const w = new Writer();
  switch (m.t) {
    case 'hello':
      return w.u32(HELLO_MAGIC).u16(m.minVersion).u16(m.maxVersion).str(m.token).frame(MSG.HELLO);
    case 'begin':
      return w
        .u32(m.req)
        .u32(m.sid)
        .str(m.vm)
        .str(m.group ?? '')
        .str(m.parent)
        .optU64(m.memoryBytes)
        .frame(MSG.BEGIN);
    case 'offer':
      checkCount(m.indices.length, MAX_OFFERS_PER_BATCH, 'offers');
      checkLength(m.digests.length, m.indices.length * DIGEST_BYTES, 'offer digests');
      return w.u32(m.req).u32(m.sid).u32(m.indices.length).bytes(interleave(m.indices, m.digests)).frame(MSG.OFFER);
    case 'pages': {
      checkCount(m.indices.length, MAX_PAGES_PER_BATCH, 'pages');
      checkLength(m.digests.length, m.indices.length * DIGEST_BYTES, 'page digests');
      checkLength(m.runs ? runsLength(m.runs) : m.data.length, m.indices.length * PAGE_SIZE, 'page bytes');
      w.u32(m.req).u32(m.sid).u32(m.indices.length).bytes(interleave(m.indices, m.digests));
      if (!m.runs) return w.bytes(m.data).frame(MSG.PAGES);
      for (const run of m.runs) w.view(run);
      return w.frame(MSG.PAGES);
    }
    case 'zero':
      if (m.ranges.length % 2 !== 0) throw new ProtocolError('E_MALFORMED', 'zero ranges come in (first, count) pairs');
      checkCount(m.ranges.length / 2, MAX_ZERO_RANGES, 'zero ranges');
      return w
        .u32(m.req)
        .u32(m.sid)
        .u32(m.ranges.length / 2)
        .u32s(m.ranges)
        .frame(MSG.ZERO);
    case 'prepare':
      return w
        .u32(m.req)
        .u32(m.sid)
        .optU64(m.byteLength)
        .u8(m.unwritten ? UNWRITTEN.indexOf(m.unwritten) : 0)
        .frame(MSG.PREPARE);
    case 'commit':
      return w.u32(m.req).u32(m.sid).frame(MSG.COMMIT);
    case 'abort':
      return w.u32(m.req).u32(m.sid).frame(MSG.ABORT);
    case 'group-commit':
      checkCount(m.ids.length, MAX_OFFERS_PER_BATCH, 'group members');
      w.u32(m.req).str(m.group).u32(m.ids.length);
      for (const id of m.ids) w.str(id);
      return w.frame(MSG.GROUP_COMMIT);
    case 'call':
      return w.u32(m.req).str(m.method).str(m.args).frame(MSG.CALL);
    case 'restore':
      return w.u32(m.req).str(m.id).frame(MSG.RESTORE);
    case 'welcome':
      return w.u16(m.version).u16(m.window).u32(m.maxFrameBytes).u32(m.maxPagesPerBatch).str(m.serverId).frame(MSG.WELCOME);
    case 'result':
      return w.u32(m.req).str(m.json).frame(MSG.RESULT);
    case 'missing':
      checkCount(m.positions.length, MAX_OFFERS_PER_BATCH, 'missing positions');
      return w.u32(m.req).u32(m.positions.length).u32s(m.positions).frame(MSG.MISSING);
    case 'error':
      return w.u32(m.req).str(m.code).str(m.message.slice(0, 4096)).frame(MSG.ERROR);
    case 'data': {
      const n = m.digests.length / DIGEST_BYTES;
      checkCount(n, MAX_DATA_PAGES, 'data pages');
      checkDataLength(n, m.data.length);
      return w.u32(m.req).u32(m.firstPage).u32(n).bytes(m.digests).bytes(m.data).frame(MSG.DATA);
    }
    case 'sparse-data': {
      const n = m.zero.length;
      checkCount(n, MAX_DATA_PAGES, 'data pages');
      const dataPages = countDataPages(m.zero);
      checkLength(m.prefixes.length, dataPages * DATA_DIGEST_PREFIX_BYTES, 'page digest prefixes');
      checkDataLength(dataPages, runsLength(m.runs));
      w.u32(m.req).u32(m.firstPage).u32(n).bytes(m.zero).bytes(m.prefixes);
      for (const run of m.runs) w.view(run);
      return w.frame(MSG.SPARSE_DATA);
    }
    case 'end':
      return w.u32(m.req).str(m.json).frame(MSG.END);
  }
}

/** Bytes in runs sent back to back. */
function runsLength(runs: readonly Uint8Array[]): number {
  let bytes = 0;
  for (const run of runs) bytes += run.length;
  return bytes;
}

/** How many pages a SPARSE_DATA zero map names as data pages; a byte other than 0 or 1 is malformed. */
function countDataPages(zero: Uint8Array): number {
  let data = 0;
  for (let k = 0; k < zero.length; k++) {
    if (zero[k] > 1) throw new ProtocolError('E_MALFORMED', `SPARSE_DATA: zero map byte ${zero[k]} is neither 0 nor 1`);
    data += 1 - zero[k];
  }
  return data;
}

/** An OFFER or PAGES entry on the wire: u32 index, then digest. */
const ENTRY_BYTES = 4 + DIGEST_BYTES;
/** The same in 32-bit words, and a digest's words (the word-aligned copies below). */
const ENTRY_WORDS = ENTRY_BYTES / 4;
const DIGEST_WORDS = DIGEST_BYTES / 4;

/** Index k then digest k, for each k: the wire layout of OFFER and PAGES entries (ENTRY_BYTES each). */
function interleave(indices: Uint32Array, digests: Uint8Array): Buffer {
  const n = indices.length;
  const out = Buffer.allocUnsafe(n * ENTRY_BYTES);
  if (out.byteOffset % 4 === 0 && digests.byteOffset % 4 === 0) {
    // Word-aligned (as entries() decodes them): digests copied a word at a time.
    const words = new Uint32Array(out.buffer, out.byteOffset, n * ENTRY_WORDS);
    const from = new Uint32Array(digests.buffer, digests.byteOffset, n * DIGEST_WORDS);
    for (let k = 0, w = 0, d = 0; k < n; k++, w += ENTRY_WORDS, d += DIGEST_WORDS) {
      out.writeUInt32BE(indices[k], k * ENTRY_BYTES);
      for (let i = 0; i < DIGEST_WORDS; i++) words[w + 1 + i] = from[d + i];
    }
    return out;
  }
  for (let k = 0; k < n; k++) {
    out.writeUInt32BE(indices[k], k * ENTRY_BYTES);
    // A byte loop: a subarray and set() per 32-byte digest cost more than the copy itself.
    for (let i = 0, from = k * DIGEST_BYTES, to = k * ENTRY_BYTES + 4; i < DIGEST_BYTES; i++) out[to + i] = digests[from + i];
  }
  return out;
}

function checkCount(n: number, max: number, what: string): void {
  if (n > max) throw new ProtocolError('E_LIMIT', `${n} ${what} in one frame, past the limit of ${max}`);
}

/** n pages of data: whole pages but for a short last one. */
function checkDataLength(n: number, bytes: number): void {
  if (!Number.isInteger(n) || bytes > n * PAGE_SIZE || (n > 0 && bytes <= (n - 1) * PAGE_SIZE) || (n === 0 && bytes > 0)) {
    throw new ProtocolError('E_MALFORMED', `DATA: ${bytes} bytes do not make ${n} page(s)`);
  }
}

function checkLength(got: number, want: number, what: string): void {
  if (got !== want) throw new ProtocolError('E_MALFORMED', `${what}: ${got} bytes, expected ${want}`);
}

// ------------------------------------------------------------------ decoding

class Reader {
  private pos = 0;
  constructor(
    private readonly b: Buffer,
    private readonly what: string,
  ) {}
  private need(n: number): void {
    if (this.pos + n > this.b.length) throw new ProtocolError('E_MALFORMED', `${this.what} frame truncated`);
  }
  u8(): number {
    this.need(1);
    return this.b[this.pos++];
  }
  u16(): number {
    this.need(2);
    const v = this.b.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.b.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  optU64(field: string): number | undefined {
    const flag = this.u8();
    if (flag === 0) return undefined;
    if (flag !== 1) throw new ProtocolError('E_MALFORMED', `${this.what}: bad presence flag for ${field}`);
    this.need(8);
    const v = this.b.readBigUInt64BE(this.pos);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError('E_MALFORMED', `${this.what}: ${field} is too large`);
    return Number(v);
  }
  str(field: string, max = MAX_STRING_BYTES): string {
    const n = this.u32();
    if (n > max) throw new ProtocolError('E_LIMIT', `${this.what}: ${field} of ${n} bytes is past the limit of ${max}`);
    this.need(n);
    const s = this.b.toString('utf8', this.pos, this.pos + n);
    this.pos += n;
    return s;
  }
  /** `n` bytes as a view (no copy); `n` was checked against a limit by the caller. */
  bytes(n: number): Buffer {
    this.need(n);
    const v = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  count(max: number, entryBytes: number, what: string): number {
    const n = this.u32();
    if (n > max) throw new ProtocolError('E_LIMIT', `${n} ${what} in one frame, past the limit of ${max}`);
    this.need(n * entryBytes);
    return n;
  }
  u32s(n: number): Uint32Array {
    const b = this.bytes(n * 4);
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = b.readUInt32BE(i * 4);
    return out;
  }
  rest(): Buffer {
    return this.bytes(this.b.length - this.pos);
  }
  end(): void {
    if (this.pos !== this.b.length)
      throw new ProtocolError('E_MALFORMED', `${this.what} frame has ${this.b.length - this.pos} trailing byte(s)`);
  }
}

function entries(r: Reader, n: number): { indices: Uint32Array; digests: Uint8Array } {
  const raw = r.bytes(n * ENTRY_BYTES);
  const indices = new Uint32Array(n);
  const digests = new Uint8Array(n * DIGEST_BYTES);
  if (raw.byteOffset % 4 === 0) {
    // Word-aligned (a server places large frames so: pagesDataPlacement): digests copied a word at a
    // time, a quarter of the loads and stores (an OFFER and a PAGES entry for every page sent).
    const words = new Uint32Array(raw.buffer, raw.byteOffset, n * ENTRY_WORDS);
    const out = new Uint32Array(digests.buffer, 0, n * DIGEST_WORDS);
    for (let k = 0, w = 0, o = 0; k < n; k++, w += ENTRY_WORDS, o += DIGEST_WORDS) {
      indices[k] = raw.readUInt32BE(k * ENTRY_BYTES);
      for (let i = 0; i < DIGEST_WORDS; i++) out[o + i] = words[w + 1 + i];
    }
    return { indices, digests };
  }
  for (let k = 0; k < n; k++) {
    indices[k] = raw.readUInt32BE(k * ENTRY_BYTES);
    for (let i = 0, from = k * ENTRY_BYTES + 4, to = k * DIGEST_BYTES; i < DIGEST_BYTES; i++) digests[to + i] = raw[from + i];
  }
  return { indices, digests };
}

/** Bytes of a PAGES frame (type byte + body) before its entries: type, req, sid, count. */
const PAGES_HEAD_BYTES = 1 + 12;
/**
 * Where to start a frame of `length` bytes (type byte + body) in a page-aligned buffer so that, if it
 * is a PAGES frame, its page data starts on a page boundary: the pages can then be hashed and
 * compressed where they were received (the scanner reads 8-byte words), not copied first. A length
 * no PAGES frame has gets BODY_ALIGNED_AT, which starts the body on a word (an OFFER's entries then
 * are too). The result is below PAGE_SIZE.
 */
export function pagesDataPlacement(length: number): number {
  const n = (length - PAGES_HEAD_BYTES) / (ENTRY_BYTES + PAGE_SIZE);
  if (!Number.isInteger(n) || n < 1 || n > MAX_PAGES_PER_BATCH) return BODY_ALIGNED_AT;
  return (PAGE_SIZE - ((PAGES_HEAD_BYTES + ENTRY_BYTES * n) % PAGE_SIZE)) % PAGE_SIZE;
}

/** A frame placed here has its body (after the type byte) on a 4-byte boundary. */
const BODY_ALIGNED_AT = 3;

/** Decodes one frame. Throws only ProtocolError; byte fields are views into `frame.body`. */
export function decodeMessage(frame: RawFrame): Message {
  const b = frame.body;
  let m: Message;
  let r: Reader;
  switch (frame.type) {
    case MSG.HELLO: {
      r = new Reader(b, 'HELLO');
      if (r.u32() !== HELLO_MAGIC) throw new ProtocolError('E_MALFORMED', 'HELLO without the protocol magic: not a vnstore agent');
      m = { t: 'hello', minVersion: r.u16(), maxVersion: r.u16(), token: r.str('token', 1024) };
      break;
    }
    case MSG.BEGIN: {
      r = new Reader(b, 'BEGIN');
      const req = r.u32();
      const sid = r.u32();
      const vm = r.str('vm', 1024);
      const group = r.str('group', 1024);
      const parent = r.str('parent', 1024);
      const memoryBytes = r.optU64('memory size');
      m = { t: 'begin', req, sid, vm, group: group === '' ? undefined : group, parent, memoryBytes };
      break;
    }
    case MSG.OFFER: {
      r = new Reader(b, 'OFFER');
      const req = r.u32();
      const sid = r.u32();
      const n = r.count(MAX_OFFERS_PER_BATCH, ENTRY_BYTES, 'offers');
      m = { t: 'offer', req, sid, ...entries(r, n) };
      break;
    }
    case MSG.PAGES: {
      r = new Reader(b, 'PAGES');
      const req = r.u32();
      const sid = r.u32();
      const n = r.count(MAX_PAGES_PER_BATCH, ENTRY_BYTES + PAGE_SIZE, 'pages');
      const e = entries(r, n);
      m = { t: 'pages', req, sid, ...e, data: r.bytes(n * PAGE_SIZE) };
      break;
    }
    case MSG.ZERO: {
      r = new Reader(b, 'ZERO');
      const req = r.u32();
      const sid = r.u32();
      const n = r.count(MAX_ZERO_RANGES, 8, 'zero ranges');
      m = { t: 'zero', req, sid, ranges: r.u32s(n * 2) };
      break;
    }
    case MSG.PREPARE: {
      r = new Reader(b, 'PREPARE');
      const req = r.u32();
      const sid = r.u32();
      const byteLength = r.optU64('image length');
      const u = r.u8();
      if (u >= UNWRITTEN.length) throw new ProtocolError('E_MALFORMED', `PREPARE: unknown unwritten-pages rule ${u}`);
      m = { t: 'prepare', req, sid, byteLength, unwritten: UNWRITTEN[u] };
      break;
    }
    case MSG.COMMIT:
    case MSG.ABORT: {
      r = new Reader(b, frame.type === MSG.COMMIT ? 'COMMIT' : 'ABORT');
      m = { t: frame.type === MSG.COMMIT ? 'commit' : 'abort', req: r.u32(), sid: r.u32() };
      break;
    }
    case MSG.GROUP_COMMIT: {
      r = new Reader(b, 'GROUP_COMMIT');
      const req = r.u32();
      const group = r.str('group', 1024);
      const n = r.count(MAX_OFFERS_PER_BATCH, 4, 'group members');
      const ids: string[] = [];
      for (let i = 0; i < n; i++) ids.push(r.str('snapshot id', 64));
      m = { t: 'group-commit', req, group, ids };
      break;
    }
    case MSG.CALL:
      r = new Reader(b, 'CALL');
      m = { t: 'call', req: r.u32(), method: r.str('method', 64), args: r.str('arguments') };
      break;
    case MSG.RESTORE:
      r = new Reader(b, 'RESTORE');
      m = { t: 'restore', req: r.u32(), id: r.str('snapshot id', 64) };
      break;
    case MSG.WELCOME:
      r = new Reader(b, 'WELCOME');
      m = {
        t: 'welcome',
        version: r.u16(),
        window: r.u16(),
        maxFrameBytes: r.u32(),
        maxPagesPerBatch: r.u32(),
        serverId: r.str('server id', 1024),
      };
      break;
    case MSG.RESULT:
      r = new Reader(b, 'RESULT');
      m = { t: 'result', req: r.u32(), json: r.str('result', MAX_JSON_BYTES) };
      break;
    case MSG.MISSING: {
      r = new Reader(b, 'MISSING');
      const req = r.u32();
      const n = r.count(MAX_OFFERS_PER_BATCH, 4, 'missing positions');
      m = { t: 'missing', req, positions: r.u32s(n) };
      break;
    }
    case MSG.ERROR:
      r = new Reader(b, 'ERROR');
      m = { t: 'error', req: r.u32(), code: r.str('code', 64), message: r.str('message', 4096) };
      break;
    case MSG.DATA: {
      r = new Reader(b, 'DATA');
      const req = r.u32();
      const firstPage = r.u32();
      const n = r.count(MAX_DATA_PAGES, DIGEST_BYTES, 'data pages');
      const digests = r.bytes(n * DIGEST_BYTES);
      const data = r.rest();
      checkDataLength(n, data.length);
      m = { t: 'data', req, firstPage, digests, data };
      break;
    }
    case MSG.SPARSE_DATA: {
      r = new Reader(b, 'SPARSE_DATA');
      const req = r.u32();
      const firstPage = r.u32();
      const n = r.count(MAX_DATA_PAGES, 1, 'data pages');
      const zero = r.bytes(n);
      const dataPages = countDataPages(zero);
      const prefixes = r.bytes(dataPages * DATA_DIGEST_PREFIX_BYTES);
      const data = r.rest();
      checkDataLength(dataPages, data.length);
      m = { t: 'sparse-data', req, firstPage, zero, prefixes, runs: [data] };
      break;
    }
    case MSG.END:
      r = new Reader(b, 'END');
      m = { t: 'end', req: r.u32(), json: r.str('result', MAX_JSON_BYTES) };
      break;
    default:
      throw new ProtocolError('E_UNKNOWN_TYPE', `unknown frame type ${frame.type}`);
  }
  r.end();
  return m;
}
