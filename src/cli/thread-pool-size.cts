/**
 * libuv's thread-pool size for a vnstore process: the cores, between 2 and libuv's default of 4.
 * More pool threads than cores only preempt the main thread, which classifies and applies every
 * block (bench/RESULTS.md). `vnstore serve` takes two more (at most 8): its page jobs run on worker
 * threads, and its pool threads spend much of their time waiting in fsyncs (pack seals, early
 * datasyncs, manifests), which with two threads held back the page-cache writes and checksums
 * queued behind them (docs/DESIGN.md, "Thread-pool jobs"). CommonJS, so that the executable
 * (bin.cts) can use it before any ES module loads, and the benchmarks from dist/ too.
 */
import { availableParallelism } from 'node:os';

/**
 * Sets UV_THREADPOOL_SIZE in `env` unless it is set there already; returns the value in force.
 * `command`: the vnstore command about to run (the first argument that is not an option).
 */
export function sizeThreadPool(env: NodeJS.ProcessEnv = process.env, command?: string): string {
  const cores = Math.max(2, availableParallelism());
  return (env.UV_THREADPOOL_SIZE ??= String(command === 'serve' ? Math.min(8, cores + 2) : Math.min(4, cores)));
}
