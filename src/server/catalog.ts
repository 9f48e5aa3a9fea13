/**
 * Catalog calls (CALL) and the streaming restore (RESTORE) a server answers: thin over the Store
 * and the maintenance API, so `--server` commands print what the local ones print.
 */
import { DIGEST_BYTES, PAGE_SIZE, PageKind } from '../format/pages.js';
import { DATA_DIGEST_PREFIX_BYTES, MAX_DATA_PAGES } from '../protocol/limits.js';
import { ProtocolError } from '../protocol/errors.js';
import type { Store } from '../store/store.js';
import type { SnapshotRecord } from '../store/db.js';
import { restoreSnapshot } from '../store/restore.js';
import { STREAM_WINDOW_PAGES } from '../store/job-sizes.js';
import { storeStats } from '../maintenance/stats.js';
import { runGc } from '../maintenance/gc.js';
import { runCompact } from '../maintenance/compact.js';
import type { MaxUnused } from '../maintenance/gc-plan.js';
import { checkStore } from '../maintenance/check.js';
import { forget } from '../maintenance/forget.js';
import { CALENDAR_UNITS, type CalendarRules, type CalendarUnit } from '../maintenance/retention.js';
import { VnstoreError } from '../util/errors.js';

export type CallHandler = (store: Store, args: Record<string, unknown>) => Promise<unknown>;

function optString(args: Record<string, unknown>, key: string): string | undefined {
  const v = args[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new VnstoreError('E_USAGE', `argument ${key} must be a string`);
  return v;
}

function needString(args: Record<string, unknown>, key: string): string {
  const v = optString(args, key);
  if (v === undefined) throw new VnstoreError('E_USAGE', `argument ${key} is required`);
  return v;
}

function optBool(args: Record<string, unknown>, key: string): boolean | undefined {
  const v = args[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw new VnstoreError('E_USAGE', `argument ${key} must be true or false`);
  return v;
}

function optNumber(args: Record<string, unknown>, key: string): number | undefined {
  const v = args[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new VnstoreError('E_USAGE', `argument ${key} must be a number`);
  return v;
}

function optStrings(args: Record<string, unknown>, key: string): string[] | undefined {
  const v = args[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string'))
    throw new VnstoreError('E_USAGE', `argument ${key} must be a list of strings`);
  return v as string[];
}

/** gc's maxUnused ({percent} | {bytes} | {unlimited: true}): runGc checks the values. */
function optMaxUnused(args: Record<string, unknown>): MaxUnused | undefined {
  const v = args.maxUnused;
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new VnstoreError('E_USAGE', 'argument maxUnused must be an object');
  return v as MaxUnused;
}

/** forget's calendar rules ({daily: 7, ...}): whole numbers per known unit, nothing else. */
function optCalendar(args: Record<string, unknown>): CalendarRules | undefined {
  const v = args.calendar;
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new VnstoreError('E_USAGE', 'argument calendar must be an object');
  const rules = v as Record<string, unknown>;
  const out: CalendarRules = {};
  for (const unit of Object.keys(rules)) {
    if (!(CALENDAR_UNITS as readonly string[]).includes(unit))
      throw new VnstoreError('E_USAGE', `argument calendar: unknown unit ${JSON.stringify(unit)}`);
    out[unit as CalendarUnit] = optNumber(rules, unit);
  }
  return out;
}

/**
 * Catalog and maintenance calls. gc, compact, check and forget run inside the server beside ingesting sessions
 * (the store's own fences make that safe); check's index repair is not offered: it needs the store
 * to itself.
 */
export const CALLS: Record<string, CallHandler> = {
  list: (store, args) => store.listSnapshots(optString(args, 'vm')),
  resolve: (store, args) => store.resolveSnapshot(needString(args, 'id')),
  stats: (store, args) =>
    storeStats(store, {
      vm: optString(args, 'vm'),
      snapshot: optString(args, 'snapshot'),
      detail: optBool(args, 'detail'),
      exact: optBool(args, 'exact'),
    }),
  gc: (store, args) =>
    runGc(store, {
      dryRun: optBool(args, 'dryRun'),
      maxUnused: optMaxUnused(args),
      maxRepackBytes: optNumber(args, 'maxRepackBytes'),
      repackSmall: optBool(args, 'repackSmall'),
    }),
  compact: (store, args) =>
    runCompact(store, {
      level: optNumber(args, 'level'),
      minAgeMs: optNumber(args, 'minAgeMs'),
      maxRepackBytes: optNumber(args, 'maxRepackBytes'),
      dryRun: optBool(args, 'dryRun'),
    }),
  check: (store, args) =>
    checkStore(store, { readData: optBool(args, 'readData'), readDataSubsetPct: optNumber(args, 'readDataSubsetPct') }),
  forget: (store, args) =>
    forget(store, {
      ids: optStrings(args, 'ids') ?? [],
      groups: optStrings(args, 'groups'),
      keepLast: optNumber(args, 'keepLast'),
      keepWithinMs: optNumber(args, 'keepWithinMs'),
      calendar: optCalendar(args),
      vm: optString(args, 'vm'),
      dryRun: optBool(args, 'dryRun'),
    }),
};

export async function runCall(store: Store, method: string, argsJson: string): Promise<string> {
  const handler = Object.hasOwn(CALLS, method) ? CALLS[method] : undefined;
  if (!handler) throw new VnstoreError('E_USAGE', `unknown call ${JSON.stringify(method)} (known: ${Object.keys(CALLS).join(', ')})`);
  let args: unknown;
  try {
    args = JSON.parse(argsJson === '' ? '{}' : argsJson);
  } catch {
    throw new ProtocolError('E_MALFORMED', `arguments of ${method} are not JSON`);
  }
  if (typeof args !== 'object' || args === null || Array.isArray(args))
    throw new ProtocolError('E_MALFORMED', `arguments of ${method} must be a JSON object`);
  return JSON.stringify(await handler(store, args as Record<string, unknown>));
}

/** One batch of a restore stream: a DATA frame's fields, or a SPARSE_DATA frame's (protocol version 2). */
export type DataBatch =
  | { t: 'data'; firstPage: number; digests: Uint8Array; data: Uint8Array }
  | { t: 'sparse-data'; firstPage: number; zero: Uint8Array; prefixes: Uint8Array; runs: Uint8Array[] };

/** Where a restore's frames go. */
export interface DataSink {
  /**
   * Sends one batch; resolves once its bytes are no longer needed (written out, or the connection
   * gone), which is also the backpressure: a slow reader holds the next batch back.
   */
  send(batch: DataBatch): Promise<void>;
}

/**
 * Streams snapshot `record` as batches of up to MAX_DATA_PAGES pages. Each batch is sent from the
 * window restore lends (whole pages from a page boundary, 256 pages on this build): no copy into a
 * batch buffer of its own, which took a sixth of a warm server's main thread during a restore
 * (bench/RESULTS.md, issue 12). The window is lent until its frames are written, and restore
 * decodes the next windows meanwhile.
 *
 * `sparse` (a version-2 client): SPARSE_DATA batches, which leave zero pages' bytes out and carry
 * each data page's digest prefix; the client hashes every page and checks the image digest, so on
 * format 3 the server does not hash at all (RestoreSink.readerVerifies). Otherwise DATA batches
 * with every page's bytes and whole digest (32 zero bytes for a zero page), verified here first.
 */
export async function streamRestore(store: Store, record: SnapshotRecord, out: DataSink, sparse = false): Promise<void> {
  const batchBytes = MAX_DATA_PAGES * PAGE_SIZE;
  let firstPage = 0;
  // `digests`: the pages' digests (zero for a zero page), whole or (unverified) the TOC's prefix.
  const send = (data: Uint8Array, digests: Uint8Array, kinds: Uint8Array): Promise<void> => {
    const n = Math.ceil(data.length / PAGE_SIZE);
    const sent = out.send(
      sparse
        ? sparseBatch(firstPage, data, digests, kinds.subarray(0, n))
        : { t: 'data', firstPage, digests: digests.subarray(0, n * DIGEST_BYTES), data },
    );
    firstPage += n;
    return sent;
  };
  await restoreSnapshot(store, record, {
    readerVerifies: sparse,
    windowPages: STREAM_WINDOW_PAGES,
    // Every window but the image's last is whole pages, so each batch starts at a page boundary.
    write: async (chunk, digests, kinds) => {
      const sends: Promise<void>[] = [];
      for (let pos = 0; pos < chunk.length; pos += batchBytes) {
        const page = pos / PAGE_SIZE;
        sends.push(
          send(chunk.subarray(pos, Math.min(chunk.length, pos + batchBytes)), digests.subarray(page * DIGEST_BYTES), kinds.subarray(page)),
        );
      }
      await Promise.all(sends);
    },
  });
}

/** A SPARSE_DATA batch of `data`'s pages: the runs of data pages as views, zero pages named only. */
function sparseBatch(firstPage: number, data: Uint8Array, digests: Uint8Array, kinds: Uint8Array): DataBatch {
  const n = kinds.length;
  const zero = new Uint8Array(n);
  let dataPages = 0;
  for (let k = 0; k < n; k++) {
    if (kinds[k] === PageKind.Digest) dataPages++;
    else zero[k] = 1;
  }
  const prefixes = new Uint8Array(dataPages * DATA_DIGEST_PREFIX_BYTES);
  const runs: Uint8Array[] = [];
  for (let k = 0, j = 0; k < n;) {
    if (zero[k]) {
      k++;
      continue;
    }
    let end = k;
    for (; end < n && !zero[end]; end++, j++) {
      prefixes.set(digests.subarray(end * DIGEST_BYTES, end * DIGEST_BYTES + DATA_DIGEST_PREFIX_BYTES), j * DATA_DIGEST_PREFIX_BYTES);
    }
    runs.push(data.subarray(k * PAGE_SIZE, Math.min(data.length, end * PAGE_SIZE)));
    k = end;
  }
  return { t: 'sparse-data', firstPage, zero, prefixes, runs };
}
