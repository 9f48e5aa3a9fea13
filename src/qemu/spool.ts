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
import { promisify } from 'node:util';
import { fromSystemError } from '../util/errors.js';

/** One read's and one write's size while spooling. */
const COPY_BYTES = 1 << 20;
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
   * Spools standard input (QEMU's `exec:` pipe) to its end: synchronous 1 MiB reads while it has
   * data, and, if the pipe is non-blocking and runs dry (EAGAIN), Node's stream for the rest.
   */
  static async fromStdin(dir = defaultSpoolDir()): Promise<Spool> {
    const fd = Spool.create(dir);
    const buf = Buffer.allocUnsafe(COPY_BYTES);
    let at = 0;
    try {
      for (;;) {
        const n = fs.readSync(0, buf, 0, buf.length, null);
        if (n === 0) return new Spool(fd, at);
        Spool.write(fd, buf.subarray(0, n), at);
        at += n;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') {
        fs.closeSync(fd);
        throw fromSystemError(err, 'reading the migration stream');
      }
    }
    return Spool.drain(process.stdin, fd, at);
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

let early: Promise<Spool> | undefined;

/**
 * Whether a command line is `qemu receive` from standard input with the file spool: the executable
 * then starts spooling before it loads the rest of vnstore (startEarlySpool), since QEMU is sending
 * already and its pipe holds only 64 KiB. A usage error is still reported by the command.
 */
export function wantsEarlySpool(argv: string[], env: NodeJS.ProcessEnv, stdinIsTty: boolean): boolean {
  const [command, sub, ...rest] = argv;
  if (command !== 'qemu' || sub !== 'receive' || stdinIsTty) return false;
  const notStdin = (a: string) =>
    a === '--listen' || a.startsWith('--listen=') || a === '--from-spool-fd' || a.startsWith('--from-spool-fd=');
  if (rest.some((a) => notStdin(a) || a === '-h' || a === '--help')) return false;
  return (env.VNSTORE_QEMU_SPOOL ?? (env.VNSTORE_QEMU_HOLD === '0' ? 'none' : 'file')) === 'file';
}

/** Starts spooling standard input now (synchronously while the pipe has data). */
export function startEarlySpool(): void {
  early ??= Spool.fromStdin();
  early.catch(() => undefined); // taken and awaited by the receive command
}

/** The spool startEarlySpool began, once. */
export function takeEarlySpool(): Promise<Spool> | undefined {
  const e = early;
  early = undefined;
  return e;
}
