/**
 * scripts/run-vitest.mjs (what `npm test` runs last) into a pipe, as CI logs get it: no colour codes,
 * no claim of a report file, the exact counts in its last line, and nothing left in the checkout.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/engine.js';

describe('scripts/run-vitest.mjs', () => {
  it('writes plain text into a pipe and ends with the exact counts', () => {
    const before = readdirSync(REPO_ROOT).sort();
    const env = { ...process.env };
    delete env.FORCE_COLOR;
    delete env.NO_COLOR;
    const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'scripts/run-vitest.mjs'), 'test/ids.test.ts'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      env,
    });
    expect(r.status, r.stderr).toBe(0);
    const out = r.stdout + r.stderr;
    expect(out).not.toContain('\x1b[');
    expect(out).not.toMatch(/report written/i);
    expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('vitest: 5 passed, 0 failed');
    expect(readdirSync(REPO_ROOT).sort()).toEqual(before);
  }, 120_000);
});
