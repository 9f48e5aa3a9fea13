/**
 * forget: removes snapshots from the catalog (their chunks become garbage for gc).
 *
 * Selection (decideForget, pure): either named snapshots / groups, or a policy: --keep-last N (per VM),
 * --keep-within DURATION and the calendar rules --keep-hourly/daily/weekly/monthly/yearly N (per VM,
 * retention.ts), optionally limited to one VM; a snapshot is kept when any rule keeps it.
 * A group snapshot is kept or forgotten whole: naming one member forgets the group; a policy that
 * keeps one member keeps the group.
 *
 * Execution: one synced batch deletes the commit records ('s'), listings ('v') and group records
 * ('g') and adjusts the counters; in the same batch, a forgotten snapshot whose manifest is the delta
 * base of a kept (or in-flight) snapshot gets a 'k' record, and its manifest file stays. Then the
 * other manifest files are deleted (a crash before that leaves orphans recovery removes).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { KEY_GROUP, KEY_SNAPSHOT, jsonValue, prefixedKey, vmKey, type SnapshotRecord } from '../store/db.js';
import { Store } from '../store/store.js';
import { fsyncDir } from '../util/durable.js';
import { VnstoreError } from '../util/errors.js';
import { addCounterDelta, snapshotDelta, sumDelta } from '../store/counters.js';
import { DigestSet } from './digest-set.js';
import { withMaintenanceLock } from './fence.js';
import { keptBaseKey, listKeptBases, type KeptBaseRecord } from '../store/keys.js';
import { baseChainIds, baseLookup, collectInFlight, listCommitted, manifestFile } from './live.js';
import { CALENDAR_UNITS, calendarKeeps, calendarRulesText, hasCalendarRules, type CalendarRules } from './retention.js';

export interface ForgetSelection {
  /** Explicit snapshot ids (full ids; resolve prefixes first) and group ids. */
  ids?: readonly string[];
  groups?: readonly string[];
  /** Policy: keep the N latest snapshots of each VM. */
  keepLast?: number;
  /** Policy: keep snapshots taken within this many milliseconds before `nowMs`. */
  keepWithinMs?: number;
  /** Policy: keep the latest snapshot of each of the N most recent hours/days/... that have one (per VM). */
  calendar?: CalendarRules;
  /** Policy applies to this VM only. */
  vm?: string;
  nowMs: number;
}

export interface ForgetDecision {
  id: string;
  vm: string;
  group: string | null;
  time: string;
  forget: boolean;
  reasons: string[];
}

function isPolicy(sel: ForgetSelection): boolean {
  return sel.keepLast !== undefined || sel.keepWithinMs !== undefined || hasCalendarRules(sel.calendar);
}

/** Decides, for every committed snapshot, whether it is forgotten and why. Pure. */
export function decideForget(records: readonly SnapshotRecord[], sel: ForgetSelection): ForgetDecision[] {
  const explicit = (sel.ids?.length ?? 0) + (sel.groups?.length ?? 0) > 0;
  if (explicit === isPolicy(sel))
    throw new VnstoreError(
      'E_USAGE',
      'name snapshots (or --group) to forget, or give a policy (--keep-last, --keep-within, --keep-daily, ...), not both',
    );
  if (explicit && sel.vm !== undefined) throw new VnstoreError('E_USAGE', '--vm limits a policy; it does not combine with named snapshots');
  if (sel.keepLast !== undefined && (!Number.isSafeInteger(sel.keepLast) || sel.keepLast < 1)) {
    throw new VnstoreError('E_USAGE', `--keep-last must be a whole number >= 1 (to forget specific snapshots, name them)`);
  }
  if (sel.keepWithinMs !== undefined && !(sel.keepWithinMs > 0))
    throw new VnstoreError('E_USAGE', '--keep-within must be a positive duration');
  for (const unit of CALENDAR_UNITS) {
    const n = sel.calendar?.[unit];
    if (n !== undefined && (!Number.isSafeInteger(n) || n < 1))
      throw new VnstoreError('E_USAGE', `--keep-${unit} must be a whole number >= 1`);
  }
  const sorted = [...records].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const out = new Map<string, ForgetDecision>();
  for (const r of sorted) out.set(r.id, { id: r.id, vm: r.vm, group: r.group ?? null, time: r.time, forget: false, reasons: [] });
  const members = new Map<string, ForgetDecision[]>();
  for (const d of out.values()) {
    if (d.group === null) continue;
    let l = members.get(d.group);
    if (!l) members.set(d.group, (l = []));
    l.push(d);
  }

  if (explicit) {
    for (const id of sel.ids ?? []) {
      const d = out.get(id);
      if (!d) throw new VnstoreError('E_NOT_FOUND', `no snapshot ${id} in this store`);
      d.forget = true;
      d.reasons.push('named');
    }
    for (const g of sel.groups ?? []) {
      const l = members.get(g);
      if (!l) throw new VnstoreError('E_NOT_FOUND', `no group snapshot ${g} in this store`);
      for (const d of l) {
        d.forget = true;
        d.reasons.push(`group ${g} named`);
      }
    }
    // Groups go whole.
    for (const [g, l] of members) {
      const named = l.filter((d) => d.forget);
      if (named.length === 0 || named.length === l.length) continue;
      for (const d of l) {
        if (d.forget) continue;
        d.forget = true;
        d.reasons.push(`group ${g} is forgotten whole (${named.map((n) => n.id).join(', ')} named)`);
      }
    }
    for (const d of out.values()) if (!d.forget) d.reasons.push('not named');
    return [...out.values()];
  }

  // Policy.
  const byVm = new Map<string, ForgetDecision[]>();
  for (const d of out.values()) {
    if (sel.vm !== undefined && d.vm !== sel.vm) {
      d.reasons.push(`other VM (policy limited to ${sel.vm})`);
      continue;
    }
    let l = byVm.get(d.vm);
    if (!l) byVm.set(d.vm, (l = []));
    l.push(d);
  }
  for (const [vm, l] of byVm) {
    const newestFirst = [...l].reverse();
    const calendar = sel.calendar ? calendarKeeps(l, sel.calendar) : undefined;
    newestFirst.forEach((d, i) => {
      if (sel.keepLast !== undefined && i < sel.keepLast) d.reasons.push(`keep-last ${sel.keepLast}: ${ordinal(i + 1)} latest of ${vm}`);
      if (sel.keepWithinMs !== undefined) {
        const t = Date.parse(d.time);
        if (Number.isFinite(t) && t >= sel.nowMs - sel.keepWithinMs) d.reasons.push(`keep-within ${formatDuration(sel.keepWithinMs)}`);
      }
      d.reasons.push(...(calendar?.get(d.id) ?? []));
      if (d.reasons.length === 0) {
        d.forget = true;
        d.reasons.push(policyText(sel));
      }
    });
  }
  // A group is kept when any member is kept (by a rule, or by being outside the policy's VM).
  for (const [g, l] of members) {
    const keeper = l.find((d) => !d.forget);
    if (!keeper) continue;
    for (const d of l) {
      if (!d.forget) continue;
      d.forget = false;
      d.reasons = [`group ${g} is kept whole (member ${keeper.id} is kept)`];
    }
  }
  return [...out.values()];
}

export interface ForgetReport {
  dryRun: boolean;
  forgotten: ForgetDecision[];
  kept: ForgetDecision[];
  groupsForgotten: string[];
  /** Forgotten snapshots whose manifest stays as a delta base of a kept snapshot. */
  manifestsKeptAsBase: string[];
  manifestsRemoved: number;
  logicalBytesForgotten: number;
}

/** Resolves ids/prefixes, decides, and (unless dryRun) forgets. */
export async function forget(
  store: Store,
  request: Omit<ForgetSelection, 'nowMs'> & { nowMs?: number; dryRun?: boolean },
): Promise<ForgetReport> {
  const ids: string[] = [];
  for (const q of request.ids ?? []) ids.push((await store.resolveSnapshot(q)).id);
  return withMaintenanceLock(store, async () => {
    const records = await listCommitted(store);
    const decisions = decideForget(records, { ...request, ids, nowMs: request.nowMs ?? Date.now() });
    const forgotten = decisions.filter((d) => d.forget);
    const byId = new Map(records.map((r) => [r.id, r]));
    const goRecords = forgotten.map((d) => byId.get(d.id)!);
    const goIds = new Set(goRecords.map((r) => r.id));
    const remaining = records.filter((r) => !goIds.has(r.id));
    const groupsForgotten = [...new Set(goRecords.map((r) => r.group).filter((g): g is string => g !== undefined))].filter(
      (g) => !remaining.some((r) => r.group === g),
    );
    // Which forgotten manifests stay: those on the base chain of a kept or in-flight snapshot.
    const kept = await listKeptBases(store.db);
    const inflight = await collectInFlight(store, new DigestSet(16));
    const baseOf = baseLookup(records, kept);
    const needed = baseChainIds(
      remaining.map((r) => r.id),
      baseOf,
    );
    for (const b of inflight.bases) needed.add(b);
    for (const b of baseChainIds(inflight.bases, baseOf)) needed.add(b);
    const keepAsBase = goRecords.filter((r) => needed.has(r.id));
    const report: ForgetReport = {
      dryRun: request.dryRun ?? false,
      forgotten,
      kept: decisions.filter((d) => !d.forget),
      groupsForgotten,
      manifestsKeptAsBase: keepAsBase.map((r) => r.id),
      manifestsRemoved: 0,
      logicalBytesForgotten: goRecords.reduce((s, r) => s + r.byteLength, 0),
    };
    if (request.dryRun || goRecords.length === 0) return report;

    const batch = store.db.batch();
    const forgottenAt = new Date().toISOString();
    for (const r of goRecords) {
      batch.del(prefixedKey(KEY_SNAPSHOT, r.id));
      batch.del(vmKey(r.vm, r.id));
    }
    for (const g of groupsForgotten) batch.del(prefixedKey(KEY_GROUP, g));
    for (const r of keepAsBase) {
      const k: KeptBaseRecord = { id: r.id, vm: r.vm, base: r.base, manifestBytes: r.manifestBytes, time: r.time, forgottenAt };
      batch.put(keptBaseKey(r.id), jsonValue(k));
    }
    addCounterDelta(
      batch,
      sumDelta(snapshotDelta(goRecords, -1), {
        keptBases: keepAsBase.length,
        keptBaseBytes: keepAsBase.reduce((s, r) => s + r.manifestBytes, 0),
      }),
    );
    await batch.write({ sync: true });
    // Sessions that resolved a forgotten snapshot as parent just before the batch (still beginning, or
    // prepared meanwhile) will delta-encode against it: keep those manifests too.
    await store.sessions.beginningSettled();
    const late = await collectInFlight(store, new DigestSet(16), goIds);
    const nowCommitted = await listCommitted(store); // after the in-flight look: a session that committed meanwhile is here
    const lateBaseOf = baseLookup([...records, ...nowCommitted], kept);
    const lateNeeded = new Set([
      ...late.bases,
      ...baseChainIds(late.bases, lateBaseOf),
      ...baseChainIds(
        nowCommitted.map((r) => r.id),
        lateBaseOf,
      ),
    ]);
    const extra = goRecords.filter((r) => lateNeeded.has(r.id) && !needed.has(r.id));
    if (extra.length > 0) {
      const b2 = store.db.batch();
      for (const r of extra)
        b2.put(
          keptBaseKey(r.id),
          jsonValue({
            id: r.id,
            vm: r.vm,
            base: r.base,
            manifestBytes: r.manifestBytes,
            time: r.time,
            forgottenAt,
          } satisfies KeptBaseRecord),
        );
      addCounterDelta(b2, { keptBases: extra.length, keptBaseBytes: extra.reduce((s, r) => s + r.manifestBytes, 0) });
      await b2.write({ sync: true });
      keepAsBase.push(...extra);
      report.manifestsKeptAsBase.push(...extra.map((r) => r.id));
    }
    const keepIds = new Set(keepAsBase.map((r) => r.id));
    for (const r of goRecords) {
      if (keepIds.has(r.id)) continue;
      await fsp.rm(manifestFile(store, r.id), { force: true });
      report.manifestsRemoved++;
    }
    await fsyncDir(path.join(Store.paths(store.dir).manifests));
    return report;
  });
}

// ------------------------------------------------------------------ durations

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000, y: 365 * 86_400_000 };

/** Parses "90s", "15m", "12h", "7d", "2w", "1y" and sums like "1d12h". */
export function parseDuration(text: string): number {
  const t = text.trim();
  if (!/^(\d+[smhdwy])+$/.test(t))
    throw new VnstoreError('E_USAGE', `bad duration ${JSON.stringify(text)}: use a number and a unit (s, m, h, d, w, y), e.g. 7d or 1d12h`);
  let ms = 0;
  for (const m of t.matchAll(/(\d+)([smhdwy])/g)) ms += Number(m[1]) * UNIT_MS[m[2]];
  if (!Number.isSafeInteger(ms) || ms <= 0) throw new VnstoreError('E_USAGE', `bad duration ${JSON.stringify(text)}`);
  return ms;
}

export function formatDuration(ms: number): string {
  let rest = ms;
  let out = '';
  for (const u of ['y', 'w', 'd', 'h', 'm', 's']) {
    const n = Math.floor(rest / UNIT_MS[u]);
    if (n > 0) {
      out += `${n}${u}`;
      rest -= n * UNIT_MS[u];
    }
  }
  return out || `${ms}ms`;
}

function policyText(sel: ForgetSelection): string {
  const parts: string[] = [];
  if (sel.keepLast !== undefined) parts.push(`keep-last ${sel.keepLast}`);
  if (sel.keepWithinMs !== undefined) parts.push(`keep-within ${formatDuration(sel.keepWithinMs)}`);
  parts.push(...calendarRulesText(sel.calendar));
  return `not kept by ${parts.join(' or ')}`;
}

function ordinal(n: number): string {
  const s = n % 100 >= 11 && n % 100 <= 13 ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th');
  return `${n}${s}`;
}
