/**
 * Exact-length reads over a byte stream, for the migration stream decoder: over one buffer (tests,
 * codecs) or over an async iterable of chunks (standard input, a socket). A read past the end is a
 * cut stream and throws; nothing here interprets the bytes.
 */
import { VnstoreError } from '../util/errors.js';

export interface ByteSource {
  /** Exactly `n` bytes (a view that stays valid: never overwritten by later reads); `what` names them in a truncation error. */
  read(n: number, what?: string): Promise<Buffer>;
  /** Everything up to the end of the stream; refuses more than `maxBytes`. */
  readRest(maxBytes: number): Promise<Buffer>;
  /** Bytes consumed so far. */
  readonly offset: number;
}

export function truncated(offset: number, what: string): VnstoreError {
  return new VnstoreError('E_INPUT', `migration stream ended at byte ${offset} inside ${what} (cut short, or QEMU stopped sending)`);
}

/** Reads from chunks as they arrive; keeps only the chunks not yet consumed. */
export class ChunkSource implements ByteSource {
  private readonly iterator: AsyncIterator<Uint8Array>;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private consumed = 0;

  constructor(chunks: AsyncIterable<Uint8Array>) {
    this.iterator = chunks[Symbol.asyncIterator]();
  }

  static ofBuffer(bytes: Uint8Array): ChunkSource {
    return new ChunkSource(
      (async function* () {
        yield bytes;
      })(),
    );
  }

  get offset(): number {
    return this.consumed;
  }

  private async fill(n: number): Promise<boolean> {
    while (this.buffered < n && !this.ended) {
      const next = await this.iterator.next();
      if (next.done) {
        this.ended = true;
        break;
      }
      const b = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
      if (b.length === 0) continue;
      this.chunks.push(b);
      this.buffered += b.length;
    }
    return this.buffered >= n;
  }

  async read(n: number, what = 'the stream'): Promise<Buffer> {
    if (this.buffered < n && !(await this.fill(n))) throw truncated(this.consumed + this.buffered, what);
    return this.take(n);
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    this.consumed += n;
    return out;
  }

  async readRest(maxBytes: number): Promise<Buffer> {
    while (!this.ended) {
      if (this.buffered > maxBytes) break;
      await this.fill(this.buffered + 1);
    }
    if (this.buffered > maxBytes)
      throw new VnstoreError('E_INPUT', `migration stream: more than ${maxBytes} bytes of device state after the RAM sections`);
    return this.take(this.buffered);
  }
}

/**
 * Reads `input` as fast as it delivers from the moment it is made, queueing up to `budgetBytes`
 * ahead of the consumer, so a slower store (or the store still opening) never slows the sender:
 * QEMU's rounds would otherwise wait on the pipe (the VNsnap lesson: the store must not stretch the
 * migration). Past the budget the input is paused (backpressure). With `holdUntilEnd`, nothing is
 * handed on before the input ends or the budget fills: the consumer's CPU work (hashing,
 * compression) then runs after the sender is done instead of competing with it.
 */
const EMPTY = Buffer.alloc(0);

export function eagerChunks(input: NodeJS.ReadableStream, budgetBytes: number, holdUntilEnd = false): AsyncIterable<Buffer> {
  // A held stream is tens of thousands of chunks: take from a moving head, not Array.shift (O(n)).
  let queue: Buffer[] = [];
  let head = 0;
  let queued = 0;
  let ended = false;
  let failure: unknown;
  let wake: (() => void) | undefined;
  const signal = () => {
    wake?.();
    wake = undefined;
  };
  input.on('data', (c: Buffer | string) => {
    const b = typeof c === 'string' ? Buffer.from(c) : c;
    queue.push(b);
    queued += b.length;
    if (queued > budgetBytes) input.pause();
    signal();
  });
  input.once('end', () => {
    ended = true;
    signal();
  });
  input.once('error', (e) => {
    failure = e;
    signal();
  });
  input.resume();
  return {
    async *[Symbol.asyncIterator]() {
      for (;;) {
        if (head < queue.length && (!holdUntilEnd || ended || failure !== undefined || queued > budgetBytes)) {
          holdUntilEnd = false;
          const b = queue[head];
          queue[head++] = EMPTY; // let it be collected once consumed
          if (head === queue.length || (head > 4096 && head > queue.length / 2)) {
            queue = queue.slice(head);
            head = 0;
          }
          queued -= b.length;
          if (queued <= budgetBytes / 2 && input.isPaused()) input.resume();
          yield b;
          continue;
        }
        if (failure) throw failure;
        if (ended) return;
        await new Promise<void>((r) => (wake = r));
      }
    },
  };
}
