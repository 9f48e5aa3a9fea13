// Runs vitest and ends with one plain summary line ("vitest: N passed, N failed") for CI logs.
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';

const report = '.vitest-report.json';
rmSync(report, { force: true });
const args = ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile=${report}`, ...process.argv.slice(2)];
const r = spawnSync('npx', args, { stdio: 'inherit' });
let summary = 'vitest: no report written';
try {
  const j = JSON.parse(readFileSync(report, 'utf8'));
  summary = `vitest: ${j.numPassedTests} passed, ${j.numFailedTests} failed`;
  rmSync(report, { force: true });
} catch {
  // keep the fallback line
}
console.log(summary);
process.exit(r.status ?? 1);
