import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';
import { compressSync } from 'lz4-napi';
import { describe, expect, it } from 'vitest';
import { computeIdeal, ZstdBounds, type ImageSource } from '../src/sim/ideal.js';
import { getZstd, type ZstdCodec } from '../src/chunk/zstd.js';
import { PAGE_SIZE, Workload, WorkloadParamError, resolveParams, writeWorkload, type WorkloadParams } from '../src/sim/workload.js';

const SMALL: Partial<WorkloadParams> = {
  vms: 3,
  memMiB: [2, 3, 4],
  snapshots: 3,
  zeroFraction: 0.4,
  sharedFraction: 0.3,
  randomFraction: 0.2,
  dirtyFraction: 0.1,
  seed: 7,
};

function image(w: Workload, vm: number, snap: number, blockBytes?: number): Buffer {
  return Buffer.concat([...w.blocks(vm, snap, blockBytes)]);
}

function pages(img: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let o = 0; o < img.length; o += PAGE_SIZE) {
    const p = Buffer.alloc(PAGE_SIZE);
    img.copy(p, 0, o, Math.min(o + PAGE_SIZE, img.length));
    out.push(p);
  }
  return out;
}

const isZero = (p: Buffer) => p.every((b) => b === 0);
const hex = (p: Buffer) => blake3(p).toString('hex');

function digestAll(w: Workload): string {
  const h = createHash('sha256');
  for (const { vm, snap } of w.images()) for (const b of w.blocks(vm.index, snap)) h.update(b);
  return h.digest('hex');
}

describe('workload generator', () => {
  it('is deterministic: same seed, same bytes; other seed, other bytes', () => {
    const a = digestAll(new Workload(SMALL));
    expect(digestAll(new Workload(SMALL))).toBe(a);
    expect(digestAll(new Workload({ ...SMALL, seed: 8 }))).not.toBe(a);
  });

  it('streams blocks of bounded size whose bytes do not depend on the block size', () => {
    const w = new Workload({ ...SMALL, trailingBytes: 1234 });
    const vm = w.vms[1];
    expect(vm.bytes).toBe(3 * 1024 * 1024 + 1234);
    const blocks = [...w.blocks(1, 2, 64 * 1024)];
    for (const b of blocks) expect(b.length).toBeLessThanOrEqual(64 * 1024);
    const whole = Buffer.concat(blocks);
    expect(whole.length).toBe(vm.bytes);
    expect(whole.equals(image(new Workload({ ...SMALL, trailingBytes: 1234 }), 1, 2))).toBe(true);
    // Snapshots can be asked for in any order.
    const w2 = new Workload({ ...SMALL, trailingBytes: 1234 });
    expect(image(w2, 1, 2).equals(whole)).toBe(true);
  });

  it('measured zero, shared, dirty and random fractions follow the parameters', () => {
    const w = new Workload(SMALL);
    const imgs = w.vms.map((vm) => Array.from({ length: 3 }, (_, s) => pages(image(w, vm.index, s))));
    // Zero pages: per image, near the requested share (dirty flips keep it stable).
    for (const snaps of imgs) {
      for (const pg of snaps) {
        const z = pg.filter(isZero).length / pg.length;
        expect(Math.abs(z - 0.4)).toBeLessThan(0.01);
      }
    }
    // Shared: non-zero pages of snapshot 0 also present in another VM's snapshot 0.
    const sets = imgs.map((snaps) => new Set(snaps[0].filter((p) => !isZero(p)).map(hex)));
    sets.forEach((set, a) => {
      const others = sets.filter((_, b) => b !== a);
      const shared = [...set].filter((d) => others.some((o) => o.has(d))).length;
      expect(Math.abs(shared / set.size - 0.3)).toBeLessThan(0.01);
    });
    // Dirty: page slots whose content differs between consecutive snapshots.
    for (const snaps of imgs) {
      for (let s = 1; s < snaps.length; s++) {
        let diff = 0;
        for (let i = 0; i < snaps[s].length; i++) if (!snaps[s][i].equals(snaps[s - 1][i])) diff++;
        expect(Math.abs(diff / snaps[s].length - 0.1)).toBeLessThan(0.005);
      }
    }
    // Random pages do not shrink; the others shrink 1.5-3x on average.
    let incompressible = 0;
    let nonZero = 0;
    let lzSum = 0;
    const distinct = new Map<string, Buffer>();
    for (const snaps of imgs) for (const pg of snaps) for (const p of pg) if (!isZero(p)) distinct.set(hex(p), p);
    for (const p of distinct.values()) {
      nonZero++;
      const n = compressSync(p).length - 4;
      if (n >= PAGE_SIZE) incompressible++;
      else lzSum += n;
    }
    expect(Math.abs(incompressible / nonZero - 0.2)).toBeLessThan(0.03);
    const meanRatio = PAGE_SIZE / (lzSum / (nonZero - incompressible));
    expect(meanRatio).toBeGreaterThan(1.5);
    expect(meanRatio).toBeLessThan(3);
  });

  it('places shared pages at different offsets in different VMs', () => {
    const w = new Workload({ ...SMALL, vms: 2, memMiB: [4] });
    const where = (vm: number) => {
      const m = new Map<string, number>();
      pages(image(w, vm, 0)).forEach((p, i) => {
        if (!isZero(p)) m.set(hex(p), i);
      });
      return m;
    };
    const a = where(0);
    const b = where(1);
    let common = 0;
    let sameOffset = 0;
    for (const [d, i] of a) {
      const j = b.get(d);
      if (j === undefined) continue;
      common++;
      if (i === j) sameOffset++;
    }
    expect(common).toBeGreaterThan(100);
    expect(sameOffset / common).toBeLessThan(0.05);
  });

  it('rejects bad parameters with one-line errors', () => {
    expect(() => resolveParams({ zeroFraction: 1.5 })).toThrow(WorkloadParamError);
    expect(() => resolveParams({ vms: 0 })).toThrow(/vms must be an integer/);
    expect(() => resolveParams({ memMiB: [0] })).toThrow(/memory size/);
    expect(() => resolveParams({ trailingBytes: 4096 })).toThrow(/trailingBytes/);
  });
});

describe('ideal bounds', () => {
  /** Brute force: every page digested, sets of hex strings, LZ4 per distinct page. */
  function bruteForce(w: Workload) {
    const vmSets = w.vms.map(() => new Set<string>());
    const all = new Map<string, number>();
    let logical = 0;
    let total = 0;
    let zero = 0;
    for (const { vm, snap } of w.images()) {
      const img = image(w, vm.index, snap);
      logical += img.length;
      for (const p of pages(img)) {
        total++;
        if (isZero(p)) {
          zero++;
          continue;
        }
        const d = hex(p);
        vmSets[vm.index].add(d);
        if (!all.has(d)) all.set(d, Math.min(compressSync(p).length - 4, PAGE_SIZE));
      }
    }
    const sharing = vmSets.map((a) => vmSets.map((b) => [...a].filter((d) => b.has(d)).length / a.size));
    let lz = 0;
    for (const n of all.values()) lz += n;
    return { logical, total, zero, distinct: all.size, lz, sharing, vmDistinct: vmSets.map((s) => s.size) };
  }

  it('matches a brute-force count on a tiny workload (odd lengths, repeats, zero pages)', async () => {
    const params = { ...SMALL, memMiB: [0.25, 0.5, 0.375], trailingBytes: 777, dirtyFraction: 0.2 };
    const w = new Workload(params);
    const sources: ImageSource[] = w.images().map(({ vm, snap }) => ({
      vm: vm.name,
      snap,
      // Odd block sizes exercise page reassembly across block boundaries.
      blocks: function* () {
        const img = image(w, vm.index, snap);
        for (let o = 0; o < img.length; o += 5000) yield img.subarray(o, o + 5000);
      },
    }));
    const r = await computeIdeal(sources);
    const b = bruteForce(w);
    expect(r.logicalBytes).toBe(b.logical);
    expect(r.pages).toBe(b.total);
    expect(r.zeroPages).toBe(b.zero);
    expect(r.nonZeroPages).toBe(b.total - b.zero);
    expect(r.distinctPages).toBe(b.distinct);
    expect(r.dedupBytes).toBe(b.distinct * PAGE_SIZE);
    expect(r.dedupLz4Bytes).toBe(b.lz);
    expect(r.vmDistinctPages).toEqual(b.vmDistinct);
    r.sharing.forEach((row, a) => row.forEach((x, c) => expect(x).toBeCloseTo(b.sharing[a][c], 12)));
    expect(r.perImage.reduce((s, x) => s + x.newLz4Bytes, 0)).toBe(b.lz);
    expect(r.perImage.reduce((s, x) => s + x.newDistinctPages, 0)).toBe(b.distinct);
    expect(r.zeroPages).toBeGreaterThan(0);
    expect(r.incompressiblePages).toBeGreaterThan(0);
  });

  it('writes the DIR/<vm>/<snap>.img layout and reads it back to the same bounds', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vnstore-wl-'));
    try {
      const params = { ...SMALL, memMiB: [0.5, 0.25], vms: 2, snapshots: 2, trailingBytes: 100 };
      const files = await writeWorkload(dir, params);
      expect(files.map((f) => `${f.vm}/${f.snap}`)).toEqual(['vm00/0', 'vm01/0', 'vm00/1', 'vm01/1']);
      const w = new Workload(params);
      for (const f of files) {
        expect(f.path).toBe(join(dir, f.vm, `${f.snap}.img`));
        expect((await stat(f.path)).size).toBe(f.bytes);
        const vm = w.vms.find((v) => v.name === f.vm)!;
        expect((await readFile(f.path)).equals(image(w, vm.index, f.snap))).toBe(true);
      }
      const fromFiles = await computeIdeal(files);
      const fromStreams = await computeIdeal(
        w.images().map(({ vm, snap }) => ({ vm: vm.name, snap, blocks: () => w.blocks(vm.index, snap) })),
      );
      expect(fromFiles).toEqual(fromStreams);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('zstd bounds (c) and (d)', () => {
  const zstd = (() => {
    try {
      return getZstd('native');
    } catch {
      return null;
    }
  })();

  /** A page from a seed: a few runs of bytes and a counter, so zstd shrinks it by a seed-dependent amount. */
  function page(seed: number): Buffer {
    const p = Buffer.alloc(PAGE_SIZE);
    for (let i = 0; i < PAGE_SIZE; i++) p[i] = (i % (seed + 2) === 0 ? seed : (i >> (seed % 7)) + seed) & 0xff;
    return p;
  }
  /** xorshift32 bytes: a page no compressor shrinks. */
  function noise(seed: number): Buffer {
    const p = Buffer.alloc(PAGE_SIZE);
    let x = seed | 1;
    for (let i = 0; i < PAGE_SIZE; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      p[i] = x & 0xff;
    }
    return p;
  }
  const frame = (z: ZstdCodec, bytes: Buffer) => z.compress(bytes, new Uint32Array([0]), new Uint32Array([bytes.length]), 3).payload.length;

  it.runIf(zstd !== null)('are exact on known images: distinct non-zero pages in first-seen order, 16 to a container', async () => {
    const z = zstd as ZstdCodec;
    // 18 distinct pages (so one full container and one of 2), a random one that zstd cannot shrink,
    // repeats within and across images, and zero pages that no bound counts.
    const rnd = noise(0x9e3779b9);
    const distinct = [...Array.from({ length: 17 }, (_, k) => page(k + 1)), rnd];
    const zero = Buffer.alloc(PAGE_SIZE);
    const img1 = Buffer.concat([distinct[0], zero, distinct[1], distinct[0], ...distinct.slice(2, 10)]);
    const img2 = Buffer.concat([distinct[5], ...distinct.slice(10), zero, distinct[17]]);
    const r = await computeIdeal([
      { vm: 'a', snap: 0, blocks: () => [img1] },
      { vm: 'b', snap: 0, blocks: () => [img2] },
    ]);
    expect(r.distinctPages).toBe(18);
    expect(r.zstdLevel).toBe(3);
    expect(r.containerPages).toBe(16);
    expect(r.zstdUnavailable).toBeUndefined();
    const perPage = distinct.reduce((s, p) => s + Math.min(frame(z, p), PAGE_SIZE), 0);
    expect(r.dedupZstdPageBytes).toBe(perPage);
    expect(Math.min(frame(z, rnd), PAGE_SIZE)).toBe(PAGE_SIZE); // the random page counts raw
    const first = Buffer.concat(distinct.slice(0, 16));
    const last = Buffer.concat(distinct.slice(16));
    expect(r.dedupZstdContainerBytes).toBe(frame(z, first) + Math.min(frame(z, last), 2 * PAGE_SIZE));
  });

  it.runIf(zstd !== null)('ZstdBounds counts an incompressible container at its raw size', () => {
    const b = new ZstdBounds(zstd as ZstdCodec, 3, 2);
    b.add(noise(1));
    b.add(noise(2));
    b.add(noise(3));
    b.finish();
    expect(b.pageBytes).toBe(3 * PAGE_SIZE);
    expect(b.containerBytes).toBe(3 * PAGE_SIZE);
  });

  it('without native zstd the bounds are null, with the reason', async () => {
    const r = await computeIdeal([{ vm: 'a', snap: 0, blocks: () => [page(3)] }], undefined, () => getZstd('js'));
    expect(r.dedupZstdPageBytes).toBeNull();
    expect(r.dedupZstdContainerBytes).toBeNull();
    expect(r.zstdUnavailable).toMatch(/need the native addon/);
  });
});
