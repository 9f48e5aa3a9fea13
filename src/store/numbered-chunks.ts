/**
 * The chunk index of an open format-3 store (docs/FORMAT.md, "Store format 3"): the NumberIndex built
 * from the packs' tables of contents, where each pack's digest column lies in its file, and the number
 * allocator. The one owner of those three: the pack writer adds the packs it seals (addSealed),
 * maintenance removes and adds packs through removePack/addSealed, and lookups confirm a fingerprint
 * hit against the 32 bytes of TOC it names (never LevelDB, which keeps the catalog only).
 */
import { PageKind, DIGEST_BYTES, digestsEqual, PageTable } from '../format/pages.js';
import { NumberedPages } from '../format/manifest-v2.js';
import type { ChunkTable } from '../index/chunk-table.js';
import { NumberIndex, type NumberedLocation } from '../index/number-index.js';
import { CorruptError } from '../util/errors.js';
import { hex } from '../chunk/hash.js';
import type { NumberAllocator } from './number-allocator.js';
import type { PackReader } from './pack-reader.js';

/** A digest found in a sealed pack: its number and where it is. */
export interface FoundChunk extends NumberedLocation {
  number: number;
}

/** Confirmation reads of one pack's digest column cover at most this many entries in one read. */
const MAX_SPAN_ENTRIES = 4096;

export class NumberedChunks {
  constructor(
    readonly index: NumberIndex,
    /** File offset of each indexed pack's digest column (entry k's digest at + 32k). */
    readonly digestColumns: Map<number, number>,
    readonly allocator: NumberAllocator,
    private readonly packs: PackReader,
    /** Whether the index's fingerprint table holds every indexed digest yet (see ensureDigests). */
    private digestsLoaded = true,
  ) {}

  private loadingDigests: Promise<void> | undefined;

  /**
   * Fills the fingerprint table from the indexed packs' digest columns, once (an open loads numbers
   * and locations only: a one-shot restore locates by number and never needs digests; a session,
   * an exact lookup or a pack joining the index do). The table is sized once for all of them.
   */
  ensureDigests(): Promise<void> {
    if (this.digestsLoaded) return Promise.resolve();
    this.loadingDigests ??= (async () => {
      const packs = this.index.packIds.sort((a, b) => a - b);
      const columns = new Map<number, Uint8Array>();
      let chunks = 0;
      for (const pack of packs) {
        const count = this.index.packCount(pack);
        columns.set(pack, await this.readColumn(pack, 0, count));
        chunks += count;
      }
      this.table.reserve(chunks);
      const digestOf = (p: number, e: number) => columns.get(p)!.subarray(e * DIGEST_BYTES, (e + 1) * DIGEST_BYTES);
      for (const pack of packs) if (this.index.hasPack(pack)) this.index.addDigests(pack, columns.get(pack)!, digestOf);
      this.digestsLoaded = true;
    })();
    return this.loadingDigests;
  }

  /** The digest → location hints (shared with the page workers): the index's fingerprint table. */
  get table(): ChunkTable {
    return this.index.table;
  }

  /** Entry `entry`'s digest, read from its pack's TOC. */
  readDigest(pack: number, entry: number): Promise<Buffer> {
    return this.readColumn(pack, entry, 1);
  }

  /**
   * A pack sealed under its final name (by the pack writer, or by gc or compact with numbers they
   * chose) joins the index: its TOC is read back and checked, its chunks become findable by number
   * and by digest. Refuses a pack whose numbers another pack holds.
   */
  async addSealed(pack: number): Promise<void> {
    await this.ensureDigests();
    const read = await this.packs.readTocV3(pack);
    const toc = read.toc;
    // Fingerprints this pack shares with indexed chunks: the clash map needs those chunks' digests.
    const others = new Map<string, Uint8Array>();
    for (let k = 0; k < toc.count; k++) {
      const hit = this.table.get(toc.digests, k * DIGEST_BYTES);
      if (!hit || hit.location.pack === pack) continue;
      const entry = this.index.entryAt(hit.location.pack, hit.location);
      if (entry !== undefined && !others.has(`${hit.location.pack}:${entry}`))
        others.set(`${hit.location.pack}:${entry}`, await this.readDigest(hit.location.pack, entry));
    }
    const overlaps = this.index.addPack(pack, toc, (p, e) =>
      p === pack ? toc.digests.subarray(e * DIGEST_BYTES, (e + 1) * DIGEST_BYTES) : others.get(`${p}:${e}`)!,
    );
    if (overlaps.length > 0) throw new CorruptError(`pack ${pack}: its chunk numbers are already held by pack(s) ${overlaps.join(', ')}`);
    this.digestColumns.set(pack, read.tocOffset + toc.digestsAt);
  }

  /** Takes a pack out of the index (`digests`: its digest column, as its TOC gives it). */
  removePack(pack: number, digests: Uint8Array): void {
    this.index.removePack(pack, digests);
    this.digestColumns.delete(pack);
  }

  /**
   * gc's and compact's swap, after their synced `d` batch: the originals leave the index first (it
   * refuses overlapping numbers), then the copies join it.
   */
  async replacePacks(old: readonly { pack: number; digests: Uint8Array }[], added: readonly number[]): Promise<void> {
    for (const o of old) this.removePack(o.pack, o.digests);
    for (const pack of added) await this.addSealed(pack);
  }

  /** Where chunk `n` is (undefined when no indexed pack holds it). */
  locate(n: number): NumberedLocation | undefined {
    return this.index.locate(n);
  }

  /**
   * Exact lookups in the sealed packs: each digest's number and location, or undefined when no
   * indexed pack holds it. A fingerprint hit is confirmed against the digest in its pack's TOC
   * (one read per pack and span of entries, not 32 bytes a lookup).
   */
  async find(digests: readonly Uint8Array[]): Promise<(FoundChunk | undefined)[]> {
    await this.ensureDigests();
    const out: (FoundChunk | undefined)[] = new Array(digests.length);
    const toConfirm: { i: number; pack: number; entry: number; number: number }[] = [];
    for (let i = 0; i < digests.length; i++) {
      const c = this.index.candidate(digests[i]);
      if (c.kind === 'absent') continue;
      if (c.kind === 'confirm') {
        toConfirm.push({ i, pack: c.pack, entry: c.entry, number: c.number });
        continue;
      }
      if (c.number !== undefined) {
        const at = this.index.locate(c.number);
        if (at) out[i] = { ...at, number: c.number };
        continue;
      }
      // An ambiguous slot whose first chunk is not (yet) in the clash map: compare with that chunk.
      const hit = this.table.get(digests[i]);
      const entry = hit ? this.index.entryAt(hit.location.pack, hit.location) : undefined;
      if (hit && entry !== undefined)
        toConfirm.push({ i, pack: hit.location.pack, entry, number: this.index.numberOf(hit.location.pack, entry) });
    }
    toConfirm.sort((a, b) => a.pack - b.pack || a.entry - b.entry);
    for (let a = 0; a < toConfirm.length;) {
      const first = toConfirm[a];
      let b = a + 1;
      while (b < toConfirm.length && toConfirm[b].pack === first.pack && toConfirm[b].entry - first.entry < MAX_SPAN_ENTRIES) b++;
      const last = toConfirm[b - 1];
      const column = await this.readColumn(first.pack, first.entry, last.entry - first.entry + 1);
      for (let c = a; c < b; c++) {
        const t = toConfirm[c];
        if (!digestsEqual(column, DIGEST_BYTES * (t.entry - first.entry), digests[t.i], 0)) continue;
        const at = this.index.locate(t.number);
        if (at) out[t.i] = { ...at, number: t.number };
      }
      a = b;
    }
    return out;
  }

  /**
   * The numbers of a page table's chunks (every page Zero or Digest), for a manifest: a page whose
   * digest equals the parent's at its index takes the parent's number without a lookup; the others
   * are found exactly. Every chunk must be in a sealed, indexed pack (a commit flushed the writer).
   */
  async numberPages(
    pages: PageTable,
    parent: { pages: PageTable; numbers: NumberedPages } | undefined,
    what: string,
  ): Promise<NumberedPages> {
    const out = new NumberedPages(pages.pageCount);
    const ask: number[] = [];
    for (let p = 0; p < pages.pageCount; p++) {
      const kind = pages.kinds[p];
      if (kind === PageKind.Zero) out.setZero(p);
      else if (kind !== PageKind.Digest) throw new RangeError(`${what}: page ${p} has no content`);
      else if (
        parent &&
        p < parent.pages.pageCount &&
        parent.pages.kinds[p] === PageKind.Digest &&
        digestsEqual(parent.pages.digests, p * DIGEST_BYTES, pages.digests, p * DIGEST_BYTES)
      )
        out.setNumber(p, parent.numbers.numbers[p]);
      else ask.push(p);
    }
    const found = await this.find(ask.map((p) => pages.digestAt(p)));
    for (let k = 0; k < ask.length; k++) {
      const f = found[k];
      if (!f)
        throw new CorruptError(
          `${what}: page ${ask[k]} names chunk ${hex(pages.digestAt(ask[k]))}, which no pack holds; run 'vnstore check'`,
        );
      out.setNumber(ask[k], f.number);
    }
    return out;
  }

  private readColumn(pack: number, entry: number, count: number): Promise<Buffer> {
    const column = this.digestColumns.get(pack);
    if (column === undefined) throw new RangeError(`pack ${pack} is not indexed`);
    return this.packs.read(pack, column + DIGEST_BYTES * entry, DIGEST_BYTES * count);
  }
}
