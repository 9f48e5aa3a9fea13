import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ChunkTable, fingerprint, tableHasFingerprint, type ChunkLocation } from '../src/index/chunk-table.js';
import { readTableFile, writeTableFile } from '../src/index/table-file.js';

const loc = (i: number): ChunkLocation => ({ pack: i + 1, offset: 16 + i * 7, storedLength: 1 + (i % 4096), codec: i % 2 });

describe('ChunkTable', () => {
  it('behaves like a map under random inserts, relocations and removals (with growth)', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom('insert', 'remove', 'relocate'), fc.nat(300)), { minLength: 200, maxLength: 800 }), (ops) => {
        const digests = Array.from({ length: 301 }, (_, i) => {
          const d = Buffer.alloc(32);
          // Distinct fingerprints, but clustered home slots so probe chains collide and wrap around
          // the end of the table: the hard cases for backward-shift deletion.
          d.writeUInt32LE((((i % 7) << 28) | (i * 16) | 0x0f) >>> 0, 0);
          d.writeUInt32LE(i, 4);
          return d;
        });
        const t = new ChunkTable(8);
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
          expect(tableHasFingerprint(t.shared, fingerprint(digests[i]))).toBe(model.has(i));
        }
      }),
      { numRuns: 60 },
    );
  });

  it('marks a fingerprint shared by two digests as ambiguous', () => {
    const t = new ChunkTable(16);
    const a = randomBytes(32);
    const b = Buffer.from(a);
    b[31] ^= 1; // same first 4 bytes, different digest
    t.insert(a, loc(1));
    t.insert(b, loc(2));
    expect(t.size).toBe(1);
    expect(t.get(b)).toEqual({ location: loc(1), ambiguous: true });
  });

  it('saves and reloads exactly, and refuses a stale token or a damaged file', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vnstore-table-'));
    const t = new ChunkTable(4);
    const ds = Array.from({ length: 5000 }, () => randomBytes(32));
    ds.forEach((d, i) => t.insert(d, loc(i)));
    const token = randomBytes(16);
    const file = path.join(dir, 't.bin');
    await writeTableFile(file, path.join(dir, 't.tmp'), t, token);
    const back = await readTableFile(file, token);
    expect(back?.size).toBe(t.size);
    ds.forEach((d) => expect(back!.get(d)).toEqual(t.get(d)));
    expect(await readTableFile(file, randomBytes(16))).toBeUndefined();
    const { promises: fsp } = await import('node:fs');
    const raw = await fsp.readFile(file);
    raw[100] ^= 0xff;
    await fsp.writeFile(file, raw);
    expect(await readTableFile(file, token)).toBeUndefined();
  });
});
