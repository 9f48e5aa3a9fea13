/**
 * Calendar retention (src/maintenance/retention.ts, forget --keep-hourly/daily/weekly/monthly/yearly):
 * restic's rule, checked against a model written independently (weeks from the weekday, not from the
 * epoch), plus the properties that follow from it, and groups kept or forgotten whole.
 */
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideForget } from '../src/maintenance/forget.js';
import { CALENDAR_UNITS, calendarKeeps, periodOf, type CalendarUnit } from '../src/maintenance/retention.js';
import { putImage } from './helpers/cli.js';
import { PAGE, makeTempDir, randomPage, removeDir, runCli } from './helpers/engine.js';
import { catalogRecord } from './helpers/maintenance.js';

const DAY = 86_400_000;
const START = Date.parse('2025-12-20T00:00:00Z');

/** The period of a time, computed another way than the code under test. */
function modelPeriod(unit: CalendarUnit, ms: number): string {
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, '0');
  const day = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  if (unit === 'hourly') return `${day} ${pad(d.getUTCHours())}`;
  if (unit === 'daily') return day;
  if (unit === 'monthly') return day.slice(0, 7);
  if (unit === 'yearly') return day.slice(0, 4);
  const monday = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - ((d.getUTCDay() + 6) % 7)));
  return monday.toISOString().slice(0, 10);
}

/** Model: the latest snapshot of each of the N most recent periods that have one. */
function modelKeeps(snaps: { id: string; ms: number }[], unit: CalendarUnit, n: number): Set<string> {
  const latest = new Map<string, { id: string; ms: number }>();
  for (const s of snaps) {
    const p = modelPeriod(unit, s.ms);
    const cur = latest.get(p);
    if (!cur || s.ms > cur.ms || (s.ms === cur.ms && s.id > cur.id)) latest.set(p, s);
  }
  return new Set(
    [...latest.values()]
      .sort((a, b) => b.ms - a.ms || (a.id < b.id ? 1 : -1))
      .slice(0, n)
      .map((s) => s.id),
  );
}

const SPAN: Record<CalendarUnit, number> = { hourly: 3 * DAY, daily: 40 * DAY, weekly: 200 * DAY, monthly: 900 * DAY, yearly: 4000 * DAY };

const snapshotsArb = (unit: CalendarUnit) =>
  fc
    .uniqueArray(fc.integer({ min: 0, max: SPAN[unit] }), { minLength: 0, maxLength: 40 })
    .map((offsets) =>
      offsets.map((o, i) => ({ id: (1000 + i).toString(16).padStart(16, '0'), ms: START + o, time: new Date(START + o).toISOString() })),
    );

describe('calendar retention (pure)', () => {
  for (const unit of CALENDAR_UNITS) {
    it(`--keep-${unit} N keeps the latest snapshot of each of the N most recent ${unit} periods that have one`, () => {
      fc.assert(
        fc.property(snapshotsArb(unit), fc.integer({ min: 1, max: 12 }), (snaps, n) => {
          const kept = calendarKeeps(snaps, { [unit]: n });
          expect(new Set(kept.keys())).toEqual(modelKeeps(snaps, unit, n));
          const periods = new Set(snaps.map((s) => modelPeriod(unit, s.ms)));
          expect(kept.size).toBe(Math.min(n, periods.size));
          // More periods never forget more.
          for (const id of kept.keys()) expect(calendarKeeps(snaps, { [unit]: n + 1 }).has(id)).toBe(true);
          for (const [id, reasons] of kept) {
            const s = snaps.find((x) => x.id === id)!;
            expect(reasons).toEqual([`keep-${unit} ${n}: latest of ${periodOf(unit, s.ms)}`]);
          }
        }),
        { numRuns: 200 },
      );
    });
  }

  it('exact cases: a week is Monday to Sunday (UTC); empty days do not count', () => {
    const at = (iso: string, id: string) => ({ id, time: iso });
    const snaps = [
      at('2026-11-29T23:59:59Z', 'a'), // Sunday
      at('2026-11-30T00:00:00Z', 'b'), // Monday: a new week
      at('2026-11-30T10:00:00Z', 'c'),
      at('2026-12-03T08:00:00Z', 'd'), // Thursday, same week
      at('2026-12-03T09:00:00Z', 'e'),
    ];
    expect([...calendarKeeps(snaps, { weekly: 5 }).keys()].sort()).toEqual(['a', 'e']);
    expect([...calendarKeeps(snaps, { daily: 2 }).keys()].sort()).toEqual(['c', 'e']); // 12-01, 12-02 have none
    expect([...calendarKeeps(snaps, { hourly: 2 }).keys()].sort()).toEqual(['d', 'e']);
    expect(periodOf('weekly', Date.parse('2026-12-06T23:59:59Z'))).toBe('week of 2026-11-30');
    expect(periodOf('weekly', Date.parse('2026-12-07T00:00:00Z'))).toBe('week of 2026-12-07');
  });

  it('in forget: rules combine as a union, and groups are kept or forgotten whole', () => {
    const rec = (i: number, vm: string, ms: number, group?: string) => catalogRecord(1000 + i, vm, ms, group);
    const catalogArb = fc
      .uniqueArray(fc.integer({ min: 0, max: 30 * DAY }), { minLength: 1, maxLength: 30 })
      .chain((ts) =>
        fc.tuple(
          fc.constant(ts.sort((a, b) => a - b)),
          fc.array(fc.constantFrom('a', 'b', 'c'), { minLength: ts.length, maxLength: ts.length }),
          fc.array(fc.option(fc.constantFrom('g1', 'g2', 'g3')), { minLength: ts.length, maxLength: ts.length }),
        ),
      );
    fc.assert(
      fc.property(
        catalogArb,
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 3 }),
        fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
        ([ts, vms, groups], daily, weekly, keepLast) => {
          const records = ts.map((t, i) => rec(i, vms[i], START + t, groups[i] ?? undefined));
          const ds = decideForget(records, { calendar: { daily, weekly }, keepLast, nowMs: START + 31 * DAY });
          const byId = new Map(ds.map((d) => [d.id, d]));
          // Whatever a rule keeps on its own is kept.
          for (const vm of ['a', 'b', 'c']) {
            const mine = records.filter((r) => r.vm === vm);
            for (const id of calendarKeeps(mine, { daily, weekly }).keys()) expect(byId.get(id)!.forget).toBe(false);
          }
          // Groups go whole.
          for (const g of ['g1', 'g2', 'g3']) {
            const members = ds.filter((d) => d.group === g);
            expect(new Set(members.map((d) => d.forget)).size).toBeLessThanOrEqual(1);
          }
          // Nothing is forgotten without a reason, nor kept without one.
          for (const d of ds) expect(d.reasons.length).toBeGreaterThan(0);
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('forget --keep-daily through the CLI', () => {
  let root: string;
  let store: string;
  const ids: string[] = [];
  beforeAll(async () => {
    root = makeTempDir('retention');
    store = path.join(root, 'store');
    expect((await runCli(['init', '--store', store])).code).toBe(0);
    // a: three snapshots (the last in group e2 with b's); b: one. All today (UTC).
    for (const [vm, seed, group] of [
      ['a', 1, 'e1'],
      ['a', 2, ''],
      ['a', 3, 'e2'],
      ['b', 4, 'e2'],
    ] as const) {
      const r = await putImage(root, store, vm, Buffer.concat([randomPage(seed), Buffer.alloc(PAGE)]), group ? ['--group', group] : []);
      expect(r.code, r.stderr).toBe(0);
      ids.push(r.stdout.toString().trim());
    }
  }, 60_000);
  afterAll(() => removeDir(root));

  it('keeps the latest of today for each VM (dry run, then for real); bad values exit 2', async () => {
    const dry = await runCli(['forget', '--store', store, '--keep-daily', '1', '--dry-run', '--json']);
    expect(dry.code, dry.stderr).toBe(0);
    const day = new Date().toISOString().slice(0, 10);
    const report = JSON.parse(dry.stdout.toString()) as { forgotten: { id: string }[]; kept: { id: string; reasons: string[] }[] };
    expect(report.forgotten.map((d) => d.id)).toEqual([ids[0], ids[1]]);
    expect(report.kept.map((d) => [d.id, d.reasons])).toEqual([
      [ids[2], [`keep-daily 1: latest of ${day}`]],
      [ids[3], [`keep-daily 1: latest of ${day}`]],
    ]);
    const real = await runCli(['forget', '--store', store, '--keep-daily', '1', '--keep-weekly', '3']);
    expect(real.code, real.stderr).toBe(0);
    const ls = JSON.parse((await runCli(['ls', '--store', store, '--json'])).stdout.toString()) as { id: string }[];
    expect(ls.map((r) => r.id)).toEqual([ids[2], ids[3]]);
    for (const bad of ['0', 'x', '-1']) {
      const r = await runCli(['forget', '--store', store, `--keep-monthly=${bad}`]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('--keep-monthly');
    }
  });
});
