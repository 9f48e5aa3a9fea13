import type { Command } from 'commander';
import type { GcReport } from '../maintenance/gc.js';
import { parseMaxUnused, parseSize } from '../maintenance/gc-plan.js';
import { VnstoreError } from '../util/errors.js';
import { action, humanBytes, storeOption, lockWaitOption, usage, withStore } from './common.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';
import { renderCompact, runCompactCommand, throwIfSkipped } from './compact.js';

interface GcCliOptions extends RemoteOptions {
  store?: string;
  dryRun?: boolean;
  maxUnused: string;
  maxRepack?: string;
  repackSmall?: boolean;
  verbose?: boolean;
  json?: boolean;
  compact?: boolean;
}

export function registerGc(program: Command): void {
  const cmd = program
    .command('gc')
    .description(
      'reclaim space: drop packs with no live chunk, rewrite the sparsest packs (copying live chunks; the live pages of a compacted container stay in zstd containers) until unused bytes are within --max-unused',
    )
    .option('--dry-run', 'print the plan and the bytes it would reclaim; change nothing')
    .option(
      '--max-unused <PCT|SIZE>',
      'unused bytes gc may leave in kept packs: a percentage of the pack bytes after gc ("5%"), a size ("200M", "0": reclaim every dead byte) or "unlimited" (only drop dead packs)',
      '5%',
    )
    .option('--max-repack <SIZE>', 'copy at most this many live bytes in this run ("1G"); default: no bound')
    .option('--repack-small', 'also merge packs smaller than a quarter of the pack size')
    .option('--compact', "then compact cold LZ4 pages into zstd containers, with compact's defaults (see 'vnstore compact --help')")
    .option('--verbose', 'list every pack with its decision')
    .option('--json', 'print {dryRun, live, plan, keptBasesUnneeded, result, seconds} with exact integers')
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(cmd, false)
    .addHelpText(
      'after',
      `
Live = chunks of every committed snapshot and of open sessions. Unused = dead payload bytes in
packs that also hold live chunks. Packs with no live chunk are always dropped; then packs are
rewritten sparsest first until the unused bytes left are within --max-unused (as restic's prune),
copying no more than --max-repack. Crash-safe: a rewritten pack is durable and indexed before the
old one is deleted (docs/OPERATIONS.md). Sizes take K, M, G, T (powers of 1024).

Examples:
  vnstore gc --dry-run                 # what a default run would do
  vnstore gc --max-unused 0 --json     # reclaim every dead byte
  vnstore gc --max-repack 2G           # bound the copying of one nightly run
`,
    )
    .action(
      action(async (opts: GcCliOptions) => {
        const maxUnused = parseMaxUnused(opts.maxUnused);
        if (!maxUnused)
          throw usage(
            `--max-unused takes a percentage below 100 ("5%"), a size ("200M") or "unlimited", got ${JSON.stringify(opts.maxUnused)}`,
          );
        const maxRepackBytes = opts.maxRepack === undefined ? undefined : parseSize(opts.maxRepack);
        if (opts.maxRepack !== undefined && maxRepackBytes === undefined)
          throw usage(`--max-repack takes a size ("500M", "2G"), got ${JSON.stringify(opts.maxRepack)}`);
        const gcOpts = { dryRun: opts.dryRun, maxUnused, maxRepackBytes, repackSmall: opts.repackSmall };
        const server = serverAddress(opts);
        const report = server
          ? await withRemote(opts, server, (client) => client.gc(gcOpts)) // runs inside the server, beside ingest
          : await withStore(opts, async (store) => {
              // Loaded when the command runs, so that other commands do not pay for it at start-up.
              const { runGc } = await import('../maintenance/gc.js');
              return runGc(store, gcOpts);
            });
        const compacted = opts.compact ? await runCompactCommand(opts, { dryRun: opts.dryRun }) : undefined;
        if (opts.json) process.stdout.write(JSON.stringify(compacted ? { ...report, compact: compacted } : report, null, 2) + '\n');
        else {
          process.stdout.write(render(report, opts.verbose ?? false));
          if (compacted) process.stdout.write(renderCompact(compacted, opts.verbose ?? false));
        }
        const skipped = report.result?.skipped ?? [];
        if (skipped.length > 0) {
          throw new VnstoreError('E_CORRUPT', `gc left ${skipped.length} step(s) undone: ${skipped[0].reason}`);
        }
        if (compacted) throwIfSkipped(compacted);
      }),
    );
}

function render(r: GcReport, verbose: boolean): string {
  const t = r.plan.totals;
  const out: string[] = [];
  out.push(
    `live: ${r.live.snapshots} snapshot(s), ${r.live.chunks} distinct chunks${r.live.sessions ? `, ${r.live.sessions} open session(s)` : ''}`,
  );
  out.push(
    `packs: ${t.packs} (${humanBytes(t.packBytes)}), dead payload ${humanBytes(t.deadBytes)}; plan: drop ${r.plan.drop.length}, rewrite ${r.plan.rewrite.length} into ${r.plan.newPacks.length} (copy ${humanBytes(t.bytesCopied)}), keep ${t.packs - r.plan.drop.length - r.plan.rewrite.length}`,
  );
  const target = t.maxUnusedBytes === null ? 'unlimited' : humanBytes(t.maxUnusedBytes);
  out.push(
    `unused after gc: ${humanBytes(t.deadBytesKept)} of ${humanBytes(t.packBytesAfter)} (target ${target}${t.maxUnusedBytes !== null && t.deadBytesKept > t.maxUnusedBytes ? '; not reached: --max-repack bounds this run' : ''})`,
  );
  if (verbose) {
    for (const p of r.plan.packs) {
      out.push(
        `  ${p.id.toString(16).padStart(8, '0')}.vpk  ${p.action.padEnd(7)}  ${humanBytes(p.bytes).padStart(10)}  live ${p.liveChunks}/${p.indexedChunks} chunks, ${(p.liveFraction * 100).toFixed(1)}%  (${p.reason})`,
      );
    }
  }
  if (r.keptBasesUnneeded.length > 0) out.push(`kept base manifests no longer needed: ${r.keptBasesUnneeded.length}`);
  if (r.dryRun) {
    out.push(
      `would reclaim ${humanBytes(t.reclaimBytes)} (${t.reclaimBytes} bytes) of pack files; dead payload left in kept packs: ${humanBytes(t.deadBytesKept)}`,
    );
  } else if (r.result) {
    const x = r.result;
    out.push(
      `reclaimed ${humanBytes(x.reclaimedBytes)} (${x.reclaimedBytes} bytes): ${x.packsDropped} pack(s) dropped, ${x.packsRewritten} rewritten into ${x.packsWritten.length}, ${x.chunksRemoved} dead chunks removed, ${x.chunksCopied} copied${x.keptBasesRemoved ? `, ${x.keptBasesRemoved} base manifest(s) removed` : ''} in ${r.seconds.toFixed(2)} s`,
    );
    for (const s of x.skipped) out.push(`skipped ${s.packs.join(', ')}: ${s.reason}`);
  }
  return out.join('\n') + '\n';
}
