/**
 * One agent connection: HELLO first (version and token), then requests handled one at a time in
 * arrival order, so a session's writes apply in the order the agent sent them. Reading stops while
 * `window` frames wait or the server's memory budget is exhausted (TCP pushes back on the agent).
 */
import type { Socket } from 'node:net';
import { PAGE_SIZE } from '../format/pages.js';
import { BLOCK_PAGES } from '../store/job-sizes.js';
import { decodeMessage, encodeMessageParts, MSG, pagesDataPlacement, type Message } from '../protocol/messages.js';
import { FrameDecoder, writeFrame, type RawFrame } from '../protocol/frames.js';
import { ProtocolError, wireCodeOf } from '../protocol/errors.js';
import { negotiateVersion } from '../protocol/version.js';
import { DEFAULT_WINDOW, MAX_FRAME_BYTES, MAX_PAGES_PER_BATCH, SPARSE_RESTORE_VERSION } from '../protocol/limits.js';
import { RemoteSessionState } from './sessions.js';
import { runCall, streamRestore, type DataBatch } from './catalog.js';
import { tokensMatch } from './token.js';
import { adoptDecoding } from '../protocol/socket-reader.js';
import type { VnServer } from './server.js';

/** Ended sessions whose ending a connection remembers (see Connection.finished). */
const FINISHED_KEPT = 4096;

// A PAGES frame is one page job (Session.writeClaimed): checked and stored, or refused, as a whole.
if (MAX_PAGES_PER_BATCH > BLOCK_PAGES)
  throw new Error(`a PAGES frame (${MAX_PAGES_PER_BATCH} pages) must fit one page job (${BLOCK_PAGES})`);

type SessionRequest = Extract<Message, { sid: number }>;

export class Connection {
  readonly sessions = new Map<number, RemoteSessionState>();
  /**
   * Session numbers whose snapshots are committed or aborted, with how they ended: what a request
   * naming one is told, without the session's memory (its page table and more, megabytes for a large
   * VM), which a daemon's connection, open for days, would otherwise hold for every snapshot it made.
   */
  private readonly finished = new Map<number, { phase: RemoteSessionState['phase']; abortedBy: RemoteSessionState['abortedBy'] }>();
  /** Frames into the server's shared frame buffers: small ones copied out of a reused read buffer, large ones read in place. */
  private readonly decoder: FrameDecoder;
  readonly socket: Socket;
  private authed = false;
  /** The protocol version agreed in HELLO (0 until then). */
  private version = 0;
  private chain: Promise<void> = Promise.resolve();
  private waiting = 0;
  private closed = false;
  private readonly wake = () => this.maybeResume();

  constructor(
    accepted: Socket,
    private readonly server: VnServer,
    readonly peer: string,
  ) {
    this.decoder = new FrameDecoder(MAX_FRAME_BYTES, true, server.frameBuffers, pagesDataPlacement);
    // Large frames (PAGES) are read straight into their pooled buffers: read into one reused 1 MiB
    // buffer and pushed, every byte an agent sent was copied once more on this thread (~15 ms of a
    // 256 MiB first snapshot; bench/RESULTS.md, issue 12, session 19).
    const socket = (this.socket = adoptDecoding(accepted, this.decoder, {
      bytes: (n) => this.server.metrics.wireBytes.inc({ direction: 'in' }, n),
      frames: (frames) => {
        for (const f of frames) this.enqueue(f);
      },
      // The stream has lost its framing: one error frame, then close.
      error: (err) => this.fail(0, err),
    }));
    socket.on('error', (err) => server.log.debug({ event: 'socket_error', peer, err: err.message }));
    socket.on('close', () => void this.onClose());
  }

  private enqueue(frame: RawFrame): void {
    const bytes = frame.body.length;
    this.waiting++;
    this.server.budget.take(bytes);
    if (this.waiting >= DEFAULT_WINDOW || this.server.budget.exhausted) this.socket.pause();
    this.chain = this.chain
      .then(() => (this.closed ? undefined : this.handle(frame)))
      .finally(() => {
        // Handling copied what it keeps, or took the buffer (a PAGES frame lent to its page job).
        frame.release?.();
        this.waiting--;
        this.server.budget.give(bytes);
        this.maybeResume();
      });
  }

  private maybeResume(): void {
    if (this.closed || !this.socket.isPaused() || this.waiting >= DEFAULT_WINDOW) return;
    if (this.server.budget.exhausted) this.server.budget.whenFree(this.wake);
    else this.socket.resume();
  }

  /** Settles once every frame received so far has been handled. */
  get idle(): Promise<void> {
    return this.chain;
  }

  private async handle(frame: RawFrame): Promise<void> {
    const req = requestIdOf(frame);
    try {
      const m = decodeMessage(frame);
      if (!this.authed) return await this.hello(m);
      await this.dispatch(m, frame);
    } catch (err) {
      this.replyError(req, err);
    }
  }

  private async hello(m: Message): Promise<void> {
    if (m.t !== 'hello') throw this.fatal(new ProtocolError('E_HELLO_REQUIRED', 'the first frame must be HELLO'));
    let version: number;
    try {
      version = negotiateVersion(m.minVersion, m.maxVersion);
    } catch (err) {
      throw this.fatal(err);
    }
    if (!tokensMatch(m.token, await this.server.currentToken())) {
      this.server.log.warn({ event: 'auth_failed', peer: this.peer });
      throw this.fatal(new ProtocolError('E_AUTH', "access token refused (vnstore token prints the store's token)"));
    }
    this.authed = true;
    this.version = version;
    this.send({
      t: 'welcome',
      version,
      window: DEFAULT_WINDOW,
      maxFrameBytes: MAX_FRAME_BYTES,
      maxPagesPerBatch: MAX_PAGES_PER_BATCH,
      serverId: this.server.store.config.storeId,
    });
    this.server.log.info({ event: 'hello', peer: this.peer, version });
  }

  private async dispatch(m: Message, frame: RawFrame): Promise<void> {
    const s = this.server;
    switch (m.t) {
      case 'hello':
        throw new ProtocolError('E_HELLO_REQUIRED', 'HELLO was already sent on this connection');
      case 'begin':
        return this.begin(m);
      case 'offer':
      case 'pages':
      case 'zero':
      case 'prepare':
      case 'commit':
      case 'abort':
        return this.sessionRequest(m, frame);
      case 'group-commit': {
        const records = await s.groupCommit(m.group, m.ids);
        return this.result(m.req, records);
      }
      case 'call':
        if (m.method === 'abort-prepared') {
          // Server state, not the store's: prepared snapshots waiting for a coordinator.
          await s.abortPreparedIds(parseIds(m.args));
          return this.result(m.req, {});
        }
        this.send({ t: 'result', req: m.req, json: await runCall(s.store, m.method, m.args) });
        return;
      case 'restore':
        return this.restore(m.req, m.id);
      default:
        throw new ProtocolError('E_UNKNOWN_TYPE', `a server does not accept ${m.t.toUpperCase()} frames`);
    }
  }

  private async begin(m: Extract<Message, { t: 'begin' }>): Promise<void> {
    this.forgetFinished();
    if (this.sessions.has(m.sid) || this.finished.has(m.sid))
      throw new ProtocolError('E_SESSION_STATE', `session number ${m.sid} is already in use on this connection`);
    // Pages cross the wire whole (a short last page zero-padded): the session takes whole pages up to
    // the memory size, and PREPARE gives the exact image length.
    const wholePages = m.memoryBytes === undefined ? undefined : Math.ceil(m.memoryBytes / PAGE_SIZE) * PAGE_SIZE;
    const session = await this.server.store.beginSession({ vm: m.vm, group: m.group, parent: m.parent, memoryBytes: wholePages });
    const state = new RemoteSessionState(m.sid, session, m.memoryBytes, Date.now());
    this.sessions.set(m.sid, state);
    this.server.sessionBegun(state);
    this.server.log.info({
      event: 'session_begin',
      peer: this.peer,
      sid: m.sid,
      session: session.id,
      vm: m.vm,
      group: m.group,
      parent: session.parent?.id ?? null,
    });
    if (this.closed) await this.server.abortSession(state); // the agent went away while it began
    this.result(m.req, { parent: session.parent?.id ?? null });
  }

  private async sessionRequest(m: SessionRequest, frame: RawFrame): Promise<void> {
    const st = this.sessions.get(m.sid);
    if (!st) {
      const ended = this.finished.get(m.sid);
      if (ended?.abortedBy === 'timeout') throw new ProtocolError('E_TIMEOUT', `session ${m.sid} was aborted after being idle too long`);
      if (ended) throw new ProtocolError('E_SESSION_STATE', `cannot ${m.t} session ${m.sid}: it is ${ended.phase}`);
      throw new ProtocolError('E_UNKNOWN_SESSION', `no session ${m.sid} on this connection`);
    }
    st.lastActive = Date.now();
    const s = this.server;
    switch (m.t) {
      case 'offer': {
        st.assertWritable();
        checkIndices(st, m.indices);
        // Copies: the frame's buffer is reused once this returns, and the offer may be applied later.
        const { written } = await st.session.queueKnown(Uint32Array.from(m.indices), Uint8Array.from(m.digests));
        const { req } = m;
        // Answered once applied (at once when none of its digests can be known); meanwhile this
        // connection's next frames are handled, in order.
        written.then(
          (w) => {
            const missing: number[] = [];
            for (let k = 0; k < w.length; k++) if (!w[k]) missing.push(k);
            s.metrics.pagesOffered.inc(w.length);
            s.metrics.pagesNew.inc(missing.length);
            s.metrics.pagesDuplicate.inc(w.length - missing.length);
            this.send({ t: 'missing', req, positions: Uint32Array.from(missing) });
          },
          (err: unknown) => this.replyError(req, err),
        );
        return;
      }
      case 'pages': {
        st.assertWritable();
        checkIndices(st, m.indices);
        // The page job hashes each page once, on the pool's threads, and stores nothing of the frame
        // if a page's bytes do not hash to the digest sent with it. The answer follows that check;
        // meanwhile this connection's next frames are read (the agent does not wait for it either).
        // The frame's buffer is lent to the job (its pages hashed and compressed where they were
        // read, not copied first: ~25 ms of this thread per 256 MiB; bench/RESULTS.md, issue 12,
        // session 20), and freed by it.
        const lent = frame.release;
        frame.release = undefined;
        const { checked } = await st.session.writeClaimed(m.indices, m.data, m.digests, lent);
        const { req, indices } = m;
        checked.then(
          (refusedAt) => {
            if (refusedAt === undefined) {
              s.metrics.pagesReceived.inc(indices.length);
              this.result(req, {});
            } else
              this.replyError(
                req,
                new ProtocolError(
                  'E_DIGEST_MISMATCH',
                  `page ${indices[refusedAt]}: its bytes do not hash to the digest sent with them; nothing of this batch was stored`,
                ),
              );
          },
          (err: unknown) => this.replyError(req, err),
        );
        return;
      }
      case 'zero': {
        st.assertWritable();
        for (let r = 0; r < m.ranges.length; r += 2) st.checkPages(m.ranges[r], m.ranges[r + 1]);
        const { done } = await st.session.queueZeroRanges(Uint32Array.from(m.ranges));
        const { req } = m;
        done.then(
          () => this.result(req, {}),
          (err: unknown) => this.replyError(req, err),
        );
        return;
      }
      case 'prepare':
        return this.result(m.req, {
          id: (await s.prepareSession(st, { byteLength: m.byteLength ?? st.memoryBytes, unwritten: m.unwritten })).id,
        });
      case 'commit': {
        const record = await s.commitSession(st);
        this.forgetFinished();
        return this.result(m.req, record);
      }
      case 'abort':
        await s.abortSession(st);
        this.sessions.delete(m.sid);
        return this.result(m.req, {});
    }
  }

  /** Keeps only the ending of sessions that are committed or aborted (a group commit elsewhere ends them too). */
  private forgetFinished(): void {
    for (const [sid, st] of this.sessions) {
      const phase = st.phase;
      if (phase !== 'committed' && phase !== 'aborted') continue;
      this.sessions.delete(sid);
      this.finished.set(sid, { phase, abortedBy: st.abortedBy });
      // The oldest go first past a bound: a connection open for years must not grow either (a number
      // that old is then unknown: E_UNKNOWN_SESSION, and free again).
      if (this.finished.size > FINISHED_KEPT) this.finished.delete(this.finished.keys().next().value!);
    }
  }

  private async restore(req: number, id: string): Promise<void> {
    const store = this.server.store;
    const record = await store.resolveSnapshot(id);
    this.result(req, record);
    const sink = {
      // Settles when the socket has written the frame (or failed): the buffers are then free again.
      send: (batch: DataBatch) =>
        new Promise<void>((resolve) => {
          if (this.closed)
            resolve(); // nothing is written any more
          else this.send({ ...batch, req }, () => resolve());
        }),
    };
    await streamRestore(store, record, sink, this.version >= SPARSE_RESTORE_VERSION);
    this.send({ t: 'end', req, json: '{}' });
  }

  private result(req: number, value: unknown): void {
    this.send({ t: 'result', req, json: JSON.stringify(value) });
  }

  /**
   * Writes a frame; false when the socket's buffer is full (the caller may wait for 'drain'), or the
   * connection is closed (nothing written). Byte fields of `m` are written from its own memory: they
   * must not change until `written` is called (once the socket wrote the frame or failed).
   */
  send(m: Message, written?: () => void): boolean {
    if (this.closed) return false;
    const parts = encodeMessageParts(m);
    let bytes = 0;
    for (const p of parts) bytes += p.length;
    this.server.metrics.wireBytes.inc({ direction: 'out' }, bytes);
    return writeFrame(this.socket, parts, written);
  }

  private replyError(req: number, err: unknown): void {
    const inner = err instanceof FatalError ? err.inner : err;
    const code = wireCodeOf(inner);
    const message = inner instanceof Error ? inner.message : String(inner);
    this.server.metrics.errors.inc({ code });
    if (code !== 'E_INTERNAL') this.server.log.info({ event: 'request_error', peer: this.peer, req, code, message });
    if (code === 'E_INTERNAL')
      this.server.log.error({ event: 'internal_error', peer: this.peer, req, err: inner instanceof Error ? inner.stack : String(inner) });
    this.send({ t: 'error', req, code, message });
    if (err instanceof FatalError) this.close();
  }

  /** An error after which the connection closes (handshake failures, lost framing). */
  private fatal(err: unknown): FatalError {
    return new FatalError(err);
  }

  private fail(req: number, err: unknown): void {
    this.replyError(req, this.fatal(err));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.server.budget.forget(this.wake);
    this.socket.end();
    // A peer that never reads would keep a half-closed socket: give it a moment, then drop it.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  private async onClose(): Promise<void> {
    this.closed = true;
    this.server.budget.forget(this.wake);
    this.server.connectionClosed(this);
    await this.chain.catch(() => undefined);
    // A dropped connection aborts its sessions that are not prepared; prepared ones wait for a commit.
    for (const st of this.sessions.values()) if (st.phase === 'open') await this.server.abortSession(st);
    this.sessions.clear();
  }
}

/** A handshake or framing error: sent like any error, then the connection closes. */
class FatalError extends Error {
  constructor(readonly inner: unknown) {
    super(inner instanceof Error ? inner.message : String(inner));
  }
}

function parseIds(argsJson: string): string[] {
  let ids: unknown;
  try {
    ids = (JSON.parse(argsJson) as { ids?: unknown }).ids;
  } catch {
    throw new ProtocolError('E_MALFORMED', 'arguments of abort-prepared are not JSON');
  }
  if (!Array.isArray(ids) || ids.some((x) => typeof x !== 'string'))
    throw new ProtocolError('E_MALFORMED', 'abort-prepared takes {"ids": [snapshot id, ...]}');
  return ids as string[];
}

/** The request id of a client frame, read before decoding so even a malformed one is answered by id. */
function requestIdOf(frame: RawFrame): number {
  if (frame.type === MSG.HELLO || frame.type >= MSG.WELCOME || frame.body.length < 4) return 0;
  return frame.body.readUInt32BE(0);
}

function checkIndices(st: RemoteSessionState, indices: Uint32Array): void {
  let max = -1;
  for (const i of indices) if (i > max) max = i;
  if (max >= 0) st.checkPages(max, 1);
}
