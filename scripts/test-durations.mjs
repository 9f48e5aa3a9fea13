// Writes test/durations.json (how long each test file took) from a vitest JSON report, for the
// longest-first order of test/sequencer.ts. Measure on the 2-core machine, as CI runs:
//   CI=true npx vitest run --reporter=json --outputFile=/tmp/report.json
//   node scripts/test-durations.mjs /tmp/report.json
// Only the order of the files depends on these figures, never a result.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const [reportFile, note] = process.argv.slice(2);
if (!reportFile) {
  console.error('usage: node scripts/test-durations.mjs VITEST-JSON-REPORT ["how it was measured"]');
  process.exit(2);
}
const report = JSON.parse(readFileSync(reportFile, 'utf8'));
const seconds = {};
for (const r of report.testResults ?? []) {
  const rel = path.relative(root, r.name).split(path.sep).join('/');
  seconds[rel] = Math.round((r.endTime - r.startTime) / 100) / 10;
}
const sorted = Object.fromEntries(Object.entries(seconds).sort(([a, x], [b, y]) => y - x || (a < b ? -1 : 1)));
const out = {
  about: 'Seconds each test file took; test/sequencer.ts starts the longest first. Regenerate: scripts/test-durations.mjs.',
  measured: note ?? `${new Date().toISOString().slice(0, 10)}, CI=true, ${report.numTotalTests} tests`,
  seconds: sorted,
};
writeFileSync(path.join(root, 'test', 'durations.json'), JSON.stringify(out, null, 2) + '\n');
console.log(`test/durations.json: ${Object.keys(sorted).length} files`);
