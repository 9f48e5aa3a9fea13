/**
 * The in-memory chunk index of store format 3, built from the packs' tables of contents (no I/O here:
 * callers parse TOCs and read digests). docs/FORMAT.md, "Store format 3"; docs/DESIGN.md for memory.
 *
 *   number → (pack, entry)   a directory of the packs' number runs, sorted and never overlapping
 *   (pack, entry) → location the pack's offset and meta columns (from its TOC)
 *   digest → (pack, entry)   the keyed-fingerprint ChunkTable holding each chunk's location (as on
 *                            format 2, so page workers keep confirming hits by reading the chunk);
 *                            a hit is a candidate the caller confirms against the TOC's digest, and a
 *                            fingerprint two stored digests share goes to an exact map of those few
 *
 * A number present in two packs (a gc or compact killed between sealing its copy and deleting the
 * original) is refused by addPack with the packs it overlaps: recovery decides which copy goes.
 */
import { CONTAINER_CODEC } from '../format/pack.js';
import { metaCodec, metaMember, metaPages, metaStoredLength, type TocV3 } from '../format/pack-v3.js';
import { TOC_DIGEST_BYTES, tocDigestsEqual } from '../format/pack-v3.js';
import { upperBound } from '../util/search.js';
import { ChunkTable, noteChunksLost, type ChunkLocation } from './chunk-table.js';

/** What the index keeps of a pack: its TOC's columns (digests are not kept). */
export interface PackColumns {
  pack: number;
  count: number;
  runStarts: number[];
  runLengths: number[];
  offsets: Uint32Array;
  metas: Uint32Array;
  /** The entry of each run's first number (ascending, from 0): numberOf searches it. */
  runEntries: number[];
}

/** A chunk's place: its pack, its entry in that pack's TOC, and where its payload is. */
export interface NumberedLocation {
  pack: number;
  entry: number;
  location: ChunkLocation;
}

/** Reads entry `entry`'s 24-byte digest prefix from pack `pack`'s TOC (rare: fingerprint clashes only). */
export type DigestOf = (pack: number, entry: number) => Uint8Array;

/** The answer to "is this digest stored?" before the caller confirms it. */
export type Candidate =
  | { kind: 'absent' }
  /** The only stored chunk with this fingerprint: compare its digest (pack TOC) before trusting it. */
  | { kind: 'confirm'; pack: number; entry: number; number: number }
  /** Decided exactly (the fingerprint is shared by stored digests, which the index keeps). */
  | { kind: 'exact'; number: number | undefined };

export class NumberIndex {
  private readonly packs = new Map<number, PackColumns>();
  /** The number-run directory, sorted by start: run r covers starts[r] .. starts[r] + lengths[r] - 1. */
  private starts: number[] = [];
  private lengths: number[] = [];
  private runPacks: number[] = [];
  /** Entry index in its pack of the run's first number. */
  private runEntries: number[] = [];
  /** Digests (hex) whose fingerprint another stored digest shares → their numbers. */
  private readonly clashes = new Map<string, number>();
  private chunks = 0;
  /** One more than the highest number any pack added holds (0 when empty). */
  nextNumber = 0;

  constructor(readonly table: ChunkTable = new ChunkTable(1 << 14)) {}

  get size(): number {
    return this.chunks;
  }

  /** Entries of an indexed pack (0 when it is not indexed). */
  packCount(pack: number): number {
    return this.packs.get(pack)?.count ?? 0;
  }

  hasPack(pack: number): boolean {
    return this.packs.has(pack);
  }

  get packIds(): number[] {
    return [...this.packs.keys()];
  }

  /** Packs holding any of these number runs (empty when none overlaps). */
  overlapping(runStarts: readonly number[], runLengths: readonly number[]): number[] {
    const found = new Set<number>();
    for (let r = 0; r < runStarts.length; r++) {
      const lo = runStarts[r];
      const hi = lo + runLengths[r];
      // Directory runs that start before hi; walk back while they may reach lo (runs do not overlap).
      for (let d = upperBound(this.starts, hi - 1) - 1; d >= 0 && this.starts[d] + this.lengths[d] > lo; d--) found.add(this.runPacks[d]);
    }
    return [...found].sort((a, b) => a - b);
  }

  /**
   * Adds a sealed pack's TOC (its digest column is used here, not kept; `digestOf` reads an older
   * pack's digest when fingerprints clash). Returns the packs whose numbers it overlaps, and then adds
   * nothing: the caller resolves duplicates first. `withDigests` false leaves the digests out of the
   * fingerprint table (addDigests adds them later: an open that only restores never needs them).
   */
  addPack(pack: number, toc: TocV3, digestOf: DigestOf, withDigests = true): number[] {
    if (this.packs.has(pack)) throw new RangeError(`pack ${pack} is already indexed`);
    const overlap = this.overlapping(toc.runStarts, toc.runLengths);
    if (overlap.length > 0) return overlap;
    const runEntries: number[] = [];
    for (let r = 0, e = 0; r < toc.runLengths.length; e += toc.runLengths[r++]) runEntries.push(e);
    const cols: PackColumns = {
      pack,
      count: toc.count,
      runStarts: toc.runStarts,
      runLengths: toc.runLengths,
      offsets: toc.offsets,
      metas: toc.metas,
      runEntries,
    };
    this.packs.set(pack, cols);
    let entry = 0;
    for (let r = 0; r < toc.runStarts.length; r++) {
      this.insertRun(toc.runStarts[r], toc.runLengths[r], pack, entry);
      entry += toc.runLengths[r];
      this.nextNumber = Math.max(this.nextNumber, toc.runStarts[r] + toc.runLengths[r]);
    }
    this.chunks += toc.count;
    if (withDigests) this.addDigests(pack, toc.digests, digestOf);
    return [];
  }

  /** Puts an indexed pack's digests (its TOC's column) into the fingerprint table; idempotent. */
  addDigests(pack: number, digests: Uint8Array, digestOf: DigestOf): void {
    const cols = this.packs.get(pack);
    if (!cols) throw new RangeError(`pack ${pack} is not indexed`);
    this.table.reserve(cols.count);
    for (let k = 0; k < cols.count; k++) {
      this.table.prefetchAhead(digests, TOC_DIGEST_BYTES, cols.count, k);
      this.insertDigest(digests, k, cols, digestOf);
    }
  }

  /** Removes a pack (gc, compact, repair, recovery); `digests` is its digest column. */
  removePack(pack: number, digests: Uint8Array): void {
    const cols = this.packs.get(pack);
    if (!cols) return;
    noteChunksLost(); // also when `digests` is unknown (zeros, after a repair) and no slot goes
    for (let k = 0; k < cols.count; k++) {
      const s = this.table.slotOf(digests, k * TOC_DIGEST_BYTES);
      // Only a digest whose slot is ambiguous (or gone) can be in the exact map: no hex string otherwise.
      if ((s < 0 || this.table.slotAmbiguous(s)) && this.clashes.size > 0) {
        const hex = Buffer.from(digests.buffer, digests.byteOffset + k * TOC_DIGEST_BYTES, TOC_DIGEST_BYTES).toString('hex');
        if (this.clashes.delete(hex)) continue; // its slot stays ambiguous: lookups use the map
      }
      if (s >= 0 && this.table.slotPack(s) === pack) this.table.remove(digests.subarray(k * TOC_DIGEST_BYTES, (k + 1) * TOC_DIGEST_BYTES));
    }
    const keep = this.runPacks.map((p) => p !== pack);
    this.starts = this.starts.filter((_, r) => keep[r]);
    this.lengths = this.lengths.filter((_, r) => keep[r]);
    this.runEntries = this.runEntries.filter((_, r) => keep[r]);
    this.runPacks = this.runPacks.filter((_, r) => keep[r]);
    this.packs.delete(pack);
    this.chunks -= cols.count;
  }

  /** Where chunk `n` is, or undefined when no pack holds it. */
  locate(n: number): NumberedLocation | undefined {
    const d = upperBound(this.starts, n) - 1;
    if (d < 0 || n >= this.starts[d] + this.lengths[d]) return undefined;
    const pack = this.runPacks[d];
    const entry = this.runEntries[d] + (n - this.starts[d]);
    return { pack, entry, location: locationOf(this.packs.get(pack)!, entry) };
  }

  /**
   * locate() without objects: the directory run holding chunk `n`, or -1. Its pack is `runPack(run)`
   * and its entry `runEntry(run, n)` (a snapshot's parent locates every page so).
   */
  runOf(n: number): number {
    const d = upperBound(this.starts, n) - 1;
    return d < 0 || n >= this.starts[d] + this.lengths[d] ? -1 : d;
  }

  runPack(run: number): number {
    return this.runPacks[run];
  }

  runEntry(run: number, n: number): number {
    return this.runEntries[run] + (n - this.starts[run]);
  }

  /** The location of entry `entry` of an indexed pack. */
  locationAt(pack: number, entry: number): ChunkLocation {
    return locationOf(this.packs.get(pack)!, entry);
  }

  /** The number of entry `entry` of `pack`. */
  numberOf(pack: number, entry: number): number {
    const cols = this.packs.get(pack);
    if (!cols || entry >= cols.count) throw new RangeError(`no entry ${entry} in pack ${pack}`);
    const r = upperBound(cols.runEntries, entry) - 1;
    return cols.runStarts[r] + (entry - cols.runEntries[r]);
  }

  /** The TOC entry a location names (a container's page: its frame's first entry plus its member). */
  entryAt(pack: number, loc: ChunkLocation): number | undefined {
    const entry = this.entryOf(pack, loc.offset, loc.codec === CONTAINER_CODEC ? (loc.member ?? 0) : 0);
    return entry < 0 ? undefined : entry;
  }

  /** entryAt from a location's parts (`member` 0 outside containers); -1 when no entry is there. */
  private entryOf(pack: number, offset: number, member: number): number {
    const cols = this.packs.get(pack);
    if (!cols) return -1;
    const entry = upperBound(cols.offsets, offset - 1) + member;
    return entry < cols.count && cols.offsets[entry] === offset ? entry : -1;
  }

  /**
   * candidate() without an object: the entry of the only stored chunk with this fingerprint, to
   * confirm (its pack: `table.slotPack(slot)`), or -1 when absent, or -2 when the slot is ambiguous
   * (ask `clashNumber`). `slot` is `table.slotOf(digest, offset)`.
   */
  candidateEntry(slot: number): number {
    if (slot < 0) return -1;
    if (this.table.slotAmbiguous(slot)) return -2;
    return this.entryOf(this.table.slotPack(slot), this.table.slotOffset(slot), this.table.slotMember(slot));
  }

  /** The number of a digest whose fingerprint slot is ambiguous, when the exact map has it. */
  clashNumber(digest: Uint8Array, offset = 0): number | undefined {
    return this.clashes.get(Buffer.from(digest.buffer, digest.byteOffset + offset, TOC_DIGEST_BYTES).toString('hex'));
  }

  /** Is this digest stored? A candidate to confirm, or an exact answer. */
  candidate(digest: Uint8Array, offset = 0): Candidate {
    const slot = this.table.slotOf(digest, offset);
    const entry = this.candidateEntry(slot);
    if (entry === -1) return { kind: 'absent' };
    if (entry === -2) return { kind: 'exact', number: this.clashNumber(digest, offset) };
    const pack = this.table.slotPack(slot);
    return { kind: 'confirm', pack, entry, number: this.numberOf(pack, entry) };
  }

  /** candidate() confirmed with `digestOf`: the digest's number, or undefined when it is not stored. */
  lookup(digest: Uint8Array, digestOf: DigestOf, offset = 0): number | undefined {
    const c = this.candidate(digest, offset);
    if (c.kind === 'absent') return undefined;
    if (c.kind === 'exact') return c.number;
    return tocDigestsEqual(digestOf(c.pack, c.entry), 0, digest, offset) ? c.number : undefined;
  }

  /** Bytes the index holds (typed arrays exactly; the run directory at 8 B a field of a run). */
  get memoryBytes(): number {
    let cols = 0;
    for (const c of this.packs.values()) cols += c.offsets.byteLength + c.metas.byteLength + 16 * c.runStarts.length;
    return this.table.memoryBytes + cols + 32 * this.starts.length + 100 * this.clashes.size;
  }

  private insertRun(start: number, length: number, pack: number, entry: number): void {
    const at = upperBound(this.starts, start);
    this.starts.splice(at, 0, start);
    this.lengths.splice(at, 0, length);
    this.runPacks.splice(at, 0, pack);
    this.runEntries.splice(at, 0, entry);
  }

  private insertDigest(digests: Uint8Array, k: number, cols: PackColumns, digestOf: DigestOf): void {
    const at = k * TOC_DIGEST_BYTES;
    // Inserted now, or put there by the pack writer while the pack was open (ingest): one probe.
    if (this.table.joinChunk(digests, at, cols.pack, cols.offsets[k], cols.metas[k]) >= 0) return;
    const hit = this.table.get(digests, at);
    const hex = () => Buffer.from(digests.buffer, digests.byteOffset + at, TOC_DIGEST_BYTES).toString('hex');
    if (hit) {
      // A stored digest shares the fingerprint: both go to the exact map (the slot becomes ambiguous).
      // The slot's first chunk is registered even when the slot is already ambiguous: a chunk the
      // writer inserted may have made it so while that chunk's pack was open.
      const other = this.entryAt(hit.location.pack, hit.location);
      if (other !== undefined && !(hit.location.pack === cols.pack && other === k)) {
        this.clashes.set(Buffer.from(digestOf(hit.location.pack, other)).toString('hex'), this.numberOf(hit.location.pack, other));
      }
      this.clashes.set(hex(), this.numberOf(cols.pack, k));
    }
    this.table.insert(digests, locationOf(cols, k), at);
  }
}

/** The chunk location of entry k (the shape the chunk table and the pack reader use). */
export function locationOf(cols: PackColumns, k: number): ChunkLocation {
  const meta = cols.metas[k];
  const codec = metaCodec(meta);
  const loc: ChunkLocation = { pack: cols.pack, offset: cols.offsets[k], storedLength: metaStoredLength(meta), codec };
  if (codec === CONTAINER_CODEC) {
    loc.member = metaMember(meta);
    loc.pages = metaPages(meta);
  }
  return loc;
}
