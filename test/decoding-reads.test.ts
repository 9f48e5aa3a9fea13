/**
 * Frames decoded as they are read (src/protocol/socket-reader.ts decodingReads): the rest of a large
 * frame is read straight into its buffer (FrameDecoder.gatherTarget/gathered), everything else into
 * one small reused buffer. Frames must come out exact however the reads fall, and a large frame's
 * bytes must mostly not pass through the small buffer (that copy is what in-place reads save).
 */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { FrameDecoder, type RawFrame } from '../src/protocol/frames.js';
import { decodingReads, SMALL_READ_BYTES } from '../src/protocol/socket-reader.js';
import { MAX_FRAME_BYTES } from '../src/protocol/limits.js';

/** A frame on the wire: u32be length (type byte + body), type, body. */
function wireFrame(type: number, body: Uint8Array): Buffer {
  const h = Buffer.alloc(5);
  h.writeUInt32BE(body.length + 1, 0);
  h[4] = type;
  return Buffer.concat([h, body]);
}

function patterned(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

describe('FrameDecoder in-place reads', () => {
  it('frames are exact however reads alternate between the small buffer and in place', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 300_000 }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 400_000 }), { minLength: 1, maxLength: 20 }),
        fc.integer({ min: 1, max: 70_000 }),
        (sizes, readSizes, min) => {
          const bodies = sizes.map((n, k) => patterned(n, k));
          const wire = Buffer.concat(bodies.map((b, k) => wireFrame(k + 1, b)));
          const small = Buffer.alloc(SMALL_READ_BYTES);
          const d = new FrameDecoder(MAX_FRAME_BYTES, true);
          const frames: { type: number; body: Buffer }[] = [];
          const keep = (fs: RawFrame[]) => {
            for (const f of fs) {
              frames.push({ type: f.type, body: Buffer.from(f.body) });
              f.release?.(); // its buffer may come back for a later frame
            }
          };
          let inPlace = 0;
          for (let pos = 0, r = 0; pos < wire.length; r++) {
            const want = readSizes[r % readSizes.length];
            const target = d.gatherTarget(min);
            if (target) {
              const n = Math.min(want, target.length, wire.length - pos);
              wire.copy(target, 0, pos, pos + n);
              keep(d.gathered(n));
              inPlace += n;
              pos += n;
            } else {
              const n = Math.min(want, small.length, wire.length - pos);
              small.fill(0xa5);
              wire.copy(small, 0, pos, pos + n);
              keep(d.push(small.subarray(0, n)));
              small.fill(0x5a); // the next read overwrites it: no frame may view it
              pos += n;
            }
          }
          expect(d.idle).toBe(true);
          expect(frames.map((f) => f.type)).toEqual(bodies.map((_, k) => k + 1));
          frames.forEach((f, k) => expect(f.body.equals(bodies[k])).toBe(true));
          // A frame more than `min` + a small read past its start is partly read in place.
          if (sizes.some((n) => n > min + SMALL_READ_BYTES) && readSizes.every((n) => n >= 5)) expect(inPlace).toBeGreaterThan(0);
        },
      ),
      { numRuns: 150 },
    );
  });

  it('gathered() refuses bytes past the frame being gathered, and gatherTarget() offers none without one', () => {
    const d = new FrameDecoder(MAX_FRAME_BYTES, true);
    expect(d.gatherTarget(1)).toBeUndefined();
    expect(() => d.gathered(1)).toThrow(RangeError);
    d.push(wireFrame(9, Buffer.alloc(100_000)).subarray(0, 1000));
    const target = d.gatherTarget(1)!;
    expect(target.length).toBe(100_001 - 996); // 1000 bytes pushed: the 4-byte length, then 996 of the frame
    expect(d.gatherTarget(target.length + 1)).toBeUndefined();
    expect(() => d.gathered(target.length + 1)).toThrow(RangeError);
    expect(d.gathered(target.length)).toHaveLength(1);
    expect(d.idle).toBe(true);
  });
});

describe('decodingReads on a socket', () => {
  it('large frames arrive exact, and most of their bytes are read in place', async () => {
    const bodies = Array.from({ length: 12 }, (_, k) => patterned((1 << 20) + 8 * 1024 + 13 * k, k));
    const wire = Buffer.concat(bodies.map((b, k) => wireFrame(k + 1, b)));
    const server = net.createServer((sock) => sock.end(wire));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const d = new FrameDecoder(MAX_FRAME_BYTES, true, 4);
    let pushed = 0;
    const push = d.push.bind(d);
    d.push = (chunk) => ((pushed += chunk.length), push(chunk));
    const got: { type: number; body: Buffer }[] = [];
    await new Promise<void>((resolve, reject) => {
      const c = net.connect({
        port: (server.address() as net.AddressInfo).port,
        host: '127.0.0.1',
        onread: decodingReads(d, {
          frames: (fs) => {
            for (const f of fs) {
              got.push({ type: f.type, body: Buffer.from(f.body) });
              f.release?.();
            }
          },
          error: reject,
        }),
      });
      c.on('close', () => resolve());
      c.on('end', () => c.end());
    });
    await new Promise<void>((resolve) => server.close(() => resolve()));
    expect(got.map((f) => f.type)).toEqual(bodies.map((_, k) => k + 1));
    got.forEach((f, k) => expect(f.body.equals(bodies[k])).toBe(true));
    // At most about one small read per frame goes through the copying path.
    expect(pushed).toBeLessThanOrEqual(bodies.length * 2 * SMALL_READ_BYTES);
    expect(pushed).toBeLessThan(wire.length / 4);
  });

  it('a frame past the limit reports the framing error once, and nothing after it is delivered', async () => {
    const bad = Buffer.alloc(5);
    bad.writeUInt32BE(MAX_FRAME_BYTES + 1, 0);
    const server = net.createServer((sock) => sock.end(Buffer.concat([bad, wireFrame(1, Buffer.from('late'))])));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const errors: Error[] = [];
    const got: number[] = [];
    await new Promise<void>((resolve) => {
      const c = net.connect({
        port: (server.address() as net.AddressInfo).port,
        host: '127.0.0.1',
        onread: decodingReads(new FrameDecoder(MAX_FRAME_BYTES, true), {
          frames: (fs) => got.push(...fs.map((f) => f.type)),
          error: (err) => {
            errors.push(err);
            c.destroy();
          },
        }),
      });
      c.on('close', () => resolve());
      c.on('end', () => c.end());
    });
    await new Promise<void>((resolve) => server.close(() => resolve()));
    expect(got).toEqual([]);
    expect(errors).toHaveLength(1);
    expect((errors[0] as { wire?: string }).wire).toBe('E_FRAME_TOO_LARGE');
  });
});
