/** Snapshot ids (src/store/ids.ts): time-ordered, differing early, and ordered after the old layout. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SNAPSHOT_ID_RE, ambiguousPrefixError, newSnapshotId, snapshotIdAt } from '../src/store/ids.js';

/** The layout before Unix seconds came first: 12 hex digits of Unix milliseconds, 4 random. */
const oldLayoutId = (ms: number, random16: number) => ms.toString(16).padStart(12, '0') + random16.toString(16).padStart(4, '0');

const MS_2020 = Date.UTC(2020, 0, 1);
const MS_2100 = Date.UTC(2100, 0, 1);

describe('snapshot ids', () => {
  it('sort in time order, and ids a second or more apart differ within 8 digits', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: MS_2020, max: MS_2100 }),
        fc.integer({ min: 1, max: 10 ** 9 }),
        fc.nat(0xfffff),
        fc.nat(0xfffff),
        (t, dt, r1, r2) => {
          const a = snapshotIdAt(t, r1);
          const b = snapshotIdAt(t + dt, r2);
          expect(a).toMatch(SNAPSHOT_ID_RE);
          expect(b).toMatch(SNAPSHOT_ID_RE);
          expect(a < b).toBe(true);
          if (dt >= 1000) expect(a.slice(0, 8)).not.toBe(b.slice(0, 8));
        },
      ),
    );
  });

  it('sort after every id of the old layout made up to 2039 (mixed stores keep their order)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: MS_2020, max: Date.UTC(2039, 0, 1) }),
        fc.integer({ min: MS_2020, max: MS_2100 }),
        fc.nat(0xffff),
        fc.nat(0xfffff),
        (old, now, r1, r2) => {
          expect(oldLayoutId(old, r1) < snapshotIdAt(now, r2)).toBe(true);
        },
      ),
    );
  });

  it('strictly increase within a process, also when the clock stands still or goes back', () => {
    const t = Date.UTC(2026, 11, 4, 20, 0, 0);
    const ids = [newSnapshotId(t), newSnapshotId(t), newSnapshotId(t - 5000), newSnapshotId(t + 1)];
    for (let i = 1; i < ids.length; i++) expect(ids[i - 1] < ids[i]).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('an exact layout: seconds, milliseconds, random', () => {
    expect(snapshotIdAt(Date.UTC(2026, 11, 4, 20, 0, 0, 123), 0xabcde)).toBe(
      `${(Date.UTC(2026, 11, 4, 20, 0, 0) / 1000).toString(16)}07babcde`,
    );
  });

  it('the ambiguous-prefix error counts the matches', () => {
    const e = ambiguousPrefixError('6b1f', ['6b1f000000000001', '6b1f000000000002', '6b1f000000000003', '6b1f000000000004']);
    expect(e.code).toBe('E_AMBIGUOUS');
    expect(e.message).toBe(
      "snapshot prefix 6b1f is ambiguous: it matches 4 snapshots (6b1f000000000001, 6b1f000000000002, 6b1f000000000003, ...); give more digits ('vnstore ls' shows full ids)",
    );
  });
});
