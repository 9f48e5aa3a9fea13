#!/usr/bin/env node
/**
 * The `vnstore` command's entry point: sizes libuv's thread pool, then runs the command line
 * (main.ts). The executable, bin/vnstore, starts node on it with a larger starting old generation
 * (docs/OPERATIONS.md, "V8's heap"); `node dist/cli/bin.cjs` runs it without.
 *
 * A one-shot command's page jobs run on that pool (docs/DESIGN.md, "Thread-pool jobs"); on the
 * 2-core project machine two threads instead of libuv's default four made consecutive puts ~4%
 * faster (bench/RESULTS.md); `serve` takes two more (thread-pool-size.cts). libuv reads UV_THREADPOOL_SIZE once, when the pool starts, and Node
 * starts it while loading an ES module entry point (its loader reads files with pool jobs), so the
 * entry point is this CommonJS file. A value the user set wins.
 */
import { sizeThreadPool } from './thread-pool-size.cjs';
import { detachFromEarlySpool, startEarlySpool, stdinIsTty, wantsEarlySpool } from '../qemu/early-spool.cjs';

const argv = process.argv.slice(2);
sizeThreadPool(
  process.env,
  argv.find((a) => !a.startsWith('-')),
);
const loadCli = () => void import('./main.js');
// `qemu receive` on QEMU's exec: pipe copies the stream to its spool file before anything else
// loads: loading vnstore during the migration would compete with QEMU for the CPU while its pipe
// stays full (docs/QEMU.md). With --detach, the background receive starts from here too.
if (wantsEarlySpool(argv, process.env, stdinIsTty)) {
  startEarlySpool();
  if (argv.includes('--detach')) detachFromEarlySpool(loadCli);
  else loadCli();
} else loadCli();
