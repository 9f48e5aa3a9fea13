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
   * Streams snapshot `idOrPrefix` to `write` in order (the chunk is lent until `write` settles).
   * Every page is checked against its digest as it arrives, and the digests against the record's
   * image digest at the end: a mismatch rejects with E_CORRUPT, so a caller writing a file must
   * publish it only once this resolves. Resolves to the record.
   */
  async restore(idOrPrefix: string, write: (chunk: Uint8Array) => Promise<void> | void): Promise<SnapshotRecord> {
    let record: SnapshotRecord | undefined;
    let pages: PageTable | undefined;
    let nextPage = 0;
    let chain: Promise<void> = Promise.resolve();
    let failure: Error | undefined;
    const onFrame = (m: Message, release?: () => void) => {
      if (m.t !== 'data') release?.();
      if (m.t === 'result' && !record) {
        record = JSON.parse(m.json) as SnapshotRecord;
        pages = new PageTable(record.pageCount);
        return;
      }
      if (m.t !== 'data' || !record || !pages) {
        failure ??= new VnstoreError('E_PROTOCOL', `unexpected ${m.t.toUpperCase()} in a restore stream`);
        return;
      }
      try {
        verifyBatch(record, pages, nextPage, m.firstPage, m.digests, m.data);
        nextPage += m.digests.length / DIGEST_BYTES;
      } catch (err) {
        failure ??= err as Error;
        return;
      }
      const data = m.data;
      chain = chain.then(() => (failure ? undefined : write(data)));
      // The chunk is lent to `write` until it settles; then its frame's buffer is reused.
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
