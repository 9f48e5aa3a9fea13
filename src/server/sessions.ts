/**
 * Server-side session bookkeeping. A RemoteSessionState is one agent session's life on the server;
 * the PreparedRegistry holds prepared snapshots of every connection by id, for COMMIT and a
 * coordinator's GROUP_COMMIT, until a commit, an abort or their timeout. Timeouts are decided by
 * `expired(now)` with the clock passed in; the server acts on the answer.
 */
import type { PreparedSnapshot, Session } from '../store/session.js';
import { ProtocolError } from '../protocol/errors.js';
import { PageGather } from './page-gather.js';
import type { SlabPool } from '../chunk/slab-pool.js';

export type SessionPhase = 'open' | 'preparing' | 'prepared' | 'committed' | 'aborted';

export class RemoteSessionState {
  /** Before prepare succeeds; after, the prepared snapshot's own state (a group commit elsewhere changes it). */
  stage: 'open' | 'preparing' | 'aborted' = 'open';
  prepared: PreparedSnapshot | undefined;
  /** Why it was aborted, when the server did it (idle timeout, shutdown). */
  abortedBy: 'timeout' | 'shutdown' | undefined;
  lastActive: number;
  /** Received pages not yet written to the session (written before any request that could see them). */
  readonly gathered: PageGather;

  constructor(
    readonly sid: number,
    readonly session: Session,
    readonly memoryBytes: number | undefined,
    now: number,
    /** Lends the buffers pages are gathered in. */
    pageBuffers: SlabPool,
  ) {
    this.lastActive = now;
    this.gathered = new PageGather(pageBuffers);
  }

  /** Why writing gathered pages failed: the session cannot be prepared any more. */
  private gatherFailure: unknown;

  /**
   * Writes the gathered pages to the session (their digests were checked on arrival). Their write
   * failing fails this call and every later one, so a session that lost pages is never prepared.
   */
  async writeGathered(): Promise<void> {
    if (this.gatherFailure !== undefined) throw this.gatherFailure;
    if (this.gathered.size === 0) return;
    const g = this.gathered.take();
    try {
      await this.session.writeScattered(g.indices, g.data, g.digests);
    } catch (err) {
      this.gatherFailure = err;
      throw err;
    } finally {
      // Copied by the session (or refused): the buffer goes back for the next frames of any session.
      this.gathered.release();
    }
  }

  get phase(): SessionPhase {
    return this.prepared ? this.prepared.state : this.stage;
  }

  /** Refuses a page write unless the session is open. */
  assertWritable(): void {
    if (this.phase === 'open') return;
    if (this.abortedBy === 'timeout') throw new ProtocolError('E_TIMEOUT', `session ${this.sid} was aborted after being idle too long`);
    throw new ProtocolError('E_SESSION_STATE', `session ${this.sid} is ${this.phase}: no more pages can be written to it`);
  }

  /** Refuses page indices past the declared memory size (before anything is written). */
  checkPages(first: number, count: number): void {
    if (this.memoryBytes === undefined) return;
    const pages = Math.ceil(this.memoryBytes / 4096);
    if (first + count > pages)
      throw new ProtocolError(
        'E_PAGE_RANGE',
        `page ${first + count - 1} is past the VM's memory size (${this.memoryBytes} bytes, ${pages} pages)`,
      );
  }
}

interface PreparedEntry {
  prepared: PreparedSnapshot;
  deadline: number;
}

export class PreparedRegistry {
  private readonly entries = new Map<string, PreparedEntry>();

  add(prepared: PreparedSnapshot, deadline: number): void {
    this.entries.set(prepared.record.id, { prepared, deadline });
  }

  get size(): number {
    return this.entries.size;
  }

  /** The prepared snapshots named, or a typed error naming the first that is not prepared here. */
  take(ids: string[]): PreparedSnapshot[] {
    if (ids.length === 0) throw new ProtocolError('E_MALFORMED', 'a group commit names no snapshots');
    if (new Set(ids).size !== ids.length) throw new ProtocolError('E_MALFORMED', 'a group commit names a snapshot twice');
    return ids.map((id) => {
      const e = this.entries.get(id);
      if (!e || e.prepared.state !== 'prepared')
        throw new ProtocolError('E_SESSION_STATE', `snapshot ${id} is not a prepared snapshot waiting for commit on this server`);
      return e.prepared;
    });
  }

  remove(ids: Iterable<string>): void {
    for (const id of ids) this.entries.delete(id);
  }

  /** Ids whose deadline has passed at `now`. */
  expired(now: number): string[] {
    const out: string[] = [];
    for (const [id, e] of this.entries) if (e.deadline <= now) out.push(id);
    return out;
  }

  get(id: string): PreparedSnapshot | undefined {
    return this.entries.get(id)?.prepared;
  }

  all(): PreparedSnapshot[] {
    return [...this.entries.values()].map((e) => e.prepared);
  }
}
