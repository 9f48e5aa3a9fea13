import type { Command } from 'commander';
import { CATALOG_ONLY, action, humanBytes, storeOption, withStore } from './common.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';

export function registerLs(program: Command): void {
  const cmd = program
    .command('ls')
    .description('list committed snapshots, oldest first')
    .option('--vm <name>', 'only this VM')
    .option('--json', 'print an array of {id, vm, group, time, parent, logicalBytes, addedBytes, ...}')
    .addOption(storeOption());
  addRemoteOptions(cmd, false).action(
      action(async (opts: RemoteOptions & { store?: string; vm?: string; json?: boolean }) => {
        const server = serverAddress(opts);
        const snaps = server
          ? await withRemote(opts, server, (client) => client.listSnapshots(opts.vm))
          : await withStore(opts, (store) => store.listSnapshots(opts.vm), CATALOG_ONLY);
        {
          if (opts.json) {
            const rows = snaps.map((s) => ({
              id: s.id,
              vm: s.vm,
              group: s.group ?? null,
              time: s.time,
              parent: s.parent ?? null,
              logicalBytes: s.byteLength,
              addedBytes: s.addedBytes,
              newChunks: s.newChunks,
              zeroPages: s.zeroPages,
              pageCount: s.pageCount,
              imageDigest: s.imageDigest,
            }));
            process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
            return;
          }
          const header = ['ID', 'VM', 'GROUP', 'TIME', 'PARENT', 'SIZE', 'ADDED'];
          const lines = snaps.map((s) => [s.id, s.vm, s.group ?? '-', s.time.replace('T', ' ').replace(/\.\d+Z$/, 'Z'), s.parent ?? '-', humanBytes(s.byteLength), humanBytes(s.addedBytes)]);
          const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
          const fmt = (row: string[]) => row.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
          process.stdout.write([fmt(header), ...lines.map(fmt)].join('\n') + '\n');
          if (snaps.length === 0) process.stderr.write('(no snapshots)\n');
        }
      }),
    );
}
