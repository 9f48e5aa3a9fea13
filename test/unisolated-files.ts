/**
 * The test files that run without per-file isolation (vitest.config.ts, project "unisolated"): one
 * worker process runs many of them in turn, importing src/ once instead of once per file. A fresh
 * process per file costs ~0.5 s of CPU and ~1.4 s of wall time on the 2-core machine under load
 * (bench/RESULTS.md, "CI time: shared worker processes"), most of a short file's time.
 *
 * Listed: files under 5 s (test/durations.json) that leave nothing behind in the process for the
 * next file: no vi.mock, vi.stubEnv or spies, no writes to process.env, no process listeners, no
 * in-process CLI runs (they take over process.exit and the streams). test/unisolated-files.test.ts
 * checks that each listed file still keeps to that. A file not listed keeps its own process.
 */
export const UNISOLATED_FILES = [
  'test/agent-pipeline.test.ts',
  'test/agent-restore-verify.test.ts',
  'test/agent-scan.test.ts',
  'test/check-advice.test.ts',
  'test/check-v3.test.ts',
  'test/chunk-table.test.ts',
  'test/cli-version.test.ts',
  'test/compact-index.test.ts',
  'test/compact-plan.test.ts',
  'test/compact-v3.test.ts',
  'test/db-flush.test.ts',
  'test/db-open-errors.test.ts',
  'test/decoding-reads.test.ts',
  'test/diff.test.ts',
  'test/durable.test.ts',
  'test/engine-dedup.test.ts',
  'test/engine-fallback.test.ts',
  'test/errors.test.ts',
  'test/format3-engine.test.ts',
  'test/format3-roundtrip.test.ts',
  'test/format3-server.test.ts',
  'test/fresh-build.test.ts',
  'test/gc-v3.test.ts',
  'test/hash.test.ts',
  'test/ids.test.ts',
  'test/import-cycles.test.ts',
  'test/lock-wait.test.ts',
  'test/maintenance-stats.test.ts',
  'test/manifest-v2.test.ts',
  'test/manifest.test.ts',
  'test/number-allocator.test.ts',
  'test/number-index.test.ts',
  'test/numbered-chunks.test.ts',
  'test/open-store.test.ts',
  'test/pack-copy-v3.test.ts',
  'test/pack-reader.test.ts',
  'test/pack-v3-files.test.ts',
  'test/pack-v3.test.ts',
  'test/pack-writer.test.ts',
  'test/primitives.test.ts',
  'test/qemu-file-spool.test.ts',
  'test/qemu-spool.test.ts',
  'test/qemu-state-image.test.ts',
  'test/qemu-stop-barrier.test.ts',
  'test/qemu-stream.test.ts',
  'test/qemu-sync-stop-policy.test.ts',
  'test/qemu-vm-agent.test.ts',
  'test/run-vitest.test.ts',
  'test/sequencer.test.ts',
  'test/server-observe.test.ts',
  'test/server-protocol.test.ts',
  'test/server-restart.test.ts',
  'test/server-session.test.ts',
  'test/server-verify.test.ts',
  'test/session-api.test.ts',
  'test/shared-bytes.test.ts',
  'test/slab-pool.test.ts',
  'test/socket-reader.test.ts',
  'test/store-close-fds.test.ts',
  'test/store-owners.test.ts',
  'test/upgrade-v3.test.ts',
  'test/vne-coordinator.test.ts',
  'test/vne-group-restore.test.ts',
  'test/vne-sim.test.ts',
  'test/vne-switch.test.ts',
  'test/vne-vm-kill.test.ts',
  'test/worker-start.test.ts',
  'test/workload.test.ts',
  'test/zstd.test.ts',
];

/** What a file does that would outlive it in a shared worker process: one phrase per finding. */
export function stateLeftBehind(source: string): string[] {
  const kinds: [RegExp, string][] = [
    [/\bvi\.(mock|doMock|stubEnv|stubGlobal|useFakeTimers|spyOn|resetModules)\b/, 'mocks, stubs or spies'],
    [/process\.env(\.\w+|\[[^\]]+\])\s*=(?!=)|delete process\.env/, 'writes to process.env'],
    [/\bprocess\.(on|once|addListener|prependListener)\(/, 'process listeners'],
    [/\bprocess\.(chdir|umask)\(|process\.exitCode\s*=(?!=)/, 'process-wide settings'],
    [/\brunCliInProcess\b/, 'in-process CLI runs'],
    [/\bglobalThis\.\w+\s*=(?!=)/, 'globals'],
  ];
  return kinds.filter(([re]) => re.test(source)).map(([, what]) => what);
}
