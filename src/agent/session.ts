/**
 * A snapshot session through a server, with the library Session's shape (writePages, writeScattered,
 * writePage, prepare, commit, abort). Pages are hashed here; zero pages go as ranges, the others are
 * offered by digest and only those the server lacks are sent with their bytes.
 */
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { hashPages, isZeroPage, pageScanner } from '../chunk/hash.js';
import { MAX_OFFERS_PER_BATCH } from '../protocol/limits.js';
import type { SnapshotRecord } from '../store/db.js';
import type { CommitOptions, SessionOptions } from '../store/session.js';
import { VnstoreError } from '../util/errors.js';
import { resultJson, type AgentConnection } from './connection.js';

/** A prepared snapshot on a server: commit it with AgentClient.commitPrepared (alone or in a group). */
export interface RemotePrepared {
  readonly id: string;
  readonly session: RemoteSession;
}

export interface WireStats {
  pagesOffered: number;
  pagesSent: number;
  zeroPages: number;
}

export class RemoteSession {
  readonly stats: WireStats = { pagesOffered: 0, pagesSent: 0, zeroPages: 0 };
  /** Write calls run one after another, so pages reach the server in call order (last write wins). */
  private queue: Promise<void> = Promise.resolve();
  /** The latest write call's first scan: the next call's starts after it, so pages are hashed in call order. */
  private scans: Promise<unknown> = Promise.resolve();
  private furthestByte = 0;
  private state: 'open' | 'prepared' | 'done' = 'open';
  private gathered: { indices: number[]; data: Uint8Array; slotOf: Map<number, number> } | undefined;
  /** PAGES answers not yet in (writes settle before them), and the first error one brought. */
  private readonly unanswered = new Set<Promise<unknown>>();
  private failure: Error | undefined;

  constructor(
    private readonly conn: AgentConnection,
    readonly sid: number,
    readonly options: SessionOptions,
    /** The parent the server chose (its id), if any. */
    readonly parent: { id: string } | undefined,
  ) {}

  get isOpen(): boolean {
    return this.state === 'open';
  }

  /** Whole pages from `firstPage` on; the image's last page may be short (zero-padded here). */
  writePages(firstPage: number, data: Uint8Array): Promise<void> {
    this.assertOpen();
    const n = Math.ceil(data.length / PAGE_SIZE);
    const indices = new Uint32Array(n);
    for (let k = 0; k < n; k++) indices[k] = firstPage + k;
    this.furthestByte = Math.max(this.furthestByte, firstPage * PAGE_SIZE + data.length);
    const pages = data.length === n * PAGE_SIZE ? data : padToPages(data, n);
    return this.queueWrite(indices, pages);
  }

  /** Page k of `data` goes to `pageIndices[k]`; a repeated index: the later page wins. */
  writeScattered(pageIndices: ArrayLike<number>, data: Uint8Array): Promise<void> {
    this.assertOpen();
    const n = pageIndices.length;
    if (data.length !== n * PAGE_SIZE)
      throw new VnstoreError('E_USAGE', `writeScattered needs ${n} whole page(s) (${n * PAGE_SIZE} bytes), got ${data.length} bytes`);
    const indices = Uint32Array.from(pageIndices);
    for (const i of indices) this.furthestByte = Math.max(this.furthestByte, (i + 1) * PAGE_SIZE);
    // No copy: this resolves only once the pages have been sent, as writePages does.
    return this.queueWrite(indices, data);
  }

  /** One page; pages are gathered and sent MAX_OFFERS_PER_BATCH at a time (and before any other write). */
  async writePage(pageIndex: number, page: Uint8Array): Promise<void> {
    if (page.length !== PAGE_SIZE) return this.writePages(pageIndex, page);
    this.assertOpen();
    const g = (this.gathered ??= { indices: [] as number[], data: new Uint8Array(MAX_OFFERS_PER_BATCH * PAGE_SIZE), slotOf: new Map() });
    const slot = g.slotOf.get(pageIndex) ?? g.indices.length;
    if (slot === g.indices.length) {
      g.slotOf.set(pageIndex, slot);
      g.indices.push(pageIndex);
    }
    g.data.set(page, slot * PAGE_SIZE);
    this.furthestByte = Math.max(this.furthestByte, (pageIndex + 1) * PAGE_SIZE);
    if (g.indices.length === MAX_OFFERS_PER_BATCH) await this.flushGathered();
  }

  private flushGathered(): Promise<void> {
    const g = this.gathered;
    if (!g) return this.queue;
    this.gathered = undefined;
    return this.queueWrite(Uint32Array.from(g.indices), g.data.subarray(0, g.indices.length * PAGE_SIZE));
  }

  private enqueue(fn: () => Promise<void>): Promise<void> {
    const before = this.gathered ? this.flushGathered() : this.queue;
    const run = before.then(fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * A write call: its frames go after every earlier call's (enqueue), but its first batch is
   * hashed at once, after the earlier calls' first batches, not once they are answered. A caller
   * with two calls in flight (as `agent push` keeps) so has the next call hashed while the server
   * answers this one (bench/RESULTS.md, issue 12, session 18).
   */
  private queueWrite(indices: Uint32Array, data: Uint8Array): Promise<void> {
    const before = this.gathered ? this.flushGathered() : this.queue;
    const keep = lastOccurrences(indices);
    const digests = new Uint8Array(indices.length * DIGEST_BYTES);
    const firstScan = this.scans.then(() => scanPages(data, digests, keep.subarray(0, Math.min(keep.length, OFFER_BATCH_PAGES))));
    this.scans = firstScan.catch(() => undefined);
    // A write that never runs (an earlier one failed) leaves its scan's failure unobserved.
    firstScan.catch(() => undefined);
    const run = before.then(() => this.send(indices, data, keep, digests, firstScan));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Sends whole pages: zero pages as ranges, the rest offered by digest; the bytes of the pages the
   * server lacks follow. A page listed twice is sent once, with its later content.
   *
   * Pipelined: the call's pages go in batches of OFFER_BATCH_PAGES, and the next batch is hashed
   * and offered while earlier ones wait for their answers and send their bytes (the connection's
   * window bounds what is outstanding). Batches may reach the server interleaved; that is safe
   * because, after dropping all but the last copy of each page, no two batches share a page index.
   * Across calls: a call settles once its frames' bytes have gone to the kernel (PAGES frames send
   * the caller's pages as views), not answered, so the next call hashes while the server stores
   * this one's pages; frames are written in order, so a later call's pages reach the server after
   * this call's. A call's first batch was scanned ahead (`firstScan`, see queueWrite). A PAGES
   * answer's error fails the next call, or prepare.
   */
  private async send(
    indices: Uint32Array,
    data: Uint8Array,
    keep: Uint32Array,
    digests: Uint8Array,
    firstScan: Promise<Scanned>,
  ): Promise<void> {
    this.throwIfFailed();
    const pending: Promise<void>[] = [];
    let failed = false;
    for (let start = 0; start < keep.length && !failed; start += OFFER_BATCH_PAGES) {
      const part = keep.subarray(start, Math.min(keep.length, start + OFFER_BATCH_PAGES));
      const batch = this.sendBatch(indices, data, start === 0 ? firstScan : scanPages(data, digests, part));
      batch.catch(() => (failed = true));
      pending.push(batch);
      // Bound the batches in flight (each holds digests and frames until answered).
      if (pending.length >= BATCHES_IN_FLIGHT) await pending[pending.length - BATCHES_IN_FLIGHT].catch(() => undefined);
    }
    // Every batch settled before this call does: the next write must not overtake one still in flight.
    const settled = await Promise.allSettled(pending);
    for (const r of settled) if (r.status === 'rejected') throw r.reason;
    this.throwIfFailed();
  }

  /**
   * One batch: the positions (into `indices` and `data`) its scan split into zero pages and pages
   * to offer. Settles once its frames are written and its ZERO and OFFER answered.
   */
  private async sendBatch(indices: Uint32Array, data: Uint8Array, scan: Promise<Scanned>): Promise<void> {
    const { zero, offer, digests } = await scan;
    const pending: Promise<unknown>[] = [];
    // Requests answered while this batch still waits on its offer: their failure is seen below.
    const track = (p: Promise<unknown>) => {
      p.catch(() => undefined);
      pending.push(p);
    };
    if (zero.length > 0) {
      track(this.conn.request({ t: 'zero', sid: this.sid, ranges: zeroRanges(zero.map((k) => indices[k])) }));
      this.stats.zeroPages += zero.length;
    }
    if (offer.length > 0) {
      const offerIdx = Uint32Array.from(offer, (k) => indices[k]);
      const offerDigests = gatherDigests(digests, offer);
      this.stats.pagesOffered += offer.length;
      const answer = await this.conn.request({ t: 'offer', sid: this.sid, indices: offerIdx, digests: offerDigests });
      if (answer.t !== 'missing') throw new VnstoreError('E_PROTOCOL', `server answered OFFER with ${answer.t.toUpperCase()}`);
      const missing = answer.positions;
      const perFrame = this.conn.maxPagesPerBatch;
      for (let b = 0; b < missing.length; b += perFrame) {
        const part = missing.subarray(b, Math.min(missing.length, b + perFrame));
        const picked: number[] = [];
        for (const j of part) {
          if (j >= offer.length) throw new VnstoreError('E_PROTOCOL', `server asked for page ${j} of an offer of ${offer.length}`);
          picked.push(offer[j]);
        }
        // The caller's pages go out as views, a run of consecutive positions each: the call
        // settles once the socket has passed them on (`flushed`), so they are never copied here.
        const runs: Uint8Array[] = [];
        for (let j = 0; j < picked.length;) {
          let end = j + 1;
          while (end < picked.length && picked[end] === picked[end - 1] + 1) end++;
          runs.push(data.subarray(picked[j] * PAGE_SIZE, (picked[end - 1] + 1) * PAGE_SIZE));
          j = end;
        }
        const sent = this.conn.submit({
          t: 'pages',
          sid: this.sid,
          indices: Uint32Array.from(picked, (k) => indices[k]),
          digests: gatherDigests(digests, picked),
          data: NO_BYTES,
          runs,
        });
        track(sent.flushed);
        this.awaitAnswer(sent.answer);
        this.stats.pagesSent += part.length;
      }
    }
    await Promise.all(pending);
  }

  /** A PAGES answer not waited for by its call: its error fails the session's next call or prepare. */
  private awaitAnswer(answer: Promise<unknown>): void {
    this.unanswered.add(answer);
    answer.then(
      () => this.unanswered.delete(answer),
      (err: unknown) => {
        this.unanswered.delete(answer);
        this.failure ??= err instanceof Error ? err : new Error(String(err));
      },
    );
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  /** Every write's answers in: throws the first error one of them had. */
  private async allAnswered(): Promise<void> {
    await this.queue;
    await Promise.allSettled([...this.unanswered]);
    this.throwIfFailed();
  }

  /** Makes the snapshot durable on the server but invisible; commit it with AgentClient.commitPrepared. */
  async prepare(options: CommitOptions = {}): Promise<RemotePrepared> {
    this.assertOpen();
    await this.enqueue(async () => undefined);
    await this.allAnswered();
    this.state = 'prepared';
    try {
      const res = resultJson<{ id: string }>(
        await this.conn.request({
          t: 'prepare',
          sid: this.sid,
          byteLength: options.byteLength ?? this.options.memoryBytes ?? this.furthestByte,
          unwritten: options.unwritten,
        }),
      );
      return { id: res.id, session: this };
    } catch (err) {
      this.state = 'done';
      throw err;
    }
  }

  /** Prepares and commits (under the session's group, if any); returns the catalog record. */
  async commit(options: CommitOptions = {}): Promise<SnapshotRecord> {
    await this.prepare(options);
    return this.commitPreparedHere();
  }

  /** COMMIT of this (prepared) session. */
  async commitPreparedHere(): Promise<SnapshotRecord> {
    const rec = resultJson<SnapshotRecord>(await this.conn.request({ t: 'commit', sid: this.sid }));
    this.state = 'done';
    return rec;
  }

  /** Drops the session (or its prepared snapshot) on the server. */
  async abort(): Promise<void> {
    if (this.state === 'done') return;
    this.state = 'done';
    this.gathered = undefined;
    await this.queue;
    await this.conn.request({ t: 'abort', sid: this.sid });
  }

  markDone(): void {
    this.state = 'done';
  }

  private assertOpen(): void {
    if (this.state !== 'open') throw new VnstoreError('E_SESSION', `session ${this.sid} is no longer open`);
  }
}

function padToPages(data: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(n * PAGE_SIZE);
  out.set(data);
  return out;
}

/**
 * Pages per OFFER of a pipelined write: a whole OFFER (16 MiB of pages). Batches of 1024 sent four
 * times the ZERO, OFFER and MISSING frames, and the server applied each as a write of its own:
 * ~10% more CPU on both sides (bench/RESULTS.md, issue 12, session 15). A batch is scanned in
 * SCAN_JOB_PAGES jobs at once, so its hashing still runs on every thread of the pool.
 */
const OFFER_BATCH_PAGES = MAX_OFFERS_PER_BATCH;
/** Pages per thread-pool scan job (zero test and hashes). */
const SCAN_JOB_PAGES = 1024;
/** Batches of one write in flight at once. */
const BATCHES_IN_FLIGHT = 4;

const NO_BYTES = new Uint8Array(0);

/** A batch's positions split into zero pages and pages to offer, whose digests are in `digests` at their positions. */
interface Scanned {
  zero: number[];
  offer: number[];
  digests: Uint8Array;
}

/**
 * Splits the pages at positions `keep` of `data` into zero pages and pages to offer, hashing the
 * latter into `digests` at their positions. A contiguous run (every whole-image write) is zero-tested
 * and hashed in one pass on the libuv thread pool, so the main thread goes on offering earlier
 * batches and the batches of a call are scanned on both cores; the caller's pages must not change
 * until this settles, which the write call's own promise already requires.
 */
async function scanPages(data: Uint8Array, digests: Uint8Array, keep: Uint32Array): Promise<Scanned> {
  const zero: number[] = [];
  const offer: number[] = [];
  const n = keep.length;
  const first = n > 0 ? keep[0] : 0;
  const scanner = pageScanner();
  // The scanner reads 8-byte words: an unaligned view is scanned here instead.
  if (scanner && n > 0 && keep[n - 1] - first === n - 1 && (data.byteOffset + first * PAGE_SIZE) % 8 === 0) {
    const isZero = new Uint8Array(n);
    const jobs: Promise<number>[] = [];
    for (let j = 0; j < n; j += SCAN_JOB_PAGES) {
      const m = Math.min(SCAN_JOB_PAGES, n - j);
      const at = first + j;
      const pages = data.subarray(at * PAGE_SIZE, (at + m) * PAGE_SIZE);
      jobs.push(scanner.scanPagesAsync(pages, m, isZero.subarray(j, j + m), digests.subarray(at * DIGEST_BYTES, (at + m) * DIGEST_BYTES)));
    }
    await Promise.all(jobs);
    for (let j = 0; j < n; j++) (isZero[j] === 1 ? zero : offer).push(first + j);
    return { zero, offer, digests };
  }
  for (const k of keep) (isZeroPage(data, k * PAGE_SIZE) ? zero : offer).push(k);
  hashPages(data, Uint32Array.from(offer), digests);
  return { zero, offer, digests };
}

/** Positions k of `indices` that are the last occurrence of their page index, in order. */
function lastOccurrences(indices: Uint32Array): Uint32Array {
  // The common case, strictly ascending indices (whole-image writes, sorted dirty lists), needs no map.
  let ascending = true;
  for (let k = 1; k < indices.length && ascending; k++) ascending = indices[k] > indices[k - 1];
  if (ascending) return positions(indices.length);
  const last = new Map<number, number>();
  for (let k = 0; k < indices.length; k++) last.set(indices[k], k);
  if (last.size === indices.length) return positions(indices.length);
  return Uint32Array.from([...last.values()].sort((a, b) => a - b));
}

/** 0, 1, .., n - 1. */
function positions(n: number): Uint32Array {
  const out = new Uint32Array(n);
  for (let k = 0; k < n; k++) out[k] = k;
  return out;
}

/** The digests at `positions` of `digests`, packed in that order. */
function gatherDigests(digests: Uint8Array, positions: number[]): Uint8Array {
  const out = new Uint8Array(positions.length * DIGEST_BYTES);
  // A byte loop: a subarray and set() per 32-byte digest cost more than the copy itself.
  for (let j = 0; j < positions.length; j++) {
    for (let i = 0, from = positions[j] * DIGEST_BYTES, to = j * DIGEST_BYTES; i < DIGEST_BYTES; i++) out[to + i] = digests[from + i];
  }
  return out;
}

/** Sorted page indices as (first, count) pairs of runs. */
function zeroRanges(pages: number[]): Uint32Array {
  let ascending = true;
  for (let k = 1; k < pages.length && ascending; k++) ascending = pages[k] > pages[k - 1];
  if (!ascending) pages.sort((a, b) => a - b);
  const out: number[] = [];
  for (const p of pages) {
    const n = out.length;
    if (n > 0 && out[n - 2] + out[n - 1] === p) out[n - 1]++;
    else out.push(p, 1);
  }
  return Uint32Array.from(out);
}
