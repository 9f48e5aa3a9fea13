/**
 * Discrete-event time for the simulated environment: a clock that only moves when the next event is
 * taken, and a queue ordered by (time, insertion order), so a run is a pure function of its seed.
 */
export interface SimClock {
  readonly now: number;
}

type Action = () => void | Promise<unknown>;

/** Events run between two yields to the event loop in `runUntil`. */
const YIELD_EVERY = 2000;

interface Entry {
  at: number;
  seq: number;
  run: Action;
  cancelled: boolean;
}

export interface TimerHandle {
  cancel(): void;
}

export class EventQueue implements SimClock {
  private heap: Entry[] = [];
  private seq = 0;
  private time = 0;
  /** An event ran since the last settle: run `settle` before the clock moves on. */
  private unsettled = false;
  /**
   * Awaited before simulated time moves on after events ran at the current instant (a network of
   * real processes delivers what those events sent, at this same instant).
   */
  settle?: () => Promise<void>;

  get now(): number {
    return this.time;
  }

  get pending(): number {
    return this.heap.length;
  }

  /** Runs `run` `delay` ms from now (never in the past). */
  after(delay: number, run: Action): TimerHandle {
    const e: Entry = { at: this.time + Math.max(0, delay), seq: this.seq++, run, cancelled: false };
    this.push(e);
    return { cancel: () => void (e.cancelled = true) };
  }

  /**
   * Runs events in order until `stop()` holds, the queue is empty or time passes `limit`. An event
   * may return a promise (a store write); the queue waits for it, so simulated time stands still
   * while real I/O runs and the order of events never depends on how long the I/O took.
   */
  async runUntil(stop: () => boolean, limit: number): Promise<void> {
    let sinceYield = 0;
    while (this.heap.length > 0 && !stop()) {
      // Let the process's other work run now and then (sockets, timers, another run): a run of
      // synchronous events never holds the event loop for long. Simulated time is not affected.
      if (++sinceYield >= YIELD_EVERY) {
        sinceYield = 0;
        await new Promise((r) => setImmediate(r));
      }
      const e = this.pop();
      if (e.cancelled) continue;
      if (e.at > this.time && this.unsettled && this.settle) {
        this.push(e);
        this.unsettled = false;
        await this.settle();
        continue;
      }
      if (e.at > limit) {
        this.push(e);
        this.time = limit;
        return;
      }
      this.time = e.at;
      this.unsettled = true;
      const r = e.run();
      if (r) await r;
    }
    if (this.heap.length === 0 && !stop() && Number.isFinite(limit)) this.time = Math.max(this.time, limit);
  }

  private push(e: Entry): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }

  private pop(): Entry {
    const h = this.heap;
    const top = h[0];
    const last = h.pop() as Entry;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l], h[m])) m = l;
        if (r < h.length && before(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}

function before(a: Entry, b: Entry): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

/** Seeded PRNG (mulberry32) whose whole state is one number, so it can be saved in a VM's state. */
export class Rng {
  constructor(public state: number) {}
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.next() * (hi - lo);
  }
}
