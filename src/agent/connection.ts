/**
 * A client connection to a vnstore server: HELLO/WELCOME, then requests matched to their answers by
 * request id, at most `window` outstanding (the server's window), and restore streams.
 */
import net from 'node:net';
import tls from 'node:tls';
import { decodeMessage, encodeMessage, encodeMessageParts, type Message } from '../protocol/messages.js';
import { FrameDecoder, writeFrame, type RawFrame } from '../protocol/frames.js';
import { ProtocolError, RemoteError } from '../protocol/errors.js';
import { MAX_REPLY_FRAME_BYTES, MIN_PROTOCOL_VERSION, pagesPerBatch, PROTOCOL_VERSION } from '../protocol/limits.js';
import { parseAddress } from '../server/address.js';
import { VnstoreError } from '../util/errors.js';
import { drainedOrClosed } from '../util/drain.js';
import { decodingReads, deliverFrames, type FrameHandlers } from '../protocol/socket-reader.js';

export interface ConnectOptions {
  /** HOST:PORT, tls://HOST:PORT or unix:PATH (src/server/address.ts). */
  server: string;
  token: string;
  /** CA certificate(s) to trust for a tls:// server (else the system's). */
  tlsCa?: Buffer;
  /** Give up connecting after this long (default 10 s). */
  connectTimeoutMs?: number;
  /** The highest protocol version to offer (default: this build's); tests speak as older agents. */
  maxVersion?: number;
}

type Reply = Extract<Message, { t: 'result' | 'missing' }>;
type Request = Message & { req: number };
/** A request without its id (assigned when sent). */
export type Outgoing = Request extends infer R ? (R extends Request ? Omit<R, 'req'> : never) : never;

/**
 * Takes a restore's frames before END; `release`, when given, must be called once nothing refers to
 * the frame's bytes any more (its buffer is then reused for a later frame).
 */
export type StreamHandler = (m: Message, release?: () => void) => void;

interface Waiter {
  resolve(m: Reply | Extract<Message, { t: 'end' }>): void;
  reject(err: Error): void;
  /** For a restore: its frames before END (RESULT with the record, then DATA). */
  stream?: StreamHandler;
}

export class AgentConnection {
  private readonly waiters = new Map<number, Waiter>();
  private readonly slots: (() => void)[] = [];
  private nextReq = 1;
  private outstanding = 0;
  private failure: Error | undefined;
  /** The last submitted frame's write: the next waits for it, so frames go out in submit order. */
  private writing: Promise<void> = Promise.resolve();
  private constructor(
    private readonly socket: net.Socket,
    readonly window: number,
    readonly serverId: string,
    /** Pages in one PAGES frame: what the server takes (WELCOME), at most this build's limit. */
    readonly maxPagesPerBatch: number,
  ) {}

  static async connect(opts: ConnectOptions): Promise<AgentConnection> {
    const addr = parseAddress(opts.server);
    // Frames read go to `handlers`: the handshake's first, then the connection's.
    let handlers: FrameHandlers = { frames: () => undefined, error: () => undefined };
    const decoder = new FrameDecoder(MAX_REPLY_FRAME_BYTES, true, 4); // copies: reads land in reused buffers
    const onread = decodingReads(decoder, { frames: (f) => handlers.frames(f), error: (e) => handlers.error(e) });
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s =
        addr.kind === 'unix'
          ? net.connect({ path: addr.path, onread })
          : addr.tls
            ? tls
                .connect({ host: addr.host, port: addr.port, ca: opts.tlsCa, servername: net.isIP(addr.host) ? undefined : addr.host })
                .on('data', (chunk: Buffer) => deliverFrames(handlers, () => decoder.push(chunk))) // TLS: no onread
            : net.connect({ port: addr.port, host: addr.host, onread });
      const timer = setTimeout(() => s.destroy(new Error('timed out')), opts.connectTimeoutMs ?? 10_000);
      s.once(addr.kind === 'tcp' && addr.tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (err) => {
        clearTimeout(timer);
        reject(new VnstoreError('E_IO', `cannot connect to vnstore server ${opts.server}: ${err.message}`));
      });
    });
    socket.setNoDelay(true);
    socket.write(
      encodeMessage({ t: 'hello', minVersion: MIN_PROTOCOL_VERSION, maxVersion: opts.maxVersion ?? PROTOCOL_VERSION, token: opts.token }),
    );
    const welcome = await new Promise<Extract<Message, { t: 'welcome' }>>((resolve, reject) => {
      const onFrames = (frames: RawFrame[]) => {
        if (frames.length === 0) return;
        handlers = { frames: () => undefined, error: () => undefined };
        socket.off('close', onClose);
        try {
          const m = decodeMessage(frames[0]);
          if (m.t === 'welcome') resolve(m);
          else if (m.t === 'error') reject(new RemoteError(m.code, `server ${opts.server}: ${m.message}`));
          else reject(new ProtocolError('E_MALFORMED', `server ${opts.server} answered HELLO with ${m.t.toUpperCase()}`));
        } catch (err) {
          reject(err as Error);
        }
      };
      const onClose = () => reject(new VnstoreError('E_IO', `server ${opts.server} closed the connection during the handshake`));
      handlers = { frames: onFrames, error: reject };
      socket.once('close', onClose);
      // Reset during the handshake: the close that follows rejects; the error must not go unhandled.
      socket.on('error', () => undefined);
    }).catch((err: unknown) => {
      socket.destroy();
      throw err;
    });
    const c = new AgentConnection(socket, Math.max(1, welcome.window), welcome.serverId, pagesPerBatch(welcome));
    handlers = c.listen();
    return c;
  }

  /** Attaches the connection's handlers; returns the ones for the frames read. */
  private listen(): FrameHandlers {
    this.socket.on('error', (err) => this.fail(new VnstoreError('E_IO', `connection to the server failed: ${err.message}`)));
    this.socket.on('close', () => this.fail(new VnstoreError('E_IO', 'the server closed the connection')));
    const broken = (err: Error) => {
      this.fail(err);
      this.socket.destroy();
    };
    return {
      frames: (frames) => {
        try {
          for (const f of frames) this.onMessage(decodeMessage(f), f.release);
        } catch (err) {
          broken(err as Error);
        }
      },
      error: broken,
    };
  }

  private onMessage(m: Message, release?: () => void): void {
    const w = 'req' in m && m.t !== 'end' ? this.waiters.get(m.req) : undefined;
    if (w?.stream && m.t !== 'error') {
      w.stream(m, release);
      return;
    }
    // Every other answer is decoded into copies: its frame's buffer is free at once.
    release?.();
    this.onAnswer(m);
  }

  private onAnswer(m: Message): void {
    if (m.t === 'error' && m.req === 0) {
      this.fail(new RemoteError(m.code, m.message));
      return;
    }
    if (!('req' in m)) throw new ProtocolError('E_MALFORMED', `unexpected ${m.t.toUpperCase()} from the server`);
    const w = this.waiters.get(m.req);
    if (!w) throw new ProtocolError('E_MALFORMED', `answer to unknown request ${m.req}`);
    if (m.t === 'error') this.settle(m.req, () => w.reject(new RemoteError(m.code, m.message)));
    else if (m.t === 'result' || m.t === 'missing' || m.t === 'end') this.settle(m.req, () => w.resolve(m));
    else throw new ProtocolError('E_MALFORMED', `unexpected ${m.t.toUpperCase()} for request ${m.req}`);
  }

  private settle(req: number, fn: () => void): void {
    this.waiters.delete(req);
    this.outstanding--;
    this.slots.shift()?.();
    fn();
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
    for (const wake of this.slots.splice(0)) wake();
  }

  /**
   * Sends a request; resolves to its answer (RESULT or MISSING), rejects with the server's error.
   * Byte fields of `m` are written from its own memory: they must not change until this settles.
   */
  async request(m: Outgoing, stream?: StreamHandler): Promise<Message> {
    const { written, answer } = this.submit(m, stream);
    await written;
    return answer;
  }

  /**
   * request() in steps: `written` settles once the frame is handed to the socket, `flushed` once the
   * socket has passed its bytes to the kernel (or the frame will never be sent: the connection
   * failed), `answer` with the answer. Frames are written in the order of the submit() calls (a
   * writer waiting for a window slot holds back the ones after it), so a caller may go on once
   * `written` settles and still know its later requests reach the server after this one. Byte
   * fields of `m` are sent as views: they must not change until `flushed` settles.
   */
  submit(m: Outgoing, stream?: StreamHandler): { written: Promise<void>; flushed: Promise<void>; answer: Promise<Message> } {
    let settle!: Pick<Waiter, 'resolve' | 'reject'>;
    const answer = new Promise<Message>((resolve, reject) => (settle = { resolve, reject }));
    answer.catch(() => undefined); // the caller sees the rejection; it must not count as unhandled while we wait to send
    let onFlushed!: () => void;
    const flushed = new Promise<void>((resolve) => (onFlushed = resolve));
    const written = this.writing.then(async () => {
      while (this.outstanding >= this.window && !this.failure) await new Promise<void>((resolve) => this.slots.push(resolve));
      if (this.failure) {
        settle.reject(this.failure);
        throw this.failure;
      }
      const req = this.nextReq;
      this.nextReq = this.nextReq >= 0xfffffffe ? 1 : this.nextReq + 1;
      const frame = encodeMessageParts({ ...m, req } as Message);
      this.outstanding++;
      this.waiters.set(req, { ...settle, stream });
      // The callback comes once the bytes are out, or with an error if the socket is destroyed first.
      if (!writeFrame(this.socket, frame, onFlushed)) await drainedOrClosed(this.socket); // closed: the answer fails
    });
    written.catch(() => onFlushed()); // never handed to the socket: nothing of it is read later
    this.writing = written.catch(() => undefined);
    return { written, flushed, answer };
  }

  /** False once the connection has failed or closed: every request would reject. */
  get usable(): boolean {
    return this.failure === undefined && !this.socket.destroyed;
  }

  /** Pauses reading (a restore's consumer applying backpressure) until `until` settles. */
  hold(until: Promise<unknown>): void {
    this.socket.pause();
    const resume = () => void this.socket.resume();
    until.then(resume, resume); // a failure is the holder's to report, not an unhandled rejection here
  }

  async close(): Promise<void> {
    if (this.socket.destroyed) return;
    await new Promise<void>((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    });
  }
}

/** The JSON of a RESULT answer. */
export function resultJson<T>(m: Message): T {
  if (m.t !== 'result') throw new ProtocolError('E_MALFORMED', `expected RESULT, got ${m.t.toUpperCase()}`);
  return JSON.parse(m.json) as T;
}
