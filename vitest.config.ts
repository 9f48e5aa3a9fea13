import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';
import LongestFirstSequencer from './test/sequencer.js';
import { UNISOLATED_FILES } from './test/unisolated-files.js';

export default defineConfig({
  test: {
    // Rebuilds a stale dist/ or native build, and in CI refuses to run without the addons.
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // One worker per core. Vitest's default is one less (a single worker on the 2-core CI machine),
    // but most test files spend their time waiting on the CLI processes they spawn.
    maxWorkers: availableParallelism(),
    // Longest files first (test/durations.json), so that no long file runs alone at the end.
    sequence: { sequencer: LongestFirstSequencer },
    // Short files that leave no state behind share worker processes (test/unisolated-files.ts):
    // a process per file costs more than most of them take. Every other file gets its own.
    projects: [
      { extends: true, test: { name: 'isolated', include: ['test/**/*.test.ts'], exclude: UNISOLATED_FILES } },
      { extends: true, test: { name: 'unisolated', include: UNISOLATED_FILES, isolate: false } },
    ],
  },
});
