/**
 * The receiver's spool: QEMU's migration stream copied into an unlinked temporary file as fast as
 * it comes, through one reused buffer, and read back once the stream has ended. While QEMU sends,
 * the receiver does what `cat > FILE` does and nothing more: no hashing or compression competing
 * with QEMU's rounds for the CPU, and no fresh memory per chunk (holding the stream in memory made
 * every 64 KiB read land in pages the kernel had to fault in; bench/RESULTS.md). Memory stays
 * bounded by the buffer; the file needs disk (or tmpfs) for the stream, and is gone when closed or
 * when the process dies (it is unlinked at once).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';
import { fromSystemError } from '../util/errors.js';
import type { SpoolFailure, StdinSpool } from './early-spool.cjs';

/**
 * The executable's early spool (CommonJS, loaded first by bin.cts): required at run time, so that
 * the same module instance hands over what it spooled and vitest never has to load a `.cts` file.
 */
export function earlySpool(): typeof import('./early-spool.cjs') {
  return createRequire(import.meta.url)('./early-spool.cjs') as typeof import('./early-spool.cjs');
}

/** Size of the chunks handed to the decoder when read back. */
const READ_BACK_BYTES = 4 << 20;
const readAt = promisify(fs.read);

export class Spool {
  private constructor(
    private readonly fd: number,
    /** Bytes in the spool. */
    readonly bytes: number,
    /** Whether standard input's synchronous reads ran dry and Node's stream read the rest. */
    readonly streamed = false,
  ) {}

  /** A spool handed over by another process (`qemu receive --detach`): its bytes are the whole file. */
  static fromFd(fd: number): Spool {
    try {
      return new Spool(fd, fs.fstatSync(fd).size);
    } catch (err) {
      throw fromSystemError(err, `reading the spool file handed over as fd ${fd}`);
    }
  }

  /** The open spool file, to hand to another process (it stays open here until close). */
  get fileDescriptor(): number {
    return this.fd;
  }

  /** An open, already unlinked, private (0600) file in `dir`. */
  private static create(dir: string): number {
    const file = path.join(dir, `vnstore-qemu-spool-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      fs.unlinkSync(file);
      return fd;
    } catch (err) {
      throw fromSystemError(err, `creating the spool file in ${dir}`);
    }
  }

  private static write(fd: number, buf: Uint8Array, at: number): void {
    try {
      for (let done = 0; done < buf.length;) done += fs.writeSync(fd, buf, done, buf.length - done, at + done);
    } catch (err) {
      throw fromSystemError(err, 'writing the spool file');
    }
  }

  /**
   * Spools standard input (QEMU's `exec:` pipe) to its end: what the executable's early spool
   * copied (early-spool.cts), else a copy made now; if the pipe is non-blocking and ran dry
   * (EAGAIN), Node's stream reads the rest.
   */
  static async fromStdin(dir = defaultSpoolDir()): Promise<Spool> {
    const early = earlySpool();
    let s: StdinSpool | SpoolFailure | undefined = early.takeEarlySpool();
    try {
      s ??= early.spoolStdinSync(dir);
    } catch (failure) {
      s = failure as SpoolFailure;
    }
    if ('error' in s) throw fromSystemError(s.error, s.doing);
    return s.ended ? new Spool(s.fd, s.bytes) : Spool.drain(process.stdin, s.fd, s.bytes);
  }

  /** Spools a stream (a socket) to its end; each chunk is written at once and not kept. */
  static fromStream(input: NodeJS.ReadableStream, dir = defaultSpoolDir()): Promise<Spool> {
    return Spool.drain(input, Spool.create(dir), 0);
  }

  private static drain(input: NodeJS.ReadableStream, fd: number, start: number): Promise<Spool> {
    let at = start;
    return new Promise<Spool>((resolve, reject) => {
      const fail = (err: unknown) => {
        input.removeAllListeners('data');
        fs.closeSync(fd);
        reject(err);
      };
      input.on('data', (c: Buffer | string) => {
        const b = typeof c === 'string' ? Buffer.from(c) : c;
        try {
          Spool.write(fd, b, at);
        } catch (err) {
          fail(err);
          return;
        }
        at += b.length;
      });
      input.once('end', () => resolve(new Spool(fd, at, true)));
      input.once('error', (err) => fail(fromSystemError(err, 'reading the migration stream')));
      input.resume();
    });
  }

  /** The spooled bytes in order, each chunk a fresh buffer (the decoder keeps views of them). */
  async *chunks(): AsyncIterable<Buffer> {
    for (let at = 0; at < this.bytes;) {
      const want = Math.min(READ_BACK_BYTES, this.bytes - at);
      const buf = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await readAt(this.fd, buf, got, want - got, at + got).catch((err: unknown) => {
          throw fromSystemError(err, 'reading the spool file');
        });
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      at += got;
      yield got === want ? buf : buf.subarray(0, got);
      if (got < want) return;
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** `VNSTORE_QEMU_SPOOL_DIR`, else the system's temporary directory. */
export function defaultSpoolDir(): string {
  return process.env.VNSTORE_QEMU_SPOOL_DIR || os.tmpdir();
}
