/**
 * The chunk index of an open format-3 store (docs/FORMAT.md, "Store format 3"): the NumberIndex built
 * from the packs' tables of contents, where each pack's digest column lies in its file, and the number
 * allocator. The one owner of those three: the pack writer adds the packs it seals (addSealed),
 * maintenance removes and adds packs through removePack/addSealed, and lookups confirm a fingerprint
 * hit against the 24-byte digest prefix of the TOC entry it names (never LevelDB, which keeps the catalog only).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { TOC_DIGEST_BYTES, tocDigestsEqual, type TocV3 } from '../format/pack-v3.js';
import { PageKind, DIGEST_BYTES, PageTable } from '../format/pages.js';
import { NumberedPages } from '../format/manifest-v2.js';
import type { ChunkTable } from '../index/chunk-table.js';
import { NumberIndex, type NumberedLocation } from '../index/number-index.js';
import { CorruptError } from '../util/errors.js';
import { hex } from '../chunk/hash.js';
import type { NumberAllocator } from './number-allocator.js';
import type { PackReader } from './pack-reader.js';
import { digestColumnOf, readDigestPrefixes, type DigestColumn } from './number-load.js';

/** A digest found in a sealed pack: its number and where it is. */
export interface FoundChunk extends NumberedLocation {
  number: number;
}

/** Confirmation reads of one pack's digest column cover at most this many entries in one read. */
const MAX_SPAN_ENTRIES = 4096;

/**
 * Digest columns kept in memory, at most this many bytes (24 B a chunk: 5.6 Mi chunks, 21 GiB of
 * distinct pages). A hit in a kept column is confirmed without a read; beyond the budget, packs' columns
 * are read from their TOCs per span of entries, as before. docs/DESIGN.md, "Memory".
 */
export const KEPT_DIGEST_BYTES = 128 * 1024 * 1024;

export interface NumberedChunksOptions {
  /** Whether the index's fingerprint table holds every indexed digest yet (see ensureDigests); default true. */
  digestsLoaded?: boolean;
  /** Digest columns the caller already read (loadNumberIndex's `kept`), by pack. */
  kept?: Map<number, Uint8Array>;
  /** The budget of kept columns in bytes (KEPT_DIGEST_BYTES). */
  keepBytes?: number;
}

/** A sealed pack's TOC read and checked, and the clashing digests it needs: ready to join in one turn. */
interface PreparedJoin {
  pack: number;
  toc: TocV3;
  tocOffset: number;
  others: Map<string, Uint8Array>;
}

/**
 * A read of pack `pack`'s column failed: nothing to read when gc removed the pack meanwhile (its
 * chunks are in a copy that is indexed, or were dead); anything else is an error.
 */
function orGone(chunks: NumberedChunks, pack: number): (err: unknown) => undefined {
  return (err) => {
    if (chunks.index.hasPack(pack)) throw err;
    return undefined;
  };
}

/** Numbers found for a batch of digests: -1 where absent; pack and entry where found. */
interface Resolved {
  numbers: Float64Array;
  packs: Int32Array;
  entries: Int32Array;
}

export class NumberedChunks {
  private digestsLoaded: boolean;
  /** Each pack's digest column, for the packs that fit the budget (the rest are read on demand). */
  private readonly kept: Map<number, Uint8Array>;
  private keptBytes = 0;
  private readonly keepBytes: number;

  constructor(
    readonly index: NumberIndex,
    /** Where each indexed pack's digest column lies in its file (DigestColumn: offset and stride). */
    readonly digestColumns: Map<number, DigestColumn>,
    readonly allocator: NumberAllocator,
    private readonly packs: PackReader,
    options: NumberedChunksOptions = {},
  ) {
    this.digestsLoaded = options.digestsLoaded ?? true;
    this.keepBytes = options.keepBytes ?? KEPT_DIGEST_BYTES;
    this.kept = new Map();
    for (const [pack, column] of options.kept ?? []) if (digestColumns.has(pack)) this.keep(pack, column);
  }

  private loadingDigests: Promise<void> | undefined;

  /**
   * Fills the fingerprint table from the indexed packs' digest columns, once (an open loads numbers
   * and locations only: a one-shot restore locates by number and never needs digests; a session,
   * an exact lookup or a pack joining the index do). Packs that join while the columns are read join
   * without digests (join), so the load takes them too: it ends, in one turn, when it has read every
   * indexed pack's column, then fills the table (sized once for all of them).
   */
  ensureDigests(): Promise<void> {
    if (this.digestsLoaded) return Promise.resolve();
    this.loadingDigests ??= (async () => {
      const columns = new Map<number, Uint8Array>();
      for (;;) {
        const missing = this.index.packIds.filter((p) => !columns.has(p)).sort((a, b) => a - b);
        if (missing.length === 0) break;
        for (const pack of missing) {
          // A pack gc removed while earlier columns were read is not read (orGone).
          const column = this.kept.get(pack) ?? (await this.readColumn(pack, 0, this.index.packCount(pack)).catch(orGone(this, pack)));
          if (column) columns.set(pack, column);
        }
      }
      const packs = this.index.packIds.sort((a, b) => a - b);
      this.table.reserve(packs.reduce((n, p) => n + this.index.packCount(p), 0));
      const digestOf = (p: number, e: number) => columns.get(p)!.subarray(e * TOC_DIGEST_BYTES, (e + 1) * TOC_DIGEST_BYTES);
      for (const pack of packs) this.index.addDigests(pack, columns.get(pack)!, digestOf);
      this.digestsLoaded = true;
    })();
    return this.loadingDigests;
  }

  /** The digest → location hints (shared with the page workers): the index's fingerprint table. */
  get table(): ChunkTable {
    return this.index.table;
  }

  /** Bytes of digest columns kept in memory (at most the budget). */
  get keptDigestBytes(): number {
    return this.keptBytes;
  }

  /** Entry `entry`'s digest prefix, read from its pack's TOC. */
  async readDigest(pack: number, entry: number): Promise<Uint8Array> {
    return this.keptDigest(pack, entry) ?? (await this.readColumn(pack, entry, 1));
  }

  /** Entry `entry`'s digest prefix when its pack's column is kept in memory. */
  private keptDigest(pack: number, entry: number): Uint8Array | undefined {
    return this.kept.get(pack)?.subarray(entry * TOC_DIGEST_BYTES, (entry + 1) * TOC_DIGEST_BYTES);
  }

  /**
   * A pack sealed under its final name (by the pack writer, or by gc or compact with numbers they
   * chose) joins the index: its TOC is read back and checked, its chunks become findable by number
   * and by digest. Refuses a pack whose numbers another pack holds.
   */
  async addSealed(pack: number): Promise<void> {
    this.join(await this.prepareJoin(pack));
  }

  /**
   * gc's, compact's and repair's swap, after their synced `d` batch: the copies' TOCs are read first,
   * then, in one turn of the event loop, the originals leave the index (it refuses overlapping
   * numbers) and the copies join it. A lookup or a locate sees the originals or the copies, never a
   * moment in which a copied chunk is in no indexed pack (a commit numbering its pages, a restore or
   * a session's parent locating them would find it absent).
   */
  async replacePacks(old: readonly { pack: number; digests: Uint8Array }[], added: readonly number[]): Promise<void> {
    const joins: PreparedJoin[] = [];
    for (const pack of added) joins.push(await this.prepareJoin(pack));
    for (const o of old) this.removePack(o.pack, o.digests);
    for (const j of joins) this.join(j);
  }

  /** The asynchronous half of a pack joining the index: its TOC, and the digests its fingerprints clash with. */
  private async prepareJoin(pack: number): Promise<PreparedJoin> {
    const { toc, tocOffset } = await this.packs.readTocV3(pack);
    // Fingerprints this pack shares with indexed chunks: the clash map needs those chunks' digests.
    // Read now where they are not kept in memory (join reads any it still lacks then, synchronously).
    const others = new Map<string, Uint8Array>();
    for (let k = 0; this.digestsLoaded && k < toc.count; k++) {
      this.table.prefetchAhead(toc.digests, TOC_DIGEST_BYTES, toc.count, k);
      const hit = this.otherChunkAt(toc.digests, k, pack);
      if (!hit || this.keptDigest(hit.pack, hit.entry) || others.has(`${hit.pack}:${hit.entry}`)) continue;
      const digest = await this.readDigest(hit.pack, hit.entry).catch(orGone(this, hit.pack));
      if (digest) others.set(`${hit.pack}:${hit.entry}`, digest);
    }
    return { pack, toc, tocOffset, others };
  }

  /**
   * The synchronous half: the pack enters the index in this turn. With digests once the table is
   * loaded; before that without them, and a load under way takes them (ensureDigests).
   */
  private join({ pack, toc, tocOffset, others }: PreparedJoin): void {
    const digestOf = (p: number, e: number): Uint8Array =>
      p === pack
        ? toc.digests.subarray(e * TOC_DIGEST_BYTES, (e + 1) * TOC_DIGEST_BYTES)
        : (this.keptDigest(p, e) ?? others.get(`${p}:${e}`) ?? this.readDigestNow(p, e));
    const overlaps = this.index.addPack(pack, toc, digestOf, this.digestsLoaded);
    if (overlaps.length > 0) throw new CorruptError(`pack ${pack}: its chunk numbers are already held by pack(s) ${overlaps.join(', ')}`);
    this.digestColumns.set(pack, digestColumnOf(tocOffset, toc));
    this.keep(pack, toc.digests.subarray(0, toc.count * TOC_DIGEST_BYTES));
  }

  /** The indexed chunk of another pack that entry k's fingerprint names, if any. */
  private otherChunkAt(digests: Uint8Array, k: number, pack: number): { pack: number; entry: number } | undefined {
    const slot = this.table.slotOf(digests, k * TOC_DIGEST_BYTES);
    if (slot < 0 || this.table.slotPack(slot) === pack) return undefined;
    const hit = this.table.get(digests, k * TOC_DIGEST_BYTES)!;
    const entry = this.index.entryAt(hit.location.pack, hit.location);
    return entry === undefined ? undefined : { pack: hit.location.pack, entry };
  }

  /**
   * One digest read synchronously: only for a join whose fingerprint clashes with a chunk of a pack
   * that is beyond the kept budget and joined while the join was prepared (a fingerprint clash is
   * already rare: 2^-32 a pair of stored digests).
   */
  private readDigestNow(pack: number, entry: number): Uint8Array {
    const column = this.digestColumns.get(pack);
    if (column === undefined) throw new RangeError(`pack ${pack} is not indexed`);
    const fd = openSync(this.packs.packPath(pack), 'r');
    try {
      // The prefix only, whichever the pack's version (a version-3 column is 32 B an entry).
      const digest = Buffer.alloc(TOC_DIGEST_BYTES);
      if (readSync(fd, digest, 0, TOC_DIGEST_BYTES, column.at + column.stride * entry) !== TOC_DIGEST_BYTES)
        throw new CorruptError(`pack ${pack}: short read of its digest column`);
      return digest;
    } finally {
      closeSync(fd);
    }
  }

  /** Takes a pack out of the index (`digests`: its digest column, as its TOC gives it). */
  removePack(pack: number, digests: Uint8Array): void {
    this.index.removePack(pack, digests);
    this.digestColumns.delete(pack);
    const column = this.kept.get(pack);
    if (column) this.keptBytes -= column.length;
    this.kept.delete(pack);
  }

  /** Where chunk `n` is (undefined when no indexed pack holds it). */
  locate(n: number): NumberedLocation | undefined {
    return this.index.locate(n);
  }

  /**
   * Exact lookups in the sealed packs: each digest's number and location, or undefined when no
   * indexed pack holds it. A fingerprint hit is confirmed against the digest in its pack's TOC
   * (kept in memory, or one read per pack and span of entries, not a read a lookup).
   */
  async find(digests: readonly Uint8Array[]): Promise<(FoundChunk | undefined)[]> {
    const r = await this.resolve(
      digests.length,
      (i) => digests[i],
      () => 0,
    );
    const out: (FoundChunk | undefined)[] = new Array(digests.length);
    for (let i = 0; i < digests.length; i++) {
      if (r.numbers[i] < 0) continue;
      out[i] = { pack: r.packs[i], entry: r.entries[i], location: this.index.locationAt(r.packs[i], r.entries[i]), number: r.numbers[i] };
    }
    return out;
  }

  /**
   * The core of every exact lookup: digest i at `bufOf(i)[atOf(i)..]`, its first 24 bytes compared
   * with the TOC's prefixes. No object per digest: a
   * commit resolves every page of a snapshot that its parent does not name.
   */
  private async resolve(count: number, bufOf: (i: number) => Uint8Array, atOf: (i: number) => number): Promise<Resolved> {
    await this.ensureDigests();
    const r: Resolved = { numbers: new Float64Array(count).fill(-1), packs: new Int32Array(count), entries: new Int32Array(count) };
    const table = this.table;
    const index = this.index;
    // Hits whose pack's column is not kept: confirmed after the loop, one read per span.
    const toConfirm: { i: number; pack: number; entry: number; number: number }[] = [];
    const found = (i: number, pack: number, entry: number) => {
      r.numbers[i] = index.numberOf(pack, entry);
      r.packs[i] = pack;
      r.entries[i] = entry;
    };
    for (let i = 0; i < count; i++) {
      const buf = bufOf(i);
      const at = atOf(i);
      const slot = table.slotOf(buf, at);
      let entry = index.candidateEntry(slot);
      if (entry === -1) continue;
      let pack: number;
      if (entry === -2) {
        const n = index.clashNumber(buf, at);
        if (n !== undefined) {
          const loc = index.locate(n);
          if (loc) found(i, loc.pack, loc.entry);
          continue;
        }
        // An ambiguous slot whose first chunk is not (yet) in the clash map: compare with that chunk.
        const hit = table.get(buf, at)!;
        const e = index.entryAt(hit.location.pack, hit.location);
        if (e === undefined) continue;
        pack = hit.location.pack;
        entry = e;
      } else pack = table.slotPack(slot);
      const column = this.kept.get(pack);
      if (column === undefined) toConfirm.push({ i, pack, entry, number: index.numberOf(pack, entry) });
      else if (tocDigestsEqual(column, TOC_DIGEST_BYTES * entry, buf, at)) found(i, pack, entry);
    }
    toConfirm.sort((a, b) => a.pack - b.pack || a.entry - b.entry);
    const gone: number[] = [];
    for (let a = 0; a < toConfirm.length;) {
      const first = toConfirm[a];
      let b = a + 1;
      while (b < toConfirm.length && toConfirm[b].pack === first.pack && toConfirm[b].entry - first.entry < MAX_SPAN_ENTRIES) b++;
      const last = toConfirm[b - 1];
      const column = await this.readColumn(first.pack, first.entry, last.entry - first.entry + 1).catch(orGone(this, first.pack));
      if (!column) {
        // gc swapped the pack out during an earlier read: its chunks (those it kept) are in the copy.
        for (let c = a; c < b; c++) gone.push(toConfirm[c].i);
        a = b;
        continue;
      }
      for (let c = a; c < b; c++) {
        const t = toConfirm[c];
        if (!tocDigestsEqual(column, TOC_DIGEST_BYTES * (t.entry - first.entry), bufOf(t.i), atOf(t.i))) continue;
        // Located again: a gc or compact may have moved the chunk (same number) during the read.
        const at = index.locate(t.number);
        if (at) found(t.i, at.pack, at.entry);
      }
      a = b;
    }
    if (gone.length > 0) {
      const again = await this.resolve(
        gone.length,
        (k) => bufOf(gone[k]),
        (k) => atOf(gone[k]),
      );
      gone.forEach((i, k) => {
        r.numbers[i] = again.numbers[k];
        r.packs[i] = again.packs[k];
        r.entries[i] = again.entries[k];
      });
    }
    return r;
  }

  /**
   * The numbers of a page table's chunks (every page Zero or Digest), for a manifest: a page whose
   * digest equals the parent's at its index takes the parent's number without a lookup; the others
   * are found exactly. Every chunk must be in a sealed, indexed pack (a commit flushed the writer).
   * `fromParent`: runs [start, end) (pairs, in page order) whose pages the caller copied from the
   * parent at the same index (each Zero, or Digest where the parent's is): they take the parent's
   * numbers without a comparison (an empty snapshot of 256 MiB compared 65,536 digests; issue 12).
   * `hints[p]`: a number the caller believes page p's chunk has (it stored it), or -1: taken when
   * the chunk of that number is indexed and its digest, kept in memory, is the page's; anything else
   * is looked up as without a hint. (A first snapshot's every page is a hint: a lookup each cost
   * ~1 µs of a commit, on one thread.)
   */
  async numberPages(
    pages: PageTable,
    parent: { pages: PageTable; numbers: NumberedPages } | undefined,
    what: string,
    fromParent: readonly number[] = [],
    hints: Float64Array = new Float64Array(0),
  ): Promise<NumberedPages> {
    const out = new NumberedPages(pages.pageCount);
    const ask: number[] = [];
    if (fromParent.length > 0 && !parent) throw new RangeError(`${what}: pages taken from a parent, but there is none`);
    let run = 0;
    for (let p = 0; p < pages.pageCount; p++) {
      if (run < fromParent.length && p === fromParent[run]) {
        const end = fromParent[run + 1];
        if (!(end > p && end <= Math.min(pages.pageCount, parent!.pages.pageCount)))
          throw new RangeError(`${what}: bad parent run at page ${p}`);
        for (let k = p; k < end; k++) {
          if (pages.kinds[k] === PageKind.Zero) out.setZero(k);
          else if (pages.kinds[k] === PageKind.Digest && parent!.numbers.kinds[k] === PageKind.Digest)
            out.setNumber(k, parent!.numbers.numbers[k]);
          else throw new RangeError(`${what}: page ${k} is not the parent's`);
        }
        run += 2;
        p = end - 1;
        continue;
      }
      const kind = pages.kinds[p];
      if (kind === PageKind.Zero) out.setZero(p);
      else if (kind !== PageKind.Digest) throw new RangeError(`${what}: page ${p} has no content`);
      else if (
        parent &&
        p < parent.pages.pageCount &&
        parent.pages.kinds[p] === PageKind.Digest &&
        tocDigestsEqual(parent.pages.digests, p * DIGEST_BYTES, pages.digests, p * DIGEST_BYTES)
      )
        out.setNumber(p, parent.numbers.numbers[p]);
      else if (p < hints.length && hints[p] >= 0 && this.holdsAt(hints[p], pages.digests, p * DIGEST_BYTES)) out.setNumber(p, hints[p]);
      else ask.push(p);
    }
    const found = await this.resolve(
      ask.length,
      () => pages.digests,
      (k) => ask[k] * DIGEST_BYTES,
    );
    for (let k = 0; k < ask.length; k++) {
      if (found.numbers[k] < 0)
        throw new CorruptError(
          `${what}: page ${ask[k]} names chunk ${hex(pages.digestAt(ask[k]))}, which no pack holds; run 'vnstore check'`,
        );
      out.setNumber(ask[k], found.numbers[k]);
    }
    return out;
  }

  /** Whether chunk `n` is indexed and its kept digest prefix is digests[at..]'s (no read, no object). */
  private holdsAt(n: number, digests: Uint8Array, at: number): boolean {
    const run = this.index.runOf(n);
    if (run < 0) return false;
    const column = this.kept.get(this.index.runPack(run));
    return column !== undefined && tocDigestsEqual(column, TOC_DIGEST_BYTES * this.index.runEntry(run, n), digests, at);
  }

  /** Keeps a copy of a pack's digest column while the budget allows. */
  private keep(pack: number, column: Uint8Array): void {
    if (this.kept.has(pack) || this.keptBytes + column.length > this.keepBytes) return;
    this.kept.set(pack, Uint8Array.from(column));
    this.keptBytes += column.length;
  }

  /** Entries [entry, entry + count) of a pack's digest column, 24 B each (read from its TOC). */
  private async readColumn(pack: number, entry: number, count: number): Promise<Uint8Array> {
    const column = this.digestColumns.get(pack);
    if (column === undefined) throw new RangeError(`pack ${pack} is not indexed`);
    return readDigestPrefixes(this.packs, pack, column, entry, count);
  }
}
