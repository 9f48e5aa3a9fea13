/**
 * Manifest format v1: one VM snapshot (pure encode/decode, no I/O). See docs/FORMAT.md.
 *
 * A manifest is a run-length list over page indices. Each run is ZERO (all-zero pages), SAME (same
 * digest as the base manifest at the same index) or DIGESTS (32 bytes per page). Against its parent,
 * an unchanged region of a consecutive snapshot costs one varint, not 32 bytes a page.
 */
import { crc32 } from 'node:zlib';
import { CorruptError } from '../util/errors.js';
import { ByteReader, ByteWriter, varintBytes } from './varint.js';
import { DIGEST_BYTES, PAGE_SIZE, PageKind, PageTable } from './pages.js';

export const MANIFEST_MAGIC = Buffer.from('VNSTMANI', 'latin1');
export const MANIFEST_VERSION = 1;

const RUN_ZERO = 0;
const RUN_SAME = 1;
const RUN_DIGESTS = 2;

export interface ManifestMeta {
  id: string;
  vm: string;
  group?: string;
  parent?: string;
  time: string;
}

export interface ManifestHeader {
  meta: ManifestMeta;
  byteLength: number;
  pageCount: number;
  imageDigest: Uint8Array;
  /** Snapshot whose manifest SAME runs refer to; undefined for a self-contained manifest. */
  baseId?: string;
}

export interface ManifestStats {
  runs: number;
  digestEntries: number;
  sameEntries: number;
  zeroPages: number;
}

/** The runs of a manifest body, planned before any byte is written (see planManifest). */
export interface ManifestPlan {
  /** Run headers (count * 4 + kind), in page order. */
  heads: number[];
  stats: ManifestStats;
  /** Exact byte length of the encoded runs (run headers and digests). */
  bodyBytes: number;
  base?: PageTable;
}

/**
 * Plans the runs of `pages` (every page Zero or Digest) against an optional base page table. Cheap
 * next to encoding (no bytes are written), so a session plans both the self-contained and the
 * delta form and encodes only the smaller.
 */
export function planManifest(pages: PageTable, base?: PageTable): ManifestPlan {
  const stats: ManifestStats = { runs: 0, digestEntries: 0, sameEntries: 0, zeroPages: 0 };
  const heads: number[] = [];
  let bodyBytes = 0;
  const classify = (i: number): number => {
    const k = pages.kinds[i];
    if (k === PageKind.Zero) return RUN_ZERO;
    if (k !== PageKind.Digest) throw new RangeError(`page ${i} has no content`);
    if (base && i < base.pageCount && base.kinds[i] === PageKind.Digest && pages.sameDigest(i, base.digests, i * DIGEST_BYTES)) {
      return RUN_SAME;
    }
    return RUN_DIGESTS;
  };
  let i = 0;
  while (i < pages.pageCount) {
    const kind = classify(i);
    let j = i + 1;
    while (j < pages.pageCount && classify(j) === kind) j++;
    const count = j - i;
    const head = count * 4 + kind;
    heads.push(head);
    bodyBytes += varintBytes(head);
    if (kind === RUN_DIGESTS) {
      bodyBytes += count * DIGEST_BYTES;
      stats.digestEntries += count;
    } else if (kind === RUN_SAME) stats.sameEntries += count;
    else stats.zeroPages += count;
    stats.runs++;
    i = j;
  }
  return { heads, stats, bodyBytes, base };
}

/** The arguments of an encode agree: page count, base and baseId, the plan's base (both versions). */
export function checkManifestPlan(header: ManifestHeader, pageCount: number, base: unknown, planBase: unknown): void {
  if (header.pageCount !== pageCount) throw new RangeError('manifest pageCount mismatch');
  if ((base === undefined) !== (header.baseId === undefined)) throw new RangeError('base table and baseId go together');
  if (planBase !== base) throw new RangeError('manifest plan was made against another base');
}

/**
 * A writer holding a manifest's magic, version and header fields up to its run count, sized exactly
 * for `bodyBytes` of runs and the CRC after them (manifest versions 1 and 2 share the header).
 */
export function beginManifest(header: ManifestHeader, version: number, runs: number, bodyBytes: number): ByteWriter {
  const meta = Buffer.from(JSON.stringify(header.meta), 'utf8');
  const baseId = Buffer.from(header.baseId ?? '', 'utf8');
  const headBytes =
    8 +
    2 +
    2 +
    varintBytes(meta.length) +
    meta.length +
    varintBytes(header.byteLength) +
    varintBytes(header.pageCount) +
    DIGEST_BYTES +
    varintBytes(baseId.length) +
    baseId.length +
    varintBytes(runs);
  // Exactly sized, written once: a manifest is megabytes for large VMs, and fresh memory costs a
  // page fault per 4 KiB it covers (docs/DESIGN.md).
  const w = new ByteWriter(headBytes + bodyBytes + 4);
  w.bytes(MANIFEST_MAGIC);
  w.u16(version);
  w.u16(0);
  w.varint(meta.length);
  w.bytes(meta);
  w.varint(header.byteLength);
  w.varint(header.pageCount);
  w.bytes(header.imageDigest);
  w.varint(baseId.length);
  w.bytes(baseId);
  w.varint(runs);
  return w;
}

/** Encodes `pages` (every page Zero or Digest) against an optional base page table. */
export function encodeManifest(
  header: ManifestHeader,
  pages: PageTable,
  base?: PageTable,
  plan: ManifestPlan = planManifest(pages, base),
): { bytes: Buffer; stats: ManifestStats } {
  checkManifestPlan(header, pages.pageCount, base, plan.base);
  const w = beginManifest(header, MANIFEST_VERSION, plan.stats.runs, plan.bodyBytes);
  let page = 0;
  for (const head of plan.heads) {
    const count = Math.floor(head / 4);
    w.varint(head);
    if (head % 4 === RUN_DIGESTS) w.bytes(pages.digests.subarray(page * DIGEST_BYTES, (page + count) * DIGEST_BYTES));
    page += count;
  }
  w.u32(crc32(w.finish()));
  return { bytes: w.finish(), stats: plan.stats };
}

export function decodeManifestHeader(bytes: Uint8Array, name: string): { header: ManifestHeader; reader: ByteReader } {
  return decodeManifestHeaderOf(bytes, name, MANIFEST_VERSION);
}

/** The header of a manifest of `version` (its magic, CRC and fields checked); the reader is at its runs. */
export function decodeManifestHeaderOf(
  bytes: Uint8Array,
  name: string,
  expectVersion: number,
): { header: ManifestHeader; reader: ByteReader } {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  if (buf.length < 16 || !buf.subarray(0, 8).equals(MANIFEST_MAGIC)) throw new CorruptError(`manifest ${name}: bad magic`);
  const stored = buf.readUInt32LE(buf.length - 4);
  if (crc32(buf.subarray(0, buf.length - 4)) !== stored) throw new CorruptError(`manifest ${name}: checksum mismatch`);
  const r = new ByteReader(buf.subarray(0, buf.length - 4), `manifest ${name}`);
  r.bytes(8);
  const version = r.u16();
  if (version !== expectVersion) throw new CorruptError(`manifest ${name}: unsupported manifest version ${version}`);
  r.u16();
  let meta: ManifestMeta;
  try {
    meta = JSON.parse(r.str()) as ManifestMeta;
  } catch (err) {
    throw new CorruptError(`manifest ${name}: bad metadata`, { cause: err });
  }
  const byteLength = r.varint();
  const pageCount = r.varint();
  if (pageCount !== Math.ceil(byteLength / PAGE_SIZE)) throw new CorruptError(`manifest ${name}: page count does not match byte length`);
  const imageDigest = Uint8Array.from(r.bytes(DIGEST_BYTES));
  const baseId = r.str() || undefined;
  return { header: { meta, byteLength, pageCount, imageDigest, baseId }, reader: r };
}

/** Decodes the runs into a full page table; `base` must be the resolved base table when baseId is set. */
export function decodeManifestPages(header: ManifestHeader, reader: ByteReader, name: string, base?: PageTable): PageTable {
  if (header.baseId !== undefined && !base) throw new RangeError('base table required');
  const pages = new PageTable(header.pageCount);
  const runs = reader.varint();
  let i = 0;
  for (let r = 0; r < runs; r++) {
    const h = reader.varint();
    const kind = h % 4;
    const count = Math.floor(h / 4);
    if (count === 0 || i + count > header.pageCount) throw new CorruptError(`manifest ${name}: run overflows the page count`);
    if (kind === RUN_ZERO) {
      pages.kinds.fill(PageKind.Zero, i, i + count);
    } else if (kind === RUN_DIGESTS) {
      pages.digests.set(reader.bytes(count * DIGEST_BYTES), i * DIGEST_BYTES);
      pages.kinds.fill(PageKind.Digest, i, i + count);
    } else if (kind === RUN_SAME) {
      if (!base || i + count > base.pageCount) throw new CorruptError(`manifest ${name}: SAME run outside its base`);
      for (let k = i; k < i + count; k++) {
        if (base.kinds[k] !== PageKind.Digest) throw new CorruptError(`manifest ${name}: SAME run over a non-digest base page`);
      }
      pages.digests.set(base.digests.subarray(i * DIGEST_BYTES, (i + count) * DIGEST_BYTES), i * DIGEST_BYTES);
      pages.kinds.fill(PageKind.Digest, i, i + count);
    } else {
      throw new CorruptError(`manifest ${name}: unknown run kind ${kind}`);
    }
    i += count;
  }
  if (i !== header.pageCount || reader.remaining !== 0) throw new CorruptError(`manifest ${name}: runs do not cover the image exactly`);
  return pages;
}
