/** VNSTORE_TRACE=1: phase timings on stderr (milliseconds since process start), for profiling. */
import { performance } from 'node:perf_hooks';

const enabled = process.env.VNSTORE_TRACE === '1';

export function trace(label: string): void {
  if (enabled) process.stderr.write(`[trace ${performance.now().toFixed(1).padStart(8)} ms] ${label}\n`);
}
