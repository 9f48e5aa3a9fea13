import type { Command } from 'commander';
import { readConfig } from '../store/config.js';
import { readTokenFile, tokenPath, writeNewToken } from '../server/token.js';
import { action, storeDir, storeOption } from './common.js';

export function registerToken(program: Command): void {
  program
    .command('token')
    .description("print the store's access token (agents give it to 'vnstore serve' with --token-file or $VNSTORE_TOKEN)")
    .option(
      '--rotate',
      'replace the token with a new random one (a running server takes it at the next connection; connected agents stay connected)',
    )
    .addOption(storeOption())
    .addHelpText('after', '\nThe token lives in STORE/access-token, readable by its owner only (mode 0600).\n')
    .action(
      action(async (opts: { store?: string; rotate?: boolean }) => {
        const dir = storeDir(opts);
        await readConfig(dir); // refuses a directory that is not a store
        const token = opts.rotate ? await writeNewToken(dir) : await readTokenFile(tokenPath(dir));
        process.stdout.write(`${token}\n`);
      }),
    );
}
