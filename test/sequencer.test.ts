/**
 * The test run's order (test/sequencer.ts) and its inputs: longest files first, unknown (new) files
 * before them, and every test file of the suite in test/durations.json's format.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { longestFirst, readDurationTable, runOrder } from './sequencer.js';
import { REPO_ROOT, makeTempDir, removeDir } from './helpers/engine.js';

describe('longest-first test order', () => {
  it('orders by duration, longest first, unknown durations before all, ties by name', () => {
    const d: Record<string, number | undefined> = { a: 5, b: 120, c: undefined, d: 5, e: 0.3, f: undefined };
    const order = longestFirst(
      Object.keys(d),
      (f) => f,
      (f) => d[f],
    );
    expect(order).toEqual(['c', 'f', 'b', 'a', 'd', 'e']);
  });

  it('runs the files that share worker processes after all others, each part longest first', () => {
    const d: Record<string, number | undefined> = { a: 5, b: 120, c: undefined, s1: 0.5, s2: 3, s3: undefined, e: 0.3 };
    const shared = (f: string) => f.startsWith('s');
    const order = runOrder(
      Object.keys(d),
      (f) => f,
      (f) => d[f],
      shared,
    );
    expect(order).toEqual(['c', 'b', 'a', 'e', 's3', 's2', 's1']);
  });

  it('reads a duration table, and an absent or garbled one as empty', () => {
    const dir = makeTempDir('durations');
    try {
      const file = path.join(dir, 'durations.json');
      expect(readDurationTable(file)).toEqual({ seconds: {} });
      writeFileSync(file, '{ not json');
      expect(readDurationTable(file)).toEqual({ seconds: {} });
      writeFileSync(file, JSON.stringify({ seconds: { 'test/x.test.ts': 12.5 } }));
      expect(readDurationTable(file)).toEqual({ seconds: { 'test/x.test.ts': 12.5 } });
    } finally {
      removeDir(dir);
    }
  });

  it('test/durations.json holds a figure (seconds, >= 0) per file, under the names the sequencer looks up', () => {
    const table = readDurationTable(path.join(REPO_ROOT, 'test', 'durations.json')).seconds;
    const names = Object.keys(table);
    expect(names.length).toBeGreaterThan(50);
    const files = new Set(readdirSync(path.join(REPO_ROOT, 'test')).map((f) => `test/${f}`));
    // Files added since it was measured run first (unknown); names it has must be real test files.
    for (const name of names) {
      expect(files.has(name), name).toBe(true);
      expect(table[name], name).toBeGreaterThanOrEqual(0);
    }
  });
});

describe('scripts/static-checks.mjs', () => {
  it('fails, with one line naming the check, when a check fails', () => {
    const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'scripts/static-checks.mjs'), 'no-such-script'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
    });
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/^no-such-script: FAILED \(exit \d+\) in [\d.]+ s$/m);
  });
});
