import type { Command } from 'commander';
import type { CheckReport } from '../maintenance/check.js';
import { IndexTableDamage } from '../store/index-check.js';
import type { TableSalvageReport } from '../store/index-salvage.js';
import { VnstoreError } from '../util/errors.js';
import { action, humanBytes, storeDir, storeOption, lockWaitOption, usage, withStore } from './common.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';

interface CheckCliOptions extends RemoteOptions {
  store?: string;
  readData?: boolean;
  readDataSubset?: string;
  repairIndex?: boolean;
  json?: boolean;
}

export function registerCheck(program: Command): void {
  const cmd = program
    .command('check')
    .description('verify the store: packs, index, manifests, catalog, counters; optionally re-read all data or repair the index')
    .option('--read-data', 're-read every pack: payload checksum, decode and re-hash every chunk')
    .option('--read-data-subset <pct>', 're-read a random PCT% of the packs (e.g. 10 or 10%)')
    .option(
      '--repair-index',
      're-hash every chunk in the packs: corrupt packs are salvaged (their good chunks copied) and moved to quarantine/; on stores of format 1 or 2 the chunk index is rebuilt from the packs and damaged index tables keep their intact blocks (originals to quarantine/)',
    )
    .option('--json', 'print {ok, problems[], warnings[], checked, counters, repair, next[], seconds}')
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(cmd, false)
    .addHelpText(
      'after',
      `
Exit status 0 only when the store is clean; otherwise every problem is listed with the pack, chunk or
snapshot it concerns, the snapshots it affects, and the command to run next; exit status 7.

Examples:
  vnstore check
  vnstore check --read-data-subset 10%
  vnstore check --repair-index
`,
    )
    .action(
      action(async (opts: CheckCliOptions) => {
        let subset: number | undefined;
        if (opts.readDataSubset !== undefined) {
          const m = /^(\d+(?:\.\d+)?)%?$/.exec(opts.readDataSubset.trim());
          subset = m ? Number(m[1]) : NaN;
          if (!(subset > 0 && subset <= 100))
            throw usage(`--read-data-subset takes a percentage in (0, 100], got ${JSON.stringify(opts.readDataSubset)}`);
        }
        const server = serverAddress(opts);
        if (server && opts.repairIndex) throw usage('--repair-index needs the store to itself: stop the server and run it locally');
        const checkLocal = () =>
          withStore(
            opts,
            async (store) => {
              // Loaded when the command runs, so that other commands do not pay for it at start-up.
              const { checkStore } = await import('../maintenance/check.js');
              return checkStore(store, { readData: opts.readData, readDataSubsetPct: subset, repairIndex: opts.repairIndex });
            },
            // Every index table's checksums, also of those an earlier open verified (bit rot).
            { recheckIndex: true },
          );
        let salvaged: TableSalvageReport[] | undefined;
        let report: CheckReport;
        if (server)
          report = await withRemote(opts, server, (client) => client.check({ readData: opts.readData, readDataSubsetPct: subset }));
        else {
          try {
            report = await checkLocal();
          } catch (err) {
            // Damaged index tables keep the store from opening: the repair salvages them first.
            if (!(opts.repairIndex && err instanceof IndexTableDamage)) throw err;
            const { salvageIndexTables } = await import('../store/index-salvage.js');
            salvaged = await salvageIndexTables(storeDir(opts));
            report = await checkLocal();
          }
        }
        if (salvaged) {
          if (opts.json) report = { ...report, indexSalvage: salvaged } as CheckReport;
          else for (const t of salvaged) process.stdout.write(salvageLine(t));
        }
        if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
        else process.stdout.write(render(report));
        if (!report.ok) {
          throw new VnstoreError(
            'E_CORRUPT',
            `check found ${report.problems.length} problem(s)${report.next.length ? `; next: ${report.next[0]}` : ''}`,
          );
        }
      }),
    );
}

function salvageLine(t: TableSalvageReport): string {
  const kept = t.lost ? `nothing kept (${t.lost})` : `kept ${t.dataBlocksKept} data block(s), dropped ${t.dataBlocksDropped}`;
  return `salvaged index table ${t.table}: ${kept}${t.quarantined ? `; the damaged file is in ${t.quarantined}` : ''}\n`;
}

function render(r: CheckReport): string {
  const out: string[] = [];
  const c = r.checked;
  if (r.repair) {
    const x = r.repair;
    out.push(
      `repair: ${x.packsScanned} pack(s) re-read; index entries +${x.indexEntriesAdded} ~${x.indexEntriesChanged} -${x.indexEntriesRemoved}; catalog fixes ${x.catalogFixes}${x.countersReset ? '; counters reset' : ''}`,
    );
    for (const s of x.packsSalvaged)
      out.push(`  salvaged ${s.goodChunks} good chunk(s) of ${s.pack} into ${s.into} (${s.badChunks} corrupt)`);
    for (const q of x.packsQuarantined) out.push(`  quarantined ${q.pack} → ${q.to}: ${q.reason}`);
  }
  out.push(
    `checked ${c.snapshots} snapshot(s), ${c.keptBases} kept base(s), ${c.packs} pack(s), ${c.chunks} index entries` +
      (c.packsRead > 0 ? `; read ${c.packsRead} pack(s), ${c.chunksRead} chunks, ${humanBytes(c.bytesRead)}` : ''),
  );
  for (const w of r.warnings) out.push(`warning: ${w}`);
  for (const p of r.problems) {
    out.push(`problem [${p.kind}]: ${p.message}`);
    if (p.affects.length > 0) out.push(`  affects snapshot(s): ${p.affects.join(', ')}`);
    out.push(`  next: ${p.next}`);
  }
  out.push(r.ok ? 'no problems found' : `${r.problems.length} problem(s) found`);
  return out.join('\n') + '\n';
}
