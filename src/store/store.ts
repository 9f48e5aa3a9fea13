/**
 * Store: one directory, owned by one process. Opening takes the lock, checks the format, recovers
 * from any crash (temp files, packs sealed but not indexed, manifests without a commit record) and
 * loads the in-memory chunk table.
 *
 *   DIR/vnstore.json   identity and format version (written last by init)
 *   DIR/lock           owner PID
 *   DIR/db/            LevelDB: chunk index and catalog (src/store/db.ts)
 *   DIR/packs/         sealed packs (src/format/pack.ts)
 *   DIR/manifests/     one manifest per snapshot (src/format/manifest.ts)
 *   DIR/tmp/           temp files; emptied on open
 *   DIR/quarantine/    packs found corrupt, moved aside (never deleted)
 *   DIR/reserve        room kept for maintenance on a full disk (src/store/reserve.ts)
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ManifestHeader } from '../format/manifest.js';
import { PACK_HEADER_BYTES, packFileName, parsePackFileName } from '../format/pack.js';
import { PAGE_SIZE, type PageTable } from '../format/pages.js';
import { ChunkTable } from '../index/chunk-table.js';
import { PagePool } from '../chunk/worker-pool.js';
import { SlabPool } from '../chunk/slab-pool.js';
import { ensurePrivateDir, exists, fsyncDir, writeFileDurable } from '../util/durable.js';
import { hex } from '../chunk/hash.js';
import { slotPrefetch, touchOnThreadPool } from '../chunk/codec.js';
import { CorruptError, FIND_DAMAGE_ADVICE, fromSystemError, VnstoreError } from '../util/errors.js';
import {
  isNumberedStore,
  readConfig,
  CREATABLE_STORE_FORMAT_VERSIONS,
  DEFAULT_STORE_FORMAT_VERSION,
  STORE_FORMAT,
  STORE_FORMAT_VERSION_NUMBERED,
  type StoreConfig,
} from './config.js';
import {
  CHUNK_GEN_KEY,
  CLEAN_PACK_KEY,
  chunkKey,
  decodeChunkValue,
  jsonValue,
  KEY_GROUP,
  KEY_PACK,
  KEY_SNAPSHOT,
  KEY_VM,
  flushMemtable,
  levelOpenError,
  openDb,
  scanChunkIndex,
  parseRecord,
  parseSnapshotRecord,
  GROUP_RECORD,
  PACK_RECORD,
  SNAPSHOT_RECORD,
  prefixedKey,
  prefixRange,
  vmKey,
  type GroupRecord,
  type PackRecord,
  type SnapshotRecord,
  type StoreDb,
} from './db.js';
import { checkIndexFiles } from './index-check.js';
import { IndexBatch } from './index-batch.js';
import { ambiguousPrefixError, MIN_PREFIX, SNAPSHOT_ID_RE } from './ids.js';
import { StoreLock } from './lock.js';
import { ensureReserve, releaseReserveIfLow, reserveSize } from './reserve.js';
import { heldKey, listHeld, putHeld } from './held.js';
import { PackReader } from './pack-reader.js';
import { ManifestLoader } from './manifest-loader.js';
import { trace } from '../util/trace.js';
import { humanBytes } from '../util/units.js';
import { readTableFile, writeTableFile } from '../index/table-file.js';
import { PackWriter, DEFAULT_PACK_TARGET_BYTES } from './pack-writer.js';
import { DEFAULT_PACK_CACHE_BYTES, PackCacheWindow } from './pack-cache.js';
import { addCounterDelta, putCounterBase, snapshotDelta, zeroCounters } from './counters.js';
import { recover, type RecoveryReport } from './recovery.js';
import { storePaths, type StorePaths } from './paths.js';
import { Session, type PreparedSnapshot, type SessionOptions } from './session.js';
import { SLAB_PAGES, SLABS_KEPT } from './job-sizes.js';
import { SessionRegistry } from './session-registry.js';
import { ChunkGeneration } from './chunk-generation.js';
import type { ChunkLocation } from '../index/chunk-table.js';
import { Reclaimer, reclaimFromEnv, type PackSweeper } from './reclaim.js';
import { NEXT_NUMBER_KEY } from './number-allocator.js';
import type { NumberedChunks } from './numbered-chunks.js';
import { NumberedManifestLoader } from './manifest-loader-v3.js';
import type { NumberedPages } from '../format/manifest-v2.js';
import { recoverNumbered } from './recovery-v3.js';
import { finishUpgradeSwap } from './upgrade-swap.js';

export const TABLE_FILE = 'chunk-table.bin';

export interface OpenOptions {
  /**
   * Page workers (default: one per core but the caller's; 0 = none: hash jobs run on the libuv
   * thread pool, or on the calling thread without the native addons).
   */
  workers?: number;
  /**
   * 'open' (default) starts the page workers with the store; 'on-demand' leaves them stopped and
   * runs hash jobs on the thread pool (see `threadPool`). Without thread-pool jobs it runs them on
   * the calling thread and starts the workers when a session turns out to compress much (no parent,
   * or many new pages in a block) or runs long (256 MiB written). What a one-shot command wants
   * (bench/RESULTS.md).
   */
  startWorkers?: 'open' | 'on-demand';
  /**
   * Hash jobs no worker takes run their heavy steps on the libuv thread pool where the native addons
   * serve (default true; VNSTORE_THREAD_POOL=0 turns it off): then 'on-demand' never starts workers.
   */
  threadPool?: boolean;
  /**
   * Restore windows a page worker may hold at once before the calling thread restores one itself
   * (default 2). A server passes more: its main thread has sockets to serve, and restoring windows
   * there made it the restore's bottleneck while the worker idled (bench/RESULTS.md, session 13).
   */
  restoreQueue?: number;
  /** Pack size at which a pack is sealed. */
  packTargetBytes?: number;
  /**
   * Bytes of the newest packs this process writes kept in the page cache; older ones' pages are
   * dropped once durable (src/store/pack-cache.ts; default DEFAULT_PACK_CACHE_BYTES, Infinity keeps
   * all; `vnstore serve --pack-cache`).
   */
  packCacheBytes?: number;
  /** Reads every LevelDB table's checksums at open, also those verified before (`vnstore check`). */
  recheckIndex?: boolean;
  /**
   * false: do not load the chunk table (catalog work only: `ls`, `stats`, `forget`). Its file is
   * megabytes for a large store; sessions and restores refuse such a store.
   */
  chunkTable?: boolean;
  /**
   * Removes garbage the store made itself (gcSweeper from the maintenance layer, which the store does
   * not import): a failed or killed session's packs, and chunks a pre-copy session superseded. Without
   * one, that garbage waits for 'vnstore gc'.
   */
  sweeper?: PackSweeper;
  /**
   * Reclaim superseded pre-copy chunks in the background after a commit (src/store/reclaim.ts;
   * default true, VNSTORE_RECLAIM=0 turns it off). Needs `sweeper`.
   */
  reclaim?: boolean;
}

export type { RecoveryReport };

export { MAX_BASE_DEPTH } from './manifest-loader.js';

/** What gc puts up while it runs: it sees every exact lookup (src/maintenance/fence.ts). */
export interface LookupFence {
  readonly lookupStart: number;
  afterLookup(digests: Uint8Array[], found: (ChunkLocation | undefined)[], startSeq: number): Promise<void>;
}

/** How an index batch changed chunk entries, for the in-memory table to follow (Store.indexChanged). */
export interface TableChange {
  /** Chunks now at another location. */
  relocated?: Iterable<{ digest: Uint8Array; loc: ChunkLocation }>;
  /** Chunks that left the index. */
  removed?: Iterable<Uint8Array>;
  /** Chunks the index gained. */
  inserted?: Iterable<{ digest: Uint8Array; loc: ChunkLocation }>;
}

/** The chunk table's read side: sessions and restores ask it; only the store and the pack writer change it. */
export type ChunkTableView = Pick<
  ChunkTable,
  'get' | 'hasFingerprint' | 'prefetch' | 'shared' | 'size' | 'seed' | 'capacity' | 'memoryBytes'
>;

export class Store {
  /** The live snapshot sessions (gc, check and stats read it; sessions register through beginSession). */
  readonly sessions = new SessionRegistry();
  private fence: LookupFence | undefined;
  /** Page tables of recent snapshots: bases are shared by their children, and manifests never change. */
  private readonly manifests = new ManifestLoader((id) => this.manifestPath(id), 8);
  /** The last commit queued for each group (settled, never rejects): see commitPrepared. */
  private readonly groupCommits = new Map<string, Promise<void>>();
  /**
   * Buffers lent to page jobs (a block's pages, its compressed payloads, a restored window): shared,
   * so lending one to a worker moves no ArrayBuffer (slab-pool.ts says why).
   */
  readonly slabs = new SlabPool(SLAB_PAGES * PAGE_SIZE, SLABS_KEPT, true);
  private closed = false;
  /** CLEAN_PACK_KEY as read at open (NaN when absent): close rewrites it only when it moved. */
  private cleanPackMark = NaN;
  private readonly reclaimer: Reclaimer;
  /** Format 3: version-2 manifests, resolved to numbers and digests. */
  private readonly numberedManifests: NumberedManifestLoader | undefined;
  /** The sweeper, when it can work on this store's format. */
  private readonly sweeper: PackSweeper | undefined;

  private constructor(
    readonly dir: string,
    readonly config: StoreConfig,
    readonly db: StoreDb,
    private readonly lock: StoreLock,
    private readonly chunkTable: ChunkTable,
    readonly packs: PackReader,
    readonly writer: PackWriter,
    readonly pool: PagePool,
    readonly recovery: RecoveryReport,
    /** Chunk-generation token of the index, and whether chunk-table.bin matches it. */
    readonly chunkGen: ChunkGeneration,
    /** False when opened with `chunkTable: false` (catalog work only). */
    readonly hasChunkTable: boolean,
    sweeper: PackSweeper | undefined,
    reclaim: boolean,
    /**
     * Store format 3: the chunk index over numbers (from the packs' TOCs), the allocator and the
     * digest columns; undefined on format 1/2, whose index is LevelDB's `c` entries.
     */
    readonly numbered?: NumberedChunks,
  ) {
    // Each doubling of the table gets its memory touched ahead, off this thread, and batches of
    // probes have their lines requested together (ChunkTable.useHelpers). Not for catalog work
    // (`chunkTable: false`): no table to grow or probe, and no addon to load for it.
    if (hasChunkTable) chunkTable.useHelpers({ prefault: touchOnThreadPool(), prefetch: slotPrefetch() });
    this.sweeper = numbered && !sweeper?.numbered ? undefined : sweeper;
    this.reclaimer = new Reclaimer(this, this.sweeper, reclaim);
    this.numberedManifests = numbered && new NumberedManifestLoader((id) => this.manifestPath(id), numbered, packs);
  }

  static paths(dir: string): StorePaths {
    return storePaths(dir);
  }

  /**
   * Creates an empty store. Refuses a directory that already holds a store or other files.
   * The default is store format 3 (chunks named by number); `format` 1 or 2 creates a store of the
   * legacy layouts (digest-named chunks in LevelDB), for their tests and for benches that compare.
   */
  static async init(dir: string, options: { format?: number } = {}): Promise<StoreConfig> {
    const p = Store.paths(dir);
    const version = options.format ?? DEFAULT_STORE_FORMAT_VERSION;
    if (!CREATABLE_STORE_FORMAT_VERSIONS.includes(version))
      throw new VnstoreError('E_USAGE', `cannot create a store of format ${version} (${CREATABLE_STORE_FORMAT_VERSIONS.join(', ')})`);
    if (await exists(p.config)) throw new VnstoreError('E_EXISTS', `${dir} already holds a vnstore store`);
    try {
      const entries = await fsp.readdir(dir).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return [] as string[];
        throw err;
      });
      if (entries.length > 0) throw new VnstoreError('E_EXISTS', `${dir} is not empty; choose a new or empty directory for the store`);
      await ensurePrivateDir(dir);
      await fsp.chmod(dir, 0o700);
      for (const d of [p.packs, p.manifests, p.tmp]) await ensurePrivateDir(d);
      const db = openDb(p.db);
      await db.open();
      await fsp.chmod(p.db, 0o700); // LevelDB creates it with the process umask
      const batch = db.batch();
      putCounterBase(batch, zeroCounters()); // stats counters start at zero (src/store/counters.ts)
      if (version === STORE_FORMAT_VERSION_NUMBERED) batch.put(NEXT_NUMBER_KEY, Buffer.from('0', 'latin1'));
      await batch.write({ sync: true });
      await db.close();
      const config: StoreConfig = {
        format: STORE_FORMAT,
        version,
        storeId: randomBytes(16).toString('hex'),
        created: new Date().toISOString(),
        pageSize: PAGE_SIZE,
        chunkDigest: 'blake3-256',
      };
      await ensureReserve(dir, p.tmp, 0);
      // The identity file is published last: a crash before this leaves no half-made "store".
      await writeFileDurable(p.config, Buffer.from(JSON.stringify(config, null, 2) + '\n'), path.join(p.tmp, 'vnstore.json.tmp'));
      await fsyncDir(path.dirname(path.resolve(dir)));
      return config;
    } catch (err) {
      throw fromSystemError(err, `creating store in ${dir}`);
    }
  }

  static async open(dir: string, options: OpenOptions = {}): Promise<Store> {
    const config = await readConfig(dir);
    const p = Store.paths(dir);
    // On a (nearly) full disk the reserve makes room for the writes an open needs (the lock file,
    // LevelDB's log replay) and for forget and gc; sessions refuse to start until it is back.
    await releaseReserveIfLow(dir).catch(() => undefined);
    let lock: StoreLock;
    try {
      lock = await StoreLock.acquire(p.lock);
    } catch (err) {
      throw fromSystemError(err, `locking store ${dir}`);
    }
    let db: StoreDb | undefined;
    let packs: PackReader | undefined;
    // Workers boot (load modules) while we open LevelDB and recover.
    const pool = new PagePool(options.workers, {
      start: options.startWorkers !== 'on-demand',
      threadPool: options.threadPool,
      restoreQueue: options.restoreQueue,
    });
    try {
      // An upgrade killed after its commit point left its copy beside the old parts: finished first.
      if (isNumberedStore(config)) await finishUpgradeSwap(dir);
      for (const d of [p.packs, p.manifests, p.tmp]) await ensurePrivateDir(d);
      // Before LevelDB sees them: a damaged table would abort the process in a compaction.
      const checked = await checkIndexFiles(p.db, { recheck: options.recheckIndex });
      trace(`index files checked (${checked.read} of ${checked.tables} tables read)`);
      db = openDb(p.db);
      try {
        await db.open();
        // LevelDB creates its directory with the process umask; guest memory metadata stays private.
        await fsp.chmod(p.db, 0o700);
      } catch (err) {
        throw levelOpenError(err, p.db);
      }
      trace('db open');
      packs = new PackReader(p.packs);
      if (isNumberedStore(config)) return await Store.openNumbered(dir, config, db, lock, packs, pool, options);
      const recovery = await recover(dir, db, packs);
      trace('recovered');
      const savedToken = (await db.get(CHUNK_GEN_KEY)) ?? undefined;
      const tableFile = path.join(dir, TABLE_FILE);
      const withTable = options.chunkTable !== false;
      const saved = withTable && savedToken ? await readTableFile(tableFile, savedToken) : undefined;
      const table = saved ?? (withTable ? await loadChunkTable(db) : new ChunkTable(0));
      trace(withTable ? `chunk table ${saved ? 'read from file' : 'rebuilt from index'} (${table.size} chunks)` : 'chunk table not loaded');
      // Without the table loaded there is nothing to save, and the file on disk must be left alone.
      const gen = new ChunkGeneration(savedToken, saved !== undefined || !withTable);
      const maxPack = await highestPackId(dir, db);
      const writer = new PackWriter(
        p.packs,
        p.tmp,
        db,
        table,
        maxPack + 1,
        options.packTargetBytes ?? packTargetFromEnv() ?? DEFAULT_PACK_TARGET_BYTES,
        (token) => gen.advance(token),
        undefined,
        packCacheWindow(options),
      );
      const reclaim = options.reclaim ?? reclaimFromEnv();
      const store = new Store(dir, config, db, lock, table, packs, writer, pool, recovery, gen, withTable, options.sweeper, reclaim);
      if (withTable) await store.discardUncleanPacks();
      return store;
    } catch (err) {
      await pool.close().catch(() => undefined);
      await packs?.close();
      await db?.close().catch(() => undefined);
      await lock.release();
      throw fromSystemError(err, `opening store ${dir}`);
    }
  }

  /** Format 3's open after LevelDB: recovery builds the index from the TOCs; nothing is saved at close. */
  private static async openNumbered(
    dir: string,
    config: StoreConfig,
    db: StoreDb,
    lock: StoreLock,
    packs: PackReader,
    pool: PagePool,
    options: OpenOptions,
  ): Promise<Store> {
    const p = Store.paths(dir);
    const { report, chunks } = await recoverNumbered(dir, db, packs);
    trace(`recovered (format 3: ${chunks.index.size} chunks in ${chunks.index.packIds.length} packs)`);
    const gen = new ChunkGeneration(undefined, true); // no chunk-table.bin on format 3
    const writer = new PackWriter(
      p.packs,
      p.tmp,
      db,
      chunks.table,
      (await highestPackId(dir, db)) + 1,
      options.packTargetBytes ?? packTargetFromEnv() ?? DEFAULT_PACK_TARGET_BYTES,
      undefined,
      { takeNumber: () => chunks.allocator.take(), addSealed: (pack) => chunks.addSealed(pack) },
      packCacheWindow(options),
    );
    const reclaim = options.reclaim ?? reclaimFromEnv();
    // Catalog work (chunkTable: false) leaves a killed put's packs to the next full open, as on format 1/2.
    const full = options.chunkTable !== false;
    const store = new Store(dir, config, db, lock, chunks.table, packs, writer, pool, report, gen, full, options.sweeper, reclaim, chunks);
    if (full) await store.discardUncleanPacks();
    return store;
  }

  /** Whether this store names chunks by number (store format 3). */
  get isNumbered(): boolean {
    return this.numbered !== undefined;
  }

  /**
   * Refuses work not yet ported to store format 3 (one line, E_FORMAT_VERSION, exit 4), so that it
   * never touches such a store wrongly.
   */
  refuseNumbered(what: string): void {
    if (this.numbered)
      throw new VnstoreError(
        'E_FORMAT_VERSION',
        `${what} does not work on store format ${STORE_FORMAT_VERSION_NUMBERED} yet (${this.dir} is a format-3 store)`,
      );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.sessions]) await s.abort().catch(() => undefined);
    // A reclaim started by a commit finishes first: it writes packs and index batches.
    await this.reclaimer.close();
    await this.writer.close();
    // A clean close of a full open: packs up to here are accounted for (discardUncleanPacks).
    // Written only when it moved, so a command that only read (restore, check) writes nothing here,
    // and before the memtable flush below, so the next open has no log to replay. Without a sweeper
    // the packs of a killed process were not looked at: the mark stays for an open that can.
    if (this.hasChunkTable && this.sweeper) {
      const highest = await highestPackId(this.dir, this.db).catch(() => undefined);
      if (highest !== undefined && highest !== this.cleanPackMark)
        await this.db.put(CLEAN_PACK_KEY, Buffer.from(String(highest), 'latin1'), { sync: true }).catch(() => undefined);
    }
    // The chunk index changed here: write LevelDB's memtable out now, next to the table save, so the
    // next open does not replay the log (see flushMemtable). A failure only slows that open.
    const flushing = this.chunkGen.saved ? undefined : flushMemtable(this.db).catch(() => undefined);
    await this.saveTable().catch(() => undefined); // a cache: failing to save only slows the next open
    trace('chunk table saved');
    await flushing;
    trace('index memtable flushed');
    await this.pool.close(this.packs.packsDir);
    await this.packs.close();
    await this.db.close();
    // Room for the reserve twice over: never the write that fills the disk.
    await ensureReserve(this.dir, Store.paths(this.dir).tmp, await reserveSize(this.dir)).catch(() => undefined);
    await this.lock.release();
    trace('closed');
  }

  /** Saves the chunk table for the next open, when it changed since it was loaded. */
  private async saveTable(): Promise<void> {
    if (this.chunkGen.saved) return;
    let token = this.chunkGen.token;
    if (!token) {
      token = await new IndexBatch(this.db).write({ sync: true });
      this.chunkGen.advance(token);
    }
    const p = Store.paths(this.dir);
    await writeTableFile(path.join(this.dir, TABLE_FILE), path.join(p.tmp, `${TABLE_FILE}.tmp`), this.chunkTable, token);
    this.chunkGen.markSaved(token);
  }

  /** The in-memory chunk table, to read (fingerprint hints for sessions and restores). */
  get table(): ChunkTableView {
    return this.chunkTable;
  }

  /** Makes room in the chunk table for `chunks` more entries up front (a large first put). */
  reserveChunkTable(chunks: number): void {
    this.chunkTable.reserve(chunks);
  }

  /**
   * An index batch stamped `token` (stampChunkGeneration) that moved, removed or added chunk entries
   * was written: the table follows it, and chunk-table.bin is stale until saved. gc and repair call
   * this before any lookup is let through (the pack writer keeps the table itself as it seals).
   */
  indexChanged(token: Buffer, change: TableChange): void {
    this.chunkGen.advance(token);
    const t = this.chunkTable;
    for (const m of change.relocated ?? []) t.relocate(m.digest, m.loc);
    // An ambiguous hint may stand for another chunk with the same fingerprint: left for the exact index.
    for (const d of change.removed ?? []) if (t.get(d)?.ambiguous === false) t.remove(d);
    for (const u of change.inserted ?? []) t.insert(u.digest, u.loc);
  }

  /** The fence gc raises while it runs (see LookupFence); sessions ask whether one is up. */
  private fencesRaised = 0;

  get gcFence(): LookupFence | undefined {
    return this.fence;
  }

  /**
   * How many gc fences were raised so far: a session that began a hash job before a gc and applies it
   * after that gc ended compares this to know that its worker's table hits may name removed chunks.
   */
  get gcFencesRaised(): number {
    return this.fencesRaised;
  }

  /** gc raises its fence before it reads anything; one at a time (maintenance runs one at a time). */
  raiseGcFence(fence: LookupFence): void {
    if (this.fence) throw new VnstoreError('E_SESSION', 'a gc fence is already up');
    this.fence = fence;
    this.fencesRaised++;
  }

  lowerGcFence(fence: LookupFence): void {
    if (this.fence === fence) this.fence = undefined;
  }

  // ---------------------------------------------------------------- sessions and commit

  /** Begins a snapshot session for one VM. Pages written to it are invisible until commit. */
  async beginSession(options: SessionOptions): Promise<Session> {
    this.assertOpen();
    this.assertChunkTable('a snapshot session');
    await this.numbered?.ensureDigests(); // sessions and the page workers ask the fingerprint table
    await this.assertRoomToIngest();
    return this.sessions.admit(Session.begin(this, options));
  }

  /**
   * Commits prepared snapshots atomically: one synced LevelDB batch writes every commit record (and
   * the group record), so all of them become visible together or none does.
   */
  async commitPrepared(prepared: PreparedSnapshot[], group?: { id: string }): Promise<SnapshotRecord[]> {
    this.assertOpen();
    if (prepared.length === 0) throw new VnstoreError('E_SESSION', 'nothing to commit');
    if (!group) return this.writeCommit(prepared, undefined);
    // A commit reads the group record, extends it and writes it back: commits to one group run one
    // at a time, or sessions of one group committed at once would each drop the others' ids.
    const previous = this.groupCommits.get(group.id);
    const run = previous ? previous.then(() => this.writeCommit(prepared, group)) : this.writeCommit(prepared, group);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.groupCommits.set(group.id, settled);
    void settled.then(() => {
      if (this.groupCommits.get(group.id) === settled) this.groupCommits.delete(group.id);
    });
    return run;
  }

  private async writeCommit(prepared: PreparedSnapshot[], group: { id: string } | undefined): Promise<SnapshotRecord[]> {
    this.assertOpen();
    const batch = this.db.batch();
    const time = new Date().toISOString();
    for (const p of prepared) {
      if (p.store !== this) throw new VnstoreError('E_SESSION', 'prepared snapshot belongs to another store');
      if (p.state !== 'prepared') throw new VnstoreError('E_SESSION', `snapshot ${p.record.id} is ${p.state}, not prepared`);
      if (p.failureEpoch !== this.writer.failureEpoch) {
        throw new VnstoreError(
          'E_IO',
          `snapshot ${p.record.id}: a pack write failed during the session (${this.writer.lastFailure?.message ?? 'unknown'}); abort and retry`,
        );
      }
      batch.put(prefixedKey(KEY_SNAPSHOT, p.record.id), jsonValue(p.record));
      batch.put(vmKey(p.record.vm, p.record.id), Buffer.alloc(0));
      batch.del(heldKey(p.record.id)); // a held prepared snapshot (src/store/held.ts) is published
    }
    if (group) {
      // A group committed in several calls (one `put --group` per VM) lists all of its snapshots.
      const prev = await this.db.get(prefixedKey(KEY_GROUP, group.id));
      const prevRec = prev === undefined ? undefined : parseRecord(prev, GROUP_RECORD, group.id);
      const g: GroupRecord = {
        id: group.id,
        time: prevRec?.time ?? time,
        snapshots: [...(prevRec?.snapshots ?? []), ...prepared.map((p) => p.record.id)],
      };
      batch.put(prefixedKey(KEY_GROUP, group.id), jsonValue(g));
    }
    addCounterDelta(
      batch,
      snapshotDelta(
        prepared.map((p) => p.record),
        1,
      ),
    ); // stats counters, same batch
    // Format 3: the numbers these manifests name are published: the mark goes with them (FORMAT.md).
    if (this.numbered) batch.put(NEXT_NUMBER_KEY, this.numbered.allocator.markValue());
    try {
      await batch.write({ sync: true });
    } catch (err) {
      throw fromSystemError(err, 'writing commit record');
    }
    for (const p of prepared) p.state = 'committed';
    trace('committed');
    // Committed: its VM's next session may begin on it (remembered only now, never for an aborted one).
    for (const p of prepared) if (p.loaded) this.numberedManifests?.remember(p.record.vm, p.record.id, p.loaded);
    // Durable now: superseded chunks may go, in the background (the caller gets its records first).
    for (const p of prepared) this.reclaimer.afterCommit(p.reclaim);
    return prepared.map((p) => p.record);
  }

  /**
   * After a session failed on a write (a full disk, an I/O error): the packs sealed since `mark` (a
   * writer.sealedCount) hold chunks first stored then. Those no live snapshot or session references
   * are dropped now (by gc's own crash-safe steps), so a failed put does not leave its packs filling
   * the disk. Best effort: what stays is garbage for the next gc.
   */
  async discardFailedPacks(mark: number): Promise<void> {
    await this.discardDeadPacks(this.writer.sealedSince(mark), 'failed session');
  }

  /**
   * On a full open, after a process that did not close cleanly (killed mid-put, power loss): the
   * packs sealed since the last clean close that no committed or prepared snapshot uses are dropped,
   * so a put killed outright leaves nothing once the store is opened again. Stores that never
   * recorded a clean close (older versions) leave this to gc.
   */
  private async discardUncleanPacks(): Promise<void> {
    const mark = await this.db.get(CLEAN_PACK_KEY).catch(() => undefined);
    const clean = mark === undefined ? NaN : Number(mark.toString('latin1'));
    this.cleanPackMark = clean;
    if (!Number.isSafeInteger(clean)) return;
    const ids = (this.numbered ? this.numbered.index.packIds : (await this.listPacks()).map((r) => r.id)).filter((id) => id > clean);
    await this.discardDeadPacks(ids, 'unclean close');
  }

  private async discardDeadPacks(ids: number[], why: string): Promise<void> {
    if (ids.length === 0 || this.closed || !this.sweeper) return;
    try {
      await releaseReserveIfLow(this.dir); // the index batch that drops them needs a little room
      await this.sweeper.dropDead(this, ids);
      trace(`${why}: ${ids.length} pack(s) considered for removal`);
    } catch {
      // Left as garbage: 'vnstore gc' removes it.
    }
  }

  /**
   * Resolves once no reclaim of superseded chunks runs or waits (see OpenOptions.reclaim); `runs`
   * counts those started since open.
   */
  async reclaimIdle(): Promise<{ runs: number }> {
    await this.reclaimer.idle();
    return { runs: this.reclaimer.runs };
  }

  /** Discards prepared-but-uncommitted snapshots (removes their manifest files). */
  async abortPrepared(prepared: PreparedSnapshot[]): Promise<void> {
    for (const p of prepared) {
      if (p.state !== 'prepared') continue;
      p.state = 'aborted';
      await this.db.del(heldKey(p.record.id), { sync: true });
      await fsp.rm(this.manifestPath(p.record.id), { force: true });
    }
  }

  /**
   * Keeps a prepared snapshot across restarts until it is committed or aborted (a server holding it
   * for a coordinator): recovery keeps its manifest, heldPrepared() gives it back after a reopen.
   */
  async holdPrepared(prepared: PreparedSnapshot, deadline: number): Promise<void> {
    this.assertOpen();
    if (prepared.state !== 'prepared')
      throw new VnstoreError('E_SESSION', `snapshot ${prepared.record.id} is ${prepared.state}, not prepared`);
    await putHeld(this.db, { record: prepared.record, deadline }, this.numbered && [NEXT_NUMBER_KEY, this.numbered.allocator.markValue()]);
  }

  /** The held prepared snapshots (see holdPrepared), prepared again in this process. */
  async heldPrepared(): Promise<{ prepared: PreparedSnapshot; deadline: number }[]> {
    this.assertOpen();
    return (await listHeld(this.db)).map((h) => ({
      prepared: { store: this, record: h.record, failureEpoch: this.writer.failureEpoch, state: 'prepared' },
      deadline: h.deadline,
    }));
  }

  // ---------------------------------------------------------------- catalog

  manifestPath(id: string): string {
    return path.join(Store.paths(this.dir).manifests, `${id}.vnm`);
  }

  async getSnapshot(id: string): Promise<SnapshotRecord | undefined> {
    const v = await this.db.get(prefixedKey(KEY_SNAPSHOT, id));
    return v === undefined ? undefined : parseSnapshotRecord(v, id);
  }

  /** Resolves a full id or a unique prefix (≥ 4 hex digits) to a committed snapshot. */
  async resolveSnapshot(idOrPrefix: string): Promise<SnapshotRecord> {
    const q = idOrPrefix.trim().toLowerCase();
    if (!/^[0-9a-f]+$/.test(q) || q.length > 16)
      throw new VnstoreError('E_USAGE', `${JSON.stringify(idOrPrefix)} is not a snapshot id (16 hex digits, or a unique prefix)`);
    if (SNAPSHOT_ID_RE.test(q)) {
      const r = await this.getSnapshot(q);
      if (!r) throw new VnstoreError('E_NOT_FOUND', `no snapshot ${q} in this store`);
      return r;
    }
    if (q.length < MIN_PREFIX)
      throw new VnstoreError('E_USAGE', `snapshot id prefix ${q} is too short (at least ${MIN_PREFIX} hex digits)`);
    const ids: string[] = []; // keys only: the error says how many matched
    for await (const k of this.db.keys(prefixRange(prefixedKey(KEY_SNAPSHOT, q)))) ids.push(k.subarray(1).toString('utf8'));
    const found = ids.length === 1 ? await this.getSnapshot(ids[0]) : undefined;
    if (ids.length > 1) throw ambiguousPrefixError(q, ids);
    if (!found) throw new VnstoreError('E_NOT_FOUND', `no snapshot matching ${q} in this store`);
    return found;
  }

  /** Committed snapshots in id (= time) order, optionally of one VM. */
  async listSnapshots(vm?: string): Promise<SnapshotRecord[]> {
    this.assertOpen();
    const out: SnapshotRecord[] = [];
    if (vm === undefined) {
      for await (const v of this.db.values(prefixRange(Buffer.of(KEY_SNAPSHOT)))) out.push(parseRecord(v, SNAPSHOT_RECORD));
      return out;
    }
    const prefix = Buffer.concat([Buffer.of(KEY_VM), Buffer.from(vm, 'utf8'), Buffer.of(0)]);
    const ids: string[] = [];
    for await (const k of this.db.keys(prefixRange(prefix))) ids.push(k.subarray(prefix.length).toString('utf8'));
    const values = await this.db.getMany(ids.map((id) => prefixedKey(KEY_SNAPSHOT, id)));
    for (const v of values) if (v !== undefined) out.push(parseRecord(v, SNAPSHOT_RECORD));
    return out;
  }

  async latestSnapshot(vm: string): Promise<SnapshotRecord | undefined> {
    const prefix = Buffer.concat([Buffer.of(KEY_VM), Buffer.from(vm, 'utf8'), Buffer.of(0)]);
    for await (const k of this.db.keys({ ...prefixRange(prefix), reverse: true, limit: 1 })) {
      return this.getSnapshot(k.subarray(prefix.length).toString('utf8'));
    }
    return undefined;
  }

  /**
   * The indexed packs, by id. Format 3 keeps no `p` records (a pack's TOC is its record): chunks and
   * payload come from the TOC, bytes from the file, sealedAt from its mtime (as compact's --min-age).
   */
  async listPacks(): Promise<PackRecord[]> {
    const out: PackRecord[] = [];
    if (this.numbered) {
      for (const id of [...this.numbered.index.packIds].sort((a, b) => a - b)) {
        const { toc, tocOffset } = await this.packs.readTocV3(id);
        const { size, mtime } = await fsp.stat(this.packs.packPath(id));
        out.push({ id, chunks: toc.count, bytes: size, payloadBytes: tocOffset - PACK_HEADER_BYTES, sealedAt: mtime.toISOString() });
      }
      return out;
    }
    for await (const v of this.db.values(prefixRange(Buffer.of(KEY_PACK)))) out.push(parseRecord(v, PACK_RECORD));
    return out;
  }

  // ---------------------------------------------------------------- manifests

  async readManifestHeader(id: string): Promise<ManifestHeader> {
    return this.numberedManifests ? this.numberedManifests.readHeader(id) : this.manifests.readHeader(id);
  }

  /** Full page table of a snapshot (each page's digest), resolving delta bases. */
  async loadPages(id: string): Promise<PageTable> {
    if (this.numberedManifests) return (await this.numberedManifests.loadWithDigests(id)).pages;
    return (await this.manifests.load(id)).pages;
  }

  /** Format 3: a snapshot's pages by number and by digest (a session's parent). */
  async loadNumberedPages(
    id: string,
  ): Promise<{ pages: PageTable; numbers: NumberedPages; wholeDigests: boolean; presentAt?: number; header: ManifestHeader }> {
    if (!this.numberedManifests)
      throw new VnstoreError('E_USAGE', `store format ${this.config.version} names chunks by digest, not number`);
    const loaded = await this.numberedManifests.loadWithDigests(id);
    const { pages, numbers, presentAt, header } = loaded;
    return { pages, numbers, wholeDigests: loaded.wholeDigests === true, presentAt, header };
  }

  // ---------------------------------------------------------------- chunk index

  /** Exact lookups (open packs first, then LevelDB) for digests the table only hinted at. */
  async lookupExact(digests: Uint8Array[]): Promise<(ChunkLocation | undefined)[]> {
    // A gc running meanwhile must learn of lookups that read the index before its removing batch.
    const startFence = this.fence;
    const startSeq = startFence?.lookupStart ?? 0;
    const out: (ChunkLocation | undefined)[] = new Array(digests.length);
    const missIdx: number[] = [];
    for (let i = 0; i < digests.length; i++) {
      const loc = this.writer.locateUnindexed(digests[i]);
      if (loc) out[i] = loc;
      else missIdx.push(i);
    }
    if (missIdx.length > 0 && this.numbered) {
      const found = await this.numbered.find(missIdx.map((i) => digests[i]));
      for (let k = 0; k < missIdx.length; k++) out[missIdx[k]] = found[k]?.location;
    } else if (missIdx.length > 0) {
      const values = await this.db.getMany(missIdx.map((i) => chunkKey(digests[i])));
      for (let k = 0; k < missIdx.length; k++) {
        const v = values[k];
        out[missIdx[k]] = v === undefined ? undefined : decodeChunkValue(v);
      }
    }
    const fence = this.fence;
    if (fence) await fence.afterLookup(digests, out, fence === startFence ? startSeq : 0);
    return out;
  }

  /** Reads one chunk by digest (exact index lookup), decoded and verified; for rare single-page needs. */
  async readChunk(digest: Uint8Array, what: string): Promise<Uint8Array> {
    const [loc] = await this.lookupExact([digest]);
    if (!loc) throw new CorruptError(`${what}: chunk ${hex(digest)} is not in the index; run 'vnstore check'`);
    const page = await this.packs.readVerified(loc, digest);
    if (!page)
      throw new CorruptError(
        `${what}: chunk ${hex(digest)} in pack ${packFileName(loc.pack)} is corrupt (does not decode to its digest); ${FIND_DAMAGE_ADVICE}`,
      );
    return page;
  }

  /** A session needs the space reserve in place (re-created here if there is room): see reserve.ts. */
  private async assertRoomToIngest(): Promise<void> {
    let ok: boolean;
    try {
      ok = await ensureReserve(this.dir, Store.paths(this.dir).tmp, 0);
    } catch (err) {
      throw fromSystemError(err, 'making room for a new snapshot');
    }
    if (!ok) {
      throw new VnstoreError(
        'E_NO_SPACE',
        `no space left on device for a new snapshot in ${this.dir}: the store keeps ${humanBytes(await reserveSize(this.dir))} free for reading and maintenance; free space ('vnstore forget' then 'vnstore gc', or delete other files) and retry`,
      );
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new VnstoreError('E_SESSION', 'store is closed');
  }

  /** Refuses work that needs the chunk table on a store opened without it. */
  assertChunkTable(what: string): void {
    if (!this.hasChunkTable)
      throw new VnstoreError('E_USAGE', `${what} needs the chunk table, and this store was opened without it (chunkTable: false)`);
  }
}

async function loadChunkTable(db: StoreDb): Promise<ChunkTable> {
  let count = 0;
  for await (const v of db.values(prefixRange(Buffer.of(KEY_PACK)))) count += parseRecord(v, PACK_RECORD).chunks;
  const table = new ChunkTable(Math.max(count, 1 << 14));
  await scanChunkIndex(db, (k, loc) => {
    if (!loc)
      throw new CorruptError(`chunk index entry ${k.subarray(1).toString('hex')} does not decode; run 'vnstore check --repair-index'`);
    table.insert(k.subarray(1), loc);
  });
  return table;
}

/** VNSTORE_PACK_TARGET_BYTES: pack size at which packs are sealed (tests use tiny packs). */
function packCacheWindow(options: OpenOptions): PackCacheWindow {
  return new PackCacheWindow(options.packCacheBytes ?? DEFAULT_PACK_CACHE_BYTES);
}

function packTargetFromEnv(): number | undefined {
  const v = process.env.VNSTORE_PACK_TARGET_BYTES;
  if (v === undefined || !/^\d+$/.test(v)) return undefined;
  return Math.max(PAGE_SIZE, Number(v));
}

async function highestPackId(dir: string, db: StoreDb): Promise<number> {
  let max = 0;
  for await (const k of db.keys({ ...prefixRange(Buffer.of(KEY_PACK)), reverse: true, limit: 1 })) max = k.readUInt32BE(1);
  for (const d of [Store.paths(dir).packs, Store.paths(dir).quarantine]) {
    const names = await fsp.readdir(d).catch(() => [] as string[]);
    for (const name of names) max = Math.max(max, parsePackFileName(name) ?? 0);
  }
  return max;
}
