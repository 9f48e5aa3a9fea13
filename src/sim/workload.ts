/**
 * Deterministic generator of VNE-like VM memory images (raw, 4 KiB pages).
 *
 * Model (all counts exact, rounded per VM):
 * - Each VM has `pages = round(memMiB * 256)` page slots (+ optional trailing partial page).
 * - Snapshot 0: `round(zero * pages)` zero pages; of the non-zero pages, `round(shared * nonZero)` come
 *   from a common "OS / library" pool, the rest are private to the VM. Pages of every class are laid out
 *   in runs (geometric lengths: zero ~32 pages, shared ~4, private ~8) whose order is shuffled per VM, so
 *   a pool page sits at a different offset in every VM. The VM with the most shared pages takes the whole
 *   pool; every other VM takes a window of the pool, the windows spread evenly around it, so each shared
 *   page of a VM also occurs in at least one other VM as long as the other VMs' windows together are at
 *   least as large as the pool (with one VM, or one huge VM beside small ones, measured sharing is lower).
 * - Snapshot s > 0: `round(dirty * pages)` page slots get different content from snapshot s-1, chosen in
 *   runs (~4 pages). 5% of them are zero pages that become data and as many are data pages that become
 *   zero (so the zero share stays put); the rest are data pages that get fresh private content.
 * - Content is a pure function of (seed, content key): a non-zero page is incompressible (uniform random
 *   bytes) with probability `random`, else a token stream (words, pointers, small integers, zero runs)
 *   drawn from a per-page sub-vocabulary of a global vocabulary, which per-page LZ4 shrinks ~1.5-3x and
 *   which, like real memory, leaves extra redundancy across pages for block compressors.
 *
 * Nothing holds a whole image: per VM and snapshot only a page map (6 bytes per page) is kept.
 */
import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';

import { PAGE_SIZE } from '../format/pages.js';

export { PAGE_SIZE };
const PAGES_PER_MIB = 256;
export const DEFAULT_BLOCK_BYTES = 4 * 1024 * 1024;

export interface WorkloadParams {
  /** Number of VMs. */
  vms: number;
  /** MiB of memory per VM; cycled when shorter than `vms`. Fractions allowed (tests): 0.25 MiB = 64 pages. */
  memMiB: number[];
  /** Consecutive snapshots per VM. */
  snapshots: number;
  /** Fraction of each image's pages that are all-zero. */
  zeroFraction: number;
  /** Fraction of each VM's non-zero pages drawn from the common pool (also present in other VMs). */
  sharedFraction: number;
  /** Fraction of non-zero page contents that are incompressible random bytes. */
  randomFraction: number;
  /** Fraction of each image's pages whose content differs from the previous snapshot. */
  dirtyFraction: number;
  seed: number;
  /** Extra bytes (0..4095) appended to every image: an odd trailing length, for tests. */
  trailingBytes?: number;
}

/**
 * Defaults for the engine benchmark (issue 2): ~35% zero, ~10% dirty between snapshots, contents LZ4
 * shrinks 1.5-3x. Sizes unequal, ~1 GiB per snapshot epoch in total.
 */
export const ENGINE_WORKLOAD: WorkloadParams = {
  vms: 4,
  memMiB: [128, 192, 256, 448],
  snapshots: 3,
  zeroFraction: 0.35,
  sharedFraction: 0.3,
  randomFraction: 0.1,
  dirtyFraction: 0.1,
  seed: 1,
};

/**
 * Defaults for `vnstore bench`, from the measurements on freshly booted Linux guests in
 * shared/vnsnap.md: ~61% zero pages, ~41% of non-zero pages also in another VM, ~1.7% of non-zero pages
 * changed between consecutive snapshots (0.017 * 0.39 = ~0.7% of all pages), unique pages LZ4 to ~62-65%
 * (the compressible pages here average ~0.55 of their size; with 15% random pages the mix is ~0.62).
 */
export const BENCH_WORKLOAD: WorkloadParams = {
  vms: 4,
  memMiB: [256, 384, 512, 1024],
  snapshots: 3,
  zeroFraction: 0.61,
  sharedFraction: 0.41,
  randomFraction: 0.15,
  dirtyFraction: 0.007,
  seed: 1,
};

export class WorkloadParamError extends Error {
  override name = 'WorkloadParamError';
}

/** Validates and fills in a parameter set; throws WorkloadParamError with a one-line message. */
export function resolveParams(p: Partial<WorkloadParams>, base: WorkloadParams = BENCH_WORKLOAD): WorkloadParams {
  const r: WorkloadParams = { ...base, ...p, memMiB: [...(p.memMiB ?? base.memMiB)] };
  const int = (name: string, v: number, min: number, max: number) => {
    if (!Number.isInteger(v) || v < min || v > max)
      throw new WorkloadParamError(`${name} must be an integer in [${min}, ${max}], got ${v}`);
  };
  const frac = (name: string, v: number) => {
    if (!Number.isFinite(v) || v < 0 || v > 1) throw new WorkloadParamError(`${name} must be a fraction in [0, 1], got ${v}`);
  };
  int('vms', r.vms, 1, 4096);
  int('snapshots', r.snapshots, 1, 10_000);
  int('seed', r.seed, 0, 0xffffffff);
  int('trailingBytes', r.trailingBytes ?? 0, 0, PAGE_SIZE - 1);
  frac('zeroFraction', r.zeroFraction);
  frac('sharedFraction', r.sharedFraction);
  frac('randomFraction', r.randomFraction);
  frac('dirtyFraction', r.dirtyFraction);
  if (r.memMiB.length === 0) throw new WorkloadParamError('memMiB needs at least one size');
  for (const m of r.memMiB) {
    if (!Number.isFinite(m) || Math.round(m * PAGES_PER_MIB) < 1 || m > 1024 * 1024) {
      throw new WorkloadParamError(`memory size must be a positive number of MiB (at least one 4 KiB page), got ${m}`);
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------------
// PRNG: splitmix32 for seeding, xoshiro128** for streams. Own implementation so output never changes
// with a library version.

/** 32-bit finaliser (murmur3 fmix32 style) used to derive independent seeds from tuples. */
export function mix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Hash of a tuple of uint32s into one uint32. */
export function hashTuple(...xs: number[]): number {
  let h = 0x9e3779b9;
  for (const x of xs) h = mix32((h ^ mix32((x >>> 0) + 0x7f4a7c15)) + 0x165667b1);
  return h;
}

export class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    // splitmix32 expands one word into four, never all zero.
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      return mix32(s);
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next() | 1;
  }

  /** Next uint32. */
  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  /** Uniform integer in [0, n), n ≤ 2^32. */
  below(n: number): number {
    return Math.floor(this.float() * n);
  }

  /** Geometric run length ≥ 1 with the given mean. */
  runLength(mean: number): number {
    if (mean <= 1) return 1;
    const p = 1 / mean;
    return 1 + Math.floor(Math.log(1 - this.float()) / Math.log(1 - p));
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ---------------------------------------------------------------------------------------------------
// Page contents.

/** Namespace of a content key: 0 = zero page, 1 = shared pool, 2 + vm = private to that VM. */
const NS_ZERO = 0;
const NS_POOL = 1;

const VOCAB_SIZE = 4096;

/** Global token vocabulary: what memory is made of (text, kernel/user pointers, small ints, zero runs). */
class Vocabulary {
  readonly bytes: Uint8Array;
  readonly offset = new Uint32Array(VOCAB_SIZE);
  readonly length = new Uint8Array(VOCAB_SIZE);

  constructor(seed: number) {
    const rng = new Xoshiro128(hashTuple(seed, 0x766f6361));
    const out: number[] = [];
    const letters = 'etaoinshrdlucmfwypvbgkjqxz_';
    for (let i = 0; i < VOCAB_SIZE; i++) {
      this.offset[i] = out.length;
      const kind = rng.below(10);
      if (kind < 4) {
        // Word: 3-11 letters (skewed to common ones) and a separator.
        const n = 3 + rng.below(9);
        for (let j = 0; j < n; j++) out.push(letters.charCodeAt(Math.floor(letters.length * rng.float() ** 1.6)));
        out.push(rng.below(4) === 0 ? 0 : 0x20);
      } else if (kind < 7) {
        // 8-byte little-endian pointer: kernel direct map or user heap, 8-aligned, shared high bits.
        const kernel = rng.below(2) === 0;
        const lo = (rng.u32() & ~7) >>> 0;
        const hi = kernel ? 0xffff8880 + rng.below(4) : 0x00005600 + rng.below(64);
        for (let j = 0; j < 4; j++) out.push((lo >>> (8 * j)) & 255);
        for (let j = 0; j < 4; j++) out.push((hi >>> (8 * j)) & 255);
      } else if (kind < 9) {
        // Small integer fields: 4 or 8 bytes, mostly zero high bytes.
        const n = rng.below(2) === 0 ? 4 : 8;
        const v = rng.below(rng.below(2) === 0 ? 256 : 65536);
        for (let j = 0; j < n; j++) out.push(j < 4 ? (v >>> (8 * j)) & 255 : 0);
      } else {
        // Zero padding inside structures.
        const n = 8 + 8 * rng.below(6);
        for (let j = 0; j < n; j++) out.push(0);
      }
      this.length[i] = out.length - this.offset[i];
    }
    this.bytes = Uint8Array.from(out);
  }
}

const LOCAL_VOCAB_MAX = 96;
/** Per-page share of steps that emit random literal bytes: uniform in [MIN, MIN + SPAN). */
const LITERAL_MIN = 0.2;
const LITERAL_SPAN = 0.5;
/** u^1.5 for u = (i + 0.5) / 256: favours the first words of a page's local vocabulary. */
const SKEW = Float64Array.from({ length: 256 }, (_, i) => ((i + 0.5) / 256) ** 1.5);

/** Writes page contents for content keys; reuses its scratch state (not re-entrant). */
export class PageFactory {
  private readonly vocab: Vocabulary;
  private readonly local = new Uint16Array(LOCAL_VOCAB_MAX);
  private readonly randomThreshold: number;

  constructor(
    private readonly seed: number,
    randomFraction: number,
  ) {
    this.vocab = new Vocabulary(seed);
    this.randomThreshold = randomFraction * 4294967296;
  }

  /** Whether the page with this key is incompressible random data. */
  isRandom(ns: number, ctr: number): boolean {
    return hashTuple(this.seed, 0x72616e64, ns, ctr) < this.randomThreshold;
  }

  /** Fills out[off, off+PAGE_SIZE) with the page for (ns, ctr). */
  fill(ns: number, ctr: number, out: Uint8Array, off: number): void {
    const end = off + PAGE_SIZE;
    if (ns === NS_ZERO) {
      out.fill(0, off, end);
      return;
    }
    const rng = new Xoshiro128(hashTuple(this.seed, ns, ctr));
    if (this.isRandom(ns, ctr)) {
      for (let o = off; o < end; o += 4) {
        const x = rng.u32();
        out[o] = x & 255;
        out[o + 1] = (x >>> 8) & 255;
        out[o + 2] = (x >>> 16) & 255;
        out[o + 3] = x >>> 24;
      }
      return;
    }
    // Per-page character: a small local vocabulary (repeats LZ4 can find within the page) and a share
    // of random literal bytes (what keeps it from compressing too well). Tuned so per-page LZ4 output
    // averages 0.55 of the page (5th-95th percentile 0.40-0.71).
    const v = this.vocab;
    const localSize = 8 + rng.below(LOCAL_VOCAB_MAX - 8);
    for (let i = 0; i < localSize; i++) this.local[i] = Math.floor(VOCAB_SIZE * rng.float() ** 2);
    // One u32 per step: low 16 bits decide literal vs token, bits 16-18 the literal length, the top
    // 8 bits the (skewed) token choice.
    const lit16 = Math.floor((LITERAL_MIN + LITERAL_SPAN * rng.float()) * 65536);
    let o = off;
    while (o < end) {
      const x = rng.u32();
      if ((x & 0xffff) < lit16) {
        let n = 1 + ((x >>> 16) & 7);
        let r = rng.u32();
        while (n-- > 0 && o < end) {
          out[o++] = r & 255;
          r >>>= 8;
        }
      } else {
        const t = this.local[(SKEW[x >>> 24] * localSize) | 0];
        let p = v.offset[t];
        const stop = p + v.length[t];
        while (p < stop && o < end) out[o++] = v.bytes[p++];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Page maps: which content key sits at each page index of one VM snapshot.

export interface PageMap {
  /** Namespace per page index (0 = zero page). */
  ns: Uint16Array;
  /** Counter within the namespace per page index. */
  ctr: Uint32Array;
}

export interface VmInfo {
  index: number;
  /** Folder name: vm00, vm01, ... (zero-padded so names sort). */
  name: string;
  /** Page slots, including a trailing partial page if any. */
  pages: number;
  /** Exact image length in bytes. */
  bytes: number;
}

const RUN_MEAN_ZERO = 32;
const RUN_MEAN_SHARED = 4;
const RUN_MEAN_PRIVATE = 8;
const RUN_MEAN_DIRTY = 4;
/** Share of dirty pages that flip zero → data (and as many data → zero). */
const FLIP_SHARE = 0.05;

interface Run {
  ns: number;
  start: number;
  len: number;
}

export class Workload {
  readonly params: WorkloadParams;
  readonly vms: VmInfo[];
  readonly pages: PageFactory;
  /** Shared pool window per VM: [start, length) in a pool of `poolSize` pages (wrapping). */
  readonly poolSize: number;
  private readonly poolWindow: { start: number; len: number }[];
  private readonly maps: PageMap[][];
  /** Next private counter per VM (fresh content for dirty pages). */
  private readonly nextPrivate: number[];

  constructor(params: Partial<WorkloadParams>, base?: WorkloadParams) {
    this.params = resolveParams(params, base);
    const p = this.params;
    const tail = p.trailingBytes ?? 0;
    this.vms = [];
    const width = Math.max(2, String(p.vms - 1).length);
    for (let i = 0; i < p.vms; i++) {
      const whole = Math.round(p.memMiB[i % p.memMiB.length] * PAGES_PER_MIB);
      this.vms.push({
        index: i,
        name: `vm${String(i).padStart(width, '0')}`,
        pages: whole + (tail > 0 ? 1 : 0),
        bytes: whole * PAGE_SIZE + tail,
      });
    }
    this.pages = new PageFactory(p.seed, p.randomFraction);
    // Shared counts per VM and pool tiling.
    const sharedCount = this.vms.map((vm) => {
      const zero = Math.round(p.zeroFraction * vm.pages);
      return Math.round(p.sharedFraction * (vm.pages - zero));
    });
    this.poolSize = Math.max(0, ...sharedCount);
    const biggest = sharedCount.indexOf(this.poolSize);
    // The other VMs' windows start at evenly spread points: back to back when they cannot cover the pool
    // together, else scaled so that they cover it exactly once over and overlap evenly with each other.
    const others = sharedCount.reduce((a, len, i) => (i === biggest ? a : a + len), 0);
    const scale = others > this.poolSize ? this.poolSize / others : 1;
    let cursor = 0;
    this.poolWindow = sharedCount.map((len, i) => {
      if (i === biggest) return { start: 0, len };
      const w = { start: this.poolSize === 0 ? 0 : Math.floor(cursor * scale) % this.poolSize, len };
      cursor += len;
      return w;
    });
    this.maps = this.vms.map(() => []);
    this.nextPrivate = this.vms.map(() => 0);
  }

  /** All (vm, snapshot) images in put order: snapshot-major (every VM's snapshot 0, then 1, ...). */
  images(): { vm: VmInfo; snap: number }[] {
    const out: { vm: VmInfo; snap: number }[] = [];
    for (let s = 0; s < this.params.snapshots; s++) for (const vm of this.vms) out.push({ vm, snap: s });
    return out;
  }

  /** Page map of one VM snapshot (computed once, by evolving from snapshot 0). */
  pageMap(vm: number, snap: number): PageMap {
    if (vm < 0 || vm >= this.vms.length) throw new RangeError(`no VM ${vm}`);
    if (snap < 0 || snap >= this.params.snapshots) throw new RangeError(`no snapshot ${snap}`);
    const maps = this.maps[vm];
    while (maps.length <= snap) maps.push(maps.length === 0 ? this.initialMap(vm) : this.evolve(vm, maps[maps.length - 1], maps.length));
    return maps[snap];
  }

  private initialMap(vmIndex: number): PageMap {
    const vm = this.vms[vmIndex];
    const p = this.params;
    const rng = new Xoshiro128(hashTuple(p.seed, 0x6c61796f, vmIndex));
    const zero = Math.round(p.zeroFraction * vm.pages);
    const win = this.poolWindow[vmIndex];
    const priv = vm.pages - zero - win.len;
    const runs: Run[] = [];
    const cut = (ns: number, start: number, count: number, mean: number) => {
      let done = 0;
      while (done < count) {
        const len = Math.min(count - done, rng.runLength(mean));
        runs.push({ ns, start: start + done, len });
        done += len;
      }
    };
    cut(NS_ZERO, 0, zero, RUN_MEAN_ZERO);
    cut(NS_POOL, win.start, win.len, RUN_MEAN_SHARED);
    cut(2 + vmIndex, 0, priv, RUN_MEAN_PRIVATE);
    this.nextPrivate[vmIndex] = priv;
    for (let i = runs.length - 1; i > 0; i--) {
      const j = rng.below(i + 1);
      const t = runs[i];
      runs[i] = runs[j];
      runs[j] = t;
    }
    const map: PageMap = { ns: new Uint16Array(vm.pages), ctr: new Uint32Array(vm.pages) };
    let at = 0;
    for (const r of runs) {
      for (let k = 0; k < r.len; k++, at++) {
        map.ns[at] = r.ns;
        // Pool indices wrap around the pool (windows tile it cyclically).
        map.ctr[at] = r.ns === NS_POOL ? (r.start + k) % this.poolSize : r.ns === NS_ZERO ? 0 : r.start + k;
      }
    }
    return map;
  }

  private evolve(vmIndex: number, prev: PageMap, snap: number): PageMap {
    const p = this.params;
    const n = prev.ns.length;
    const rng = new Xoshiro128(hashTuple(p.seed, 0x64697274, vmIndex, snap));
    const map: PageMap = { ns: prev.ns.slice(), ctr: prev.ctr.slice() };
    let zeroCount = 0;
    for (let i = 0; i < n; i++) if (prev.ns[i] === NS_ZERO) zeroCount++;
    const dataCount = n - zeroCount;
    let dirty = Math.round(p.dirtyFraction * n);
    let flips = Math.min(Math.round(dirty * FLIP_SHARE), zeroCount);
    // Data pages change in place (rewrite) or become zero (flips); zero pages become data (flips).
    let rewrite = dirty - 2 * flips;
    if (rewrite + flips > dataCount) {
      rewrite = Math.max(0, dataCount - flips);
      if (rewrite + flips > dataCount) flips = dataCount;
      dirty = rewrite + 2 * flips;
    }
    const marked = new Uint8Array(n);
    const fresh = (i: number) => {
      map.ns[i] = 2 + vmIndex;
      map.ctr[i] = this.nextPrivate[vmIndex]++;
    };
    const toZero = (i: number) => {
      map.ns[i] = NS_ZERO;
      map.ctr[i] = 0;
    };
    pickRuns(rng, prev.ns, marked, false, flips, fresh);
    pickRuns(rng, prev.ns, marked, true, flips, toZero);
    pickRuns(rng, prev.ns, marked, true, rewrite, fresh);
    return map;
  }

  /** Writes the page at page index `page` of (vm, snap) into out[off, off+PAGE_SIZE). */
  fillPage(map: PageMap, page: number, out: Uint8Array, off: number): void {
    this.pages.fill(map.ns[page], map.ctr[page], out, off);
  }

  /** The image of (vm, snap) in blocks of at most `blockBytes` (rounded down to whole pages). */
  *blocks(vm: number, snap: number, blockBytes = DEFAULT_BLOCK_BYTES): Generator<Buffer> {
    const info = this.vms[vm];
    const map = this.pageMap(vm, snap);
    const pagesPerBlock = Math.max(1, Math.floor(blockBytes / PAGE_SIZE));
    let page = 0;
    let remaining = info.bytes;
    while (remaining > 0) {
      const count = Math.min(pagesPerBlock, info.pages - page);
      const buf = Buffer.allocUnsafe(count * PAGE_SIZE);
      for (let k = 0; k < count; k++) this.fillPage(map, page + k, buf, k * PAGE_SIZE);
      page += count;
      const len = Math.min(remaining, buf.length);
      remaining -= len;
      yield len === buf.length ? buf : buf.subarray(0, len);
    }
  }
}

/**
 * Marks `count` unmarked pages whose zero-ness matches `wantData`, in runs, and applies `apply` to each.
 * Random probing first, then a linear sweep from a random point so it always terminates.
 */
function pickRuns(
  rng: Xoshiro128,
  ns: Uint16Array,
  marked: Uint8Array,
  wantData: boolean,
  count: number,
  apply: (i: number) => void,
): void {
  const n = ns.length;
  const ok = (i: number) => marked[i] === 0 && (ns[i] !== NS_ZERO) === wantData;
  let left = count;
  let misses = 0;
  while (left > 0 && misses < 64 + 4 * count) {
    let i = rng.below(n);
    if (!ok(i)) {
      misses++;
      continue;
    }
    let len = rng.runLength(RUN_MEAN_DIRTY);
    while (len-- > 0 && left > 0 && i < n && ok(i)) {
      marked[i] = 1;
      apply(i);
      left--;
      i++;
    }
  }
  const start = rng.below(n);
  for (let k = 0; k < n && left > 0; k++) {
    const i = (start + k) % n;
    if (ok(i)) {
      marked[i] = 1;
      apply(i);
      left--;
    }
  }
}

/** Blocks of one image of a parameter set (convenience over `new Workload(params).blocks`). */
export function imageBlocks(
  params: Partial<WorkloadParams>,
  vm: number,
  snap: number,
  blockBytes = DEFAULT_BLOCK_BYTES,
): Generator<Buffer> {
  return new Workload(params).blocks(vm, snap, blockBytes);
}

export interface ImageFile {
  /** VM (folder) name. */
  vm: string;
  /** Snapshot number within the VM, 0-based. */
  snap: number;
  path: string;
  bytes: number;
}

/**
 * Writes every image as `dir/<vmName>/<snapNo>.img` (the layout `vnstore bench --images DIR` reads) and
 * returns the files in put order (snapshot-major).
 */
export async function writeWorkload(
  dir: string,
  params: Partial<WorkloadParams> | Workload,
  onImage?: (f: ImageFile, index: number, total: number) => void,
): Promise<ImageFile[]> {
  const w = params instanceof Workload ? params : new Workload(params);
  const list = w.images();
  const files: ImageFile[] = [];
  for (const vm of w.vms) await mkdir(join(dir, vm.name), { recursive: true });
  for (const [i, { vm, snap }] of list.entries()) {
    const path = join(dir, vm.name, `${snap}.img`);
    const fh = await open(path, 'w');
    try {
      for (const b of w.blocks(vm.index, snap)) await fh.write(b);
    } finally {
      await fh.close();
    }
    const f = { vm: vm.name, snap, path, bytes: vm.bytes };
    files.push(f);
    onImage?.(f, i, list.length);
  }
  return files;
}
