import { describe, expect, it } from 'vitest';
import { SlabPool, slabTransfer } from '../src/chunk/slab-pool.js';

describe('SlabPool', () => {
  it('lends views of pooled slabs and reuses what is given back', () => {
    const pool = new SlabPool(1024, 2);
    const a = pool.take(100);
    expect(a.length).toBe(100);
    expect(a.buffer.byteLength).toBe(1024);
    a.fill(9);
    pool.give(a);
    const b = pool.take(1024);
    expect(b.buffer).toBe(a.buffer); // reused, contents as the last user left them
    expect(b[0]).toBe(9);
    expect(pool.take(10).buffer).not.toBe(b.buffer); // the pool was empty again
  });

  it('keeps at most `keep` slabs and ignores one-off, foreign, detached and repeated buffers', () => {
    const pool = new SlabPool(1024, 1);
    const big = pool.take(4096);
    expect(big.buffer.byteLength).toBe(4096); // one-off
    pool.give(big);
    pool.give(new Uint8Array(1024)); // foreign but slab-sized: accepted
    const kept = pool.take(1);
    pool.give(new Uint8Array(512)); // wrong size
    const detached = pool.take(8);
    structuredClone(detached.buffer, { transfer: [detached.buffer as ArrayBuffer] });
    pool.give(detached); // detached: byteLength 0
    pool.give(undefined);
    expect(pool.take(1).buffer.byteLength).toBe(1024);
    pool.give(kept);
    pool.give(kept); // twice: still one entry
    const x = pool.take(1);
    const y = pool.take(1);
    expect(x.buffer).toBe(kept.buffer);
    expect(y.buffer).not.toBe(kept.buffer);
  });

  it('transfers a lent slab whole, and nothing for detached or missing ones', () => {
    const pool = new SlabPool(64, 1);
    const v = pool.take(10);
    expect(slabTransfer(v)).toEqual([v.buffer]);
    expect(slabTransfer(undefined)).toEqual([]);
    structuredClone(v.buffer, { transfer: [v.buffer as ArrayBuffer] });
    expect(slabTransfer(v)).toEqual([]);
  });
});
