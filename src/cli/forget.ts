import type { Command } from 'commander';
import { InvalidArgumentError, Option } from 'commander';
import type { ForgetDecision } from '../maintenance/forget.js';
import type { CalendarRules, CalendarUnit } from '../maintenance/retention.js';
import { CATALOG_ONLY, action, humanBytes, storeOption, lockWaitOption, usage, withStore } from './common.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';

interface ForgetOptions extends RemoteOptions {
  store?: string;
  group?: string[];
  keepLast?: string;
  keepWithin?: string;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  vm?: string;
  dryRun?: boolean;
  json?: boolean;
}

export function registerForget(program: Command): void {
  const cmd = program
    .command('forget')
    .description('remove snapshots from the catalog (by id, by group, or by a retention policy); space comes back with gc')
    .argument('[id...]', 'snapshot ids (or unique prefixes); a member of a group snapshot forgets the whole group')
    .option('--group <id...>', 'forget these group snapshots (all their VMs)')
    .option('--keep-last <n>', 'policy: keep the N latest snapshots of each VM, forget the rest')
    .option('--keep-within <duration>', 'policy: keep snapshots taken within DURATION (e.g. 7d, 12h, 1d12h; units s m h d w y)')
    .addOption(calendarOption('hourly', 'hours'))
    .addOption(calendarOption('daily', 'days'))
    .addOption(calendarOption('weekly', 'weeks (Monday to Sunday)'))
    .addOption(calendarOption('monthly', 'months'))
    .addOption(calendarOption('yearly', 'years'))
    .option('--vm <name>', 'apply the policy to this VM only')
    .option('--dry-run', 'list what would be forgotten and why; change nothing')
    .option(
      '--json',
      'print {dryRun, forgotten[], kept[], groupsForgotten[], manifestsKeptAsBase[], manifestsRemoved, logicalBytesForgotten}',
    )
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(cmd, false)
    .addHelpText(
      'after',
      `
A snapshot is kept when any policy rule keeps it. A group snapshot (one epoch of an environment) is
kept or forgotten whole. Forget only edits the catalog: run 'vnstore gc' to reclaim the space.

Calendar rules (as restic's): --keep-daily 7 keeps, for each VM, the latest snapshot of each of the
7 most recent days that have one (days without a snapshot do not count); likewise for hours, weeks,
months and years. Periods are UTC, weeks start on Monday.

Examples:
  vnstore forget 6b1f2a3c07b1e2f3
  vnstore forget --keep-last 3 --dry-run
  vnstore forget --keep-within 14d --keep-last 1 --vm web1
  vnstore forget --keep-hourly 24 --keep-daily 7 --keep-weekly 4 --keep-monthly 12
`,
    )
    .action(
      action(async (ids: string[], opts: ForgetOptions) => {
        let keepLast: number | undefined;
        if (opts.keepLast !== undefined) {
          if (!/^\d+$/.test(opts.keepLast)) throw usage(`--keep-last takes a whole number, got ${JSON.stringify(opts.keepLast)}`);
          keepLast = Number(opts.keepLast);
        }
        // Loaded when the command runs, so that other commands do not pay for it at start-up.
        const { forget, parseDuration } = await import('../maintenance/forget.js');
        const keepWithinMs = opts.keepWithin !== undefined ? parseDuration(opts.keepWithin) : undefined;
        const calendar: CalendarRules = {
          hourly: opts.keepHourly,
          daily: opts.keepDaily,
          weekly: opts.keepWeekly,
          monthly: opts.keepMonthly,
          yearly: opts.keepYearly,
        };
        const anyCalendar = Object.values(calendar).some((n) => n !== undefined);
        if (ids.length === 0 && !opts.group?.length && keepLast === undefined && keepWithinMs === undefined && !anyCalendar) {
          throw usage('nothing to forget: name snapshots, --group, or a policy (--keep-last, --keep-within, --keep-daily, ...)');
        }
        const request = {
          ids,
          groups: opts.group,
          keepLast,
          keepWithinMs,
          calendar: anyCalendar ? calendar : undefined,
          vm: opts.vm,
          dryRun: opts.dryRun,
        };
        const server = serverAddress(opts);
        const report = server
          ? await withRemote(opts, server, (client) => client.forget(request))
          : await withStore(opts, (store) => forget(store, request), CATALOG_ONLY);
        if (opts.json) {
          process.stdout.write(JSON.stringify(report, null, 2) + '\n');
          return;
        }
        const verb = report.dryRun ? 'would forget' : 'forgot';
        const out: string[] = [];
        out.push(
          `${verb} ${report.forgotten.length} snapshot(s), ${humanBytes(report.logicalBytesForgotten)} logical${report.groupsForgotten.length ? `, groups: ${report.groupsForgotten.join(', ')}` : ''}`,
        );
        if (report.forgotten.length > 0) out.push(...table(report.forgotten));
        if (report.kept.length > 0 && (keepLast !== undefined || keepWithinMs !== undefined || anyCalendar)) {
          out.push(`keeping ${report.kept.length} snapshot(s)`);
          out.push(...table(report.kept));
        }
        if (report.manifestsKeptAsBase.length > 0) {
          out.push(`manifests kept as delta bases of kept snapshots: ${report.manifestsKeptAsBase.join(', ')}`);
        }
        if (!report.dryRun && report.forgotten.length > 0) out.push("run 'vnstore gc' to reclaim the space");
        process.stdout.write(out.join('\n') + '\n');
      }),
    );
}

function table(rows: ForgetDecision[]): string[] {
  const header = ['ID', 'VM', 'GROUP', 'TIME', 'REASON'];
  const lines = rows.map((d) => [d.id, d.vm, d.group ?? '-', d.time.replace('T', ' ').replace(/\.\d+Z$/, 'Z'), d.reasons.join('; ')]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (row: string[]) =>
    '  ' +
    row
      .map((c, i) => c.padEnd(widths[i]))
      .join('  ')
      .trimEnd();
  return [fmt(header), ...lines.map(fmt)];
}

function calendarOption(unit: CalendarUnit, period: string): Option {
  return new Option(
    `--keep-${unit} <n>`,
    `policy: keep the latest snapshot of each of the N most recent ${period} that have one (UTC)`,
  ).argParser((v) => {
    if (!/^\d+$/.test(v) || Number(v) < 1) throw new InvalidArgumentError('takes a whole number >= 1');
    return Number(v);
  });
}
