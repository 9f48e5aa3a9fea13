import type { Command } from 'commander';
import type { AlreadyUpgraded, UpgradeReport } from '../maintenance/upgrade.js';
import { action, assertStorePath, humanBytes, lockWaitOption, openForCommand, progressBar, storeDir, storeOption } from './common.js';

interface UpgradeCliOptions {
  store?: string;
  json?: boolean;
  lockWait?: number;
}

export function registerUpgrade(program: Command): void {
  program
    .command('upgrade')
    .description('convert a store of format 1 or 2 to store format 3 (numbered chunks, compact metadata); cannot be undone')
    .option(
      '--json',
      'print {upgraded, formatBefore, formatAfter, snapshots, chunks, packs, manifests, storeBytesBefore, storeBytesAfter, manifestBytesBefore, manifestBytesAfter, seconds}; on a format-3 store {upgraded: false, formatBefore: 3, formatAfter: 3}',
    )
    .addOption(storeOption())
    .addOption(lockWaitOption())
    .addHelpText(
      'after',
      `
Store format 3 numbers every distinct chunk: manifests list numbers instead of 32-byte digests and
the index keeps no per-chunk LevelDB entry, so a store's metadata is a few times smaller
(docs/FORMAT.md, "Store format 3"). The upgrade copies every indexed chunk (as stored, no
recompression) into new packs under DIR/upgrade/, re-encodes every manifest, writes a new catalog,
then switches the store over in one step and removes the old parts.

'vnstore init' creates format 3; a store that is at format 3 already is left as it is ("already
format 3, nothing to do", exit 0). Stores of format 1 and 2 keep working without an upgrade.

Before it starts it checks the free space: it needs about as much again as the store's packs and
manifests, on the same file system. Stop 'vnstore serve' and every other command first: the upgrade
holds the store's lock throughout (a locked store is refused, exit 5; --lock-wait waits for it).
The snapshots' 'added' figures (ls, stats) are recounted for format 3: the same chunk payloads,
format 3's table entries and the new, smaller manifests.

Crash-safe: killed before the switch, the store is the old one and a new 'vnstore upgrade' starts
over; killed after it, the next command finishes the switch. It cannot be undone: there is no way
back to format 2, and a vnstore that predates format 3 refuses the store (exit 4). Keep a copy of
the store if you may need such a vnstore.

Examples:
  vnstore upgrade --store /srv/vnstore
  vnstore upgrade --json
`,
    )
    .action(
      action(async (opts: UpgradeCliOptions) => {
        const dir = storeDir(opts);
        await assertStorePath(dir);
        // Loaded when the command runs, so that other commands do not pay for it at start-up.
        const { upgradeStore } = await import('../maintenance/upgrade.js');
        let bar: ReturnType<typeof progressBar> | undefined;
        let report: UpgradeReport | AlreadyUpgraded;
        try {
          report = await upgradeStore(dir, {
            open: (d, o) => openForCommand(d, opts.lockWait, o),
            onProgress: (done, total) => {
              // Chunks shown as 4 KiB pages (as compact does): the bar counts bytes.
              bar ??= progressBar('upgrade', total * 4096);
              bar.update(done * 4096);
            },
          });
        } finally {
          bar?.stop();
        }
        if (opts.json) process.stdout.write(JSON.stringify({ ...report, formatAfter: 3 }, null, 2) + '\n');
        else if (!report.upgraded) process.stdout.write(`${dir}: already format 3, nothing to do\n`);
        else process.stdout.write(render(report));
      }),
    );
}

function render(r: UpgradeReport): string {
  return (
    [
      `upgraded ${r.snapshots} snapshot(s) from store format ${r.formatBefore} to 3 in ${r.seconds.toFixed(2)} s`,
      `chunks ${r.chunks} in ${r.packs} pack(s); manifests ${humanBytes(r.manifestBytesBefore)} -> ${humanBytes(r.manifestBytesAfter)}`,
      `store ${humanBytes(r.storeBytesBefore)} -> ${humanBytes(r.storeBytesAfter)}`,
    ].join('\n') + '\n'
  );
}
