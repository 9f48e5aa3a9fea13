/**
 * Socket reads into one reused buffer (src/protocol/socket-reader.ts): an accepted TCP socket is
 * re-made with `onread`, its reads all land in the same buffer and carry the exact bytes sent, and
 * the listener still closes; a client socket reads the same way through reusedReadBuffer.
 */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { adoptAccepted, reusedReadBuffer } from '../src/protocol/socket-reader.js';

/** 3 MiB of a pattern that differs from read to read. */
const payload = Buffer.alloc(3 << 20);
for (let i = 0; i < payload.length; i += 4) payload.writeUInt32LE((i * 2654435761) >>> 0, i);

describe('socket reads into one reused buffer', () => {
  it('an accepted socket: every read in the same buffer, the bytes exact, the listener closes', async () => {
    const got: Buffer[] = [];
    const buffers = new Set<ArrayBufferLike>();
    let done!: () => void;
    const all = new Promise<void>((resolve) => (done = resolve));
    let total = 0;
    const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
      const sock = adoptAccepted(accepted, (chunk) => {
        buffers.add(chunk.buffer);
        got.push(Buffer.from(chunk)); // a copy: the next read overwrites the chunk
        total += chunk.length;
        if (total === payload.length) sock.end();
      });
      sock.on('close', done);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    client.on('data', () => undefined);
    client.end(payload);
    await all;
    expect(Buffer.concat(got).equals(payload)).toBe(true);
    expect(got.length).toBeGreaterThan(1);
    expect(buffers.size).toBe(1);
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('a client socket with reusedReadBuffer: the same, one buffer for every read', async () => {
    const server = net.createServer((sock) => sock.end(payload));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const got: Buffer[] = [];
    const buffers = new Set<ArrayBufferLike>();
    await new Promise<void>((resolve) => {
      const c = net.connect({
        port: (server.address() as net.AddressInfo).port,
        host: '127.0.0.1',
        onread: reusedReadBuffer((chunk) => {
          buffers.add(chunk.buffer);
          got.push(Buffer.from(chunk));
        }),
      });
      c.on('close', () => resolve());
      c.on('end', () => c.end());
    });
    expect(Buffer.concat(got).equals(payload)).toBe(true);
    expect(buffers.size).toBe(1);
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
});
