/** Worker thread entry: runs page jobs and hands big buffers back by transfer, not copy. */
import { parentPort } from 'node:worker_threads';
import { slabTransfer } from './slab-pool.js';
import {
  forgetPackDir,
  forgetPacks,
  runDecodeJob,
  runHashJob,
  runRestoreJob,
  type DecodeJob,
  type HashJob,
  type RestoreJob,
} from './page-jobs.js';

parentPort?.on(
  'message',
  (
    msg:
      | { id: number; job: HashJob | DecodeJob | RestoreJob }
      | { forgetPacks: { packsDir: string; ids: number[] } }
      | { forgetPackDir: string },
  ) => {
    if ('forgetPacks' in msg) {
      forgetPacks(msg.forgetPacks.packsDir, msg.forgetPacks.ids); // no reply: later jobs run after it
      return;
    }
    if ('forgetPackDir' in msg) {
      forgetPackDir(msg.forgetPackDir); // the pool is closing: it terminates this worker on the reply
      parentPort!.postMessage({ forgotPackDir: true });
      return;
    }
    try {
      if (msg.job.kind === 'hash') {
        const r = runHashJob(msg.job);
        // The lent payload slab goes back whole, whatever part of it the payload view covers.
        parentPort!.postMessage(
          { id: msg.id, result: r },
          transferables([r.maybeRaw, r.digests, r.status, r.payload], [...slabTransfer(r.slab), ...slabTransfer(r.pages)]),
        );
      } else if (msg.job.kind === 'restore') {
        const r = runRestoreJob(msg.job);
        parentPort!.postMessage({ id: msg.id, result: r }, transferables([r.out], slabTransfer(msg.job.window)));
      } else {
        const r = runDecodeJob(msg.job);
        parentPort!.postMessage({ id: msg.id, result: r }, transferables([r.out]));
      }
    } catch (err) {
      parentPort!.postMessage({ id: msg.id, error: err instanceof Error ? err.message : String(err) });
    }
  },
);

function transferables(arrays: Uint8Array[], lent: ArrayBuffer[] = []): ArrayBuffer[] {
  const out: ArrayBuffer[] = [...lent];
  for (const a of arrays) {
    // Only whole, unshared buffers can move; pooled or shared ones are copied by structured clone.
    if (a.buffer instanceof ArrayBuffer && a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && !out.includes(a.buffer)) {
      out.push(a.buffer);
    }
  }
  return out;
}

// Loaded and listening: until the pool hears this, it runs jobs on the calling thread rather than
// queue them behind ~100 ms of worker start-up (docs/DESIGN.md).
parentPort?.postMessage({ ready: true });
