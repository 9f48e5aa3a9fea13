#!/usr/bin/env node
/** The `vnstore` command line (started by bin.cts): one file per subcommand, each thin over the library. */
import { Command, CommanderError } from 'commander';
import { registerInit } from './init.js';
import { registerPut } from './put.js';
import { registerRestore } from './restore.js';
import { registerLs } from './ls.js';
import { registerForget } from './forget.js';
import { registerGc } from './gc.js';
import { registerCompact } from './compact.js';
import { registerStats } from './stats.js';
import { registerCheck } from './check.js';
import { printVersion, registerVersion } from './version.js';
import { registerDiff } from './diff.js';
import { registerCompletion } from './completion.js';
import { registerQemu } from './qemu.js';
import { registerServe } from './serve.js';
import { registerToken } from './token.js';
import { registerAgent } from './agent.js';
import { registerSwitch } from './switch.js';
import { registerSnapshot } from './snapshot.js';
import { ERROR_CODES } from '../util/errors.js';
import { trace } from '../util/trace.js';

trace('modules loaded');

const program = new Command();
program
  .name('vnstore')
  .description('Deduplicating snapshot store for the memory of groups of VMs (virtual networked environments).')
  // --version is answered below, before parsing; the option is declared for --help only.
  .option('-V, --version', 'print the version and the active hashing and codec paths on one line (details: `vnstore version`)')
  // Usage errors are bad input like any other: one line "vnstore: error: ...", exit 2 (E_USAGE).
  .configureOutput({ outputError: (str, write) => write(`vnstore: ${str.trim().replace(/\s*\n\s*/g, ' ')} (run with --help for usage)\n`) })
  .exitOverride()
  .addHelpText(
    'after',
    `
Store location: --store DIR, else $VNSTORE_STORE, else ./vnstore-data.
Exit codes: 0 ok, 2 usage, 3 not a store, 4 unsupported format version, 5 store locked,
  6 unknown snapshot or VM, 7 corrupt data (check: problems found), 8 I/O error, 9 disk full, 10 unreadable input,
  11 store exists, 12 session error, 13 ambiguous id prefix, 14 protocol error (server), 15 access token refused, 16 unsupported here (compact without libzstd), 70 internal error.`,
  );

registerInit(program);
registerPut(program);
registerRestore(program);
registerLs(program);
registerForget(program);
registerGc(program);
registerCompact(program);
registerStats(program);
registerCheck(program);
registerVersion(program);
registerDiff(program);
registerCompletion(program);
registerQemu(program);
registerServe(program);
registerToken(program);
registerAgent(program);
registerSwitch(program);
registerSnapshot(program);
// `bench` pulls in the workload generator and the peer-tool drivers: load it only when it can be
// the command (or help is shown), so put/restore start-up stays lean (it is part of every timing).
const args = process.argv.slice(2);
if (args[0] === '--version' || args[0] === '-V') {
  printVersion('line');
  process.exit(0);
}
// Completion lists every command, so it loads it too.
if (args.length === 0 || args.some((a) => a === 'bench' || a === 'help' || a === '--help' || a === '-h' || a === 'completion')) {
  const { registerBench } = await import('./bench.js');
  registerBench(program);
}

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exit(err.exitCode === 0 ? 0 : ERROR_CODES.E_USAGE);
  }
  throw err;
}
