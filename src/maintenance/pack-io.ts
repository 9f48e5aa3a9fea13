/**
 * Pack I/O for gc, compact and repair: copy chunks after verifying each against its digest (as stored,
 * or into zstd containers), write a new pack in the rule's order, remove packs nothing uses.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { CONTAINER_CODEC, MAX_CONTAINER_PAGES, PACK_VERSION, PACK_VERSION_CONTAINERS, packFileName } from '../format/pack.js';
import { ChunkCodec, getCodec } from '../chunk/codec.js';
import { compressContainers, MAX_CONTAINER_BYTES } from '../chunk/container.js';
import { getZstd } from '../chunk/zstd.js';
import { DEFAULT_COMPACT_LEVEL } from './compact-plan.js';
import { decodeOne } from '../store/pack-reader.js';
import { BatchPool, PackFile, type SealedPack } from '../store/pack-file.js';
import { Store } from '../store/store.js';
import { fsyncDir } from '../util/durable.js';
import { CorruptError, fromSystemError } from '../util/errors.js';
import type { ChunkLocation } from '../index/chunk-table.js';

export interface StoredChunk {
  digest: Uint8Array;
  /** The stored bytes: a per-page payload, or a container's whole frame. */
  payload: Uint8Array;
  codec: number;
  /** For a container's page (codec 2): which page, of how many. */
  member?: number;
  pages?: number;
}

const VERIFY_BATCH = 1024;

/**
 * Decodes chunks and checks each against its digest, in the page workers: chunk i becomes page i of
 * `out`; `bad` lists the chunks that do not decode or do not match. Pages of one container that are
 * consecutive here share one copy of its frame and decode it once.
 */
async function decodeVerified(store: Store, part: readonly StoredChunk[]): Promise<{ out: Uint8Array; bad: number[] }> {
  const offsets = new Uint32Array(part.length);
  const lengths = new Uint32Array(part.length);
  const codecs = new Uint8Array(part.length);
  const digests = new Uint8Array(part.length * DIGEST_BYTES);
  let members: Uint8Array | undefined;
  let total = 0;
  part.forEach((c, i) => {
    if (!(i > 0 && sameBytes(part[i - 1].payload, c.payload))) total += c.payload.length;
  });
  const payload = new Uint8Array(total);
  let pos = 0;
  part.forEach((c, i) => {
    if (i > 0 && sameBytes(part[i - 1].payload, c.payload)) offsets[i] = offsets[i - 1];
    else {
      payload.set(c.payload, pos);
      offsets[i] = pos;
      pos += c.payload.length;
    }
    lengths[i] = c.payload.length;
    codecs[i] = c.codec;
    if (c.codec === CONTAINER_CODEC) (members ??= new Uint8Array(part.length))[i] = c.member ?? 0;
    digests.set(c.digest, i * DIGEST_BYTES);
  });
  const slots = Uint32Array.from(part.keys());
  return store.pool.decode({ kind: 'decode', payload, offsets, lengths, codecs, members, digests, slots, windowPages: part.length });
}

/** Whether two views are the same bytes of the same buffer (a container's frame, named twice). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.buffer === b.buffer && a.byteOffset === b.byteOffset && a.length === b.length;
}

/**
 * Decodes every chunk and checks it against its digest (in the page workers); returns the indices of
 * chunks that do not decode or do not match.
 */
export async function verifyChunks(store: Store, chunks: readonly StoredChunk[]): Promise<number[]> {
  const bad: number[] = [];
  for (let start = 0; start < chunks.length; start += VERIFY_BATCH) {
    const r = await decodeVerified(store, chunks.slice(start, start + VERIFY_BATCH));
    for (const i of r.bad) bad.push(start + i);
  }
  return bad;
}

/** A page's stored form outside any container: a container's page is re-encoded by the page codec. */
function perPage(c: StoredChunk, page?: Uint8Array): { payload: Uint8Array; codec: number } {
  if (c.codec !== CONTAINER_CODEC) return c;
  const bytes = page ?? decodeOne(c.payload, c.codec, c.member ?? 0, new Uint8Array(PAGE_SIZE));
  const z = getCodec().compressPages(bytes, [0]);
  return { payload: Buffer.from(z.payload.subarray(0, z.lengths[0])), codec: z.codecs[0] };
}

/**
 * Writes `chunks` as a new sealed pack through the one pack writer (PackFile): temp file, fsync,
 * rename into packs/, fsync packs/. The pack is durable but not indexed when this returns (the
 * caller's index batch does that; a crash before it leaves a pack that recovery indexes, which is
 * harmless: every chunk in it is a valid copy). Pages of containers are written one by one, by the
 * page codec (repair salvages pages, not whole containers).
 */
export async function writePack(store: Store, packId: number, chunks: Iterable<StoredChunk>): Promise<SealedPack> {
  const p = Store.paths(store.dir);
  const pack = new PackFile(packId, p.tmp, new BatchPool(1));
  try {
    for (const c of chunks) {
      const stored = perPage(c);
      pack.append(c.digest, stored.payload, stored.codec);
    }
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

/** Bytes of old packs read (and verified) at once when copying: memory does not follow pack size. */
export const COPY_WINDOW_BYTES = 1024 * 1024;
/** Chunks decoded and verified at once when copying (their pages: 1 MiB). */
const COPY_BATCH_CHUNKS = 256;
/** Containers compressed in one call on the thread pool (4 MiB of pages). */
const CONTAINERS_PER_CALL = 64;

export interface CopyOptions {
  /**
   * Compact: write every LZ4 page into zstd containers at this level, in the order given
   * (first-seen order), not in pack order; raw pages stay raw. Without it, per-page chunks are
   * copied as stored.
   */
  compactLevel?: number;
  /** Reports chunks done (compact's progress). */
  onChunks?: (done: number) => void;
}

/**
 * Copies `chunks` from their packs into one new pack, streaming: read in ranges of at most
 * COPY_WINDOW_BYTES, verified against their digests in the page workers a batch at a time, appended;
 * the pack is sealed (durable, not indexed). Per-page chunks are copied as stored, or with
 * `compactLevel` put into zstd containers; a container all of whose pages are copied is copied whole,
 * and the live pages of a container that lost some are put into new containers (per page when this
 * machine cannot compress zstd). A chunk that does not verify throws CorruptError and leaves no file.
 */
export async function copyChunks<T extends PlacedChunk>(
  store: Store,
  packId: number,
  chunks: readonly T[],
  options: CopyOptions = {},
): Promise<{ sealed: SealedPack }> {
  const compact = options.compactLevel !== undefined;
  const order = compact ? [...chunks] : [...chunks].sort((a, b) => a.loc.pack - b.loc.pack || a.loc.offset - b.loc.offset);
  const containers = new Map<string, T[]>();
  for (const c of order) {
    if (c.loc.codec !== CONTAINER_CODEC) continue;
    const key = `${c.loc.pack}:${c.loc.offset}`;
    let g = containers.get(key);
    if (!g) containers.set(key, (g = []));
    g.push(c);
  }
  const whole = (g: T[]) => g.length === g[0].loc.pages && new Set(g.map((c) => c.loc.member)).size === g.length;
  const hasContainers = compact || containers.size > 0;
  const p = Store.paths(store.dir);
  const pack = new PackFile(packId, p.tmp, new BatchPool(1), hasContainers ? PACK_VERSION_CONTAINERS : PACK_VERSION);
  // gc re-containers a split container's live pages at compact's default level, not a lower one.
  const builder = new ContainerBuilder(pack, options.compactLevel ?? DEFAULT_COMPACT_LEVEL);
  try {
    // Batches in the given order; a whole container's pages join the batch of its first page.
    const taken = new Set<T>();
    let done = 0;
    for (let i = 0; i < order.length;) {
      const batch: T[] = [];
      while (i < order.length && batch.length < COPY_BATCH_CHUNKS) {
        const c = order[i++];
        if (taken.has(c)) continue;
        const g = c.loc.codec === CONTAINER_CODEC ? containers.get(`${c.loc.pack}:${c.loc.offset}`)! : undefined;
        const members = g && whole(g) ? [...g].sort((a, b) => a.loc.member! - b.loc.member!) : [c];
        for (const m of members) {
          taken.add(m);
          batch.push(m);
        }
      }
      const part = await readStored(store, batch);
      const { out, bad } = await decodeVerified(store, part);
      if (bad.length > 0) {
        const e = batch[bad[0]];
        throw new CorruptError(
          `chunk ${Buffer.from(e.digest).toString('hex')} in pack ${packFileName(e.loc.pack)} at offset ${e.loc.offset} is corrupt (${bad.length} bad chunk(s)); run 'vnstore check --read-data'`,
        );
      }
      for (let k = 0; k < batch.length; k++) {
        const c = batch[k];
        const page = out.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE);
        if (c.loc.codec === CONTAINER_CODEC && whole(containers.get(`${c.loc.pack}:${c.loc.offset}`)!)) {
          const n = c.loc.pages!;
          const digests = new Uint8Array(n * DIGEST_BYTES);
          for (let m = 0; m < n; m++) digests.set(batch[k + m].digest, m * DIGEST_BYTES);
          await builder.flush(false);
          pack.appendContainer(digests, n, part[k].payload);
          k += n - 1;
        } else if (c.loc.codec !== CONTAINER_CODEC && (!compact || c.loc.codec === ChunkCodec.Raw)) {
          // Raw pages are the ones LZ4 could not shrink: random-like, zstd gains nothing on them (and
          // its literal tables grow a container mixing them with text), so they stay as they are.
          await builder.flush(false);
          pack.append(c.digest, part[k].payload, c.loc.codec);
        } else {
          await builder.add(c.digest, page, part[k]);
        }
      }
      // Wait for the batch's bytes to reach the file before reading the next: bounded memory.
      await pack.written();
      done += batch.length;
      options.onChunks?.(done);
    }
    await builder.flush(true);
    return { sealed: (await pack.seal(p.packs, () => undefined)).sealed };
  } catch (err) {
    await pack.discard(p.packs);
    throw fromSystemError(err, `writing pack ${packFileName(packId)}`);
  }
}

/** The stored bytes of `chunks`, read in coalesced ranges (a container's frame once). */
async function readStored(store: Store, chunks: readonly PlacedChunk[]): Promise<StoredChunk[]> {
  const byLoc = [...chunks.keys()].sort((a, b) => chunks[a].loc.pack - chunks[b].loc.pack || chunks[a].loc.offset - chunks[b].loc.offset);
  const out: StoredChunk[] = new Array(chunks.length);
  for (let a = 0; a < byLoc.length;) {
    const first = chunks[byLoc[a]].loc;
    let end = first.offset + first.storedLength;
    let b = a + 1;
    while (b < byLoc.length) {
      const l = chunks[byLoc[b]].loc;
      if (l.pack !== first.pack || l.offset > end + 16 * 1024 || l.offset + l.storedLength - first.offset > COPY_WINDOW_BYTES) break;
      end = Math.max(end, l.offset + l.storedLength);
      b++;
    }
    const range = await store.packs.read(first.pack, first.offset, end - first.offset);
    for (let k = a; k < b; k++) {
      const c = chunks[byLoc[k]];
      const at = c.loc.offset - first.offset;
      out[byLoc[k]] = {
        digest: c.digest,
        payload: range.subarray(at, at + c.loc.storedLength),
        codec: c.loc.codec,
        member: c.loc.member,
        pages: c.loc.pages,
      };
    }
    a = b;
  }
  return out;
}

/**
 * Pages on their way into zstd containers of 16, in the order added; each container is compressed on
 * the thread pool and appended, or, when zstd does not make it smaller than its pages stored one by
 * one (or cannot compress here), its pages are appended one by one.
 */
class ContainerBuilder {
  // Allocated on first use: gc copying per-page chunks only never needs them.
  private pages = new Uint8Array(0);
  private digests = new Uint8Array(0);
  private stored: StoredChunk[] = [];
  private readonly zstd = getZstd();

  constructor(
    private readonly pack: PackFile,
    private readonly level: number,
  ) {}

  async add(digest: Uint8Array, page: Uint8Array, stored: StoredChunk): Promise<void> {
    const n = this.stored.length;
    if (this.pages.length === 0) {
      this.pages = new Uint8Array(CONTAINERS_PER_CALL * MAX_CONTAINER_BYTES);
      this.digests = new Uint8Array(CONTAINERS_PER_CALL * MAX_CONTAINER_PAGES * DIGEST_BYTES);
    }
    this.pages.set(page, n * PAGE_SIZE);
    this.digests.set(digest, n * DIGEST_BYTES);
    this.stored.push(stored);
    if (this.stored.length === CONTAINERS_PER_CALL * MAX_CONTAINER_PAGES) await this.flush(true);
  }

  /** Writes the full containers held (`all`: the last, partial one too). */
  async flush(all: boolean): Promise<void> {
    const n = this.stored.length;
    const full = Math.floor(n / MAX_CONTAINER_PAGES);
    const sizes: number[] = new Array<number>(full).fill(MAX_CONTAINER_PAGES);
    if (all && n % MAX_CONTAINER_PAGES > 0) sizes.push(n % MAX_CONTAINER_PAGES);
    if (sizes.length === 0) return;
    const frames = this.zstd.canCompress ? await compressContainers(this.pages, sizes, this.level) : undefined;
    let page = 0;
    let frameAt = 0;
    sizes.forEach((size, i) => {
      const frame = frames?.payload.subarray(frameAt, frameAt + frames.lengths[i]);
      frameAt += frames?.lengths[i] ?? 0;
      const singles = this.stored.slice(page, page + size).map((c, m) => perPage(c, this.pageAt(page + m)));
      const singleBytes = singles.reduce((s, c) => s + c.payload.length, 0);
      if (frame && frame.length <= 0xffff && frame.length < singleBytes) {
        this.pack.appendContainer(this.digests.subarray(page * DIGEST_BYTES, (page + size) * DIGEST_BYTES), size, frame);
      } else {
        singles.forEach((c, m) =>
          this.pack.append(this.digests.subarray((page + m) * DIGEST_BYTES, (page + m + 1) * DIGEST_BYTES), c.payload, c.codec),
        );
      }
      page += size;
    });
    // Keep what is not written yet (a partial container) at the front.
    const rest = n - page;
    this.pages.copyWithin(0, page * PAGE_SIZE, n * PAGE_SIZE);
    this.digests.copyWithin(0, page * DIGEST_BYTES, n * DIGEST_BYTES);
    this.stored = this.stored.slice(page);
    if (rest !== this.stored.length) throw new Error('container builder out of step');
  }

  private pageAt(i: number): Uint8Array {
    return this.pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
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
