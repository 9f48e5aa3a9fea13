/**
 * The live set of snapshot sessions: the one place that decides who is in it. A session joins once
 * it has begun (Store.beginSession), and leaves by itself when it is done (prepared, committed or
 * aborted). gc, check and stats read it; forget waits for sessions still being begun, whose parent
 * is resolved but which are not yet in the set.
 */
import type { Session } from './session.js';

export class SessionRegistry implements Iterable<Session> {
  private readonly live = new Set<Session>();
  private readonly beginning = new Set<Promise<Session>>();

  /** Tracks `begin` while it runs; the session it yields joins the live set. */
  async admit(begin: Promise<Session>): Promise<Session> {
    this.beginning.add(begin);
    try {
      const s = await begin;
      this.live.add(s);
      return s;
    } finally {
      this.beginning.delete(begin);
    }
  }

  /** A session that is done leaves the live set (again: no effect). */
  unregister(session: Session): void {
    this.live.delete(session);
  }

  get size(): number {
    return this.live.size;
  }

  [Symbol.iterator](): Iterator<Session> {
    return this.live.values();
  }

  /** Resolves once every session being begun now has joined the live set or failed to begin. */
  async beginningSettled(): Promise<void> {
    await Promise.allSettled([...this.beginning]);
  }
}
