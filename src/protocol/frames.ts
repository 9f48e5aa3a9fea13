/**
 * Length-prefixed frames: u32be length (type byte + body, at most MAX_FRAME_BYTES), u8 type, body.
 * The streaming decoder checks the length before it buffers a byte of the body, so a peer can make it
 * hold at most one frame.
 */
import { FRAME_HEADER_BYTES, MAX_FRAME_BYTES } from './limits.js';
import { ProtocolError } from './errors.js';

export interface RawFrame {
  type: number;
  body: Buffer;
}

/** Header for a frame of `type` whose body is `bodyBytes` long (the body follows separately). */
export function frameHeader(type: number, bodyBytes: number): Buffer {
  const length = bodyBytes + 1;
  if (length > MAX_FRAME_BYTES) throw new ProtocolError('E_FRAME_TOO_LARGE', `frame of ${length} bytes is past the limit of ${MAX_FRAME_BYTES}`);
  const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  h.writeUInt32BE(length, 0);
  h[4] = type;
  return h;
}

export class FrameDecoder {
  private parts: Buffer[] = [];
  private buffered = 0;
  /** Length of the frame being gathered, once its header is in. */
  private need = -1;
  private failed: ProtocolError | undefined;

  constructor(private readonly maxFrameBytes = MAX_FRAME_BYTES) {}

  /** Bytes held for an incomplete frame (never more than one frame plus one read). */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /**
   * Feeds bytes; returns the frames they complete. After a refused frame the stream has lost its
   * framing: every later call throws the same error.
   */
  push(chunk: Uint8Array): RawFrame[] {
    if (this.failed) throw this.failed;
    const frames: RawFrame[] = [];
    let buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    for (;;) {
      if (this.need < 0) {
        if (this.buffered + buf.length < 4) break;
        const head = this.take(buf, 4);
        buf = head.rest;
        const length = head.taken.readUInt32BE(0);
        if (length === 0 || length > this.maxFrameBytes) {
          this.failed = new ProtocolError(length === 0 ? 'E_MALFORMED' : 'E_FRAME_TOO_LARGE', length === 0 ? 'frame of length 0 (no type byte)' : `frame of ${length} bytes is past the limit of ${this.maxFrameBytes}`);
          this.parts = [];
          this.buffered = 0;
          throw this.failed;
        }
        this.need = length;
      }
      if (this.buffered + buf.length < this.need) break;
      const { taken, rest } = this.take(buf, this.need);
      buf = rest;
      this.need = -1;
      frames.push({ type: taken[0], body: taken.subarray(1) });
    }
    if (buf.length > 0) {
      // Copy: the caller may reuse its read buffer.
      this.parts.push(Buffer.from(buf));
      this.buffered += buf.length;
    }
    return frames;
  }

  /** Whether the stream ended between frames (a clean end) rather than inside one. */
  get idle(): boolean {
    return this.buffered === 0 && this.need < 0;
  }

  /** `n` bytes from what is buffered followed by `buf`; what of `buf` is left. */
  private take(buf: Buffer, n: number): { taken: Buffer; rest: Buffer } {
    if (this.buffered === 0) return { taken: buf.subarray(0, n), rest: buf.subarray(n) };
    const fromBuf = n - this.buffered;
    const taken = Buffer.concat([...this.parts, buf.subarray(0, fromBuf)], n);
    this.parts = [];
    this.buffered = 0;
    return { taken, rest: buf.subarray(fromBuf) };
  }
}
