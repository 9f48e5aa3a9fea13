// Runs vitest and ends with one plain summary line ("vitest: N passed, N failed") for CI logs.
// Redirected output (a log file, a pipe) gets no colour codes; a terminal keeps them.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const reporter = path.join(path.dirname(fileURLToPath(import.meta.url)), 'count-reporter.mjs');
// The counts go to a private temp file the silent reporter writes, not into the checkout.
const tmp = mkdtempSync(path.join(os.tmpdir(), 'vnstore-vitest-'));
const counts = path.join(tmp, 'counts.json');
const env = { ...process.env, VNSTORE_TEST_COUNTS: counts };
// vitest colours its output even when it is redirected; NO_COLOR stops that (FORCE_COLOR still wins).
if (!process.stdout.isTTY && env.FORCE_COLOR === undefined) env.NO_COLOR = '1';
const args = ['vitest', 'run', '--reporter=default', `--reporter=${reporter}`, ...process.argv.slice(2)];
const r = spawnSync('npx', args, { stdio: 'inherit', env });
let summary = 'vitest: no test counts (the run ended early)';
try {
  const c = JSON.parse(readFileSync(counts, 'utf8'));
  summary = `vitest: ${c.passed} passed, ${c.failed} failed${c.skipped ? `, ${c.skipped} skipped` : ''}`;
} catch {
  // keep the fallback line
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
console.log(summary);
process.exit(r.status ?? 1);
