/**
 * A snapshot session through a server, with the library Session's shape (writePages, writeScattered,
 * writePage, prepare, commit, abort). Pages are hashed here; zero pages go as ranges, the others are
 * offered by digest and only those the server lacks are sent with their bytes.
 */
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { hashPages, isZeroPage } from '../chunk/hash.js';
import { MAX_OFFERS_PER_BATCH, MAX_PAGES_PER_BATCH } from '../protocol/limits.js';
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
    if (data.length !== n * PAGE_SIZE) throw new VnstoreError('E_USAGE', `writeScattered needs ${n} whole page(s) (${n * PAGE_SIZE} bytes), got ${data.length} bytes`);
    const indices = Uint32Array.from(pageIndices);
    for (const i of indices) this.furthestByte = Math.max(this.furthestByte, (i + 1) * PAGE_SIZE);
    const copy = data.slice(); // the caller may reuse its buffer once this resolves
    return this.enqueue(() => this.send(indices, copy));
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
   * Sends whole pages: zero pages as ranges, the rest offered by digest; the bytes of the pages the
   * server lacks follow. A page listed twice is sent once, with its later content.
   */
  private async send(indices: Uint32Array, data: Uint8Array): Promise<void> {
    for (let start = 0; start < indices.length; start += MAX_OFFERS_PER_BATCH) {
      const end = Math.min(indices.length, start + MAX_OFFERS_PER_BATCH);
      await this.sendBatch(indices.subarray(start, end), data.subarray(start * PAGE_SIZE, end * PAGE_SIZE));
    }
  }

  private async sendBatch(indices: Uint32Array, data: Uint8Array): Promise<void> {
    const keep = lastOccurrences(indices);
    const digests = new Uint8Array(indices.length * DIGEST_BYTES);
    const zero: number[] = [];
    const offer: number[] = [];
    for (const k of keep) (isZeroPage(data, k * PAGE_SIZE) ? zero : offer).push(k);
    hashPages(data, Uint32Array.from(offer), digests);
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
      const offerDigests = new Uint8Array(offer.length * DIGEST_BYTES);
      offer.forEach((k, j) => offerDigests.set(digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES), j * DIGEST_BYTES));
      this.stats.pagesOffered += offer.length;
      const answer = await this.conn.request({ t: 'offer', sid: this.sid, indices: offerIdx, digests: offerDigests });
      if (answer.t !== 'missing') throw new VnstoreError('E_PROTOCOL', `server answered OFFER with ${answer.t.toUpperCase()}`);
      const missing = answer.positions;
      for (let b = 0; b < missing.length; b += MAX_PAGES_PER_BATCH) {
        const part = missing.subarray(b, Math.min(missing.length, b + MAX_PAGES_PER_BATCH));
        const idx = new Uint32Array(part.length);
        const dg = new Uint8Array(part.length * DIGEST_BYTES);
        const bytes = new Uint8Array(part.length * PAGE_SIZE);
        for (let j = 0; j < part.length; j++) {
          if (part[j] >= offer.length) throw new VnstoreError('E_PROTOCOL', `server asked for page ${part[j]} of an offer of ${offer.length}`);
          const k = offer[part[j]];
          idx[j] = indices[k];
          dg.set(digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES), j * DIGEST_BYTES);
          bytes.set(data.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE), j * PAGE_SIZE);
        }
        track(this.conn.request({ t: 'pages', sid: this.sid, indices: idx, digests: dg, data: bytes }));
        this.stats.pagesSent += part.length;
      }
    }
    await Promise.all(pending);
  }

  /** Makes the snapshot durable on the server but invisible; commit it with AgentClient.commitPrepared. */
  async prepare(options: CommitOptions = {}): Promise<RemotePrepared> {
    this.assertOpen();
    await this.enqueue(async () => undefined);
    this.state = 'prepared';
    try {
      const res = resultJson<{ id: string }>(await this.conn.request({ t: 'prepare', sid: this.sid, byteLength: options.byteLength ?? this.options.memoryBytes ?? this.furthestByte, unwritten: options.unwritten }));
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

/** Positions k of `indices` that are the last occurrence of their page index, in order. */
function lastOccurrences(indices: Uint32Array): number[] {
  const last = new Map<number, number>();
  for (let k = 0; k < indices.length; k++) last.set(indices[k], k);
  if (last.size === indices.length) return Array.from(indices.keys());
  return [...last.values()].sort((a, b) => a - b);
}

/** Sorted page indices as (first, count) pairs of runs. */
function zeroRanges(pages: number[]): Uint32Array {
  pages.sort((a, b) => a - b);
  const out: number[] = [];
  for (const p of pages) {
    const n = out.length;
    if (n > 0 && out[n - 2] + out[n - 1] === p) out[n - 1]++;
    else out.push(p, 1);
  }
  return Uint32Array.from(out);
}
