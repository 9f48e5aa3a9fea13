/**
 * A snapshot session through a server, with the library Session's shape (writePages, writeScattered,
 * writePage, prepare, commit, abort). Pages are hashed here; zero pages go as ranges, the others are
 * offered by digest and only those the server lacks are sent with their bytes.
 */
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { hashPages, isZeroPage, pageScanner } from '../chunk/hash.js';
import { MAX_OFFERS_PER_BATCH, MAX_PAGES_PER_BATCH } from '../protocol/limits.js';
import { BATCHES_IN_FLIGHT, OFFER_BATCH_PAGES } from './connection.js';
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
  private furthestByte = 0;
  private state: 'open' | 'prepared' | 'done' = 'open';
  private gathered: { indices: number[]; data: Uint8Array; slotOf: Map<number, number> } | undefined;
  /** Batches taken and not yet answered, oldest first (Set order), and the first error one brought. */
  private readonly batches = new Set<Batch>();
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
    return this.enqueue(() => this.send(indices, pages));
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
    return this.enqueue(() => this.send(indices, data));
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
    return this.enqueue(() => this.send(Uint32Array.from(g.indices), g.data.subarray(0, g.indices.length * PAGE_SIZE)));
  }

  private enqueue(fn: () => Promise<void>): Promise<void> {
    const before = this.gathered ? this.flushGathered() : this.queue;
    const run = before.then(fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Takes a write call's pages: zero pages go as ranges, the rest are offered by digest and the bytes
   * of those the server lacks follow. A page listed twice is sent once, with its later content.
   *
   * The call settles once its pages are copied into the session's batch buffers (OFFER_BATCH_PAGES
   * pages each), as the library session's writes settle once queued: the caller may reuse `data` at
   * once, and the next call is copied while this one's batches are scanned (zero test and BLAKE3 on
   * the thread pool), offered and sent. Without that, a caller that awaits each write kept agent
   * and server waiting on each other at every call (bench/RESULTS.md, issue 12). A batch's error
   * (an error answer to OFFER, PAGES or ZERO) fails the session's next write call, or PREPARE.
   */
  private async send(indices: Uint32Array, data: Uint8Array): Promise<void> {
    this.throwIfFailed();
    const keep = lastOccurrences(indices);
    for (let start = 0; start < keep.length; start += OFFER_BATCH_PAGES) {
      // Bound the batches in flight (each holds a copy of its pages until its answers are in).
      while (this.batches.size >= BATCHES_IN_FLIGHT) await Promise.race([...this.batches].map((b) => b.done));
      this.throwIfFailed();
      const positions = keep.subarray(start, Math.min(keep.length, start + OFFER_BATCH_PAGES));
      const n = positions.length;
      const pageIndices = new Uint32Array(n);
      const copy = this.conn.batchBuffers.take(n * PAGE_SIZE);
      const contiguous = positions[n - 1] - positions[0] === n - 1;
      if (contiguous) copy.set(data.subarray(positions[0] * PAGE_SIZE, (positions[0] + n) * PAGE_SIZE));
      for (let j = 0; j < n; j++) {
        const k = positions[j];
        pageIndices[j] = indices[k];
        if (!contiguous) copy.set(data.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE), j * PAGE_SIZE);
      }
      this.startBatch(pageIndices, copy);
    }
  }

  /**
   * Scans, offers and sends one batch (its own copy of n pages, page j at page index indices[j], no
   * index twice). Batches are scanned in parallel but offered in the order they were taken, and a
   * batch sharing a page index range with an earlier one still waiting for its OFFER answer waits
   * until that one's PAGES are submitted: its frames then reach the server after them, and the
   * later write of the page wins. Batches of one call never share an index (lastOccurrences).
   */
  private startBatch(indices: Uint32Array, data: Uint8Array): void {
    const n = indices.length;
    let lo = indices[0];
    let hi = indices[0];
    for (const i of indices) {
      lo = Math.min(lo, i);
      hi = Math.max(hi, i);
    }
    const earlier = [...this.batches];
    const previous = earlier[earlier.length - 1];
    let offered!: () => void;
    let pagesSubmitted!: () => void;
    const batch: Batch = {
      lo,
      hi,
      offered: new Promise<void>((resolve) => (offered = resolve)),
      pagesSubmitted: new Promise<void>((resolve) => (pagesSubmitted = resolve)),
      done: Promise.resolve(),
    };
    const run = async () => {
      const zero = new Uint8Array(n);
      const digests = new Uint8Array(n * DIGEST_BYTES);
      try {
        await scanPages(data, n, zero, digests);
        if (previous) await previous.offered;
        for (const b of earlier) if (b.lo <= hi && lo <= b.hi) await b.pagesSubmitted;
        this.throwIfFailed();
        await this.offerBatch(indices, data, zero, digests, offered, pagesSubmitted);
      } finally {
        offered();
        pagesSubmitted();
      }
    };
    batch.done = run().then(
      // Every answer is in: the server has read the copy, so it can take another batch's pages.
      () => this.conn.batchBuffers.give(data),
      (err: unknown) => void (this.failure ??= err instanceof Error ? err : new Error(String(err))),
    );
    this.batches.add(batch);
    void batch.done.then(() => this.batches.delete(batch));
  }

  /**
   * Submits a scanned batch's ZERO and OFFER frames (`offered` once they are submitted), then, on
   * the OFFER's answer, the PAGES frames of the pages the server lacks (`pagesSubmitted`); settles
   * once every answer is in.
   */
  private async offerBatch(
    indices: Uint32Array,
    data: Uint8Array,
    zero: Uint8Array,
    digests: Uint8Array,
    offered: () => void,
    pagesSubmitted: () => void,
  ): Promise<void> {
    const zeroAt: number[] = [];
    const offer: number[] = [];
    for (let j = 0; j < indices.length; j++) (zero[j] ? zeroAt : offer).push(j);
    const answers: Promise<unknown>[] = [];
    if (zeroAt.length > 0) {
      answers.push(this.conn.submit({ t: 'zero', sid: this.sid, ranges: zeroRanges(zeroAt.map((j) => indices[j])) }).answer);
      this.stats.zeroPages += zeroAt.length;
    }
    if (offer.length === 0) {
      offered();
      pagesSubmitted();
      await Promise.all(answers);
      return;
    }
    this.stats.pagesOffered += offer.length;
    const offerIndices = Uint32Array.from(offer, (j) => indices[j]);
    const offerDigests = gatherDigests(digests, offer);
    const asked = this.conn.submit({ t: 'offer', sid: this.sid, indices: offerIndices, digests: offerDigests });
    offered();
    const answer = await asked.answer;
    if (answer.t !== 'missing') throw new VnstoreError('E_PROTOCOL', `server answered OFFER with ${answer.t.toUpperCase()}`);
    const missing = answer.positions;
    for (let b = 0; b < missing.length; b += MAX_PAGES_PER_BATCH) {
      const part = missing.subarray(b, Math.min(missing.length, b + MAX_PAGES_PER_BATCH));
      for (const m of part)
        if (m >= offer.length) throw new VnstoreError('E_PROTOCOL', `server asked for page ${m} of an offer of ${offer.length}`);
      // Positions in the batch's copy: a run of them goes out as a view of it, others are gathered.
      const picked = Array.from(part, (m) => offer[m]);
      const run = picked[picked.length - 1] - picked[0] === picked.length - 1;
      const bytes = run
        ? data.subarray(picked[0] * PAGE_SIZE, (picked[0] + picked.length) * PAGE_SIZE)
        : this.conn.pageBuffers.take(picked.length * PAGE_SIZE);
      if (!run) picked.forEach((j, at) => bytes.set(data.subarray(j * PAGE_SIZE, (j + 1) * PAGE_SIZE), at * PAGE_SIZE));
      const sent = this.conn.submit({
        t: 'pages',
        sid: this.sid,
        indices: Uint32Array.from(part, (m) => offerIndices[m]),
        digests: gatherDigests(offerDigests, part),
        data: bytes,
      });
      answers.push(sent.answer);
      // A gathered buffer is reused once the server has answered (it has read the bytes then); on
      // failure the socket may still hold them, so it is not.
      if (!run)
        void sent.answer.then(
          () => this.conn.pageBuffers.give(bytes),
          () => undefined,
        );
      this.stats.pagesSent += part.length;
    }
    pagesSubmitted();
    await Promise.all(answers);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  /** Every write's answers in: throws the first error one of them had. */
  private async allAnswered(): Promise<void> {
    await this.queue;
    while (this.batches.size > 0) await Promise.all([...this.batches].map((b) => b.done));
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
    await this.queue.catch(() => undefined);
    while (this.batches.size > 0) await Promise.all([...this.batches].map((b) => b.done));
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

/** A batch in flight, for the order of later ones (see startBatch). */
interface Batch {
  /** Its lowest and highest page index. */
  lo: number;
  hi: number;
  /** Settles once its OFFER (and ZERO) frames are submitted, or it failed before. */
  offered: Promise<void>;
  /** Settles once its PAGES frames are submitted, or it failed before. */
  pagesSubmitted: Promise<void>;
  /** Settles (never rejects) once every answer is in or it failed; its error is the session's failure. */
  done: Promise<void>;
}

/**
 * zero[j] = 1 for each all-zero page j of src's first n pages, the others' BLAKE3 into out[j*32..]:
 * one pass on the thread pool where the native scanner serves (src is then a whole slab, so 8-byte
 * aligned), else on this thread.
 */
async function scanPages(src: Uint8Array, n: number, zero: Uint8Array, out: Uint8Array): Promise<void> {
  const scanner = pageScanner();
  if (scanner && src.byteOffset % 8 === 0) {
    await scanner.scanPagesAsync(src, n, zero, out);
    return;
  }
  const hash: number[] = [];
  for (let j = 0; j < n; j++)
    if (isZeroPage(src, j * PAGE_SIZE)) zero[j] = 1;
    else hash.push(j);
  hashPages(src, Uint32Array.from(hash), out);
}

/** Positions k of `indices` that are the last occurrence of their page index, in order. */
function lastOccurrences(indices: Uint32Array): Uint32Array {
  let ascending = true;
  for (let k = 1; k < indices.length && ascending; k++) ascending = indices[k] > indices[k - 1];
  if (ascending) {
    // Every index once (writePages, sorted lists): no map of them.
    const all = new Uint32Array(indices.length);
    for (let k = 0; k < all.length; k++) all[k] = k;
    return all;
  }
  const last = new Map<number, number>();
  for (let k = 0; k < indices.length; k++) last.set(indices[k], k);
  if (last.size === indices.length) return Uint32Array.from(indices.keys());
  return Uint32Array.from([...last.values()].sort((a, b) => a - b));
}

/** The digests at `positions` of `digests`, packed in that order. */
function gatherDigests(digests: Uint8Array, positions: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(positions.length * DIGEST_BYTES);
  // A byte loop: a subarray and set() per 32-byte digest cost more than the copy itself.
  for (let j = 0; j < positions.length; j++) {
    for (let i = 0, from = positions[j] * DIGEST_BYTES, to = j * DIGEST_BYTES; i < DIGEST_BYTES; i++) out[to + i] = digests[from + i];
  }
  return out;
}

/** Page indices as (first, count) pairs of runs, in ascending order. */
function zeroRanges(list: number[]): Uint32Array {
  const pages = Uint32Array.from(list);
  let ascending = true;
  for (let k = 1; k < pages.length && ascending; k++) ascending = pages[k] > pages[k - 1];
  if (!ascending) pages.sort(); // a typed array sorts numerically, natively
  const out: number[] = [];
  for (const p of pages) {
    const n = out.length;
    if (n > 0 && out[n - 2] + out[n - 1] === p) out[n - 1]++;
    else out.push(p, 1);
  }
  return Uint32Array.from(out);
}
