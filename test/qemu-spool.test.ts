/**
 * eagerChunks (src/qemu/byte-source.ts): the receiver drains QEMU's stream as it arrives and holds
 * it until the stream ends (so hashing never competes with QEMU's rounds), or until its budget fills,
 * when it pauses the input and hands the bytes on; bytes come out exactly and in order.
 */
import { PassThrough } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { eagerChunks } from '../src/qemu/byte-source.js';

async function collect(it: AsyncIterable<Buffer>, seen: Buffer[]): Promise<void> {
  for await (const b of it) seen.push(b);
}

describe('eagerChunks', () => {
  it('holds everything until the input ends, then hands it on exactly', async () => {
    const input = new PassThrough();
    const seen: Buffer[] = [];
    const done = collect(eagerChunks(input, 1 << 20, true), seen);
    const parts = Array.from({ length: 20 }, (_, i) => Buffer.alloc(1000 + i, i));
    for (const p of parts) {
      input.write(p);
      await tick();
    }
    expect(seen).toHaveLength(0); // all read, none handed on yet
    expect(input.readableLength).toBe(0); // drained: the sender is never blocked on us
    input.end();
    await done;
    expect(Buffer.concat(seen).equals(Buffer.concat(parts))).toBe(true);
  });

  it('starts handing on and pauses the input once the budget is exceeded', async () => {
    const input = new PassThrough({ highWaterMark: 1024 });
    const seen: Buffer[] = [];
    const iterator = eagerChunks(input, 4096, true)[Symbol.asyncIterator]();
    for (let i = 0; i < 5; i++) input.write(Buffer.alloc(1024, i));
    await tick();
    expect(input.isPaused()).toBe(true); // 5 KiB queued > 4 KiB budget
    const first = await iterator.next(); // the hold is released by the full budget
    expect(first.value).toEqual(Buffer.alloc(1024, 0));
    seen.push(first.value as Buffer);
    const rest = (async () => {
      for (let r = await iterator.next(); !r.done; r = await iterator.next()) seen.push(r.value);
    })();
    input.end(Buffer.alloc(10, 9));
    await rest;
    expect(
      Buffer.concat(seen).equals(Buffer.concat([...Array.from({ length: 5 }, (_, i) => Buffer.alloc(1024, i)), Buffer.alloc(10, 9)])),
    ).toBe(true);
  });

  it('hands on tens of thousands of chunks exactly and in order, held or taken while arriving', async () => {
    for (const hold of [true, false]) {
      const input = new PassThrough({ highWaterMark: 1 << 20 });
      const seen: Buffer[] = [];
      const done = collect(eagerChunks(input, 1 << 30, hold), seen);
      const parts: Buffer[] = [];
      for (let i = 0; i < 20_000; i++) {
        const p = Buffer.alloc(8);
        p.writeUInt32LE(i, 0);
        parts.push(p);
        input.write(p);
        if (i % 5000 === 0) await tick(); // let some be taken (and the queue compacted) while arriving
      }
      input.end();
      await done;
      expect(Buffer.concat(seen).equals(Buffer.concat(parts)), `hold=${hold}`).toBe(true);
    }
  });

  it('passes an input error on after the bytes before it', async () => {
    const input = new PassThrough();
    const seen: Buffer[] = [];
    const done = collect(eagerChunks(input, 1 << 20, false), seen);
    input.write(Buffer.from('abc'));
    await tick();
    input.destroy(new Error('connection reset'));
    await expect(done).rejects.toThrow('connection reset');
    expect(Buffer.concat(seen).toString()).toBe('abc');
  });
});
