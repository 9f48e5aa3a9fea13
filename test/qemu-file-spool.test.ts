/**
 * The receiver's file spool (src/qemu/spool.ts): QEMU's stream copied to an unlinked private file
 * while it arrives, then read back exactly; from a socket-like stream, from standard input (a
 * blocking file, and a non-blocking pipe fed in bursts, where reads meet EAGAIN and the stream
 * takes over), started by the executable before it loads the rest of vnstore. Needs dist/ (npm run build).
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { openSync, readdirSync, writeFileSync, closeSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Spool } from '../src/qemu/spool.js';
import { makeTempDir, removeDir, runCli } from './helpers/engine.js';

let dir: string;
/** A directory only the spool writes to, so the "nothing left" check holds whatever ran before it. */
let emptyDir: string;
beforeAll(() => {
  dir = makeTempDir('qemu-file-spool');
  emptyDir = path.join(dir, 'spool-only');
  mkdirSync(emptyDir);
});
afterAll(() => removeDir(dir));

async function readBack(spool: Spool): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of spool.chunks()) parts.push(c);
  return Buffer.concat(parts);
}

const SPOOL_JS = path.resolve('dist/qemu/spool.js');
// CommonJS, run by the executable before any ES module: tested as built.
const { wantsEarlySpool } = createRequire(import.meta.url)(
  path.resolve('dist/qemu/early-spool.cjs'),
) as typeof import('../src/qemu/early-spool.cjs');
/** A child that spools its standard input with Spool.fromStdin and writes the bytes read back to stdout. */
/** With `nonBlocking`, the child makes process.stdin first, which sets the pipe non-blocking (as libuv does). */
function spoolChild(
  spoolDir: string,
  stdin: 'pipe' | number,
  nonBlocking = false,
): { child: ReturnType<typeof spawn>; ready: Promise<void>; out: Promise<{ bytes: Buffer; streamed: boolean }> } {
  const script = `import { Spool } from ${JSON.stringify(SPOOL_JS)}; ${nonBlocking ? 'process.stdin.pause();' : ''} process.stderr.write('ready;'); const s = await Spool.fromStdin(${JSON.stringify(spoolDir)}); process.stderr.write('streamed=' + s.streamed); for await (const c of s.chunks()) process.stdout.write(c); s.close();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: [stdin, 'pipe', 'pipe'] });
  const parts: Buffer[] = [];
  let err = '';
  child.stdout?.on('data', (d: Buffer) => parts.push(d));
  let isReady: () => void = () => undefined;
  const ready = new Promise<void>((r) => (isReady = r));
  child.stderr?.on('data', (d: Buffer) => {
    err += d;
    if (err.startsWith('ready;')) isReady();
  });
  const out = new Promise<{ bytes: Buffer; streamed: boolean }>((resolve, reject) =>
    child.once('close', (code) =>
      code === 0
        ? resolve({ bytes: Buffer.concat(parts), streamed: err === 'ready;streamed=true' })
        : reject(new Error(`spool child exited ${code}: ${err}`)),
    ),
  );
  return { child, ready, out };
}

describe('the file spool', () => {
  it('gives back exactly the bytes of a stream, whatever its chunking, leaving no file behind', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.uint8Array({ minLength: 0, maxLength: 70_000 }), { maxLength: 12 }), async (parts) => {
        const input = new PassThrough();
        const spooling = Spool.fromStream(input, emptyDir);
        for (const p of parts) {
          input.write(p);
          await tick();
        }
        input.end();
        const spool = await spooling;
        expect(readdirSync(emptyDir)).toEqual([]); // unlinked at once: nothing left if the process dies
        const want = Buffer.concat(parts);
        expect(spool.bytes).toBe(want.length);
        expect((await readBack(spool)).equals(want)).toBe(true);
        spool.close();
      }),
      { numRuns: 25 },
    );
  });

  it('reads back a stream larger than one read-back chunk (4 MiB) in order', async () => {
    const input = new PassThrough();
    const spooling = Spool.fromStream(input, dir);
    const want = Buffer.alloc(9 * 2 ** 20 + 123);
    for (let i = 0; i + 4 <= want.length; i += 4) want.writeUInt32LE(i, i);
    input.end(want);
    const spool = await spooling;
    const chunks: number[] = [];
    const parts: Buffer[] = [];
    for await (const c of spool.chunks()) {
      chunks.push(c.length);
      parts.push(c);
    }
    spool.close();
    expect(chunks).toEqual([4 << 20, 4 << 20, 2 ** 20 + 123]);
    expect(Buffer.concat(parts).equals(want)).toBe(true);
  });

  it('spools standard input that is a blocking file with synchronous reads', async () => {
    const want = Buffer.alloc(3 * 2 ** 20 + 7, 0x5a);
    want.writeUInt32BE(0xdeadbeef, want.length - 4);
    const file = path.join(dir, 'input.bin');
    writeFileSync(file, want);
    const fd = openSync(file, 'r');
    try {
      const { out } = spoolChild(dir, fd);
      const got = await out;
      expect(got.bytes.equals(want)).toBe(true);
      expect(got.streamed).toBe(false);
    } finally {
      closeSync(fd);
    }
  });

  for (const nonBlocking of [false, true]) {
    it(`spools a ${nonBlocking ? 'non-blocking' : 'blocking'} pipe fed in bursts exactly${nonBlocking ? ' (reads meet EAGAIN, then the stream reads the rest)' : ''}`, async () => {
      const { child, ready, out } = spoolChild(dir, 'pipe', nonBlocking);
      // Nothing is sent until the child is about to read, and then only after a pause: its first read
      // finds the pipe empty (a non-blocking one answers EAGAIN at once, whatever the load).
      await ready;
      await new Promise((r) => setTimeout(r, 200));
      const bursts = Array.from({ length: 12 }, (_, i) => Buffer.alloc(100_000 + i * 999, i + 1));
      for (const b of bursts) {
        child.stdin?.write(b);
        await new Promise((r) => setTimeout(r, 20));
      }
      child.stdin?.end();
      const got = await out;
      expect(got.bytes.equals(Buffer.concat(bursts))).toBe(true);
      expect(got.streamed).toBe(nonBlocking);
    });
  }

  it('is started early only for qemu receive from standard input with the file spool', () => {
    expect(wantsEarlySpool(['qemu', 'receive', '--vm', 'a'], {}, () => false)).toBe(true);
    expect(wantsEarlySpool(['qemu', 'receive', '--vm', 'a'], { VNSTORE_QEMU_SPOOL: 'file' }, () => false)).toBe(true);
    expect(wantsEarlySpool(['qemu', 'receive', '--vm', 'a'], {}, () => true)).toBe(false);
    expect(wantsEarlySpool(['qemu', 'receive', '--vm', 'a', '--listen', 'tcp:127.0.0.1:0'], {}, () => false)).toBe(false);
    expect(wantsEarlySpool(['qemu', 'receive', '--listen=tcp:127.0.0.1:0'], {}, () => false)).toBe(false);
    expect(wantsEarlySpool(['qemu', 'receive', '--help'], {}, () => false)).toBe(false);
    expect(wantsEarlySpool(['qemu', 'receive'], { VNSTORE_QEMU_SPOOL: 'memory' }, () => false)).toBe(false);
    expect(wantsEarlySpool(['qemu', 'receive'], { VNSTORE_QEMU_HOLD: '0' }, () => false)).toBe(false);
    expect(wantsEarlySpool(['qemu', 'send', 'x'], {}, () => false)).toBe(false);
  });

  it('receive names an unusable spool directory in one line and stores nothing', async () => {
    const store = path.join(dir, 'store');
    expect((await runCli(['init', '--store', store])).code).toBe(0);
    const r = await runCli(['qemu', 'receive', '--vm', 'a', '--store', store], {
      input: Buffer.alloc(1000),
      env: { VNSTORE_QEMU_SPOOL_DIR: path.join(dir, 'missing') },
    });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/^vnstore: error: .*spool file in .*missing/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    const ls = await runCli(['ls', '--json', '--store', store]);
    expect(JSON.parse(ls.stdout.toString())).toEqual([]);
    const bad = await runCli(['qemu', 'receive', '--vm', 'a', '--store', store], {
      input: Buffer.alloc(10),
      env: { VNSTORE_QEMU_SPOOL: 'disk' },
    });
    expect(bad.stderr).toMatch(/^vnstore: error: VNSTORE_QEMU_SPOOL=disk: expected file, memory or none/);
  });
});
