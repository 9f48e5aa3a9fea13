/**
 * The typed client of a vnstore server: sessions (the library's shape), group commit across agents,
 * the catalog, and a restore verified here (every page against its digest, the digests against the
 * image digest of the catalog record).
 */
import { DIGEST_BYTES, PAGE_SIZE, PageTable, digestsEqual } from '../format/pages.js';
import { hashPages, imageDigest, isZeroPage } from '../chunk/hash.js';
import type { SnapshotRecord } from '../store/db.js';
import type { SessionOptions } from '../store/session.js';
import type { StatsReport } from '../maintenance/stats.js';
import type { GcReport } from '../maintenance/gc.js';
import type { CompactReport } from '../maintenance/compact.js';
import type { MaxUnused } from '../maintenance/gc-plan.js';
import type { CheckReport } from '../maintenance/check.js';
import type { ForgetReport } from '../maintenance/forget.js';
import { CorruptError, VnstoreError } from '../util/errors.js';
import { DATA_DIGEST_PREFIX_BYTES, MAX_DATA_BYTES, MAX_DATA_PAGES } from '../protocol/limits.js';
import type { Message } from '../protocol/messages.js';
import { AgentConnection, resultJson, type ConnectOptions } from './connection.js';
import { RemoteSession, type RemotePrepared } from './session.js';

export type { ConnectOptions };

export class AgentClient {
  private nextSid = 1;

  private constructor(readonly conn: AgentConnection) {}

  static async connect(opts: ConnectOptions): Promise<AgentClient> {
    return new AgentClient(await AgentConnection.connect(opts));
  }

  /** The store id of the server's store. */
  get storeId(): string {
    return this.conn.serverId;
  }

  /** False once the connection has failed or closed (a new client must connect). */
  get usable(): boolean {
    return this.conn.usable;
  }

  async beginSession(options: SessionOptions): Promise<RemoteSession> {
    const sid = this.nextSid++;
    const res = resultJson<{ parent: string | null }>(
      await this.conn.request({
        t: 'begin',
        sid,
        vm: options.vm,
        group: options.group,
        parent: options.parent ?? 'auto',
        memoryBytes: options.memoryBytes,
      }),
    );
    return new RemoteSession(this.conn, sid, options, res.parent ? { id: res.parent } : undefined);
  }

  /**
   * Commits prepared snapshots, of this agent or of others (by id), atomically: under `group.id` as
   * one group snapshot, or without a group. All or none.
   */
  async commitPrepared(prepared: (RemotePrepared | string)[], group?: { id: string }): Promise<SnapshotRecord[]> {
    const ids = prepared.map((p) => (typeof p === 'string' ? p : p.id));
    const records = resultJson<SnapshotRecord[]>(await this.conn.request({ t: 'group-commit', group: group?.id ?? '', ids }));
    for (const p of prepared) if (typeof p !== 'string') p.session.markDone();
    return records;
  }

  /** Aborts prepared snapshots, of this agent or of others (by id): all of them or, on an error, none. */
  async abortPrepared(prepared: (RemotePrepared | string)[]): Promise<void> {
    const ids = prepared.map((p) => (typeof p === 'string' ? p : p.id));
    await this.call('abort-prepared', { ids });
    for (const p of prepared) if (typeof p !== 'string') p.session.markDone();
  }

  private async call<T>(method: string, args: object = {}): Promise<T> {
    return resultJson<T>(await this.conn.request({ t: 'call', method, args: JSON.stringify(args) }));
  }

  listSnapshots(vm?: string): Promise<SnapshotRecord[]> {
    return this.call('list', { vm });
  }

  resolveSnapshot(idOrPrefix: string): Promise<SnapshotRecord> {
    return this.call('resolve', { id: idOrPrefix });
  }

  stats(options: { vm?: string; snapshot?: string; detail?: boolean; exact?: boolean } = {}): Promise<StatsReport> {
    return this.call('stats', options);
  }

  /** gc inside the server, beside ingesting sessions. */
  gc(options: { dryRun?: boolean; maxUnused?: MaxUnused; maxRepackBytes?: number; repackSmall?: boolean } = {}): Promise<GcReport> {
    return this.call('gc', options);
  }

  /** compact inside the server, beside ingesting sessions. */
  compact(options: { level?: number; minAgeMs?: number; maxRepackBytes?: number; dryRun?: boolean } = {}): Promise<CompactReport> {
    return this.call('compact', {
      level: options.level,
      minAgeMs: options.minAgeMs,
      maxRepackBytes: options.maxRepackBytes,
      dryRun: options.dryRun,
    });
  }

  check(options: { readData?: boolean; readDataSubsetPct?: number } = {}): Promise<CheckReport> {
    return this.call('check', options);
  }

  forget(options: {
    ids?: string[];
    groups?: string[];
    keepLast?: number;
    keepWithinMs?: number;
    vm?: string;
    dryRun?: boolean;
  }): Promise<ForgetReport> {
    return this.call('forget', options);
  }

  /**
   * Streams snapshot `idOrPrefix` to `write` in order, in chunks lent until `write` settles (and not
   * to be changed: zero runs share one buffer); `zero` is true for a run of zero pages (from a
   * version-2 server), which a file writer may leave as a hole. Every page is hashed here and checked against its
   * digest (a version-2 server sends a prefix) as it arrives, and the digests against the record's
   * image digest at the end: a mismatch rejects with E_CORRUPT, so a caller writing a file must
   * publish it only once this resolves. Resolves to the record.
   */
  async restore(idOrPrefix: string, write: (chunk: Uint8Array, zero: boolean) => Promise<void> | void): Promise<SnapshotRecord> {
    let record: SnapshotRecord | undefined;
    let pages: PageTable | undefined;
    let nextPage = 0;
    let chain: Promise<void> = Promise.resolve();
    let failure: Error | undefined;
    // Zero runs of SPARSE_DATA batches are handed to `write` as views of this (lent like the rest).
    let zeros: Uint8Array | undefined;
    const onFrame = (m: Message, release?: () => void) => {
      if (m.t !== 'data' && m.t !== 'sparse-data') release?.();
      if (m.t === 'result' && !record) {
        record = JSON.parse(m.json) as SnapshotRecord;
        pages = new PageTable(record.pageCount);
        return;
      }
      if ((m.t !== 'data' && m.t !== 'sparse-data') || !record || !pages) {
        failure ??= new VnstoreError('E_PROTOCOL', `unexpected ${m.t.toUpperCase()} in a restore stream`);
        return;
      }
      let parts: RestoredPart[];
      try {
        if (m.t === 'data') {
          verifyBatch(record, pages, nextPage, m.firstPage, m.digests, m.data);
          nextPage += m.digests.length / DIGEST_BYTES;
          parts = [{ bytes: m.data, zero: false }];
        } else {
          parts = verifySparseBatch(record, pages, nextPage, m, (zeros ??= new Uint8Array(MAX_DATA_BYTES)));
          nextPage += m.zero.length;
        }
      } catch (err) {
        failure ??= err as Error;
        return;
      }
      chain = chain.then(async () => {
        for (const part of parts) if (!failure) await write(part.bytes, part.zero);
      });
      // The parts are lent to `write` until it settles; then the frame's buffer is reused.
      chain.then(
        () => release?.(),
        () => undefined,
      );
      chain.catch((err: Error) => (failure ??= err));
      this.conn.hold(chain);
    };
    await this.conn.request({ t: 'restore', id: idOrPrefix }, onFrame);
    await chain;
    if (failure) throw failure;
    if (!record || !pages) throw new VnstoreError('E_PROTOCOL', 'restore stream ended without its record');
    if (nextPage !== record.pageCount)
      throw new CorruptError(`snapshot ${record.id}: the server sent ${nextPage} of ${record.pageCount} pages`);
    if (imageDigest(pages, record.byteLength).toString('hex') !== record.imageDigest) {
      throw new CorruptError(`snapshot ${record.id}: the restored pages do not match the image digest`);
    }
    return record;
  }

  async close(): Promise<void> {
    await this.conn.close();
  }
}

const ZERO_DIGEST = new Uint8Array(DIGEST_BYTES);
/** A restored run of the image, and whether it is a run of zero pages. */
type RestoredPart = { bytes: Uint8Array; zero: boolean };
/** Page indices 0, 1, 2, ...: a SPARSE_DATA batch's data pages lie back to back. */
const FIRST_PAGES = Uint32Array.from({ length: MAX_DATA_PAGES }, (_, k) => k);

/**
 * Checks one SPARSE_DATA batch: its place in the stream, its byte count, and each data page's bytes
 * against its digest prefix; records every page's whole digest (as hashed here) for the image
 * digest, which is the check that counts. Returns the batch's image bytes in order as parts to
 * write: views of the frame's data runs, and of `zeros` for the zero runs. Hashed on the main
 * thread: a thread-pool hash per batch cost this process more CPU than it freed (bench/RESULTS.md,
 * issue 12, session 17).
 */
function verifySparseBatch(
  record: SnapshotRecord,
  pages: PageTable,
  expectPage: number,
  m: Extract<Message, { t: 'sparse-data' }>,
  zeros: Uint8Array,
): RestoredPart[] {
  const { firstPage, zero, prefixes } = m;
  const n = zero.length;
  if (firstPage !== expectPage || firstPage + n > record.pageCount)
    throw new CorruptError(`snapshot ${record.id}: restore batch at page ${firstPage}, expected page ${expectPage}`);
  const data = m.runs.length === 1 ? m.runs[0] : Buffer.concat(m.runs);
  const start = firstPage * PAGE_SIZE;
  const end = Math.min(record.byteLength, (firstPage + n) * PAGE_SIZE);
  const dataPages = prefixes.length / DATA_DIGEST_PREFIX_BYTES;
  // Whole data pages, but for the image's last page when it is short and a data page.
  const short = end - start < n * PAGE_SIZE && zero[n - 1] === 0 ? n * PAGE_SIZE - (end - start) : 0;
  if (data.length !== dataPages * PAGE_SIZE - short)
    throw new CorruptError(`snapshot ${record.id}: restore batch at page ${firstPage} has ${data.length} bytes of data pages`);
  const whole = short === 0 ? data : Buffer.concat([data, Buffer.alloc(short)]);
  const got = new Uint8Array(dataPages * DIGEST_BYTES);
  hashPages(whole, FIRST_PAGES.subarray(0, dataPages), got);
  const parts: RestoredPart[] = [];
  for (let k = 0, j = 0; k < n;) {
    const isZero = zero[k] === 1;
    let e = k;
    for (; e < n && (zero[e] === 1) === isZero; e++) {
      if (isZero) {
        pages.setZero(firstPage + e);
        continue;
      }
      if (!digestsEqual(got, j * DIGEST_BYTES, prefixes, j * DATA_DIGEST_PREFIX_BYTES, DATA_DIGEST_PREFIX_BYTES))
        throw new CorruptError(`snapshot ${record.id}: page ${firstPage + e} does not match its digest`);
      pages.setDigest(firstPage + e, got, j * DIGEST_BYTES);
      j++;
    }
    const bytes = Math.min(end, start + e * PAGE_SIZE) - (start + k * PAGE_SIZE);
    if (isZero) parts.push({ bytes: zeros.subarray(0, bytes), zero: true });
    else {
      const from = (j - (e - k)) * PAGE_SIZE;
      parts.push({ bytes: data.subarray(from, from + bytes), zero: false });
    }
    k = e;
  }
  return parts;
}

/** Checks one DATA batch: its place in the stream and each page's bytes against its digest. */
function verifyBatch(
  record: SnapshotRecord,
  pages: PageTable,
  expectPage: number,
  firstPage: number,
  digests: Uint8Array,
  data: Uint8Array,
): void {
  const n = digests.length / DIGEST_BYTES;
  if (firstPage !== expectPage || firstPage + n > record.pageCount)
    throw new CorruptError(`snapshot ${record.id}: restore batch at page ${firstPage}, expected page ${expectPage}`);
  const end = Math.min(record.byteLength, (firstPage + n) * PAGE_SIZE);
  if (data.length !== end - firstPage * PAGE_SIZE)
    throw new CorruptError(`snapshot ${record.id}: restore batch at page ${firstPage} has ${data.length} bytes`);
  const whole = data.length === n * PAGE_SIZE ? data : Buffer.concat([data, Buffer.alloc(n * PAGE_SIZE - data.length)]);
  const got = new Uint8Array(n * DIGEST_BYTES);
  // Digests are compared in place (digestsEqual): a view and a compare call per page cost more
  // than a third of the client's main thread in a restore (issue 12's profiles).
  const nonZero = new Uint32Array(n);
  let count = 0;
  for (let k = 0; k < n; k++) {
    if (digestsEqual(digests, k * DIGEST_BYTES, ZERO_DIGEST, 0)) {
      if (!isZeroPage(whole, k * PAGE_SIZE)) throw new CorruptError(`snapshot ${record.id}: page ${firstPage + k} should be zero`);
      pages.setZero(firstPage + k);
    } else nonZero[count++] = k;
  }
  hashPages(whole, nonZero.subarray(0, count), got);
  for (let j = 0; j < count; j++) {
    const k = nonZero[j];
    if (!digestsEqual(got, k * DIGEST_BYTES, digests, k * DIGEST_BYTES))
      throw new CorruptError(`snapshot ${record.id}: page ${firstPage + k} does not match its digest`);
    pages.setDigest(firstPage + k, digests, k * DIGEST_BYTES);
  }
}
