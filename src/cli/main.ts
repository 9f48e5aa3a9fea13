#!/usr/bin/env node
/** The `vnstore` command: one file per subcommand, each thin over the library. */
import { Command, CommanderError } from 'commander';
import { registerInit } from './init.js';
import { registerPut } from './put.js';
import { registerRestore } from './restore.js';
import { registerLs } from './ls.js';
import { registerBench } from './bench.js';
import { ERROR_CODES } from '../util/errors.js';
import { trace } from '../util/trace.js';

trace('modules loaded');

const program = new Command();
program
  .name('vnstore')
  .description('Deduplicating snapshot store for the memory of groups of VMs (virtual networked environments).')
  .version('0.1.0')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride()
  .addHelpText(
    'after',
    `
Store location: --store DIR, else $VNSTORE_STORE, else ./vnstore-data.
Exit codes: 0 ok, 2 usage, 3 not a store, 4 unsupported format version, 5 store locked,
  6 unknown snapshot, 7 corrupt data, 8 I/O error, 9 disk full, 10 unreadable input,
  11 store exists, 12 session error, 13 ambiguous id prefix, 70 internal error.`,
  );

registerInit(program);
registerPut(program);
registerRestore(program);
registerLs(program);
registerBench(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exit(err.exitCode === 0 ? 0 : ERROR_CODES.E_USAGE);
  }
  throw err;
}
