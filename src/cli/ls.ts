import type { Command } from 'commander';
import type { SnapshotRecord } from '../store/db.js';
import { VnstoreError } from '../util/errors.js';
import { CATALOG_ONLY, action, humanBytes, storeOption, lockWaitOption, withStore } from './common.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';

/** How `ls` shows the parent of a snapshot whose parent has been forgotten (it cannot be restored). */
export const FORGOTTEN_PARENT = '(forgotten)';

export function registerLs(program: Command): void {
  const cmd = program
    .command('ls')
    .description('list committed snapshots, oldest first')
    .option('--vm <name>', 'only this VM (exit 6 if it has no snapshots)')
    .option('--json', 'print an array of {id, vm, group, time, parent, parentForgotten, logicalBytes, addedBytes, ...}')
    .addOption(storeOption())
    .addOption(lockWaitOption())
    .addHelpText(
      'after',
      `
PARENT is the snapshot a snapshot was stored against; ${FORGOTTEN_PARENT} when that one has since been
forgotten (in --json: parent keeps its id and parentForgotten is true).
`,
    );
  addRemoteOptions(cmd, false).action(
    action(async (opts: RemoteOptions & { store?: string; lockWait?: number; vm?: string; json?: boolean }) => {
      const server = serverAddress(opts);
      const { snaps, forgotten } = server
        ? await withRemote(opts, server, async (client) => {
            const all = await client.listSnapshots();
            const snaps = opts.vm === undefined ? all : all.filter((s) => s.vm === opts.vm);
            const committed = new Set(all.map((s) => s.id));
            return { snaps, forgotten: forgottenParents(snaps, (id) => committed.has(id)) };
          })
        : await withStore(
            opts,
            async (store) => {
              const snaps = await store.listSnapshots(opts.vm);
              const parents = new Set(snaps.map((s) => s.parent).filter((p): p is string => p !== undefined));
              const committed = new Set(snaps.map((s) => s.id));
              for (const p of parents) if (!committed.has(p) && (await store.getSnapshot(p))) committed.add(p);
              return { snaps, forgotten: forgottenParents(snaps, (id) => committed.has(id)) };
            },
            CATALOG_ONLY,
          );
      if (opts.vm !== undefined && snaps.length === 0) throw new VnstoreError('E_NOT_FOUND', `no snapshots of VM ${opts.vm} in this store`);
      if (opts.json) {
        const rows = snaps.map((s) => ({
          id: s.id,
          vm: s.vm,
          group: s.group ?? null,
          time: s.time,
          parent: s.parent ?? null,
          parentForgotten: s.parent !== undefined && forgotten.has(s.parent),
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
      const parentText = (p: string | undefined) => (p === undefined ? '-' : forgotten.has(p) ? FORGOTTEN_PARENT : p);
      const lines = snaps.map((s) => [
        s.id,
        s.vm,
        s.group ?? '-',
        s.time.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
        parentText(s.parent),
        humanBytes(s.byteLength),
        humanBytes(s.addedBytes),
      ]);
      const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
      const fmt = (row: string[]) =>
        row
          .map((c, i) => c.padEnd(widths[i]))
          .join('  ')
          .trimEnd();
      process.stdout.write([fmt(header), ...lines.map(fmt)].join('\n') + '\n');
      if (snaps.length === 0) process.stderr.write('(no snapshots)\n');
    }),
  );
}

/** Parents named by `snaps` that are no longer committed. */
function forgottenParents(snaps: readonly SnapshotRecord[], committed: (id: string) => boolean): Set<string> {
  return new Set(snaps.map((s) => s.parent).filter((p): p is string => p !== undefined && !committed(p)));
}
