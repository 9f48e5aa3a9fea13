/**
 * Thread-pool jobs (docs/DESIGN.md, "Thread-pool jobs"): the addons' promise-returning calls must
 * give exactly the bytes of their synchronous twins, refuse bad arguments before anything runs, and
 * a hash job run on the libuv thread pool must equal the same job run by runHashJob. A one-shot
 * store with thread-pool jobs never starts workers, and sessions reading different files at once
 * store both exactly. The vnstore executable sizes the pool before Node starts it.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { availableParallelism, constants as osConstants } from 'node:os';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { blake3 } from '@napi-rs/blake-hash';
import { crc32OnThreadPool, getCodec } from '../src/chunk/codec.js';
import { hashPages, pageScanner } from '../src/chunk/hash.js';
import { runHashJob, runHashJobOnThreadPool, type HashJob, type HashResult } from '../src/chunk/page-jobs.js';
import { PagePool } from '../src/chunk/worker-pool.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../src/format/pages.js';
import { ChunkTable } from '../src/index/chunk-table.js';
import { Store } from '../src/store/store.js';
import { CLI, makePage, initStore, tempDirs, restoreToBuffer, type PageKindSpec } from './helpers/engine.js';

const tempDir = tempDirs();

const scan = pageScanner();
const codec = getCodec();
// The suite's native build always has both; without them these paths are simply not taken.
const native = scan !== undefined && codec.compressPagesAsync !== undefined;
const scanPages = scan?.scanPagesAsync;
const scanFile = scan?.scanFileAsync;

const kindArb = fc.constantFrom<PageKindSpec>('zero', 'random', 'compressible', 'sparse');
/** A block: page kinds and seeds, with repeats (duplicates inside the block). */
const blockArb = fc.array(fc.tuple(kindArb, fc.nat({ max: 6 })), { minLength: 1, maxLength: 40 });

function blockOf(spec: [PageKindSpec, number][]): Uint8Array {
  const out = new Uint8Array(spec.length * PAGE_SIZE);
  spec.forEach(([kind, seed], i) => out.set(makePage(kind, seed), i * PAGE_SIZE));
  return out;
}

function sameResult(a: HashResult, b: HashResult): void {
  expect(Array.from(a.status)).toEqual(Array.from(b.status));
  expect(Buffer.from(a.digests).equals(Buffer.from(b.digests))).toBe(true);
  expect(Buffer.from(a.payload).equals(Buffer.from(b.payload))).toBe(true);
  expect(Array.from(a.lengths)).toEqual(Array.from(b.lengths));
  expect(Array.from(a.codecs)).toEqual(Array.from(b.codecs));
  expect(Buffer.from(a.maybeRaw).equals(Buffer.from(b.maybeRaw))).toBe(true);
}

describe.runIf(native)('thread-pool addon calls', () => {
  it("scanPagesAsync flags zero pages and hashes the others in place, leaving zero pages' slots alone", async () => {
    await fc.assert(
      fc.asyncProperty(blockArb, async (spec) => {
        const src = blockOf(spec);
        const n = spec.length;
        const zero = new Uint8Array(n).fill(7);
        const out = new Uint8Array(n * DIGEST_BYTES).fill(0xa5);
        const nonZero = await scanPages!(src, n, zero, out);
        let want = 0;
        for (let i = 0; i < n; i++) {
          const page = src.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
          const isZero = page.every((b) => b === 0);
          expect(zero[i]).toBe(isZero ? 1 : 0);
          const slot = Buffer.from(out.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES));
          if (isZero) expect(slot.equals(Buffer.alloc(DIGEST_BYTES, 0xa5))).toBe(true);
          else {
            want++;
            expect(slot.equals(blake3(Buffer.from(page)))).toBe(true);
          }
        }
        expect(nonZero).toBe(want);
      }),
      { numRuns: 40 },
    );
  });

  it('scanPagesAsync refuses bad arguments at the call, before any byte is written', () => {
    const src = new Uint8Array(3 * PAGE_SIZE).fill(1);
    const zero = new Uint8Array(3).fill(9);
    const out = new Uint8Array(3 * DIGEST_BYTES).fill(9);
    expect(() => scanPages!(src, 4, zero, out)).toThrow(RangeError); // more pages than src holds
    expect(() => scanPages!(src, 3, zero.subarray(0, 2), out)).toThrow(RangeError);
    expect(() => scanPages!(src, 3, zero, out.subarray(0, 64))).toThrow(RangeError);
    const unaligned = new Uint8Array(3 * PAGE_SIZE + 1).subarray(1);
    expect(() => scanPages!(unaligned, 3, zero, out)).toThrow(RangeError);
    expect(() => scanPages!(src as unknown as Uint8Array, 3, new Uint16Array(3) as unknown as Uint8Array, out)).toThrow(TypeError);
    expect(zero.every((b) => b === 9) && out.every((b) => b === 9)).toBe(true);
  });

  it('scanFileAsync reads a file range, zero-pads it to whole pages and scans it as scanPagesAsync does', async () => {
    const root = tempDir('tpool');
    const file = path.join(root, 'image.bin');
    await fc.assert(
      fc.asyncProperty(blockArb, fc.nat({ max: PAGE_SIZE - 1 }), fc.nat({ max: 3 * PAGE_SIZE }), async (spec, cut, prefix) => {
        const src = blockOf(spec);
        const n = spec.length;
        const length = n * PAGE_SIZE - cut;
        writeFileSync(file, Buffer.concat([Buffer.alloc(prefix, 0x5c), src.subarray(0, length), Buffer.alloc(100, 0x77)]));
        const padded = new Uint8Array(n * PAGE_SIZE);
        padded.set(src.subarray(0, length));
        const wantZero = new Uint8Array(n);
        const wantOut = new Uint8Array(n * DIGEST_BYTES);
        await scanPages!(padded, n, wantZero, wantOut);
        const dst = new Uint8Array(n * PAGE_SIZE).fill(0xee); // stale bytes of a reused buffer
        const zero = new Uint8Array(n);
        const out = new Uint8Array(n * DIGEST_BYTES);
        const fd = openSync(file, 'r');
        try {
          expect(await scanFile!(fd, prefix, length, dst, n, zero, out)).toBe(length);
        } finally {
          closeSync(fd);
        }
        expect(Buffer.from(dst).equals(Buffer.from(padded))).toBe(true);
        expect(Array.from(zero)).toEqual(Array.from(wantZero));
        expect(Buffer.from(out).equals(Buffer.from(wantOut))).toBe(true);
      }),
      { numRuns: 40 },
    );
  });

  it('scanFileAsync reports a file that ends early and a failed read, and scans nothing then', async () => {
    const root = tempDir('tpool');
    const file = path.join(root, 'short.bin');
    writeFileSync(file, Buffer.alloc(PAGE_SIZE + 10, 1));
    const dst = new Uint8Array(2 * PAGE_SIZE);
    const zero = new Uint8Array(2).fill(9);
    const out = new Uint8Array(2 * DIGEST_BYTES).fill(9);
    const fd = openSync(file, 'r');
    try {
      expect(await scanFile!(fd, 0, 2 * PAGE_SIZE, dst, 2, zero, out)).toBe(PAGE_SIZE + 10);
    } finally {
      closeSync(fd);
    }
    const dirFd = openSync(root, 'r'); // read(2) on a directory fails with EISDIR
    try {
      expect(await scanFile!(dirFd, 0, PAGE_SIZE, dst, 1, zero, out)).toBe(-osConstants.errno.EISDIR);
    } finally {
      closeSync(dirFd);
    }
    expect(zero.every((b) => b === 9) && out.every((b) => b === 9)).toBe(true);
  });

  it('scanFileAsync refuses bad arguments at the call, before anything is read', () => {
    const root = tempDir('tpool');
    const file = path.join(root, 'f.bin');
    writeFileSync(file, Buffer.alloc(3 * PAGE_SIZE, 1));
    const dst = new Uint8Array(3 * PAGE_SIZE).fill(9);
    const zero = new Uint8Array(3).fill(9);
    const out = new Uint8Array(3 * DIGEST_BYTES).fill(9);
    const fd = openSync(file, 'r');
    try {
      expect(() => scanFile!(fd, 0, 3 * PAGE_SIZE + 1, dst, 3, zero, out)).toThrow(RangeError); // more than count pages
      expect(() => scanFile!(fd, 0, PAGE_SIZE, dst, 4, zero, out)).toThrow(RangeError); // dst too small
      expect(() => scanFile!(fd, 0, PAGE_SIZE, dst, 3, zero.subarray(0, 2), out)).toThrow(RangeError);
      expect(() => scanFile!(fd, 0, PAGE_SIZE, new Uint8Array(3 * PAGE_SIZE + 1).subarray(1), 3, zero, out)).toThrow(RangeError);
      expect(() => scanFile!(-1, 0, PAGE_SIZE, dst, 3, zero, out)).toThrow(TypeError);
      expect(() => scanFile!(fd, -1, PAGE_SIZE, dst, 3, zero, out)).toThrow(TypeError);
      expect(() => scanFile!(fd, 0, PAGE_SIZE, dst as unknown as Uint8Array, 3, new Uint16Array(3) as unknown as Uint8Array, out)).toThrow(
        TypeError,
      );
    } finally {
      closeSync(fd);
    }
    expect(dst.every((b) => b === 9) && zero.every((b) => b === 9) && out.every((b) => b === 9)).toBe(true);
  });

  it('compressPagesAsync writes the bytes compressPages writes', async () => {
    await fc.assert(
      fc.asyncProperty(blockArb, fc.array(fc.nat({ max: 39 }), { maxLength: 30 }), async (spec, picks) => {
        const src = blockOf(spec);
        const offsets = Uint32Array.from(
          picks.filter((p) => p < spec.length),
          (p) => p * PAGE_SIZE,
        );
        const want = codec.compressPages(src, offsets, new Uint8Array(offsets.length * PAGE_SIZE));
        const got = await codec.compressPagesAsync!(src, offsets, new Uint8Array(offsets.length * PAGE_SIZE));
        expect(Buffer.from(got.payload).equals(Buffer.from(want.payload))).toBe(true);
        expect(Array.from(got.lengths)).toEqual(Array.from(want.lengths));
        expect(Array.from(got.codecs)).toEqual(Array.from(want.codecs));
      }),
      { numRuns: 40 },
    );
  });

  it("crc32OnThreadPool continues a CRC-32 exactly as node:zlib's crc32 does, in pieces or whole", async () => {
    const sum = crc32OnThreadPool();
    expect(sum).toBeDefined();
    await fc.assert(
      // Non-empty: node:zlib answers 0 for an empty buffer whatever the CRC so far (zlib's Z_NULL case),
      // where the addon returns the CRC unchanged; packs never sum an empty batch.
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 70_000 }), fc.nat({ max: 70_000 }), fc.nat(), async (data, cut, seed) => {
        const at = Math.min(cut, data.length);
        const prev = seed >>> 0;
        expect(await sum!(data, prev)).toBe(crc32(data, prev));
        expect(await sum!(data.subarray(at), await sum!(data.subarray(0, at), 0))).toBe(crc32(data));
      }),
      { numRuns: 200 },
    );
  });

  it('compressPagesAsync refuses an offset past src or a short destination at the call', () => {
    const src = new Uint8Array(2 * PAGE_SIZE).fill(3);
    const dst = new Uint8Array(2 * PAGE_SIZE).fill(9);
    expect(() => codec.compressPagesAsync!(src, Uint32Array.of(0, PAGE_SIZE + 1), dst)).toThrow(RangeError);
    expect(() => codec.compressPagesAsync!(src, Uint32Array.of(0, PAGE_SIZE), dst.subarray(0, PAGE_SIZE))).toThrow(RangeError);
    expect(dst.every((b) => b === 9)).toBe(true);
  });
});

describe.runIf(native)('hash jobs on the thread pool', () => {
  it('give the results of runHashJob: any block, parent digests, table hits, file ranges', async () => {
    const root = tempDir('tpool');
    await fc.assert(
      fc.asyncProperty(
        blockArb,
        fc.array(fc.boolean(), { maxLength: 40 }),
        fc.array(fc.boolean(), { maxLength: 40 }),
        fc.nat({ max: PAGE_SIZE - 1 }),
        fc.boolean(),
        fc.nat({ max: 2 * PAGE_SIZE }),
        async (spec, sameAsParent, inTable, cut, fromFile, at) => {
          const src = blockOf(spec);
          const n = spec.length;
          // Parent digests: the real digest where sameAsParent says so, another page's otherwise.
          const real = new Uint8Array(n * DIGEST_BYTES);
          hashPages(
            src,
            Uint32Array.from({ length: n }, (_, i) => i),
            real,
          );
          const parentDigests = new Uint8Array(n * DIGEST_BYTES);
          const parentHasDigest = new Uint8Array(n);
          const table = new ChunkTable(64);
          for (let i = 0; i < n; i++) {
            parentHasDigest[i] = 1;
            if (sameAsParent[i]) parentDigests.set(real.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), i * DIGEST_BYTES);
            else parentDigests.set(blake3(Buffer.from(makePage('random', 900 + i))), i * DIGEST_BYTES);
            if (inTable[i] || sameAsParent[i])
              table.insert(real, { pack: 1, offset: i * 10, storedLength: 10, codec: 1 }, i * DIGEST_BYTES);
          }
          // A file job reads a range whose last page may be short (zero-padded).
          const length = n * PAGE_SIZE - (fromFile ? cut : 0);
          const file = path.join(root, 'image.bin');
          if (fromFile) writeFileSync(file, Buffer.concat([Buffer.alloc(at, 0x3c), src.subarray(0, length)]));
          const expectedPages = new Uint8Array(src.subarray(0, length).length + (n * PAGE_SIZE - length));
          expectedPages.set(src.subarray(0, length));
          const job = (): HashJob => ({
            kind: 'hash',
            pages: fromFile ? new Uint8Array(0) : Uint8Array.from(expectedPages),
            file: fromFile ? { path: file, offset: at, length } : undefined,
            pageCount: n,
            parentDigests,
            parentHasDigest,
            table: table.shared,
            payloadSlab: new Uint8Array(n * PAGE_SIZE),
          });
          const want = runHashJob(job());
          const running = runHashJobOnThreadPool(job(), () => new Uint8Array(n * PAGE_SIZE).fill(0xee));
          expect(running).toBeDefined();
          sameResult(await running!, want);
        },
      ),
      { numRuns: 60 },
    );
  });

  it("with claimedDigests (a server's received pages) give the results of hashing when every claim holds, and refuse the block at the first that does not, inline and on the thread pool", async () => {
    await fc.assert(
      fc.asyncProperty(
        blockArb,
        fc.array(fc.boolean(), { maxLength: 40 }),
        fc.array(fc.boolean(), { maxLength: 40 }),
        fc.nat(),
        async (spec, sameAsParent, inTable, wrongSeed) => {
          const src = blockOf(spec);
          const n = spec.length;
          // What an agent claims: every page's digest, a zero page's too.
          const real = new Uint8Array(n * DIGEST_BYTES);
          for (let i = 0; i < n; i++) real.set(blake3(Buffer.from(src.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE))), i * DIGEST_BYTES);
          const parentDigests = new Uint8Array(n * DIGEST_BYTES);
          const parentHasDigest = new Uint8Array(n).fill(1);
          const table = new ChunkTable(64);
          for (let i = 0; i < n; i++) {
            if (sameAsParent[i]) parentDigests.set(real.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), i * DIGEST_BYTES);
            if (inTable[i] || sameAsParent[i])
              table.insert(real, { pack: 1, offset: i * 10, storedLength: 10, codec: 1 }, i * DIGEST_BYTES);
          }
          const job = (claimedDigests?: Uint8Array): HashJob => ({
            kind: 'hash',
            pages: Uint8Array.from(src),
            pageCount: n,
            parentDigests,
            parentHasDigest,
            table: table.shared,
            payloadSlab: new Uint8Array(n * PAGE_SIZE),
            claimedDigests,
          });
          const want = runHashJob(job());
          const both = async (claims: Uint8Array) => [
            runHashJob(job(claims)),
            (await runHashJobOnThreadPool(job(claims), () => new Uint8Array(0)))!,
          ];
          for (const r of await both(real)) {
            expect(r.refusedAt).toBeUndefined();
            sameResult(r, want);
          }
          // One claim wrong (a zero page's too: it must be the zero page's digest): refused there,
          // with nothing classified or compressed, and the job's buffers handed back.
          const k = wrongSeed % n;
          const wrong = Uint8Array.from(real);
          wrong[k * DIGEST_BYTES + (wrongSeed % DIGEST_BYTES)] ^= 1 << (wrongSeed % 8);
          for (const r of await both(wrong)) {
            expect(r.refusedAt).toBe(k);
            expect(r.status.length + r.payload.length + r.lengths.length + r.maybeRaw.length).toBe(0);
            expect(r.slab?.length).toBe(n * PAGE_SIZE);
            expect(r.pages?.length).toBe(n * PAGE_SIZE);
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  it('fail as runHashJob does on a file that ends early or cannot be read', async () => {
    const root = tempDir('tpool');
    const file = path.join(root, 'short.bin');
    writeFileSync(file, Buffer.alloc(PAGE_SIZE + 10, 1));
    const job = (p: string): HashJob => ({
      kind: 'hash',
      pages: new Uint8Array(0),
      file: { path: p, offset: 0, length: 2 * PAGE_SIZE },
      pageCount: 2,
    });
    expect(() => runHashJob(job(file))).toThrow(/file shrank while being read/);
    await expect(runHashJobOnThreadPool(job(file), () => new Uint8Array(2 * PAGE_SIZE))!).rejects.toThrow(/file shrank while being read/);
    expect(() => runHashJob(job(root))).toThrow(expect.objectContaining({ code: 'EISDIR' }));
    await expect(runHashJobOnThreadPool(job(root), () => new Uint8Array(2 * PAGE_SIZE))!).rejects.toMatchObject({
      code: 'EISDIR',
      syscall: 'read',
      path: root,
    });
  });

  it('a pool with no worker free sends hash jobs to the thread pool; with threadPool: false, to the caller', async () => {
    const page = makePage('compressible', 31);
    const job = (): HashJob => ({
      kind: 'hash',
      pages: Uint8Array.from(Buffer.concat([page, page, Buffer.alloc(PAGE_SIZE)])),
      pageCount: 3,
    });
    const onPool = new PagePool(0);
    const onCaller = new PagePool(0, { threadPool: false });
    try {
      const a = await onPool.hash(job());
      const b = await onCaller.hash(job());
      expect(onPool.jobCounts).toEqual({ inline: 0, threadPool: 1, worker: 0 });
      expect(onCaller.jobCounts).toEqual({ inline: 1, threadPool: 0, worker: 0 });
      sameResult(a, b);
      onPool.wantWorkers();
      expect(onPool.size).toBe(0); // thread-pool jobs serve: no worker is started
    } finally {
      await onPool.close();
      await onCaller.close();
    }
  });

  it('a one-shot store never starts workers, and sessions reading different files at once store both exactly', async () => {
    const root = tempDir('tpool');
    const dir = await initStore(root);
    const images = [0, 1, 2].map((v) =>
      Buffer.concat(
        Array.from({ length: 2100 + v * 300 }, (_, i) =>
          makePage((['compressible', 'random', 'zero', 'sparse'] as const)[(i * 7 + v) % 4], v * 10000 + (i % 900)),
        ),
      ),
    );
    images[1] = images[1].subarray(0, images[1].length - 123); // a short last page
    const files = images.map((img, v) => {
      const f = path.join(root, `vm${v}.img`);
      writeFileSync(f, img);
      return f;
    });
    const store = await Store.open(dir, { workers: 1, startWorkers: 'on-demand' });
    try {
      const records = await Promise.all(
        files.map(async (f, v) => {
          const s = await store.beginSession({ vm: `vm${v}` });
          await s.writeFileRange(0, f, 0, images[v].length);
          return s.commit();
        }),
      );
      expect(store.pool.size).toBe(0);
      expect(store.pool.jobCounts.threadPool).toBeGreaterThanOrEqual(6);
      for (let v = 0; v < 3; v++) expect((await restoreToBuffer(store, records[v])).equals(images[v])).toBe(true);
    } finally {
      await store.close();
    }
  });
});

describe('the vnstore executable', () => {
  /** UV_THREADPOOL_SIZE as the command saw it at exit (a preloaded CommonJS hook prints it). */
  function poolSizeSeen(env: Record<string, string | undefined>, args = ['--version']): string {
    const hook = path.join(tempDir('bin'), 'hook.cjs');
    writeFileSync(hook, "process.on('exit', () => process.stderr.write('pool=' + process.env.UV_THREADPOOL_SIZE + '\\n'));\n");
    const r = spawnSync(process.execPath, ['-r', hook, CLI, ...args], { env: { ...process.env, ...env }, encoding: 'utf8' });
    expect(r.status).toBe(0);
    if (args[0] === '--version') expect(r.stdout.trim()).toMatch(/^vnstore \d+\.\d+\.\d+ \(node [^\n]+\)$/);
    return /pool=(\S+)/.exec(r.stderr)?.[1] ?? '';
  }

  it('puts an image without loading worker threads when the thread pool serves', async () => {
    const root = tempDir('bin');
    const dir = await initStore(root);
    const image = path.join(root, 'vm.img');
    writeFileSync(image, Buffer.concat([makePage('compressible', 1), makePage('random', 2), Buffer.alloc(PAGE_SIZE)]));
    const hook = path.join(root, 'hook.cjs');
    writeFileSync(
      hook,
      "process.on('exit', () => process.stderr.write('loaded=' + process.moduleLoadList.filter((m) => m.endsWith(' worker_threads')).length + '\\n'));\n",
    );
    const r = spawnSync(process.execPath, ['-r', hook, CLI, 'put', '--store', dir, '--vm', 'vm0', image], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toMatch(/^[0-9a-f]{16}$/);
    expect(r.stderr).toContain('loaded=0');
  });

  it('sizes the thread pool to the cores (2 to 4) before it starts, unless the user set it', () => {
    expect(poolSizeSeen({ UV_THREADPOOL_SIZE: undefined })).toBe(String(Math.min(4, Math.max(2, availableParallelism()))));
    expect(poolSizeSeen({ UV_THREADPOOL_SIZE: '3' })).toBe('3');
  });

  it('gives `vnstore serve` two pool threads more than the cores (at most 8), unless the user set it', () => {
    const cores = Math.max(2, availableParallelism());
    expect(poolSizeSeen({ UV_THREADPOOL_SIZE: undefined }, ['serve', '--help'])).toBe(String(Math.min(8, cores + 2)));
    expect(poolSizeSeen({ UV_THREADPOOL_SIZE: '3' }, ['serve', '--help'])).toBe('3');
    // Only the command counts, not an argument that spells it.
    expect(poolSizeSeen({ UV_THREADPOOL_SIZE: undefined }, ['ls', '--help', 'serve'])).toBe(String(Math.min(4, cores)));
  });
});
