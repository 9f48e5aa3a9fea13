/**
 * The `vnstore` command line as a function (main.ts runs it on process.argv): one file per
 * subcommand, each thin over the library. A function so that tests of help text and usage errors
 * run it in their own process instead of spawning the executable for each (test/helpers/cli.ts).
 */
import { Command, CommanderError } from 'commander';
import { printVersion } from './version.js';
import { ERROR_CODES } from '../util/errors.js';
import { trace } from '../util/trace.js';

// Each command's module is loaded only when it can be the command: a one-shot command then starts
// without parsing the other nineteen (measured: bench/RESULTS.md, "CI time"). Completion, a bare
// `vnstore`, top-level help and an unknown word (for commander's "did you mean") load them all, in
// this order, which is the order --help lists them in.
type Loader = () => Promise<(program: Command) => void>;
const COMMANDS: [string, Loader][] = [
  ['init', async () => (await import('./init.js')).registerInit],
  ['put', async () => (await import('./put.js')).registerPut],
  ['restore', async () => (await import('./restore.js')).registerRestore],
  ['ls', async () => (await import('./ls.js')).registerLs],
  ['forget', async () => (await import('./forget.js')).registerForget],
  ['gc', async () => (await import('./gc.js')).registerGc],
  ['compact', async () => (await import('./compact.js')).registerCompact],
  ['stats', async () => (await import('./stats.js')).registerStats],
  ['check', async () => (await import('./check.js')).registerCheck],
  ['upgrade', async () => (await import('./upgrade.js')).registerUpgrade],
  ['version', async () => (await import('./version.js')).registerVersion],
  ['diff', async () => (await import('./diff.js')).registerDiff],
  ['completion', async () => (await import('./completion.js')).registerCompletion],
  ['qemu', async () => (await import('./qemu.js')).registerQemu],
  ['serve', async () => (await import('./serve.js')).registerServe],
  ['token', async () => (await import('./token.js')).registerToken],
  ['agent', async () => (await import('./agent.js')).registerAgent],
  ['switch', async () => (await import('./switch.js')).registerSwitch],
  ['snapshot', async () => (await import('./snapshot.js')).registerSnapshot],
  ['bench', async () => (await import('./bench.js')).registerBench],
];

/**
 * Runs `vnstore ARGS...` (the words after the executable). Returns the exit status for what ends
 * here (version, help, a usage error), or undefined when a command ran: a command that fails
 * reports its error and exits itself (cli/common.ts reportError).
 */
export async function runVnstore(args: string[]): Promise<number | undefined> {
  if (args[0] === '--version' || args[0] === '-V') {
    printVersion('line');
    return 0;
  }
  const program = new Command();
  program
    .name('vnstore')
    .description('Deduplicating snapshot store for the memory of groups of VMs (virtual networked environments).')
    // --version is answered above, before parsing; the option is declared for --help only.
    .option('-V, --version', 'print the version and the active hashing and codec paths on one line (details: `vnstore version`)')
    // Usage errors are bad input like any other: one line "vnstore: error: ...", exit 2 (E_USAGE).
    .configureOutput({
      outputError: (str, write) => write(`vnstore: ${str.trim().replace(/\s*\n\s*/g, ' ')} (run with --help for usage)\n`),
    })
    .exitOverride()
    .addHelpText(
      'after',
      `
Store location: --store DIR, else $VNSTORE_STORE, else ./vnstore-data.
Exit codes: 0 ok, 2 usage, 3 not a store, 4 unsupported format version, 5 store locked,
  6 unknown snapshot or VM, 7 corrupt data (check: problems found), 8 I/O error, 9 disk full, 10 unreadable input,
  11 store exists, 12 session error, 13 ambiguous id prefix, 14 protocol error (server), 15 access token refused, 16 unsupported here (compact without libzstd), 70 internal error.`,
    );

  const named = COMMANDS.find(([name]) => name === args[0]);
  // `vnstore CMD --help` needs only CMD; `vnstore --help` and `vnstore help CMD` list them all.
  const wantsEverything = !named || named[0] === 'completion';
  const chosen = wantsEverything ? COMMANDS : [named];
  const registers = await Promise.all(chosen.map(([, load]) => load()));
  for (const register of registers) register(program);
  trace('modules loaded');

  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : ERROR_CODES.E_USAGE;
    throw err;
  }
  return undefined;
}
