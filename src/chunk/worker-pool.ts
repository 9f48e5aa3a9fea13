/**
 * A small pool of page workers. Jobs go to the least-loaded worker; when every worker already has
 * WORKER_QUEUE jobs, or none is started, the job runs without one: a hash job as native jobs on the
 * libuv thread pool where the addons serve, any other job on the calling thread (it is a core too:
 * by default the pool has one worker fewer than the machine has cores). A pool of size 0 never
 * starts a worker (tests, tiny stores, environments without workers).
 */
import os from 'node:os';
import { slabTransfer } from './slab-pool.js';
import { PAGE_SIZE } from '../format/pages.js';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import type { Worker } from 'node:worker_threads';
import {
  forgetPackDir,
  forgetPacks,
  runDecodeJob,
  runHashJob,
  runHashJobOnThreadPool,
  threadPoolServes,
  runRestoreJob,
  type DecodeJob,
  type DecodeResult,
  type HashJob,
  type HashResult,
  type RestoreJob,
  type RestoreResult,
} from './page-jobs.js';

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/**
 * Puts a worker's result back on the caller's own slab views. A shared slab reaches the worker and
 * comes back as new SharedArrayBuffer objects over the same memory; the caller's pool knows its slabs
 * by the objects it lent (SlabPool.give), so the result must name those.
 */
function onLentSlabs(job: HashJob | DecodeJob | RestoreJob, result: unknown): unknown {
  if (job.kind === 'hash') {
    const r = result as HashResult;
    if (job.payloadSlab?.buffer instanceof SharedArrayBuffer) {
      r.slab = job.payloadSlab;
      if (r.payload.buffer instanceof SharedArrayBuffer) r.payload = lentView(job.payloadSlab, r.payload);
    }
    if (job.pages.buffer instanceof SharedArrayBuffer) r.pages = job.file ? undefined : job.pages;
  } else if (job.kind === 'restore') {
    const r = result as RestoreResult;
    if (job.window?.buffer instanceof SharedArrayBuffer && r.out.buffer instanceof SharedArrayBuffer) r.out = lentView(job.window, r.out);
  }
  return result;
}

/** The bytes `copy` views (a worker's view of the shared slab under `lent`), as a view of `lent`'s own buffer. */
function lentView(lent: Uint8Array, copy: Uint8Array): Uint8Array {
  return new Uint8Array(lent.buffer, copy.byteOffset, copy.length);
}

interface Slot {
  worker: Worker;
  inFlight: number;
  /** The worker has loaded its modules and said so: jobs sent earlier would only wait. */
  ready: boolean;
}

function workerScript(): string | undefined {
  const here = fileURLToPath(import.meta.url);
  // Under vitest the sources are .ts; the worker runs the compiled copy from dist/ (npm test builds first).
  const candidate = here.endsWith('.ts')
    ? path.resolve(path.dirname(here), '../../dist/chunk/page-worker.js')
    : path.join(path.dirname(here), 'page-worker.js');
  return existsSync(candidate) ? candidate : undefined;
}

export class PagePool {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: Error | undefined;
  private started = false;
  private readonly readyWaiters: (() => void)[] = [];
  /**
   * Jobs run so far on the calling thread, on the libuv thread pool, and in workers (diagnostics
   * and tests).
   */
  readonly jobCounts = { inline: 0, threadPool: 0, worker: 0 };
  /** Read buffers of file jobs that ran on the thread pool, free for the next one. */
  private readonly shelf: Uint8Array[] = [];

  /**
   * Whether hash jobs with no worker free run on the libuv thread pool (where the addons serve)
   * rather than on the calling thread. Default: yes, unless VNSTORE_THREAD_POOL=0.
   */
  readonly threadPool: boolean;

  /** Restore windows a worker may hold before the calling thread restores one itself. */
  private readonly restoreQueue: number;

  /**
   * `plannedSize` workers, started now or, with `start: false`, on the first start() call. Until
   * then no job goes to a worker: a worker costs ~90 ms of CPU to start, which a one-shot command
   * whose pages are cheap (a consecutive snapshot, a restore) never earns back.
   */
  constructor(
    readonly plannedSize: number = defaultPoolSize(),
    options: { start?: boolean; threadPool?: boolean; restoreQueue?: number } = {},
  ) {
    this.threadPool = options.threadPool ?? process.env.VNSTORE_THREAD_POOL !== '0';
    this.restoreQueue = Math.max(1, options.restoreQueue ?? WORKER_QUEUE);
    if (options.start !== false) this.start();
  }

  /** Starts the workers (once; a no-op for a pool of size 0, without a worker script, or once closed). */
  start(): void {
    if (this.started) return;
    this.started = true;
    const script = this.plannedSize > 0 ? workerScript() : undefined;
    if (!script) return;
    // Loaded only when a worker starts: a one-shot command whose jobs run on the thread pool never
    // needs it, and loading it costs ~5 ms of every command's start-up here.
    const { Worker: WorkerThread } = createRequire(import.meta.url)('node:worker_threads') as typeof import('node:worker_threads');
    for (let i = 0; i < this.plannedSize; i++) {
      const worker = new WorkerThread(script);
      worker.unref();
      const slot: Slot = { worker, inFlight: 0, ready: false };
      worker.on('message', (msg: { id: number; result?: unknown; error?: string; ready?: true; forgotPackDir?: true }) => {
        if (msg.forgotPackDir) return; // close()'s own listener takes it
        if (msg.ready) {
          slot.ready = true;
          if (this.slots.every((s) => s.ready)) for (const w of this.readyWaiters.splice(0)) w();
          return;
        }
        // Idle workers must not keep the process alive; busy ones must (a pending job is awaited).
        if (--slot.inFlight === 0) worker.unref();
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.error !== undefined) p.reject(new Error(msg.error));
        else p.resolve(msg.result);
      });
      worker.on('error', (err) => this.fail(err));
      this.slots.push(slot);
    }
  }

  /**
   * The work turned out heavy enough for workers (Session decides): start them, unless thread-pool
   * jobs serve hashing. Those need no start-up, while a worker's ~90 ms of it is not earned back by a
   * one-shot command (docs/DESIGN.md, "Thread-pool jobs"). A pool started from the outset is not
   * affected.
   */
  wantWorkers(): void {
    if (this.threadPool && threadPoolServes()) return;
    this.start();
  }

  /**
   * Packs about to be removed: every thread that runs page jobs (this one and each worker, after
   * the jobs it already holds) closes its cached descriptors of them, so their space is freed.
   */
  forgetPacks(packsDir: string, ids: readonly number[]): void {
    forgetPacks(packsDir, ids);
    for (const s of this.slots) s.worker.postMessage({ forgetPacks: { packsDir, ids: [...ids] } });
  }

  /** Workers running now. */
  get size(): number {
    return this.slots.length;
  }

  /** Resolves once every started worker is ready to take jobs (at once when none is starting). */
  whenReady(): Promise<void> {
    if (this.slots.every((s) => s.ready)) return Promise.resolve();
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  private fail(err: Error): void {
    this.failure = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const w of this.readyWaiters.splice(0)) w();
  }

  /** The least-loaded ready worker, or undefined when the caller should run the job itself. */
  private pick(queue = WORKER_QUEUE): Slot | undefined {
    let best: Slot | undefined;
    for (const s of this.slots) if (s.ready && (best === undefined || s.inFlight < best.inFlight)) best = s;
    return best === undefined || best.inFlight >= queue ? undefined : best;
  }

  private submit<T>(best: Slot, job: HashJob | DecodeJob | RestoreJob, transfer: ArrayBuffer[]): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    this.jobCounts.worker++;
    const id = this.nextId++;
    if (best.inFlight++ === 0) best.worker.ref();
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: (r) => resolve(onLentSlabs(job, r) as T), reject });
      best.worker.postMessage({ id, job }, transfer);
    });
  }

  /** Hashes a block; the job owns `job.pages`'s buffer (it is transferred and handed back). */
  hash(job: HashJob): Promise<HashResult> {
    const slot = this.pick();
    if (!slot) return this.onThreadPool(job) ?? this.inline(() => runHashJob(job));
    return this.submit<HashResult>(slot, job, [...slabTransfer(job.pages), ...slabTransfer(job.payloadSlab)]);
  }

  decode(job: DecodeJob): Promise<DecodeResult> {
    const slot = this.pick();
    if (!slot) return this.inline(() => runDecodeJob(job));
    return this.submit<DecodeResult>(slot, job, ownBuffer(job.payload));
  }

  /** Reads, decodes and verifies one restore window (the worker reads the packs itself). */
  restore(job: RestoreJob): Promise<RestoreResult> {
    const slot = this.pick(this.restoreQueue);
    if (!slot) return this.inline(() => runRestoreJob(job));
    return this.submit<RestoreResult>(slot, job, slabTransfer(job.window));
  }

  /**
   * A hash job with no worker free goes to the libuv thread pool where the addons serve: the
   * calling thread only classifies its pages, and reads and applies other blocks meanwhile.
   */
  private onThreadPool(job: HashJob): Promise<HashResult> | undefined {
    if (!this.threadPool) return undefined;
    let buffer: Uint8Array | undefined;
    const running = runHashJobOnThreadPool(job, () => (buffer = this.lend(job.pageCount * PAGE_SIZE)));
    if (!running) return undefined;
    this.jobCounts.threadPool++;
    return running.finally(() => {
      if (buffer) this.giveBack(buffer);
    });
  }

  /** A scratch buffer of at least `bytes` for a thread-pool job; reused, so never assume zeros. */
  private lend(bytes: number): Uint8Array {
    const i = this.shelf.findIndex((b) => b.length >= bytes);
    return i >= 0 ? this.shelf.splice(i, 1)[0] : new Uint8Array(Math.max(bytes, 4 * 1024 * 1024));
  }

  private giveBack(buffer: Uint8Array): void {
    if (this.shelf.length < SHELF_BUFFERS) this.shelf.push(buffer);
  }

  /** Asks one worker to close its descriptors under `packsDir`; settles on its reply, or if it fails. */
  private forgetPackDirIn(slot: Slot, packsDir: string): Promise<void> {
    return new Promise<void>((resolve) => {
      const onMessage = (msg: { forgotPackDir?: true }) => {
        if (!msg.forgotPackDir) return;
        done();
      };
      const done = () => {
        slot.worker.unref();
        slot.worker.off('message', onMessage);
        slot.worker.off('error', done);
        slot.worker.off('exit', done);
        resolve();
      };
      slot.worker.on('message', onMessage);
      slot.worker.once('error', done);
      slot.worker.once('exit', done);
      slot.worker.ref(); // an idle worker is unref'd: the reply must keep the process alive
      slot.worker.postMessage({ forgetPackDir: packsDir });
    });
  }

  private inline<T>(run: () => T): Promise<T> {
    this.jobCounts.inline++;
    return Promise.resolve().then(run);
  }

  /**
   * Stops the workers. `packsDir`: the closing store's packs, whose cached descriptors every thread
   * closes first (a worker's descriptors are the process's: terminating it does not close them).
   */
  async close(packsDir?: string): Promise<void> {
    this.started = true; // a late start() (a session applying while the store closes) starts nothing
    if (packsDir !== undefined) {
      forgetPackDir(packsDir);
      await Promise.all(this.slots.map((s) => this.forgetPackDirIn(s, packsDir)));
    }
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
    this.slots.length = 0;
    this.shelf.length = 0;
  }
}

function ownBuffer(a: Uint8Array): ArrayBuffer[] {
  return a.buffer instanceof ArrayBuffer && a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? [a.buffer] : [];
}

/**
 * Default workers: one per core but the caller's, which runs jobs itself when the workers are busy.
 * On the 2-core project machine one worker plus the main thread ingested a first snapshot as fast
 * as two workers, with less CPU: a worker costs ~90 ms of CPU to start, and three busy threads on
 * two cores starve the main thread's in-order apply (docs/DESIGN.md).
 */
export function defaultPoolSize(): number {
  const env = process.env.VNSTORE_WORKERS;
  if (env !== undefined && /^\d+$/.test(env)) return Number(env);
  return Math.max(1, Math.min(os.availableParallelism() - 1, 8));
}

/** Read buffers kept for thread-pool jobs: enough for the blocks in flight. */
const SHELF_BUFFERS = 8;

/** Jobs a worker may hold before the caller runs the next one itself (one running, one queued). */
const WORKER_QUEUE = 2;
