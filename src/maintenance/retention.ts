/**
 * Calendar retention (`forget --keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly N`),
 * restic's rule: walking a VM's snapshots newest first, the first one met in a period is the latest of
 * that period and is kept, until N periods have one kept. Periods with no snapshot do not count.
 * Periods are UTC calendar periods (weeks start on Monday), like the snapshot times. Pure: what is
 * kept depends only on the snapshots' times.
 */
export const CALENDAR_UNITS = ['hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
export type CalendarUnit = (typeof CALENDAR_UNITS)[number];
export type CalendarRules = Partial<Record<CalendarUnit, number>>;

const DAY_MS = 86_400_000;

/** The period holding time `ms`, as a label that is equal exactly for times in the same period. */
export function periodOf(unit: CalendarUnit, ms: number): string {
  const iso = new Date(ms).toISOString();
  switch (unit) {
    case 'hourly':
      return `${iso.slice(0, 13)}h`;
    case 'daily':
      return iso.slice(0, 10);
    case 'weekly': {
      // 1970-01-01 was a Thursday: Monday-based weeks are whole days + 3 over 7.
      const monday = (Math.floor((Math.floor(ms / DAY_MS) + 3) / 7) * 7 - 3) * DAY_MS;
      return `week of ${new Date(monday).toISOString().slice(0, 10)}`;
    }
    case 'monthly':
      return iso.slice(0, 7);
    case 'yearly':
      return iso.slice(0, 4);
  }
}

export function hasCalendarRules(rules: CalendarRules | undefined): boolean {
  return rules !== undefined && CALENDAR_UNITS.some((u) => rules[u] !== undefined);
}

export function calendarRulesText(rules: CalendarRules | undefined): string[] {
  return CALENDAR_UNITS.filter((u) => rules?.[u] !== undefined).map((u) => `keep-${u} ${rules![u]}`);
}

/**
 * For one VM's snapshots: the reasons the calendar rules keep each (ids absent from the map are not
 * kept by them). Snapshots whose time does not parse are never kept by a calendar rule.
 */
export function calendarKeeps(snaps: readonly { id: string; time: string }[], rules: CalendarRules): Map<string, string[]> {
  const dated = snaps.map((s) => ({ id: s.id, ms: Date.parse(s.time) })).filter((s) => Number.isFinite(s.ms));
  dated.sort((a, b) => b.ms - a.ms || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0)); // newest first
  const out = new Map<string, string[]>();
  for (const unit of CALENDAR_UNITS) {
    const n = rules[unit];
    if (n === undefined) continue;
    let last: string | undefined;
    let kept = 0;
    for (const s of dated) {
      if (kept >= n) break;
      const p = periodOf(unit, s.ms);
      if (p === last) continue;
      last = p;
      kept++;
      let reasons = out.get(s.id);
      if (!reasons) out.set(s.id, (reasons = []));
      reasons.push(`keep-${unit} ${n}: latest of ${p}`);
    }
  }
  return out;
}
