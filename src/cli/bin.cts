#!/usr/bin/env node
/**
 * The `vnstore` executable: sizes libuv's thread pool, then runs the command line (main.ts).
 *
 * A one-shot command's page jobs run on that pool (docs/DESIGN.md, "Thread-pool jobs"); on the
 * 2-core project machine two threads instead of libuv's default four made consecutive puts ~4%
 * faster (bench/RESULTS.md). libuv reads UV_THREADPOOL_SIZE once, when the pool starts, and Node
 * starts it while loading an ES module entry point (its loader reads files with pool jobs), so the
 * entry point is this CommonJS file. A value the user set wins.
 */
import { isatty } from 'node:tty';
import { sizeThreadPool } from './thread-pool-size.cjs';

sizeThreadPool();
// `qemu receive` on QEMU's exec: pipe reads the stream before loading the rest of vnstore (about
// half a second on a loaded machine, during which QEMU would wait on the full pipe; docs/QEMU.md).
const argv = process.argv.slice(2);
if (argv[0] === 'qemu' && argv[1] === 'receive') {
  void import('../qemu/spool.js').then((m) => {
    if (m.wantsEarlySpool(argv, process.env, isatty(0))) m.startEarlySpool();
    return import('./main.js');
  });
} else void import('./main.js');
