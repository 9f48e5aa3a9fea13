import type { Command } from 'commander';
import { Store } from '../store/store.js';
import { tokenPath, writeNewToken } from '../server/token.js';
import { action, assertStorePath, storeDir, storeOption } from './common.js';

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('create a new, empty store (directory must be new or empty; created private to you, mode 0700)')
    .addOption(storeOption())
    .option('--json', 'print the store identity as JSON')
    .action(
      action(async (opts: { store?: string; json?: boolean }) => {
        const dir = storeDir(opts);
        await assertStorePath(dir, true);
        const config = await Store.init(dir);
        // The token agents present to `vnstore serve` (0600; `vnstore token` prints it).
        await writeNewToken(dir);
        if (opts.json) process.stdout.write(JSON.stringify({ dir, ...config, tokenFile: tokenPath(dir) }) + '\n');
        else process.stdout.write(`created store ${dir} (format version ${config.version})\n`);
      }),
    );
}
