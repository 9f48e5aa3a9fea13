// A silent vitest reporter for scripts/run-vitest.mjs: at the end of the run it writes the test
// counts as JSON to the file named by $VNSTORE_TEST_COUNTS (nothing on the terminal).
import { writeFileSync } from 'node:fs';

export default class CountReporter {
  onTestRunEnd(testModules) {
    const counts = { passed: 0, failed: 0, skipped: 0 };
    for (const mod of testModules) {
      for (const test of mod.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') counts.passed++;
        else if (state === 'failed') counts.failed++;
        else counts.skipped++;
      }
    }
    if (process.env.VNSTORE_TEST_COUNTS) writeFileSync(process.env.VNSTORE_TEST_COUNTS, JSON.stringify(counts));
  }
}
