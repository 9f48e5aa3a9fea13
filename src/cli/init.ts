import { Option, type Command } from 'commander';
import { VnstoreError } from '../util/errors.js';
import { Store } from '../store/store.js';
import { tokenPath, writeNewToken } from '../server/token.js';
import { action, assertStorePath, storeDir, storeOption } from './common.js';

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('create a new, empty store (directory must be new or empty; created private to you, mode 0700)')
    .addOption(storeOption())
    .option('--json', 'print the store identity as JSON')
    // Experimental and hidden until every command works on store format 3 (docs/FORMAT3-STATUS.md).
    .addOption(new Option('--format <version>', 'store format version: 1 (default) or 3 (numbered chunks, experimental)').hideHelp())
    .action(
      action(async (opts: { store?: string; json?: boolean; format?: string }) => {
        const dir = storeDir(opts);
        if (opts.format !== undefined && opts.format !== '1' && opts.format !== '3')
          throw new VnstoreError('E_USAGE', `--format takes 1 or 3, got ${JSON.stringify(opts.format)}`);
        await assertStorePath(dir, true);
        const config = await Store.init(dir, { format: opts.format === undefined ? undefined : Number(opts.format) });
        // The token agents present to `vnstore serve` (0600; `vnstore token` prints it).
        await writeNewToken(dir);
        if (opts.json) process.stdout.write(JSON.stringify({ dir, ...config, tokenFile: tokenPath(dir) }) + '\n');
        else process.stdout.write(`created store ${dir} (format version ${config.version})\n`);
      }),
    );
}
