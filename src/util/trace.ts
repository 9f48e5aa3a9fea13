/**
 * VNSTORE_TRACE=1: phase timings on stderr (milliseconds since process start), for profiling, each
 * with the process's minor page faults so far: on the project's virtual machines a first touch of a
 * page costs ~12 µs, so fresh memory shows up in wall time. Tests read the "[trace T ms] label" part.
 */
import { performance } from 'node:perf_hooks';

const enabled = process.env.VNSTORE_TRACE === '1';

export function trace(label: string): void {
  if (!enabled) return;
  const faults = process.resourceUsage().minorPageFault;
  process.stderr.write(`[trace ${performance.now().toFixed(1).padStart(8)} ms] ${label} · ${faults} page faults\n`);
}
