import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { ChunkTable, fingerprint, tableHasDigest, tableLocation, type ChunkLocation } from '../src/index/chunk-table.js';
import { TABLE_FILE_VERSION, readTableFile, writeTableFile } from '../src/index/table-file.js';
import { Store, TABLE_FILE } from '../src/store/store.js';
import { slotPrefetch, touchOnThreadPool } from '../src/chunk/codec.js';
import { makeTempDir, randomPage, removeDir, restoreToBuffer } from './helpers/engine.js';

const loc = (i: number): ChunkLocation => ({ pack: i + 1, offset: 16 + i * 7, storedLength: 1 + (i % 4096), codec: i % 2 });

describe('ChunkTable', () => {
  it('behaves like a map under random inserts, relocations and removals (with growth)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.constantFrom('insert', 'remove', 'relocate'), fc.nat(300)), { minLength: 200, maxLength: 800 }),
        (ops) => {
          // Distinct fingerprints under this table's seed, but home slots clustered across the end of
          // its 1024 slots (it never grows here), so probe chains collide and wrap around: the hard
          // cases for backward-shift deletion. Picked from random digests with the table's own key.
          const t = new ChunkTable(8);
          expect(t.capacity).toBe(1024);
          const digests: Buffer[] = [];
          const fps = new Set<number>();
          const pool = randomBytes(32 * 4096);
          for (let k = 0; digests.length < 301; k = (k + 1) % 4096) {
            if (k === 0 && digests.length > 0) pool.set(randomBytes(pool.length));
            const d = Buffer.from(pool.subarray(k * 32, k * 32 + 32));
            const fp = fingerprint(t.shared, d);
            const home = fp & 1023;
            if ((home >= 1000 || home < 24) && !fps.has(fp)) {
              fps.add(fp);
              digests.push(d);
            }
          }
          const model = new Map<number, ChunkLocation>();
          for (const [op, i] of ops) {
            if (op === 'insert' && !model.has(i)) {
              t.insert(digests[i], loc(i));
              model.set(i, loc(i));
            } else if (op === 'remove') {
              t.remove(digests[i]);
              model.delete(i);
            } else if (op === 'relocate' && model.has(i)) {
              const l = { ...loc(i), pack: 9999 };
              t.relocate(digests[i], l);
              model.set(i, l);
            }
          }
          expect(t.size).toBe(model.size);
          for (let i = 0; i < digests.length; i++) {
            const got = t.get(digests[i]);
            if (model.has(i)) expect(got?.location).toEqual(model.get(i));
            else expect(got).toBeUndefined();
            expect(tableHasDigest(t.shared, digests[i])).toBe(model.has(i));
            expect(tableLocation(t.shared, digests[i])).toEqual(model.get(i));
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('prepares each growth ahead with a prefault function and grows into those words', async () => {
    const digests = Array.from({ length: 3000 }, () => randomBytes(32));
    const check = (t: ChunkTable, n: number) => {
      expect(t.size).toBe(n);
      for (let i = 0; i < digests.length; i++) expect(t.get(digests[i])?.location).toEqual(i < n ? loc(i) : undefined);
    };
    // A prefault that resolves: the spare is asked for at 55% load, and the growth at 70% uses it.
    const asked: Uint8Array[] = [];
    const t = new ChunkTable(8);
    t.useHelpers({
      prefault: (bytes) => {
        asked.push(bytes);
        return Promise.resolve(bytes.length);
      },
    });
    let n = 0;
    while (n < Math.ceil(0.55 * 1024) - 1) t.insert(digests[n], loc(n++));
    expect(asked).toHaveLength(0);
    t.insert(digests[n], loc(n++));
    expect(asked).toHaveLength(1);
    expect(asked[0].byteLength).toBe((4 + 2048 * 4) * 4); // header and twice the slots
    await Promise.resolve();
    expect(t.spareReady).toBe(true);
    while (t.capacity === 1024) t.insert(digests[n], loc(n++));
    expect(t.capacity).toBe(2048);
    expect(t.shared.buffer).toBe(asked[0].buffer);
    expect(t.spareReady).toBe(false);
    check(t, n);
    // Through joinChunk too: the next spare is asked for at 55% of 2048 slots.
    for (; n < Math.ceil(0.55 * 2048); n++) expect(t.joinChunk(digests[n], 0, n + 1, 16 + n * 7, 1 + (n % 4096))).toBe(1);
    expect(asked).toHaveLength(2);

    // A prefault still running at the growth: new memory instead, and the stale spare is dropped.
    const slow = new ChunkTable(8);
    const pending: Uint8Array[] = [];
    slow.useHelpers({
      prefault: (bytes) => {
        pending.push(bytes);
        return new Promise(() => undefined);
      },
    });
    for (n = 0; slow.capacity === 1024; n++) slow.insert(digests[n], loc(n));
    expect(pending).toHaveLength(1);
    expect(slow.shared.buffer).not.toBe(pending[0].buffer);
    check(slow, n);
    while (slow.capacity === 2048) slow.insert(digests[n], loc(n++));
    expect(pending).toHaveLength(2); // asked again for the next size
    check(slow, n);

    // A failed prefault: the growth allocates as without one.
    const failing = new ChunkTable(8);
    failing.useHelpers({ prefault: () => Promise.reject(new Error('no')) });
    for (n = 0; failing.capacity === 1024; n++) {
      failing.insert(digests[n], loc(n));
      await Promise.resolve();
    }
    check(failing, n);
  });

  it.runIf(slotPrefetch() !== undefined)('requests the lines of batched probes without changing the table, and checks its input', () => {
    const prefetch = slotPrefetch()!;
    const t = new ChunkTable(8);
    t.useHelpers({ prefetch });
    const digests = randomBytes(32 * 300);
    for (let i = 0; i < 200; i++) t.insert(digests.subarray(i * 32, i * 32 + 32), loc(i));
    const before = Buffer.from(new Uint8Array(t.shared.buffer)).toString('hex');
    t.prefetch(digests, 0, 32, 300);
    t.prefetch(digests, 32 * 299, 32, 1); // the last one: in range
    expect(Buffer.from(new Uint8Array(t.shared.buffer)).toString('hex')).toBe(before);
    for (let i = 0; i < 300; i++) expect(t.get(digests.subarray(i * 32, i * 32 + 32))?.location).toEqual(i < 200 ? loc(i) : undefined);
    // The addon's fingerprint and home slot are the table's (else it would request the wrong lines).
    const mask = t.capacity - 1;
    for (let i = 0; i < 300; i++) expect(prefetch(t.shared, digests, i * 32, 32, 1)).toBe(fingerprint(t.shared, digests, i * 32) & mask);
    expect(prefetch(t.shared, digests, 0, 32, 0)).toBe(-1);
    expect(() => prefetch(t.shared, digests, 32 * 299, 32, 2)).toThrow(/digests too short/);
    expect(() => prefetch(t.shared, digests, 0, 8, 1)).toThrow(/digests too short/);
    expect(() => prefetch(new Uint32Array(4 + 3 * 4), digests, 0, 32, 1)).toThrow(/not a chunk table/);
    expect(() => prefetch(t.shared, 'x' as unknown as Uint8Array, 0, 32, 1)).toThrow(/digests must be a Uint8Array/);
  });

  it.runIf(touchOnThreadPool() !== undefined)('touches memory on the thread pool without changing it', async () => {
    const touch = touchOnThreadPool()!;
    const bytes = new Uint8Array(new SharedArrayBuffer(5 * 4096 + 100));
    for (let i = 0; i < bytes.length; i += 7) bytes[i] = (i * 31) & 0xff;
    const before = Buffer.from(bytes);
    expect(await touch(bytes)).toBe(6);
    expect(Buffer.from(bytes).equals(before)).toBe(true);
    expect(await touch(new Uint8Array(0))).toBe(0);
    expect(() => touch('x' as unknown as Uint8Array)).toThrow(/bytes must be a Uint8Array/);
  });

  it('marks a fingerprint shared by two digests as ambiguous', () => {
    const t = new ChunkTable(16);
    const a = randomBytes(32);
    const b = Buffer.from(a);
    b[31] ^= 1; // same first 12 bytes (all the keyed fingerprint reads), different digest
    t.insert(a, loc(1));
    t.insert(b, loc(2));
    expect(t.size).toBe(1);
    expect(t.get(b)).toEqual({ location: loc(1), ambiguous: true });
  });

  it('joinChunk inserts a chunk once, recognises the same chunk, and leaves a clashing or ambiguous slot alone', () => {
    const t = new ChunkTable(16);
    const a = randomBytes(32);
    const twin = Buffer.from(a);
    twin[31] ^= 1; // the same fingerprint, another digest
    const meta = 700 | (1 << 16); // storedLength 700, LZ4
    expect(t.joinChunk(a, 0, 5, 100, meta)).toBe(1);
    expect(t.get(a)).toEqual({ location: { pack: 5, offset: 100, storedLength: 700, codec: 1 }, ambiguous: false });
    expect(t.joinChunk(a, 0, 5, 100, meta)).toBe(0); // already there (as the pack writer leaves it)
    expect(t.joinChunk(twin, 0, 6, 40, meta)).toBe(-1); // another chunk holds the fingerprint
    expect(t.joinChunk(a, 0, 5, 101, meta)).toBe(-1); // same fingerprint, another place
    expect(t.joinChunk(a, 0, 5, 100, 700 | (2 << 16))).toBe(-1); // another codec
    expect(t.size).toBe(1);
    expect(t.get(a)).toEqual({ location: { pack: 5, offset: 100, storedLength: 700, codec: 1 }, ambiguous: false });
    t.insert(twin, loc(3)); // a clash marks the slot ambiguous: nothing is "exactly this chunk" then
    expect(t.joinChunk(a, 0, 5, 100, meta)).toBe(-1);
    // At an offset inside a digest column, as TOCs hand them.
    const column = Buffer.concat([randomBytes(24), randomBytes(24)]);
    expect(t.joinChunk(column, 24, 7, 0, meta)).toBe(1);
    expect(t.hasFingerprint(column, 24)).toBe(true);
    expect(t.hasFingerprint(column, 0)).toBe(false);
  });

  it('keys its fingerprints: digests a guest forged to share their first bytes neither clash nor cluster', () => {
    // Unkeyed, the fingerprint was the digest's first 4 bytes: 2000 such pages (2^32 hashes of brute
    // force each, less for a few low bits) shared one ambiguous slot. Keyed, they spread out.
    const t = new ChunkTable(4);
    const forged = Array.from({ length: 2000 }, () => {
      const d = randomBytes(32);
      d.writeUInt32LE(0xdeadbeef, 0);
      return d;
    });
    forged.forEach((d, i) => t.insert(d, loc(i)));
    expect(t.size).toBe(2000);
    forged.forEach((d, i) => expect(t.get(d)).toEqual({ location: loc(i), ambiguous: false }));
    const homes = new Set(forged.map((d) => fingerprint(t.shared, d) & (t.capacity - 1)));
    expect(homes.size).toBeGreaterThan(1500); // ~1800 distinct homes expected in 4096 slots; unkeyed: 1
  });

  it('computes the fingerprint exactly as docs/FORMAT.md specifies it (saved slots depend on it)', () => {
    // The documented mix, in BigInt arithmetic mod 2^32, independent of the table's Math.imul code.
    const M = 0xffffffffn;
    const mul = (a: bigint, b: bigint) => (a * b) & M;
    const documented = (seed: Buffer, d: Buffer): number => {
      const w = (i: number) => BigInt(d.readUInt32LE(4 * i)) ^ BigInt(seed.readUInt32LE(4 * i));
      let h = mul(w(0), 0x9e3779b1n) ^ mul(w(1), 0x85ebca77n) ^ mul(w(2), 0xc2b2ae3dn);
      h ^= h >> 15n;
      h = mul(h, 0x2c1b3c6dn);
      h ^= h >> 13n;
      return Number(h);
    };
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 12, maxLength: 12 }), fc.uint8Array({ minLength: 32, maxLength: 32 }), (seed, digest) => {
        const t = new ChunkTable(4, seed);
        expect(fingerprint(t.shared, digest)).toBe(documented(Buffer.from(seed), Buffer.from(digest)));
        const at = Buffer.concat([randomBytes(7), digest]);
        expect(fingerprint(t.shared, at, 7)).toBe(documented(Buffer.from(seed), Buffer.from(digest)));
      }),
      { numRuns: 200 },
    );
  });

  it('draws a random seed per table, keeps it through growth, and takes a given one', () => {
    const d = randomBytes(32);
    const a = new ChunkTable(4);
    const b = new ChunkTable(4);
    expect(a.seed.equals(b.seed)).toBe(false);
    expect(fingerprint(a.shared, d)).not.toBe(fingerprint(b.shared, d));
    const seed = Buffer.from('0123456789ab', 'latin1');
    const c = new ChunkTable(4, seed);
    expect(c.seed).toEqual(seed);
    const before = fingerprint(c.shared, d);
    const ds = Array.from({ length: 3000 }, () => randomBytes(32));
    ds.forEach((x, i) => c.insert(x, loc(i)));
    expect(c.capacity).toBeGreaterThan(1024); // grew
    expect(c.seed).toEqual(seed);
    expect(fingerprint(c.shared, d)).toBe(before);
    ds.forEach((x, i) => expect(tableLocation(c.shared, x)).toEqual(loc(i)));
    expect(() => new ChunkTable(4, Buffer.alloc(8))).toThrow(RangeError);
  });

  it('saves and reloads exactly, seed included, and refuses a stale token or a damaged file', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vnstore-table-'));
    const t = new ChunkTable(4);
    // Distinct fingerprints under t's seed: two random digests share one about 0.3% of the time at
    // this size, which merges them into one ambiguous slot and makes the file a slot shorter.
    const seen = new Set<number>();
    const ds: Buffer[] = [];
    while (ds.length < 5000) {
      const d = randomBytes(32);
      const f = fingerprint(t.shared, d);
      if (seen.has(f)) continue;
      seen.add(f);
      ds.push(d);
    }
    ds.forEach((d, i) => t.insert(d, loc(i)));
    const token = randomBytes(16);
    const file = path.join(dir, 't.bin');
    await writeTableFile(file, path.join(dir, 't.tmp'), t, token);
    const raw0 = readFileSync(file);
    expect(raw0.subarray(0, 8).toString('latin1')).toBe('VNSTTABL');
    expect(raw0.readUInt16LE(8)).toBe(3);
    expect(raw0.subarray(36, 48)).toEqual(t.seed);
    expect(raw0.length).toBe(52 + 5000 * 16 + 4);
    const back = await readTableFile(file, token);
    expect(back?.size).toBe(t.size);
    expect(back!.seed).toEqual(t.seed);
    ds.forEach((d) => expect(back!.get(d)).toEqual(t.get(d)));
    ds.forEach((d) => expect(tableLocation(back!.shared, d)).toEqual(t.get(d)!.location));
    expect(await readTableFile(file, randomBytes(16))).toBeUndefined();
    const { promises: fsp } = await import('node:fs');
    const raw = await fsp.readFile(file);
    raw[100] ^= 0xff;
    await fsp.writeFile(file, raw);
    expect(await readTableFile(file, token)).toBeUndefined();
  });
});

/** Rewrites a saved table file in version 2's layout (no seed), as an older vnstore left it. */
function downgradeToV2(file: string): void {
  const v3 = readFileSync(file);
  const header = Buffer.from(v3.subarray(0, 36));
  header.writeUInt16LE(2, 8);
  const body = v3.subarray(52, v3.length - 4);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(body, crc32(header)));
  writeFileSync(file, Buffer.concat([header, body, crc]));
}

describe('the saved chunk table of an older version', () => {
  it('is not read: the store rebuilds the table from its index with a new seed and saves version 3', async () => {
    const dir = makeTempDir('table-v2');
    try {
      await Store.init(dir, { format: 1 }); // chunk-table.bin: the legacy layout
      const image = Buffer.concat(Array.from({ length: 64 }, (_, i) => randomPage(i + 1)));
      let store = await Store.open(dir, { workers: 0 });
      const s = await store.beginSession({ vm: 'a', parent: 'none' });
      await s.writePages(0, image);
      const rec = await s.commit();
      const firstSeed = store.table.seed;
      await store.close();
      const file = path.join(dir, TABLE_FILE);
      expect(readFileSync(file).readUInt16LE(8)).toBe(TABLE_FILE_VERSION);
      downgradeToV2(file);
      const token = readFileSync(file).subarray(20, 36);
      expect(await readTableFile(file, Buffer.from(token))).toBeUndefined(); // right token, wrong version

      store = await Store.open(dir, { workers: 0 });
      try {
        expect(store.table.size).toBe(64);
        expect(store.table.seed.equals(firstSeed)).toBe(false); // rebuilt, not read
        expect((await restoreToBuffer(store, rec)).equals(image)).toBe(true);
        // The same pages again are all known through the rebuilt table: nothing new is stored.
        const again = await store.beginSession({ vm: 'b', parent: 'none' });
        await again.writePages(0, image);
        expect((await again.commit()).newChunks).toBe(0);
      } finally {
        await store.close();
      }
      const saved = readFileSync(file);
      expect(saved.readUInt16LE(8)).toBe(3);
      store = await Store.open(dir, { workers: 0 });
      try {
        expect(store.table.size).toBe(64);
        expect(store.table.seed).toEqual(saved.subarray(36, 48)); // read from the new file this time
      } finally {
        await store.close();
      }
    } finally {
      removeDir(dir);
    }
  });
});
