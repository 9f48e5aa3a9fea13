/**
 * The vnstore server: owns an open Store and serves agents over TCP, TLS or a Unix socket
 * (docs/PROTOCOL.md). It keeps the server-wide state: connections, open sessions (idle timeout),
 * prepared snapshots (prepared timeout, group commit across connections) and the memory budget.
 */
import net from 'node:net';
import tls from 'node:tls';
import { promises as fsp } from 'node:fs';
import type { Store } from '../store/store.js';
import type { SnapshotRecord } from '../store/db.js';
import type { CommitOptions } from '../store/session.js';
import { ProtocolError } from '../protocol/errors.js';
import { MAX_FRAME_BYTES } from '../protocol/limits.js';
import { PAGE_SIZE } from '../format/pages.js';
import { SLABS_KEPT } from '../store/job-sizes.js';
import { Connection } from './connection.js';
import { MemoryBudget } from './budget.js';
import { SlabPool } from '../chunk/slab-pool.js';
import { ServerMetrics } from './metrics.js';
import { PreparedRegistry, type RemoteSessionState } from './sessions.js';
import { formatAddress, type Address } from './address.js';
import { silentLogger, type Logger } from './log.js';
import { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MEMORY_BUDGET, DEFAULT_PREPARED_TIMEOUT_MS } from './defaults.js';

export interface ServerOptions {
  /** The access token, or where to read it at each HELLO (so a rotated token takes effect at once). */
  token: string | (() => Promise<string>);
  log?: Logger;
  /** An open session with no request for this long is aborted (default 5 minutes). */
  idleTimeoutMs?: number;
  /** A prepared snapshot not committed within this is aborted (default 30 minutes). */
  preparedTimeoutMs?: number;
  /** Frames received and not yet handled, all connections together (default 64 MiB). */
  memoryBudgetBytes?: number;
}

export { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_PREPARED_TIMEOUT_MS, DEFAULT_MEMORY_BUDGET };

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
}

export class VnServer {
  readonly metrics = new ServerMetrics();
  readonly budget: MemoryBudget;
  /**
   * Buffers for received frames (MAX_FRAME_BYTES each), shared by all connections: as many are kept
   * as the memory budget holds frames (and two more), whatever the number of connections.
   */
  readonly frameBuffers: SlabPool;
  readonly prepared = new PreparedRegistry();
  readonly log: Logger;
  private readonly tokenSource: () => Promise<string>;
  private readonly connections = new Set<Connection>();
  private readonly listeners: net.Server[] = [];
  private readonly open = new Set<RemoteSessionState>();
  private readonly idleMs: number;
  private readonly preparedMs: number;
  private readonly sweeper: NodeJS.Timeout;
  private stopping = false;

  constructor(
    readonly store: Store,
    options: ServerOptions,
  ) {
    const token = options.token;
    this.tokenSource = typeof token === 'string' ? () => Promise.resolve(token) : token;
    this.log = options.log ?? silentLogger();
    this.idleMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    this.preparedMs = options.preparedTimeoutMs ?? DEFAULT_PREPARED_TIMEOUT_MS;
    // At least one full frame must fit, or a single agent could never make progress.
    this.budget = new MemoryBudget(Math.max(options.memoryBudgetBytes ?? DEFAULT_MEMORY_BUDGET, 2 * MAX_FRAME_BYTES));
    // Shared memory, with room to place a PAGES frame's pages on a page boundary: the frame is lent
    // to its page job as it is (Session.writeClaimed), so more buffers are out than the budget's.
    this.frameBuffers = new SlabPool(MAX_FRAME_BYTES + PAGE_SIZE, Math.ceil(this.budget.limit / MAX_FRAME_BYTES) + 2 + SLABS_KEPT, true);
    const every = Math.max(50, Math.min(1000, Math.floor(Math.min(this.idleMs, this.preparedMs) / 4)));
    this.sweeper = setInterval(() => void this.sweep(Date.now()), every);
    this.sweeper.unref();
  }

  /**
   * Takes back the prepared snapshots a previous run held (until their deadline): a coordinator can
   * still commit them after a restart. Call once, before listening.
   */
  async adoptHeld(): Promise<number> {
    const held = await this.store.heldPrepared();
    for (const h of held) this.prepared.add(h.prepared, h.deadline);
    this.metrics.sessionsPrepared.set(this.prepared.size);
    if (held.length > 0) this.log.info({ event: 'prepared_adopted', snapshots: held.map((h) => h.prepared.record.id) });
    return held.length;
  }

  /** The token HELLO must present now. */
  currentToken(): Promise<string> {
    return this.tokenSource();
  }

  /** Starts listening; resolves to the address actually bound (a port 0 becomes the real port). */
  async listen(addr: Address, tlsFiles?: TlsFiles): Promise<string> {
    const onSocket = (socket: net.Socket) => this.accept(socket);
    const server =
      addr.kind === 'tcp' && addr.tls
        ? tls.createServer({ cert: tlsFiles?.cert, key: tlsFiles?.key }, onSocket)
        : net.createServer({ pauseOnConnect: true }, onSocket); // Connection starts reading (socket-reader.ts)
    if (addr.kind === 'unix') await removeStaleSocket(addr.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (addr.kind === 'unix') server.listen(addr.path, resolve);
      else server.listen(addr.port, addr.host, resolve);
    });
    server.on('error', (err) => this.log.error({ event: 'listener_error', err: err.message }));
    this.listeners.push(server);
    const bound = server.address();
    const actual: Address = addr.kind === 'tcp' && bound && typeof bound === 'object' ? { ...addr, port: bound.port } : addr;
    if (addr.kind === 'unix') await fsp.chmod(addr.path, 0o600);
    const text = formatAddress(actual);
    this.log.info({ event: 'listening', address: text });
    return text;
  }

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    const c = new Connection(socket, this, peer);
    c.socket.setNoDelay(true);
    this.connections.add(c);
    this.metrics.connectionsOpen.set(this.connections.size);
    this.log.info({ event: 'connection', peer });
  }

  connectionClosed(c: Connection): void {
    this.connections.delete(c);
    this.metrics.connectionsOpen.set(this.connections.size);
    this.log.info({ event: 'disconnect', peer: c.peer });
  }

  sessionBegun(st: RemoteSessionState): void {
    this.open.add(st);
    this.metrics.sessionsOpen.set(this.open.size);
  }

  async prepareSession(st: RemoteSessionState, options: CommitOptions): Promise<SnapshotRecord> {
    if (st.phase !== 'open') throw stateError(st, 'prepare');
    st.stage = 'preparing';
    this.open.delete(st);
    this.metrics.sessionsOpen.set(this.open.size);
    const started = process.hrtime.bigint();
    try {
      const prepared = await st.session.prepare(options);
      const deadline = Date.now() + this.preparedMs;
      // Held in the store: it survives a server restart until committed, aborted or timed out.
      await this.store.holdPrepared(prepared, deadline).catch(async (err: unknown) => {
        await this.store.abortPrepared([prepared]).catch(() => undefined);
        throw err;
      });
      st.prepared = prepared;
      this.prepared.add(prepared, deadline);
      this.metrics.sessionsPrepared.set(this.prepared.size);
      this.metrics.commitSeconds.observe({ step: 'prepare' }, seconds(started));
      this.log.info({ event: 'session_prepared', session: prepared.record.id, vm: prepared.record.vm });
      return prepared.record;
    } catch (err) {
      st.stage = 'aborted';
      throw err;
    }
  }

  async commitSession(st: RemoteSessionState): Promise<SnapshotRecord> {
    if (st.phase !== 'prepared' || !st.prepared) throw stateError(st, 'commit');
    const group = st.session.options.group;
    const [record] = await this.commit([st.prepared.record.id], group);
    return record;
  }

  /** Commits prepared snapshots of any connections atomically, under `group` when given. */
  async groupCommit(group: string, ids: string[]): Promise<SnapshotRecord[]> {
    return this.commit(ids, group);
  }

  private async commit(ids: string[], group: string | undefined): Promise<SnapshotRecord[]> {
    // Taken out of the registry before the commit awaits: a concurrent commit naming one of them fails.
    const list = this.prepared.take(ids);
    this.prepared.remove(ids);
    const started = process.hrtime.bigint();
    try {
      const records = await this.store.commitPrepared(list, group === undefined ? undefined : { id: group });
      this.metrics.commitSeconds.observe({ step: 'commit' }, seconds(started));
      this.metrics.commits.inc(records.length);
      for (const r of records) this.metrics.storedBytes.inc(r.addedBytes);
      this.log.info({ event: 'commit', group: group ?? null, snapshots: records.map((r) => r.id) });
      return records;
    } catch (err) {
      for (const p of list) if (p.state === 'prepared') this.prepared.add(p, Date.now() + this.preparedMs);
      throw err;
    } finally {
      this.metrics.sessionsPrepared.set(this.prepared.size);
    }
  }

  /**
   * Aborts prepared snapshots by id, of any connection (a coordinator giving up on a group): all the
   * named ones must be waiting for a commit, or none is touched.
   */
  async abortPreparedIds(ids: string[]): Promise<void> {
    const list = this.prepared.take(ids);
    this.prepared.remove(ids);
    this.metrics.sessionsPrepared.set(this.prepared.size);
    await this.store.abortPrepared(list);
    this.log.info({ event: 'prepared_abort', snapshots: ids, reason: 'coordinator' });
  }

  async abortSession(st: RemoteSessionState, by?: 'timeout' | 'shutdown'): Promise<void> {
    if (st.phase === 'open') {
      st.stage = 'aborted';
      st.abortedBy = by;
      this.open.delete(st);
      this.metrics.sessionsOpen.set(this.open.size);
      await st.session.abort();
      this.log.info({ event: 'session_abort', session: st.session.id, vm: st.session.options.vm, reason: by ?? 'request' });
    } else if (st.phase === 'prepared' && st.prepared) {
      this.prepared.remove([st.prepared.record.id]);
      this.metrics.sessionsPrepared.set(this.prepared.size);
      await this.store.abortPrepared([st.prepared]);
      this.log.info({ event: 'prepared_abort', session: st.prepared.record.id, reason: by ?? 'request' });
    } else if (st.phase !== 'aborted') throw stateError(st, 'abort');
  }

  /** Aborts idle open sessions and prepared snapshots past their deadline (`now`: the clock). */
  async sweep(now: number): Promise<void> {
    for (const st of [...this.open]) if (st.phase === 'open' && now - st.lastActive >= this.idleMs) await this.abortSession(st, 'timeout');
    const expired = this.prepared.expired(now);
    if (expired.length === 0) return;
    const list = expired.map((id) => this.prepared.get(id)!);
    this.prepared.remove(expired);
    this.metrics.sessionsPrepared.set(this.prepared.size);
    await this.store.abortPrepared(list);
    this.log.info({ event: 'prepared_timeout', snapshots: expired });
  }

  /**
   * Stops: no new connections, every connection closed once its current request is handled, open
   * sessions aborted. Prepared snapshots are left as they are (the caller closes the store).
   */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.sweeper);
    // A listener's close callback waits for its connections to end: close them before awaiting it.
    const closed = Promise.all(this.listeners.map((l) => new Promise<void>((resolve) => l.close(() => resolve()))));
    const conns = [...this.connections];
    for (const c of conns) c.close();
    await Promise.all(conns.map((c) => c.idle.catch(() => undefined)));
    for (const c of conns) c.socket.destroy();
    await closed;
    for (const st of [...this.open]) await this.abortSession(st, 'shutdown');
    this.log.info({ event: 'stopped', prepared: this.prepared.size });
  }
}

function seconds(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}

function stateError(st: RemoteSessionState, what: string): ProtocolError {
  if (st.abortedBy === 'timeout') return new ProtocolError('E_TIMEOUT', `session ${st.sid} was aborted after being idle too long`);
  return new ProtocolError('E_SESSION_STATE', `cannot ${what} session ${st.sid}: it is ${st.phase}`);
}

/** A socket file left by a server that died (we hold the store lock, so it was ours). */
async function removeStaleSocket(file: string): Promise<void> {
  const st = await fsp.lstat(file).catch(() => undefined);
  if (st?.isSocket()) await fsp.rm(file, { force: true });
}
