import type { Command } from 'commander';
import type { StatsReport } from '../maintenance/stats.js';
import { CATALOG_ONLY, action, humanBytes, storeOption, lockWaitOption, withStore } from './common.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';

interface StatsCliOptions extends RemoteOptions {
  store?: string;
  vm?: string;
  snapshot?: string;
  detail?: boolean;
  exact?: boolean;
  json?: boolean;
}

export function registerStats(program: Command): void {
  const cmd = program
    .command('stats')
    .description('what the store holds and saves: logical vs stored bytes, dedup and compression, per VM and snapshot, sharing, garbage')
    .option('--vm <name>', 'one VM: its snapshots, unique bytes and sharing (implies --detail)')
    .option('--snapshot <id>', 'one snapshot: bytes added and bytes only it holds (implies --detail)')
    .option('--detail', 'per-snapshot unique bytes, the cross-VM sharing matrix and garbage (reads every manifest)')
    .option('--exact', 'recount the summary from manifests and the index and report whether the counters drifted')
    .option('--json', 'print exact integers with stable field names (docs/OPERATIONS.md)')
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(cmd, false)
    .addHelpText(
      'after',
      `
The summary comes from counters kept in the same commits as the data; on store format 3 its chunk and
pack figures are read from the packs' tables of contents (one read per pack). --detail, --vm and
--snapshot read every committed manifest once.

Examples:
  vnstore stats
  vnstore stats --detail --json
  vnstore stats --vm web1
`,
    )
    .action(
      action(async (opts: StatsCliOptions) => {
        const what = { vm: opts.vm, snapshot: opts.snapshot, detail: opts.detail, exact: opts.exact };
        const server = serverAddress(opts);
        const r = server
          ? await withRemote(opts, server, (client) => client.stats(what))
          : await withStore(
              opts,
              async (store) => {
                // Loaded when the command runs, so that other commands do not pay for it at start-up.
                const { storeStats } = await import('../maintenance/stats.js');
                return storeStats(store, what);
              },
              CATALOG_ONLY,
            );
        if (opts.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
        else process.stdout.write(render(r));
      }),
    );
}

function x(v: number | null): string {
  return v === null ? '-' : `${v.toFixed(2)}x`;
}

function pct(a: number, b: number): string {
  return b > 0 ? `${((a / b) * 100).toFixed(1)}%` : '-';
}

function grid(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((l) => l[i].length)));
  const fmt = (row: string[]) =>
    row
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join('  ')
      .trimEnd();
  return [fmt(header), ...rows.map(fmt)];
}

function render(r: StatsReport): string {
  const s = r.summary;
  const out: string[] = [];
  out.push(`store ${r.store}${r.source === 'recount' ? ' (counters initialised by a recount)' : ''}`);
  out.push(`snapshots        ${s.snapshots} (${s.vms} VM(s), ${s.groups} group(s))`);
  out.push(`logical          ${humanBytes(s.logicalBytes)} (${s.pages} pages, ${s.zeroPages} zero = ${pct(s.zeroPages, s.pages)})`);
  out.push(`distinct chunks  ${s.distinctChunks} (${humanBytes(s.chunkRawBytes)} before compression)`);
  out.push(`stored           ${humanBytes(s.storedBytes)} compressed payload`);
  out.push(
    `on disk          ${humanBytes(s.onDiskBytes)}: packs ${humanBytes(s.packBytes)} (${s.packs}), manifests ${humanBytes(s.manifestBytes + s.keptBaseManifestBytes)}, index ${humanBytes(s.indexBytes)}, table ${humanBytes(s.tableBytes)}` +
      (s.quarantineBytes ? `; quarantine ${humanBytes(s.quarantineBytes)}` : ''),
  );
  out.push(
    `metadata         ${humanBytes(s.metadataBytes)} = ${pct(s.metadataBytes, s.onDiskBytes)} of the store (pack tables ${humanBytes(s.packBytes - s.packPayloadBytes)}, manifests, index, table)`,
  );
  // From the counters, the chunk count includes chunks no snapshot references any more (forgotten or
  // aborted, until gc): the ratio is then only a lower bound of the one --detail computes.
  const dedup =
    s.dedupBasis === 'referenced-chunks' || s.dedupRatio === null ? x(s.dedupRatio) : `${x(s.dedupRatio)} or more (exact with --detail)`;
  out.push(`dedup ${dedup}   compression ${x(s.compressionRatio)}   overall reduction ${x(s.reduction)}`);
  if (r.garbage) {
    out.push(
      `garbage          ${humanBytes(r.garbage.totalPayloadBytes)} (${r.garbage.chunks} unreferenced chunks, ${humanBytes(r.garbage.unindexedPayloadBytes)} superseded copies); 'vnstore gc' reclaims it`,
    );
  } else out.push(`garbage          (run with --detail, or 'vnstore gc --dry-run')`);
  if (r.missingChunks) out.push(`WARNING: ${r.missingChunks} referenced chunk(s) are not indexed: run 'vnstore check'`);
  if (r.exact)
    out.push(
      r.exact.drifted
        ? `counters DRIFTED: ${JSON.stringify(r.exact.drift)} (run 'vnstore check --repair-index')`
        : 'counters exact (recount agrees)',
    );
  if (r.vmStats.length > 0) {
    out.push('');
    const detail = r.vmStats[0].uniqueBytes !== undefined;
    const header = ['VM', 'SNAPSHOTS', 'LOGICAL', 'ADDED', ...(detail ? ['CHUNKS', 'UNIQUE'] : [])];
    out.push(
      ...grid(
        header,
        r.vmStats.map((v) => [
          v.vm,
          String(v.snapshots),
          humanBytes(v.logicalBytes),
          humanBytes(v.addedBytes),
          ...(detail ? [String(v.distinctChunks), humanBytes(v.uniqueBytes!)] : []),
        ]),
      ),
    );
  }
  if (r.snapshotStats && r.snapshotStats.length > 0) {
    out.push('');
    out.push(
      ...grid(
        ['SNAPSHOT', 'VM', 'LOGICAL', 'ADDED', 'CHUNKS', 'UNIQUE'],
        r.snapshotStats.map((v) => [
          v.id,
          v.vm,
          humanBytes(v.logicalBytes),
          humanBytes(v.addedBytes),
          String(v.distinctChunks ?? '-'),
          v.uniqueBytes !== undefined ? humanBytes(v.uniqueBytes) : '-',
        ]),
      ),
    );
  }
  if (r.sharing && r.sharing.vms.length > 1) {
    out.push('');
    out.push("sharing: share of the row VM's distinct chunks also held by the column VM");
    out.push(
      ...grid(
        ['', ...r.sharing.vms],
        r.sharing.vms.map((vm, a) => [vm, ...r.sharing!.fraction[a].map((f) => (f === null ? '-' : `${(f * 100).toFixed(1)}%`))]),
      ),
    );
  }
  return out.join('\n') + '\n';
}
