import { randomBytes } from 'node:crypto';
import { CONTAINER_CODEC } from '../format/pack.js';

/**
 * In-memory chunk table: 32-bit digest fingerprint → pack location, open addressing with linear
 * probing in a SharedArrayBuffer so hashing workers can ask "possibly known?" without a message.
 *
 * Budget: 16 bytes a slot (fingerprint, pack, offset, storedLength|codec|member|flags|pages), load factor kept in
 * (0.35, 0.7] → 23-46 bytes per stored chunk. A fingerprint match is a hint, never proof: the store
 * confirms "known" against LevelDB (exact 32-byte key) before deduplicating, and restore verifies
 * every page digest. Two stored chunks sharing a fingerprint mark their slot ambiguous, and lookups of
 * it go to the exact index (expected ~n²/2³³ such pairs: a dozen thousand at 10 M chunks).
 *
 * The fingerprint is keyed with the table's random seed, as DigestSet's probe is: guests choose
 * their pages' contents, and so, at the cost of brute force, any few bits of their digests. Unkeyed,
 * pages whose digests share their first four bytes would all fall into one ambiguous slot, and
 * shared low bits would pile into one probe chain. The seed sits in the shared words' header (so
 * workers probe with it) and in the saved table file; a table rebuilt from the index draws a new one.
 */
export const SLOT_WORDS = 4;
/** Words ahead of the slots: the 96-bit seed and one spare. */
const HEADER_WORDS = 4;
export const SEED_BYTES = 12;
const OCCUPIED = 1 << 24;
const COLLISION = 2 << 24;
const MAX_LOAD = 0.7;
/**
 * Load at which a table with a prefault function (useHelpers) starts preparing its next, doubled
 * words: allocated now and touched on another thread, so that the growth at MAX_LOAD only rehashes.
 */
const SPARE_LOAD = 0.55;

/**
 * Touches every page of `bytes` on another thread (a write access that keeps the contents), so
 * that the first touches that give the memory its pages (~12 µs a 4 KiB page on the project
 * machine) are not paid by the thread that applies pages.
 */
export type Prefault = (bytes: Uint8Array) => Promise<unknown>;

/**
 * Requests the table lines the probes of `count` digests (at digests[offset + k*stride ..]) start
 * at, all together, so that the probes made next find them cached instead of each waiting for its
 * own miss (the codec addon's prefetchSlots).
 */
export type SlotPrefetch = (words: Uint32Array, digests: Uint8Array, offset: number, stride: number, count: number) => void;

/** Digests whose lines prefetchAhead requests at a time: 1024 lines of 64 B stay in a core's L2. */
const PROBE_SLICE = 1024;

/** What a table may use from the native addon (ChunkTable.useHelpers). */
export interface TableHelpers {
  prefault?: Prefault;
  prefetch?: SlotPrefetch;
}

export interface ChunkLocation {
  pack: number;
  offset: number;
  storedLength: number;
  codec: number;
  /** Page number inside a zstd container (codec 2, pack format 2); absent otherwise. */
  member?: number;
  /** Pages in that container (1..16); absent outside containers. */
  pages?: number;
}

function word(d: Uint8Array, o: number): number {
  return d[o] | (d[o + 1] << 8) | (d[o + 2] << 16) | (d[o + 3] << 24);
}

/**
 * The digest's 32-bit fingerprint under the seed in `words`' header: its first 12 bytes, each word
 * xored with a seed word, multiplied by odd constants and mixed. Digests equal in those 12 bytes
 * share it (tests forge clashes so); finding such a pair by brute force costs ~2⁴⁸ hashes.
 */
export function fingerprint(words: Uint32Array, digest: Uint8Array, offset = 0): number {
  let h =
    Math.imul(word(digest, offset) ^ words[0], 0x9e3779b1) ^
    Math.imul(word(digest, offset + 4) ^ words[1], 0x85ebca77) ^
    Math.imul(word(digest, offset + 8) ^ words[2], 0xc2b2ae3d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 13;
  return h >>> 0;
}

/**
 * Linear probe for `fp`: its slot index, or -1 - (the empty slot where it would go). Used by the
 * table itself and by workers reading the shared words. Keyed fingerprints are uniform, so their
 * low bits serve directly as the home slot.
 */
function probe(words: Uint32Array, fp: number): number {
  const mask = (words.length - HEADER_WORDS) / SLOT_WORDS - 1;
  let s = fp & mask;
  for (;;) {
    const p = HEADER_WORDS + s * SLOT_WORDS;
    if ((words[p + 3] & OCCUPIED) === 0) return -1 - s;
    if (words[p] === fp) return s;
    s = (s + 1) & mask;
  }
}

/** Copies the slot at src[p..] into its place in `words` (fingerprints are unique: an empty slot). */
function placeSlot(words: Uint32Array, src: Uint32Array, p: number): void {
  // Word by word: a subarray per slot costs more than the probe itself (100k slots at every open).
  const q = HEADER_WORDS + (-1 - probe(words, src[p])) * SLOT_WORDS;
  words[q] = src[p];
  words[q + 1] = src[p + 1];
  words[q + 2] = src[p + 2];
  words[q + 3] = src[p + 3];
}

function slotLocation(words: Uint32Array, s: number): ChunkLocation {
  const p = HEADER_WORDS + s * SLOT_WORDS;
  const meta = words[p + 3];
  const codec = (meta >>> 16) & 0x0f;
  // Bits 20-23: the member inside a container, 26-29: its pages - 1; only containers set them (so
  // the location has no such keys otherwise, as locations from the index have none).
  return codec === CONTAINER_CODEC
    ? {
        pack: words[p + 1],
        offset: words[p + 2],
        storedLength: meta & 0xffff,
        codec,
        member: (meta >>> 20) & 0x0f,
        pages: ((meta >>> 26) & 0x0f) + 1,
      }
    : { pack: words[p + 1], offset: words[p + 2], storedLength: meta & 0xffff, codec };
}

function slotAmbiguous(words: Uint32Array, s: number): boolean {
  return (words[HEADER_WORDS + s * SLOT_WORDS + 3] & COLLISION) !== 0;
}

/** Worker-side probe over a shared table: true when some stored chunk has this digest's fingerprint. */
export function tableHasDigest(words: Uint32Array, digest: Uint8Array, offset = 0): boolean {
  return probe(words, fingerprint(words, digest, offset)) >= 0;
}

/**
 * Worker-side lookup over a shared table: the location stored under this digest's fingerprint, or
 * undefined when absent or ambiguous (two stored chunks share the fingerprint).
 */
export function tableLocation(words: Uint32Array, digest: Uint8Array, offset = 0): ChunkLocation | undefined {
  const s = probe(words, fingerprint(words, digest, offset));
  return s < 0 || slotAmbiguous(words, s) ? undefined : slotLocation(words, s);
}

/**
 * Times any chunk table in this process may have lost a fingerprint (a remove, a new table, a pack
 * leaving a number index): a caller that saw every fingerprint of a snapshot present while this
 * stood at G knows they still are while it does (src/store/session.ts, fillUnwritten).
 */
let fingerprintLosses = 0;

/** The current count of possible fingerprint losses (see fingerprintLosses). */
export function chunkLossGeneration(): number {
  return fingerprintLosses;
}

/** Records that chunks left an index without their fingerprints removed one by one (a pack dropped). */
export function noteChunksLost(): void {
  fingerprintLosses++;
}

export class ChunkTable {
  private words: Uint32Array;
  private mask: number;
  size = 0;
  private prefault?: Prefault;
  private prefetcher?: SlotPrefetch;
  /** The next words (twice the slots), being touched or touched (`ready`); see SPARE_LOAD. */
  private spare?: { words: Uint32Array; ready: boolean };

  /**
   * Rebuilds a table from saved occupied slots (see table-file.ts) and the seed their fingerprints
   * were made with; the caller has checked them.
   */
  static fromSlots(slots: Uint32Array, count: number, seed: Uint8Array): ChunkTable {
    const t = new ChunkTable(count, seed);
    const w = t.words;
    for (let p = 0; p < count * SLOT_WORDS; p += SLOT_WORDS) placeSlot(w, slots, p);
    t.size = count;
    return t;
  }

  /** The occupied slots, packed (for saving). */
  occupiedSlots(): Uint32Array {
    const out = new Uint32Array(this.size * SLOT_WORDS);
    const w = this.words;
    let q = 0;
    for (let p = HEADER_WORDS; p < w.length; p += SLOT_WORDS) {
      if ((w[p + 3] & OCCUPIED) === 0) continue;
      out[q] = w[p];
      out[q + 1] = w[p + 1];
      out[q + 2] = w[p + 2];
      out[q + 3] = w[p + 3];
      q += SLOT_WORDS;
    }
    return out;
  }

  /** `seed` (SEED_BYTES): a saved table's; a new table draws a random one. */
  constructor(initialCapacity = 1 << 16, seed: Uint8Array = randomBytes(SEED_BYTES)) {
    if (seed.length !== SEED_BYTES) throw new RangeError(`chunk table seed must be ${SEED_BYTES} bytes`);
    fingerprintLosses++; // a new table holds none of an old one's fingerprints
    let cap = 1024;
    while (cap < initialCapacity / MAX_LOAD) cap *= 2;
    this.words = ChunkTable.alloc(cap);
    for (let i = 0; i < SEED_BYTES / 4; i++) this.words[i] = word(seed, i * 4) >>> 0;
    this.mask = cap - 1;
  }

  private static alloc(slots: number): Uint32Array {
    return new Uint32Array(new SharedArrayBuffer((HEADER_WORDS + slots * SLOT_WORDS) * 4));
  }

  /** The probe seed (a copy), saved with the table. */
  get seed(): Buffer {
    const out = Buffer.alloc(SEED_BYTES);
    for (let i = 0; i < SEED_BYTES / 4; i++) out.writeUInt32LE(this.words[i], i * 4);
    return out;
  }

  /** The shared words; replaced on growth, so fetch it again for each worker job. */
  get shared(): Uint32Array {
    return this.words;
  }

  get capacity(): number {
    return this.mask + 1;
  }

  get memoryBytes(): number {
    return this.words.byteLength;
  }

  private fp(digest: Uint8Array, offset = 0): number {
    return fingerprint(this.words, digest, offset);
  }

  private find(fp: number): number {
    return probe(this.words, fp);
  }

  hasFingerprint(digest: Uint8Array, offset = 0): boolean {
    return this.find(this.fp(digest, offset)) >= 0;
  }

  /**
   * Location stored under this digest's fingerprint, or undefined. `ambiguous` means two digests
   * share the fingerprint: the caller must ask the exact index.
   */
  get(digest: Uint8Array, offset = 0): { location: ChunkLocation; ambiguous: boolean } | undefined {
    const s = this.find(this.fp(digest, offset));
    if (s < 0) return undefined;
    return { location: slotLocation(this.words, s), ambiguous: slotAmbiguous(this.words, s) };
  }

  /**
   * The slot holding this digest's fingerprint, or -1: with slotPack/slotOffset/slotMember, a lookup
   * that makes no location object (format 3 resolves every page of a snapshot so at its commit).
   */
  slotOf(digest: Uint8Array, offset = 0): number {
    const s = this.find(this.fp(digest, offset));
    return s < 0 ? -1 : s;
  }

  slotPack(s: number): number {
    return this.words[HEADER_WORDS + s * SLOT_WORDS + 1];
  }

  slotOffset(s: number): number {
    return this.words[HEADER_WORDS + s * SLOT_WORDS + 2];
  }

  /** The member of the slot's chunk inside its container (0 outside containers). */
  slotMember(s: number): number {
    const meta = this.words[HEADER_WORDS + s * SLOT_WORDS + 3];
    return ((meta >>> 16) & 0x0f) === CONTAINER_CODEC ? (meta >>> 20) & 0x0f : 0;
  }

  slotAmbiguous(s: number): boolean {
    return slotAmbiguous(this.words, s);
  }

  /**
   * Whether slot `s` holds, unambiguously, the chunk at (pack, packOffset) with this version-3 TOC
   * meta word (codec and member compared, as a location's are).
   */
  slotHolds(s: number, pack: number, packOffset: number, tocMeta: number): boolean {
    const p = HEADER_WORDS + s * SLOT_WORDS;
    const w = this.words;
    const meta = w[p + 3];
    if ((meta & COLLISION) !== 0 || w[p + 1] !== pack || w[p + 2] !== packOffset) return false;
    const codec = (meta >>> 16) & 0x0f;
    if (codec !== ((tocMeta >>> 16) & 0x0f)) return false;
    return codec !== CONTAINER_CODEC || ((meta >>> 20) & 0x0f) === ((tocMeta >>> 20) & 0x0f);
  }

  /**
   * From now on, prepares each growth ahead (SPARE_LOAD) with `prefault` (the codec addon's, on the
   * thread pool): a doubling of a table of millions of slots otherwise stalls its thread for the
   * first touches of the new memory; and requests the lines of batched probes with `prefetch`
   * (bench/RESULTS.md, issue 12, session 19).
   */
  useHelpers(helpers: TableHelpers): void {
    this.prefault = helpers.prefault;
    this.prefetcher = helpers.prefetch;
  }

  /**
   * Requests the lines that probes of these digests will read (digest k at digests[offset +
   * k*stride ..]): call before probing a batch of them one by one. A no-op without the addon.
   */
  prefetch(digests: Uint8Array, offset: number, stride: number, count: number): void {
    if (this.prefetcher && count > 0) this.prefetcher(this.words, digests, offset, stride, count);
  }

  /**
   * For a loop probing digests 0..count-1 (digest k at digests[k*stride ..]) in order: at digest k,
   * requests the lines of the next PROBE_SLICE when k starts a slice, so they stay cached until probed.
   */
  prefetchAhead(digests: Uint8Array, stride: number, count: number, k: number): void {
    if (k % PROBE_SLICE === 0) this.prefetch(digests, k * stride, stride, Math.min(PROBE_SLICE, count - k));
  }

  /** Whether the next growth's words are allocated and touched (tests). */
  get spareReady(): boolean {
    return this.spare?.ready === true;
  }

  /** Counts a chunk put in an empty slot; past SPARE_LOAD, starts preparing the next words (one at a time). */
  private added(): void {
    this.size++;
    if (this.size < SPARE_LOAD * this.capacity || this.spare || !this.prefault) return;
    const spare = { words: ChunkTable.alloc(this.capacity * 2), ready: false };
    this.spare = spare;
    this.prefault(new Uint8Array(spare.words.buffer)).then(
      () => (spare.ready = true),
      () => {
        if (this.spare === spare) this.spare = undefined; // grow allocates as without a prefault
      },
    );
  }

  /** Words for `slots` slots: the prepared spare when it is ready and that size, else new memory. */
  private takeWords(slots: number): Uint32Array {
    const spare = this.spare;
    this.spare = undefined; // used now, or stale (still being touched, or sized for another growth)
    return spare?.ready && spare.words.length === HEADER_WORDS + slots * SLOT_WORDS ? spare.words : ChunkTable.alloc(slots);
  }

  /** Grows ahead of a known burst of inserts (a whole image), so it rehashes once, not repeatedly. */
  reserve(extra: number): void {
    while ((this.size + extra) / this.capacity > MAX_LOAD) this.grow();
  }

  /** Records a chunk known (by the exact index) to be new. A fingerprint clash marks the slot ambiguous. */
  insert(digest: Uint8Array, loc: ChunkLocation, offset = 0): void {
    const fp = this.fp(digest, offset);
    const s = this.find(fp);
    if (s >= 0) {
      this.words[HEADER_WORDS + s * SLOT_WORDS + 3] |= COLLISION;
      return;
    }
    if ((this.size + 1) / this.capacity > MAX_LOAD) {
      this.grow();
      this.insert(digest, loc, offset);
      return;
    }
    this.writeSlot(-1 - s, fp, loc, 0);
    this.added();
  }

  /**
   * The empty slot a new chunk of this digest would take (the table grown first if one more chunk
   * would pass MAX_LOAD), or -1 when its fingerprint is held already. With fillVacant, an insert
   * of a chunk not known to be new in one probe; nothing may change the table between the two.
   */
  vacantSlot(digest: Uint8Array, offset = 0): number {
    if ((this.size + 1) / this.capacity > MAX_LOAD) this.grow();
    const s = this.find(this.fp(digest, offset));
    return s >= 0 ? -1 : -1 - s;
  }

  /** Records a chunk in the slot vacantSlot gave for its digest. */
  fillVacant(s: number, digest: Uint8Array, offset: number, loc: ChunkLocation): void {
    this.writeSlot(s, this.fp(digest, offset), loc, 0);
    this.added();
  }

  /** Fills empty slot `s` with a chunk described by a version-3 TOC entry. */
  private writeTocSlot(s: number, fp: number, pack: number, packOffset: number, tocMeta: number): void {
    const w = this.words;
    const p = HEADER_WORDS + s * SLOT_WORDS;
    w[p] = fp;
    w[p + 1] = pack;
    w[p + 2] = packOffset;
    // The slot keeps pages - 1 above its two flag bits (24, 25), where the TOC meta has it at 24.
    w[p + 3] = ((tocMeta & 0x00ffffff) | (((tocMeta >>> 24) & 0x0f) << 26) | OCCUPIED) >>> 0;
    this.added();
  }

  /**
   * A chunk of a sealed pack joining the index, in one probe: its writer usually put it in while the
   * pack was open, and the number index's load inserts every chunk of a store through this (no
   * location object per chunk). `tocMeta`: a version-3 TOC's meta word (storedLength | codec << 16 |
   * member << 20 | (pages - 1) << 24). Returns 1 when it inserted the chunk, 0 when the fingerprint's
   * slot already holds exactly this chunk (see slotHolds), -1 when another chunk holds the
   * fingerprint or the slot is ambiguous (nothing changed: the caller settles the clash).
   */
  joinChunk(digest: Uint8Array, offset: number, pack: number, packOffset: number, tocMeta: number): 1 | 0 | -1 {
    if ((this.size + 1) / this.capacity > MAX_LOAD) this.grow();
    const fp = this.fp(digest, offset);
    const s = this.find(fp);
    if (s >= 0) return this.slotHolds(s, pack, packOffset, tocMeta) ? 0 : -1;
    this.writeTocSlot(-1 - s, fp, pack, packOffset, tocMeta);
    return 1;
  }

  /** Moves a chunk (gc repack). No-op when the fingerprint is absent. */
  relocate(digest: Uint8Array, loc: ChunkLocation): void {
    const fp = this.fp(digest);
    const s = this.find(fp);
    if (s < 0) return;
    const flags = this.words[HEADER_WORDS + s * SLOT_WORDS + 3] & COLLISION;
    this.writeSlot(s, fp, loc, flags);
  }

  /** Removes a fingerprint (gc), keeping probe chains intact by backward-shift deletion. */
  remove(digest: Uint8Array): void {
    fingerprintLosses++;
    let s = this.find(this.fp(digest));
    if (s < 0) return;
    const w = this.words;
    const at = (slot: number) => HEADER_WORDS + slot * SLOT_WORDS;
    for (;;) {
      let next = (s + 1) & this.mask;
      // Find a later entry in the chain that may move into the hole.
      for (;;) {
        const p = at(next);
        if ((w[p + 3] & OCCUPIED) === 0) {
          w.fill(0, at(s), at(s) + SLOT_WORDS);
          this.size--;
          return;
        }
        const home = w[p] & this.mask;
        // Entry at `next` may move to `s` if its home is not in the cyclic range (s, next].
        const inRange = s <= next ? home > s && home <= next : home > s || home <= next;
        if (!inRange) break;
        next = (next + 1) & this.mask;
      }
      w.copyWithin(at(s), at(next), at(next) + SLOT_WORDS);
      s = next;
    }
  }

  private writeSlot(s: number, fp: number, loc: ChunkLocation, flags: number): void {
    const w = this.words;
    const p = HEADER_WORDS + s * SLOT_WORDS;
    w[p] = fp;
    w[p + 1] = loc.pack;
    w[p + 2] = loc.offset;
    const container = loc.codec === CONTAINER_CODEC ? ((loc.member ?? 0) << 20) | (((loc.pages ?? 1) - 1) << 26) : 0;
    w[p + 3] = ((loc.storedLength & 0xffff) | ((loc.codec & 0x0f) << 16) | container | OCCUPIED | flags) >>> 0;
  }

  private grow(): void {
    const old = this.words;
    const cap = this.capacity * 2;
    this.words = this.takeWords(cap);
    this.mask = cap - 1;
    const w = this.words;
    w.set(old.subarray(0, HEADER_WORDS)); // the same seed: stored fingerprints stay valid
    for (let p = HEADER_WORDS; p < old.length; p += SLOT_WORDS) {
      if ((old[p + 3] & OCCUPIED) !== 0) placeSlot(w, old, p);
    }
  }
}
