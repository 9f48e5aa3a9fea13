/**
 * libuv's thread-pool size for a vnstore process: the cores, between 2 and libuv's default of 4.
 * More pool threads than cores only preempt the main thread, which classifies and applies every
 * block (bench/RESULTS.md). CommonJS, so that the executable (bin.cts) can use it before any ES
 * module loads, and the benchmarks from dist/ too.
 */
import { availableParallelism } from 'node:os';

/** Sets UV_THREADPOOL_SIZE in `env` unless it is set there already; returns the value in force. */
export function sizeThreadPool(env: NodeJS.ProcessEnv = process.env): string {
  return (env.UV_THREADPOOL_SIZE ??= String(Math.min(4, Math.max(2, availableParallelism()))));
}
