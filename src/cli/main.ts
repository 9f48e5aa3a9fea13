#!/usr/bin/env node
/** The `vnstore` command line (started by bin.cts): runs program.ts on this process's arguments. */
import { runVnstore } from './program.js';

const code = await runVnstore(process.argv.slice(2));
if (code !== undefined) process.exit(code);
