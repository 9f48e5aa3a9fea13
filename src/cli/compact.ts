import type { Command } from 'commander';
import type { CompactOptions, CompactReport } from '../maintenance/compact.js';
import { DEFAULT_COMPACT_LEVEL } from '../maintenance/compact-plan.js';
import { parseSize } from '../maintenance/gc-plan.js';
import { VnstoreError } from '../util/errors.js';
import { action, humanBytes, lockWaitOption, progressBar, storeOption, usage, withStore } from './common.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';

export interface CompactCliOptions {
  level?: string;
  minAge?: string;
  maxRepack?: string;
  dryRun?: boolean;
}

/** compact's options from the command line (shared with `gc --compact`); usage errors say which. */
export function compactOptions(opts: CompactCliOptions): CompactOptions {
  const level = opts.level === undefined ? undefined : Number(opts.level);
  if (level !== undefined && !(Number.isInteger(level) && level >= 1 && level <= 19))
    throw usage(`--level takes a whole number from 1 to 19, got ${JSON.stringify(opts.level)}`);
  const minAge = opts.minAge === undefined ? undefined : Number(opts.minAge);
  if (minAge !== undefined && !(Number.isFinite(minAge) && minAge >= 0))
    throw usage(`--min-age takes minutes (0 or more), got ${JSON.stringify(opts.minAge)}`);
  const maxRepackBytes = opts.maxRepack === undefined ? undefined : parseSize(opts.maxRepack);
  if (opts.maxRepack !== undefined && maxRepackBytes === undefined)
    throw usage(`--max-repack takes a size ("500M", "2G"), got ${JSON.stringify(opts.maxRepack)}`);
  return { level, minAgeMs: minAge === undefined ? undefined : minAge * 60_000, maxRepackBytes, dryRun: opts.dryRun };
}

/** Runs compact locally (with a progress bar on a TTY) or inside the server. */
export async function runCompactCommand(opts: RemoteOptions & { store?: string }, options: CompactOptions): Promise<CompactReport> {
  const server = serverAddress(opts);
  if (server) return withRemote(opts, server, (client) => client.compact(options)); // inside the server, beside sessions
  return withStore(opts, async (store) => {
    const { runCompact } = await import('../maintenance/compact.js');
    let bar: ReturnType<typeof progressBar> | undefined;
    try {
      return await runCompact(store, {
        ...options,
        onProgress: (done, total) => {
          bar ??= progressBar('compact', total * 4096);
          bar.update(done * 4096);
        },
      });
    } finally {
      bar?.stop();
    }
  });
}

interface CliOptions extends RemoteOptions, CompactCliOptions {
  store?: string;
  json?: boolean;
  verbose?: boolean;
}

export function registerCompact(program: Command): void {
  const cmd = program
    .command('compact')
    .description('recompress cold LZ4 pages into zstd containers of up to 16 distinct pages: a smaller store, restores as fast')
    .option(
      '--level <N>',
      `zstd level, 1..19: a higher level stores less and compacts slower, restores about as fast; ${DEFAULT_COMPACT_LEVEL} is measured as the best trade on real guest memory (docs/DESIGN.md)`,
      String(DEFAULT_COMPACT_LEVEL),
    )
    .option('--min-age <MINUTES>', 'leave packs sealed less than this many minutes ago (pre-copy rounds rewrite recent pages)', '15')
    .option('--max-repack <SIZE>', 'recompress at most this many live bytes in this run ("1G"); default: no bound')
    .option('--dry-run', 'print which packs would be compacted; change nothing')
    .option('--verbose', 'list every pack with its decision')
    .option('--json', 'print {dryRun, level, minAgeMs, live, plan, packBytesBefore, packBytesAfter, result, seconds}')
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(cmd, false)
    .addHelpText(
      'after',
      `
Cold = packs sealed at least --min-age minutes ago whose live pages are mostly LZ4. Their live pages
are decoded, verified against their digests, and written into new packs as zstd frames of up to 16
distinct pages each (64 KiB), in the order they were first stored (the order a restore of the
snapshot that brought them reads them); their dead pages are dropped. Restoring one page decodes at most one container. Safe beside open
sessions and crash-safe like gc: a new pack is durable and indexed before the old one is deleted.
Needs libzstd (see 'vnstore version'); reading compacted packs does not. Also: 'vnstore gc --compact'.

Examples:
  vnstore compact --dry-run            # what would be compacted
  vnstore compact                      # everything sealed more than 15 minutes ago
  vnstore compact --min-age 0 --json   # everything, now, machine-readable
`,
    )
    .action(
      action(async (opts: CliOptions) => {
        const report = await runCompactCommand(opts, compactOptions(opts));
        if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
        else process.stdout.write(renderCompact(report, opts.verbose ?? false));
        throwIfSkipped(report);
      }),
    );
}

/** Steps left undone (damaged chunks) make the command fail, as gc does. */
export function throwIfSkipped(report: CompactReport): void {
  const skipped = report.result?.skipped ?? [];
  if (skipped.length > 0) throw new VnstoreError('E_CORRUPT', `compact left ${skipped.length} step(s) undone: ${skipped[0].reason}`);
}

export function renderCompact(r: CompactReport, verbose: boolean): string {
  const t = r.plan.totals;
  const out: string[] = [];
  out.push(
    `compact (zstd level ${r.level}, packs older than ${r.minAgeMs / 60_000} min): ${t.packsChosen} of ${t.packs} pack(s), ${t.liveChunks} live chunks (${humanBytes(t.liveBytes)})`,
  );
  if (verbose) for (const p of r.plan.packs) out.push(`  ${p.id.toString(16).padStart(8, '0')}.vpk  ${p.action.padEnd(7)}  ${p.reason}`);
  if (r.dryRun) out.push(`dry run: nothing changed`);
  else if (r.result) {
    const x = r.result;
    out.push(
      `packs ${humanBytes(r.packBytesBefore)} -> ${humanBytes(r.packBytesAfter ?? r.packBytesBefore)} (${x.reclaimedBytes} bytes saved): ${x.packsRewritten} pack(s) rewritten into ${x.packsWritten.length}, ${x.chunksCopied} chunks, ${x.chunksRemoved} dead removed in ${r.seconds.toFixed(2)} s`,
    );
    for (const s of x.skipped) out.push(`skipped ${s.packs.join(', ')}: ${s.reason}`);
  } else out.push('nothing to compact');
  return out.join('\n') + '\n';
}
