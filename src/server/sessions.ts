/**
 * Server-side session bookkeeping. A RemoteSessionState is one agent session's life on the server;
 * the PreparedRegistry holds prepared snapshots of every connection by id, for COMMIT and a
 * coordinator's GROUP_COMMIT, until a commit, an abort or their timeout. Timeouts are decided by
 * `expired(now)` with the clock passed in; the server acts on the answer.
 */
import type { PreparedSnapshot, Session } from '../store/session.js';
import { ProtocolError } from '../protocol/errors.js';

export type SessionPhase = 'open' | 'preparing' | 'prepared' | 'committed' | 'aborted';

export class RemoteSessionState {
  /** Before prepare succeeds; after, the prepared snapshot's own state (a group commit elsewhere changes it). */
  stage: 'open' | 'preparing' | 'aborted' = 'open';
  prepared: PreparedSnapshot | undefined;
  /** Why it was aborted, when the server did it (idle timeout, shutdown). */
  abortedBy: 'timeout' | 'shutdown' | undefined;
  lastActive: number;

  constructor(
    readonly sid: number,
    readonly session: Session,
    readonly memoryBytes: number | undefined,
    now: number,
  ) {
    this.lastActive = now;
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
