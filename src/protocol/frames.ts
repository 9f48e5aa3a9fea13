/**
 * Length-prefixed frames: u32be length (type byte + body, at most MAX_FRAME_BYTES), u8 type, body.
 * The streaming decoder checks the length before it buffers a byte of the body, so a peer can make it
 * hold at most one frame (allocated at its checked length once the header is in).
 */
import { FRAME_HEADER_BYTES, MAX_FRAME_BYTES } from './limits.js';
import type { Writable } from 'node:stream';
import { ProtocolError } from './errors.js';
import { SlabPool } from '../chunk/slab-pool.js';
import { copyBytes } from '../util/shared-bytes.js';

export interface RawFrame {
  type: number;
  body: Buffer;
  /**
   * Set on a frame in a buffer of the decoder's pool: call it once nothing refers to `body` any more
   * (nor to views of it), so the buffer is reused for a later frame.
   */
  release?: () => void;
}

/** Header for a frame of `type` whose body is `bodyBytes` long (the body follows separately). */
export function frameHeader(type: number, bodyBytes: number): Buffer {
  const length = bodyBytes + 1;
  if (length > MAX_FRAME_BYTES)
    throw new ProtocolError('E_FRAME_TOO_LARGE', `frame of ${length} bytes is past the limit of ${MAX_FRAME_BYTES}`);
  const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  h.writeUInt32BE(length, 0);
  h[4] = type;
  return h;
}

export class FrameDecoder {
  /** Header bytes of a frame whose length is not yet known (fewer than FRAME_LENGTH_BYTES). */
  private head = Buffer.alloc(0);
  /** The frame being gathered (type byte + body), allocated once its length is known and checked. */
  private frame: Buffer | undefined;
  private filled = 0;
  private failed: ProtocolError | undefined;
  /** Buffers for large split frames, maxFrameBytes each, reused once released. */
  private readonly pool: SlabPool;

  /**
   * `copyAll`: every frame is copied out of the chunk, none is a view of it (for a socket that reads
   * into one reused buffer: the chunk is overwritten by the next read). `keep`: pooled buffers kept,
   * or a pool of buffers of at least maxFrameBytes (plus `placement`'s largest offset) to share with
   * other decoders (a server's). `placement`: where in its pooled buffer a large frame of a given
   * length starts (its type byte), so that a field of it lands aligned (a server's PAGES data).
   */
  constructor(
    private readonly maxFrameBytes = MAX_FRAME_BYTES,
    private readonly copyAll = false,
    keep: number | SlabPool = POOLED_FRAMES,
    private readonly placement: (length: number) => number = () => 0,
  ) {
    this.pool = typeof keep === 'number' ? new SlabPool(maxFrameBytes, keep) : keep;
    if (this.pool.slabBytes < maxFrameBytes)
      throw new RangeError(`frame pool of ${this.pool.slabBytes}-byte buffers for frames of up to ${maxFrameBytes} bytes`);
  }

  /** Bytes held for an incomplete frame (the whole frame's buffer once its header is in; never more). */
  get bufferedBytes(): number {
    return this.frame ? this.frame.length : this.head.length;
  }

  /**
   * Feeds bytes; returns the frames they complete. Frames wholly inside `chunk` are views of it (no
   * copy) unless `copyAll`; a frame split across reads is copied once into a buffer of its checked length. After a
   * refused frame the stream has lost its framing: every later call throws the same error.
   */
  push(chunk: Uint8Array): RawFrame[] {
    if (this.failed) throw this.failed;
    const frames: RawFrame[] = [];
    const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let pos = 0;
    while (pos < buf.length) {
      if (this.frame) {
        const n = Math.min(buf.length - pos, this.frame.length - this.filled);
        copyBytes(this.frame, buf.subarray(pos, pos + n), this.filled); // the pool may be shared memory
        this.filled += n;
        pos += n;
        if (this.filled < this.frame.length) break;
        frames.push(this.complete(this.frame));
        this.frame = undefined;
        continue;
      }
      let length: number;
      if (this.head.length === 0 && buf.length - pos >= FRAME_LENGTH_BYTES) {
        length = buf.readUInt32BE(pos);
        pos += FRAME_LENGTH_BYTES;
      } else {
        const n = Math.min(buf.length - pos, FRAME_LENGTH_BYTES - this.head.length);
        this.head = Buffer.concat([this.head, buf.subarray(pos, pos + n)]);
        pos += n;
        if (this.head.length < FRAME_LENGTH_BYTES) break;
        length = this.head.readUInt32BE(0);
        this.head = Buffer.alloc(0);
      }
      if (length === 0 || length > this.maxFrameBytes) {
        this.failed = new ProtocolError(
          length === 0 ? 'E_MALFORMED' : 'E_FRAME_TOO_LARGE',
          length === 0 ? 'frame of length 0 (no type byte)' : `frame of ${length} bytes is past the limit of ${this.maxFrameBytes}`,
        );
        throw this.failed;
      }
      if (buf.length - pos >= length && this.copyAll) {
        const frame = this.allocate(length);
        copyBytes(frame, buf.subarray(pos, pos + length));
        frames.push(this.complete(frame));
        pos += length;
      } else if (buf.length - pos >= length) {
        frames.push({ type: buf[pos], body: buf.subarray(pos + 1, pos + length) });
        pos += length;
      } else {
        // Copy: the caller may reuse its read buffer.
        this.frame = this.allocate(length);
        this.filled = 0;
      }
    }
    return frames;
  }

  /**
   * A buffer for a frame of `length` bytes. Large ones come from the pool: fresh memory costs a page
   * fault per 4 KiB on first touch, several times the copy itself (bench/RESULTS.md).
   */
  private allocate(length: number): Buffer {
    if (length < POOLED_FRAME_MIN_BYTES) return Buffer.allocUnsafe(length);
    const at = this.placement(length);
    if (!Number.isInteger(at) || at < 0 || at + length > this.pool.slabBytes)
      throw new RangeError(`frame of ${length} bytes placed at ${at} in a ${this.pool.slabBytes}-byte buffer`);
    const view = this.pool.take(at + length);
    return Buffer.from(view.buffer, view.byteOffset + at, length);
  }

  private complete(frame: Buffer): RawFrame {
    const out: RawFrame = { type: frame[0], body: frame.subarray(1) };
    if (frame.length >= POOLED_FRAME_MIN_BYTES) {
      let released = false;
      out.release = () => {
        if (!released) this.pool.give(frame);
        released = true;
      };
    }
    return out;
  }

  /**
   * Where the next read may land in place: the missing rest of the frame being gathered, when at
   * least `min` bytes of it are missing (else undefined: read elsewhere and push()). A read into it
   * skips push()'s copy of those bytes; report it with gathered().
   */
  gatherTarget(min: number): Buffer | undefined {
    if (this.failed || !this.frame || this.frame.length - this.filled < min) return undefined;
    return this.frame.subarray(this.filled);
  }

  /** `n` bytes were read into gatherTarget()'s buffer: returns the frame they complete, if they do. */
  gathered(n: number): RawFrame[] {
    if (this.failed) throw this.failed;
    if (!this.frame || n > this.frame.length - this.filled) throw new RangeError(`gathered ${n} bytes past the frame being gathered`);
    this.filled += n;
    if (this.filled < this.frame.length) return [];
    const frame = this.complete(this.frame);
    this.frame = undefined;
    return [frame];
  }

  /** Whether the stream ended between frames (a clean end) rather than inside one. */
  get idle(): boolean {
    return this.head.length === 0 && !this.frame;
  }
}

/** The u32 length that opens every frame. */
const FRAME_LENGTH_BYTES = 4;
/** Split frames at least this long are gathered in pooled buffers (PAGES and DATA batches). */
const POOLED_FRAME_MIN_BYTES = 64 * 1024;
/** Released buffers a decoder keeps: one being filled, one being handled, one spare. */
const POOLED_FRAMES = 3;

/**
 * Writes one frame's buffers (encodeMessageParts) in one go; returns what the last write() did
 * (false: the socket's buffer is full, wait for 'drain'). The buffers are not copied: they must not
 * change until written (`written` is called then, or with the error if the socket fails first).
 */
export function writeFrame(socket: Writable, parts: Buffer[], written?: () => void): boolean {
  if (parts.length === 1) return socket.write(parts[0], written);
  socket.cork();
  let ok = true;
  parts.forEach((p, i) => (ok = socket.write(p, i === parts.length - 1 ? written : undefined)));
  socket.uncork();
  return ok;
}
