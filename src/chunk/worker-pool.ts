/**
 * A small pool of page workers (default: one per core). Jobs go to the least-loaded worker; a pool
 * of size 0 runs jobs inline on the calling thread (tests, tiny stores, environments without workers).
 */
import os from 'node:os';
import { slabTransfer } from './slab-pool.js';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import {
  runDecodeJob,
  runHashJob,
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

interface Slot {
  worker: Worker;
  inFlight: number;
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

  constructor(size: number = defaultPoolSize()) {
    const script = size > 0 ? workerScript() : undefined;
    if (!script) return;
    for (let i = 0; i < size; i++) {
      const worker = new Worker(script);
      worker.unref();
      const slot: Slot = { worker, inFlight: 0 };
      worker.on('message', (msg: { id: number; result?: unknown; error?: string }) => {
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

  get size(): number {
    return this.slots.length;
  }

  private fail(err: Error): void {
    this.failure = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  private submit<T>(job: HashJob | DecodeJob | RestoreJob, transfer: ArrayBuffer[]): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    let best = this.slots[0];
    for (const s of this.slots) if (s.inFlight < best.inFlight) best = s;
    const id = this.nextId++;
    if (best.inFlight++ === 0) best.worker.ref();
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      best.worker.postMessage({ id, job }, transfer);
    });
  }

  /** Hashes a block; `job.pages` must own its ArrayBuffer (it is transferred and handed back). */
  hash(job: HashJob): Promise<HashResult> {
    if (this.slots.length === 0) return Promise.resolve().then(() => runHashJob(job));
    return this.submit<HashResult>(job, [...ownBuffer(job.pages), ...slabTransfer(job.payloadSlab)]);
  }

  decode(job: DecodeJob): Promise<DecodeResult> {
    if (this.slots.length === 0) return Promise.resolve().then(() => runDecodeJob(job));
    return this.submit<DecodeResult>(job, ownBuffer(job.payload));
  }

  /** Reads, decodes and verifies one restore window (the worker reads the packs itself). */
  restore(job: RestoreJob): Promise<RestoreResult> {
    if (this.slots.length === 0) return Promise.resolve().then(() => runRestoreJob(job));
    return this.submit<RestoreResult>(job, slabTransfer(job.window));
  }

  async close(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
    this.slots.length = 0;
  }
}

function ownBuffer(a: Uint8Array): ArrayBuffer[] {
  return a.buffer instanceof ArrayBuffer && a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? [a.buffer] : [];
}

export function defaultPoolSize(): number {
  const env = process.env.VNSTORE_WORKERS;
  if (env !== undefined && /^\d+$/.test(env)) return Number(env);
  return Math.max(1, Math.min(os.availableParallelism(), 8));
}
