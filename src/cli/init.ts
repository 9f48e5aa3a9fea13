import { Option, type Command } from 'commander';
import { VnstoreError } from '../util/errors.js';
import { Store } from '../store/store.js';
import { CREATABLE_STORE_FORMAT_VERSIONS } from '../store/config.js';
import { tokenPath, writeNewToken } from '../server/token.js';
import { action, assertStorePath, storeDir, storeOption } from './common.js';

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('create a new, empty store (directory must be new or empty; created private to you, mode 0700)')
    .addOption(storeOption())
    .option('--json', 'print the store identity as JSON')
    // Hidden: the legacy layouts (1, 2) are only for their tests and for benches that compare formats.
    .addOption(new Option('--format <version>', 'store format version: 3 (default), or 1 or 2 (legacy layouts)').hideHelp())
    .addHelpText(
      'after',
      `
The store is created in store format 3: every distinct chunk has a number, manifests list numbers
and the packs' tables of contents are the index, so the store's metadata is a small fraction of its
bytes (docs/FORMAT.md, "Store format 3"). Stores of the older formats 1 and 2 are still read and
written; 'vnstore upgrade' converts them to format 3.

Examples:
  vnstore init --store /srv/vnstore
  vnstore init --json
`,
    )
    .action(
      action(async (opts: { store?: string; json?: boolean; format?: string }) => {
        const dir = storeDir(opts);
        const format = CREATABLE_STORE_FORMAT_VERSIONS.find((v) => String(v) === opts.format);
        if (opts.format !== undefined && format === undefined)
          throw new VnstoreError(
            'E_USAGE',
            `--format takes ${CREATABLE_STORE_FORMAT_VERSIONS.join(', ')}, got ${JSON.stringify(opts.format)}`,
          );
        await assertStorePath(dir, true);
        const config = await Store.init(dir, { format });
        // The token agents present to `vnstore serve` (0600; `vnstore token` prints it).
        await writeNewToken(dir);
        if (opts.json) process.stdout.write(JSON.stringify({ dir, ...config, tokenFile: tokenPath(dir) }) + '\n');
        else process.stdout.write(`created store ${dir} (format version ${config.version})\n`);
      }),
    );
}
