/**
 * Copying chunks of a store of format 3 into a new version-3 pack, with their numbers (gc, compact,
 * repair): every chunk is decoded and checked against its TOC digest before it is written, entries
 * go in increasing number order (the pack's rule), and a container is copied whole only when all its
 * pages are copied and no other copied number falls between its first and last (its pages must be
 * consecutive entries); otherwise its pages go into new containers at `recontainerLevel` (gc: so
 * forget + gc does not undo compact) or are stored singly (LZ4), and with `compactLevel` every LZ4
 * page is put into new containers. Memory: a read window per source pack (READ_WINDOW_BYTES) and the TOC columns,
 * whatever the pack's size.
 */
import { getCodec, ChunkCodec } from '../chunk/codec.js';
import { compressContainers, decodeContainer } from '../chunk/container.js';
import { hashPage } from '../chunk/hash.js';
import { getZstd } from '../chunk/zstd.js';
import { CONTAINER_CODEC, MAX_CONTAINER_PAGES, packFileName } from '../format/pack.js';
import {
  metaCodec,
  metaMember,
  metaPages,
  metaStoredLength,
  PACK_VERSION_PREFIXED,
  TOC_DIGEST_BYTES,
  tocDigestsEqual,
  type TocV3,
} from '../format/pack-v3.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { BatchPool, PackFile, WRITE_BATCH_BYTES } from '../store/pack-file.js';
import type { PackReader, PackTocV3 } from '../store/pack-reader.js';
import { storePaths } from '../store/paths.js';
import { CorruptError, fromSystemError } from '../util/errors.js';
import { upperBound } from '../util/search.js';
import type { NumberedStore } from './numbered-store.js';

/** One stored payload of a version-3 pack: a page, or a whole container. */
export interface TocItem {
  /** Its first entry in the TOC. */
  entry: number;
  pages: number;
  codec: number;
  offset: number;
  storedLength: number;
}

/** The items of a parsed TOC, in payload order. */
export function tocItems(toc: TocV3): TocItem[] {
  const out: TocItem[] = [];
  for (let k = 0; k < toc.count;) {
    const meta = toc.metas[k];
    const codec = metaCodec(meta);
    const pages = codec === CONTAINER_CODEC ? metaPages(meta) : 1;
    if (codec === CONTAINER_CODEC && metaMember(meta) !== 0)
      throw new CorruptError(`TOC entry ${k}: a container starts at member ${metaMember(meta)}`);
    out.push({ entry: k, pages, codec, offset: toc.offsets[k], storedLength: metaStoredLength(meta) });
    k += pages;
  }
  return out;
}

/** Every entry's number, expanded from the TOC's runs. */
export function tocNumbers(toc: Pick<TocV3, 'count' | 'runStarts' | 'runLengths'>): Float64Array {
  const out = new Float64Array(toc.count);
  let k = 0;
  for (let r = 0; r < toc.runStarts.length; r++) for (let i = 0; i < toc.runLengths[r]; i++) out[k++] = toc.runStarts[r] + i;
  return out;
}

/** Chunks of one source item to copy: `members` of it (all of them: the item may go whole). */
export interface CopyUnit {
  pack: number;
  item: TocItem;
  members: number[];
  numbers: number[];
  /** members.length × 32 B, in members' order. */
  digests: Uint8Array;
}

/** The units of pack `pack` whose numbers `keep` says to copy. */
export function unitsToCopy(pack: number, toc: TocV3, keep: (n: number, entry: number) => boolean): CopyUnit[] {
  const out: CopyUnit[] = [];
  const numbered = tocNumbers(toc);
  for (const item of tocItems(toc)) {
    const members: number[] = [];
    const numbers: number[] = [];
    for (let m = 0; m < item.pages; m++) {
      const n = numbered[item.entry + m];
      if (keep(n, item.entry + m)) {
        members.push(m);
        numbers.push(n);
      }
    }
    if (members.length === 0) continue;
    // 32 B a member, as a pack writer takes digests: the TOC's 24-byte prefix, then zeros.
    const digests = new Uint8Array(members.length * DIGEST_BYTES);
    members.forEach((m, i) =>
      digests.set(toc.digests.subarray((item.entry + m) * TOC_DIGEST_BYTES, (item.entry + m + 1) * TOC_DIGEST_BYTES), i * DIGEST_BYTES),
    );
    out.push({ pack, item, members, numbers, digests });
  }
  return out;
}

export interface CopyOptions {
  /** Compact: per-page LZ4 chunks go into zstd containers of up to 16 at this level. */
  compactLevel?: number;
  /** gc: the pages of a container that is not copied whole go into new containers at this level. */
  recontainerLevel?: number;
  onChunks?: (done: number) => void;
}

export interface CopiedPack {
  pack: number;
  read: PackTocV3;
  bytes: number;
  payloadBytes: number;
  chunks: number;
}

/**
 * Source items are read through a window of this many bytes per pack: a copy takes a pack's items in
 * offset order, and one pread per item (a page of ~1 KiB) made system time most of compact's CPU.
 */
export const READ_WINDOW_BYTES = 1 << 20;

/** Reads the units' items through one window per source pack, never past the last item it copies. */
class ItemReader {
  private readonly windows = new Map<number, { offset: number; bytes: Buffer }>();
  /** Per source pack, the end of the furthest item to copy (windows stop there: inside the payload). */
  private readonly ends = new Map<number, number>();

  constructor(
    private readonly packs: PackReader,
    units: readonly CopyUnit[],
  ) {
    for (const u of units) this.ends.set(u.pack, Math.max(this.ends.get(u.pack) ?? 0, u.item.offset + u.item.storedLength));
  }

  async read(pack: number, offset: number, length: number): Promise<Uint8Array> {
    const w = this.windows.get(pack);
    if (w && offset >= w.offset && offset + length <= w.offset + w.bytes.length)
      return w.bytes.subarray(offset - w.offset, offset - w.offset + length);
    const bytes = await this.packs.read(pack, offset, Math.max(length, Math.min(READ_WINDOW_BYTES, this.ends.get(pack)! - offset)));
    this.windows.set(pack, { offset, bytes });
    return bytes.subarray(0, length);
  }
}

/** One page to write singly or into a new container. */
interface Single {
  number: number;
  digest: Uint8Array;
  /** Stored form (as it was, or re-encoded from a split container). */
  payload: Uint8Array;
  codec: number;
  page: Uint8Array;
  /** Split out of a container. */
  fromContainer: boolean;
}

/**
 * Writes `units` into new pack `packId` (temp file, fsync, rename into packs/, fsync packs/): durable,
 * not indexed. A chunk that does not verify throws CorruptError and leaves no file.
 */
export async function copyNumbered(
  store: NumberedStore,
  packId: number,
  units: readonly CopyUnit[],
  options: CopyOptions = {},
): Promise<CopiedPack> {
  const all = Float64Array.from(units.flatMap((u) => u.numbers)).sort();
  const whole = (u: CopyUnit) =>
    u.item.codec === CONTAINER_CODEC &&
    u.members.length === u.item.pages &&
    upperBound(all, u.numbers[u.numbers.length - 1]) - upperBound(all, u.numbers[0] - 1) === u.item.pages;
  // Whole containers keep their place; every other chunk is a single (sorted in with them).
  type Step = { first: number; unit: CopyUnit; member?: number };
  const steps: Step[] = [];
  for (const u of units) {
    if (whole(u)) steps.push({ first: u.numbers[0], unit: u });
    else u.members.forEach((_, i) => steps.push({ first: u.numbers[i], unit: u, member: i }));
  }
  steps.sort((a, b) => a.first - b.first);
  const p = storePaths(store.dir);
  const pack = new PackFile(packId, p.tmp, new BatchPool(1), PACK_VERSION_PREFIXED);
  const builder = new NumberedContainers(pack, options.compactLevel ?? options.recontainerLevel, options.compactLevel === undefined);
  const frame = { key: '', pages: new Uint8Array(MAX_CONTAINER_PAGES * PAGE_SIZE), count: 0 };
  let done = 0;
  let flushedAt = pack.size;
  const items = new ItemReader(store.packs, units);
  try {
    for (const s of steps) {
      const u = s.unit;
      const payload = await items.read(u.pack, u.item.offset, u.item.storedLength);
      const where = `pack ${packFileName(u.pack)} at offset ${u.item.offset}`;
      if (s.member === undefined) {
        // A whole container: every page verified, the frame copied as stored.
        const count = decodeFrame(payload, frame, `${u.pack}:${u.item.offset}`, where);
        if (count !== u.item.pages) throw new CorruptError(`container in ${where} holds ${count} pages, its TOC says ${u.item.pages}`);
        for (let m = 0; m < count; m++) verify(frame.pages.subarray(m * PAGE_SIZE, (m + 1) * PAGE_SIZE), u.digests, m, u.numbers[m], where);
        await builder.flush();
        pack.appendContainer(u.digests, u.item.pages, payload, u.numbers);
        done += count;
      } else {
        const single = singleOf(u, s.member, payload, frame, where);
        await builder.add(single);
        done++;
      }
      if (pack.size - flushedAt >= WRITE_BATCH_BYTES) {
        await pack.written(); // bounded memory: what was read reaches the file before more is read
        flushedAt = pack.size;
        options.onChunks?.(done);
      }
    }
    await builder.flush();
    options.onChunks?.(done);
    const { sealed } = await pack.seal(p.packs, () => undefined);
    const read = await store.packs.readTocV3(packId);
    return { pack: packId, read, bytes: sealed.record.bytes, payloadBytes: sealed.record.payloadBytes, chunks: sealed.record.chunks };
  } catch (err) {
    await pack.discard(p.packs);
    await store.packs.evict(packId);
    throw fromSystemError(err, `writing pack ${packFileName(packId)}`);
  }
}

function decodeFrame(payload: Uint8Array, frame: { key: string; pages: Uint8Array; count: number }, key: string, where: string): number {
  if (frame.key !== key) {
    frame.key = '';
    try {
      frame.count = decodeContainer(payload, frame.pages);
    } catch {
      throw new CorruptError(`container in ${where} does not decode; run 'vnstore check --read-data'`);
    }
    frame.key = key;
  }
  return frame.count;
}

function verify(page: Uint8Array, digests: Uint8Array, i: number, number: number, where: string): void {
  if (!tocDigestsEqual(hashPage(page), 0, digests, i * DIGEST_BYTES)) {
    throw new CorruptError(`chunk ${number} in ${where} does not match its digest; run 'vnstore check --read-data'`);
  }
}

/** Member `i` of unit `u`, decoded and verified; its stored form (a container's page re-encoded as a page). */
function singleOf(
  u: CopyUnit,
  i: number,
  payload: Uint8Array,
  frame: { key: string; pages: Uint8Array; count: number },
  where: string,
): Single {
  const digest = u.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
  let page: Uint8Array;
  if (u.item.codec === CONTAINER_CODEC) {
    const count = decodeFrame(payload, frame, `${u.pack}:${u.item.offset}`, where);
    if (u.members[i] >= count) throw new CorruptError(`container in ${where} holds ${count} pages, not page ${u.members[i]}`);
    page = frame.pages.slice(u.members[i] * PAGE_SIZE, (u.members[i] + 1) * PAGE_SIZE);
  } else {
    page = new Uint8Array(PAGE_SIZE);
    try {
      getCodec().decodePage(payload, u.item.codec as ChunkCodec, page, 0);
    } catch {
      throw new CorruptError(`chunk ${u.numbers[i]} in ${where} does not decode; run 'vnstore check --read-data'`);
    }
  }
  verify(page, u.digests, i, u.numbers[i], where);
  if (u.item.codec !== CONTAINER_CODEC) return { number: u.numbers[i], digest, payload, codec: u.item.codec, page, fromContainer: false };
  const z = getCodec().compressPages(page, [0]);
  const stored = Uint8Array.from(z.payload.subarray(0, z.lengths[0]));
  return { number: u.numbers[i], digest, payload: stored, codec: z.codecs[0], page, fromContainer: true };
}

/**
 * Singles on their way into the pack: written as they come, or LZ4 pages (compact: all; gc: those
 * split out of a container) gathered into zstd containers of up to 16 consecutive entries; a
 * container zstd does not make smaller than its
 * pages stored singly is written as those singles. A raw page (random-like: zstd gains nothing on it)
 * ends the container being gathered, since a container's entries must be consecutive in number order.
 */
class NumberedContainers {
  private held: Single[] = [];
  private readonly zstd = getZstd();

  constructor(
    private readonly pack: PackFile,
    private readonly level: number | undefined,
    private readonly splitOnly: boolean,
  ) {}

  async add(s: Single): Promise<void> {
    if (this.level === undefined || !this.zstd.canCompress || s.codec === ChunkCodec.Raw || (this.splitOnly && !s.fromContainer)) {
      await this.flush();
      this.pack.append(s.digest, s.payload, s.codec, s.number);
      return;
    }
    this.held.push(s);
    if (this.held.length === MAX_CONTAINER_PAGES) await this.flush();
  }

  async flush(): Promise<void> {
    const held = this.held;
    this.held = [];
    if (held.length === 0) return;
    const pages = new Uint8Array(held.length * PAGE_SIZE);
    held.forEach((s, i) => pages.set(s.page, i * PAGE_SIZE));
    const frames = held.length > 1 ? await compressContainers(pages, [held.length], this.level!) : undefined;
    const frame = frames?.payload.subarray(0, frames.lengths[0]);
    const singleBytes = held.reduce((n, s) => n + s.payload.length, 0);
    if (frame && frame.length <= 0xffff && frame.length < singleBytes) {
      const digests = new Uint8Array(held.length * DIGEST_BYTES);
      held.forEach((s, i) => digests.set(s.digest, i * DIGEST_BYTES));
      this.pack.appendContainer(
        digests,
        held.length,
        frame,
        held.map((s) => s.number),
      );
    } else {
      for (const s of held) this.pack.append(s.digest, s.payload, s.codec, s.number);
    }
  }
}
