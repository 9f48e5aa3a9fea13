/**
 * Socket reads that decode frames as they land (src/protocol/socket-reader.ts): an accepted TCP
 * socket is re-made with `onread`, its frames come out exact and in order, large frames are read
 * straight into their own buffers (not pushed through the small read buffer), every byte read is
 * counted, and the listener still closes; a socket whose handle cannot be taken (TLS) is read through
 * 'data' events into the same decoder.
 */
import net from 'node:net';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { FrameDecoder, type RawFrame } from '../src/protocol/frames.js';
import { adoptDecoding, SMALL_READ_BYTES } from '../src/protocol/socket-reader.js';

/** One raw frame: u32 length (type byte + body), type, body. */
function rawFrame(type: number, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length + 1, 0);
  head[4] = type;
  return Buffer.concat([head, body]);
}

/** Bodies of every size class: tiny, just under and over the small read buffer, and several MiB. */
const bodies = [10, 1000, SMALL_READ_BYTES - 100, SMALL_READ_BYTES * 2 + 17, 3 << 20, 5, 4 << 20, 64].map((n, k) => {
  const b = Buffer.alloc(n + 3);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(((i + k) * 2654435761) >>> 0, i);
  return b.subarray(0, n);
});
const stream = Buffer.concat(bodies.map((b, k) => rawFrame(k + 1, b)));

/** A decoder that counts the bytes pushed through it (those copied out of the small read buffer). */
function countingDecoder(): { decoder: FrameDecoder; pushed: () => number } {
  const decoder = new FrameDecoder(8 << 20, true, 3);
  let pushed = 0;
  const push = decoder.push.bind(decoder);
  decoder.push = (chunk: Uint8Array) => ((pushed += chunk.length), push(chunk));
  return { decoder, pushed: () => pushed };
}

function expectFrames(got: { type: number; body: Buffer }[]): void {
  expect(got.map((f) => f.type)).toEqual(bodies.map((_, k) => k + 1));
  got.forEach((f, k) => expect(f.body.equals(bodies[k])).toBe(true));
}

describe('socket reads that decode frames as they land', () => {
  it('an accepted socket: frames exact and in order, large ones read in place, bytes counted, the listener closes', async () => {
    const got: { type: number; body: Buffer }[] = [];
    const { decoder, pushed } = countingDecoder();
    let counted = 0;
    let done!: () => void;
    const closed = new Promise<void>((resolve) => (done = resolve));
    const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
      const sock = adoptDecoding(accepted, decoder, {
        bytes: (n) => (counted += n),
        frames: (frames: RawFrame[]) => {
          for (const f of frames) {
            got.push({ type: f.type, body: Buffer.from(f.body) });
            f.release?.();
          }
          if (got.length === bodies.length) sock.end();
        },
        error: (err) => {
          throw err;
        },
      });
      sock.on('close', done);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    client.on('data', () => undefined);
    client.end(stream);
    await closed;
    expectFrames(got);
    expect(counted).toBe(stream.length);
    // The 7+ MiB of the large frames went into their own buffers: at most a small read's worth of
    // each frame's start and end passed through push().
    expect(pushed()).toBeLessThan(stream.length / 8);
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('a socket without a handle to take (TLS): its data events go through the same decoder', async () => {
    const got: { type: number; body: Buffer }[] = [];
    const { decoder } = countingDecoder();
    let counted = 0;
    const duplex = new PassThrough();
    adoptDecoding(duplex as unknown as net.Socket, decoder, {
      bytes: (n) => (counted += n),
      frames: (frames) => frames.forEach((f) => got.push({ type: f.type, body: Buffer.from(f.body) })),
      error: (err) => {
        throw err;
      },
    });
    for (let o = 0; o < stream.length; o += 100_000) duplex.write(stream.subarray(o, o + 100_000));
    await new Promise((resolve) => setImmediate(resolve));
    expectFrames(got);
    expect(counted).toBe(stream.length);
  });

  it('a malformed length reaches the error handler, and no frame after it does', async () => {
    const errors: Error[] = [];
    const frames: RawFrame[] = [];
    const duplex = new PassThrough();
    adoptDecoding(duplex as unknown as net.Socket, new FrameDecoder(1 << 20, true, 2), {
      frames: (f) => frames.push(...f),
      error: (err) => errors.push(err),
    });
    duplex.write(rawFrame(1, Buffer.from('ok')));
    await new Promise((resolve) => setImmediate(resolve));
    duplex.write(Buffer.from([0, 0, 0, 0]));
    await new Promise((resolve) => setImmediate(resolve));
    duplex.write(rawFrame(2, Buffer.from('after')));
    await new Promise((resolve) => setImmediate(resolve));
    expect(frames.map((f) => f.body.toString())).toEqual(['ok']);
    expect(errors.map((e) => e.message)).toEqual([expect.stringMatching(/frame of length 0/), expect.stringMatching(/frame of length 0/)]); // the stream stays failed
  });
});
