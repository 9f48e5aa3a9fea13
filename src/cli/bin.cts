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
import { sizeThreadPool } from './thread-pool-size.cjs';

sizeThreadPool();
void import('./main.js');
