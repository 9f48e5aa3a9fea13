/** The compact planner (pure): which packs are cold, compactable, within --max-repack, in which steps. */
import { describe, expect, it } from 'vitest';
import { planCompact, type CompactPackFacts } from '../src/maintenance/compact-plan.js';

const NOW = Date.parse('2026-12-05T03:00:00Z');
const pack = (id: number, minutesOld: number, live: number, lz4: number): CompactPackFacts => ({
  id,
  bytes: live * 1000 + 48,
  sealedAtMs: NOW - minutesOld * 60_000,
  liveChunks: live,
  liveBytes: live * 1000,
  lz4LiveChunks: lz4,
  lz4LiveBytes: lz4 * 1000,
});

describe('planCompact', () => {
  it('picks cold packs that are mostly LZ4, in id order, in steps of the target size, within --max-repack', () => {
    const packs = [
      pack(5, 60, 100, 90),
      pack(1, 60, 100, 100),
      pack(2, 5, 100, 100),
      pack(3, 60, 100, 10),
      pack(4, 60, 0, 0),
      pack(6, 60, 100, 80),
    ];
    const plan = planCompact(packs, { now: NOW, minAgeMs: 15 * 60_000, targetBytes: 150_000 });
    expect(plan.packs.map((p) => [p.id, p.action])).toEqual([
      [1, 'compact'],
      [2, 'skip'],
      [3, 'skip'],
      [4, 'skip'],
      [5, 'compact'],
      [6, 'compact'],
    ]);
    expect(plan.packs.find((p) => p.id === 2)!.reason).toMatch(/recent/);
    expect(plan.packs.find((p) => p.id === 3)!.reason).toMatch(/already compact/);
    expect(plan.packs.find((p) => p.id === 4)!.reason).toMatch(/no live chunk/);
    expect(plan.steps).toEqual([[1, 5], [6]]);
    expect(plan.totals).toMatchObject({ packs: 6, packsChosen: 3, liveChunks: 300, liveBytes: 300_000 });
    const bounded = planCompact(packs, { now: NOW, minAgeMs: 0, maxRepackBytes: 250_000, targetBytes: 1e9 });
    expect(bounded.steps).toEqual([[1, 2]]);
    expect(bounded.packs.filter((p) => p.reason.includes('--max-repack')).map((p) => p.id)).toEqual([5, 6]);
    expect(() => planCompact([], { now: NOW, minAgeMs: -1, targetBytes: 1 })).toThrow(/minimum age/);
  });
});
