/**
 * Socket reads that decode frames as they land. Node's default reads allocate a fresh 64 KiB buffer
 * per read, and on the project machine that capped a socket at 110-270 MB/s, where reading into one
 * reused buffer (net's `onread`) took 0.8-2 GB/s (bench/RESULTS.md, "Server (issue 12)", socket
 * reads); large frames are read straight into their own buffers, so their bytes are not copied
 * again (the server's PAGES, the agent's DATA).
 */
import net from 'node:net';
import type { FrameDecoder, RawFrame } from './frames.js';

/**
 * A socket accepted by a net.Server created with `pauseOnConnect`, re-made so that it reads through
 * decodingReads: net.Server has no `onread` option, so the accepted handle moves to a new Socket that
 * has one (the old Socket object is dropped without closing the handle). Falls back to 'data' events
 * on the same socket, pushed into the decoder, where the handle cannot be taken (a TLS socket).
 */
export function adoptDecoding(socket: net.Socket, decoder: FrameDecoder, handlers: FrameHandlers): net.Socket {
  const raw = socket as unknown as { _handle?: unknown };
  if (!(socket instanceof net.Socket) || socket.constructor !== net.Socket || !raw._handle || socket.destroyed) {
    socket.on('data', (chunk: Buffer) => {
      handlers.bytes?.(chunk.length);
      deliverFrames(handlers, () => decoder.push(chunk));
    });
    socket.resume();
    return socket;
  }
  const handle = raw._handle;
  raw._handle = null;
  socket.destroy(); // its handle is gone: this only updates the listener's connection count
  return new net.Socket({ handle, onread: decodingReads(decoder, handlers) } as net.SocketConstructorOpts);
}

/** What decodingReads hands on: the frames each read completes, or the error that ended the framing. */
export interface FrameHandlers {
  frames(frames: RawFrame[]): void;
  error(err: Error): void;
  /** Bytes each read took off the socket (a wire-bytes metric), before its frames are handed on. */
  bytes?(n: number): void;
}

/**
 * Buffer of decodingReads for headers, small frames and the start of large ones. Small, so that
 * little of a large frame lands here (and is copied): the rest is read in place.
 */
export const SMALL_READ_BYTES = 64 * 1024;

/**
 * `onread` options that decode frames as they are read. The rest of a large frame being gathered is
 * read straight into its buffer (FrameDecoder.gatherTarget): the reused read buffer copied each
 * 1 MiB DATA frame of a restore once more, 8% of a client's CPU (bench/RESULTS.md, restore13).
 * Everything else is read into one reused SMALL_READ_BYTES buffer and pushed.
 */
export function decodingReads(decoder: FrameDecoder, handlers: FrameHandlers): net.OnReadOpts {
  const buffer = Buffer.allocUnsafe(SMALL_READ_BYTES);
  return {
    // Called after each read for where the next one goes (Node's onread buffer generator).
    buffer: () => decoder.gatherTarget(SMALL_READ_BYTES) ?? buffer,
    callback: (nread, buf) => {
      handlers.bytes?.(nread);
      deliverFrames(handlers, () => (buf === buffer ? decoder.push(buf.subarray(0, nread)) : decoder.gathered(nread)));
      return true; // pausing is socket.pause()'s (backpressure), not this return value's
    },
  };
}

/** The frames `decode` gives to `handlers.frames`, or the error that ended the framing to `handlers.error`. */
export function deliverFrames(handlers: FrameHandlers, decode: () => RawFrame[]): void {
  let frames: RawFrame[];
  try {
    frames = decode();
  } catch (err) {
    handlers.error(err as Error);
    return;
  }
  handlers.frames(frames);
}
