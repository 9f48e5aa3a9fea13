/** `vnstore bench`: space efficiency against the ideal and against other tools (see docs/BENCH.md). */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { ImageDirError } from '../bench/files.js';
import { renderMarkdown, renderSweepMarkdown } from '../bench/report.js';
import { defaultVnstoreCli, runBench, runSweep, SWEEP_KNOBS, type BenchResult, type SweepKnob, type SweepResult } from '../bench/run.js';
import { benchSvg, sweepSvg } from '../bench/svg.js';
import { COMPARE_WORDS, type ToolId } from '../bench/tools.js';
import { BENCH_WORKLOAD, resolveParams, WorkloadParamError, type WorkloadParams } from '../sim/workload.js';
import { VnstoreError } from '../util/errors.js';
import { action, usage } from './common.js';

interface BenchFlags {
  vms: number;
  memMib: number[];
  snapshots: number;
  zero: number;
  shared: number;
  random: number;
  dirty: number;
  seed: number;
  trailingBytes?: number;
  images?: string;
  compare?: ToolId[];
  json?: boolean;
  out?: string;
  sweep?: { knob: SweepKnob; values: number[] };
  workDir?: string;
  keep?: boolean;
  restoreAll?: boolean;
  quiet?: boolean;
}

const WORKLOAD_FLAGS = ['vms', 'memMib', 'snapshots', 'zero', 'shared', 'random', 'dirty', 'seed', 'trailingBytes'] as const;

function intArg(min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer ≥ ${min}.`);
    return n;
  };
}

function fracArg(v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError('expected a fraction from 0 to 1.');
  return n;
}

function mibListArg(v: string): number[] {
  const parts = v.split(',').map((s) => s.trim());
  const out = parts.map(Number);
  if (parts.some((s) => s === '') || out.some((n) => !Number.isFinite(n) || n * 256 < 0.5)) {
    throw new InvalidArgumentError('expected a comma-separated list of MiB per VM, e.g. 256,512,1024.');
  }
  return out;
}

function compareArg(v: string): ToolId[] {
  const ids = new Set<ToolId>();
  for (const word of v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const tools = COMPARE_WORDS[word];
    if (!tools) throw new InvalidArgumentError(`unknown tool '${word}'; choose from ${Object.keys(COMPARE_WORDS).join(', ')}.`);
    for (const t of tools) ids.add(t);
  }
  if (ids.size === 0) throw new InvalidArgumentError('expected a list of tools, e.g. restic,borg,casync.');
  return [...ids];
}

function sweepArg(v: string): { knob: SweepKnob; values: number[] } {
  const m = /^([a-z-]+)=(.+)$/.exec(v.trim());
  if (!m || !(m[1] in SWEEP_KNOBS))
    throw new InvalidArgumentError(`expected KNOB=V1,V2,... with KNOB one of ${Object.keys(SWEEP_KNOBS).join(', ')}.`);
  const values = m[2].split(',').map((s) => Number(s.trim()));
  if (values.some((n) => !Number.isFinite(n)) || m[2].split(',').some((s) => s.trim() === '')) {
    throw new InvalidArgumentError(`values of ${m[1]} must be numbers, e.g. ${m[1]}=0.01,0.05,0.1.`);
  }
  return { knob: m[1] as SweepKnob, values };
}

export function registerBench(program: Command): void {
  const d = BENCH_WORKLOAD;
  program
    .command('bench')
    .description('measure space efficiency and speed on a VNE-like workload or given images, against the ideal and other tools')
    .option('--vms <n>', 'number of VMs', intArg(1), d.vms)
    .addOption(
      new Option('--mem-mib <list>', 'MiB of memory per VM (cycled; sets --vms when --vms is not given)')
        .argParser(mibListArg)
        .default(d.memMiB, d.memMiB.join(',')),
    )
    .option('--snapshots <k>', 'consecutive snapshots per VM', intArg(1), d.snapshots)
    .option('--zero <f>', 'fraction of zero pages', fracArg, d.zeroFraction)
    .option('--shared <f>', "fraction of a VM's non-zero pages shared with other VMs", fracArg, d.sharedFraction)
    .option('--random <f>', 'fraction of non-zero pages that are incompressible', fracArg, d.randomFraction)
    .option('--dirty <f>', 'fraction of pages changed between consecutive snapshots', fracArg, d.dirtyFraction)
    .option('--seed <s>', 'workload seed', intArg(0), d.seed)
    .addOption(new Option('--trailing-bytes <n>', 'extra bytes per image (odd lengths)').argParser(intArg(0)).hideHelp())
    .option('--images <dir>', 'use existing raw images instead: one folder per VM, one file per snapshot')
    .option(
      '--compare <tools>',
      `also run these if installed: ${Object.keys(COMPARE_WORDS).join(', ')} (borg = default chunker and fixed,4096)`,
      compareArg,
    )
    .option(
      '--sweep <knob=v1,v2,...>',
      `repeat the bench for each value of one workload knob (${Object.keys(SWEEP_KNOBS).join(', ')})`,
      sweepArg,
    )
    .option('--json', 'print the results as JSON instead of Markdown')
    .option('--out <dir>', 'also write report.md, report.json and SVG charts there')
    .option('--work-dir <dir>', 'where images and repositories are made (default: the OS temp dir); removed afterwards')
    .option('--keep', 'keep the work directory')
    .option('--restore-all', 'peers restore and verify every image, not only the sample (vnstore always does)')
    .option('--quiet', 'no progress on stderr')
    .addHelpText(
      'after',
      `
Defaults follow measurements of freshly booted Linux guests (zero 0.61, shared 0.41, dirty 0.007 of pages
= 1.7% of non-zero pages, unique pages LZ4 to ~0.62). The workload model is in docs/BENCH.md.
Peers: apt-get install restic borgbackup casync; absent ones are skipped with a note.

Examples:
  vnstore bench --vms 3 --mem-mib 64,96,128 --compare restic,borg,casync --out bench/out
  vnstore bench --images ./images --json > result.json
  vnstore bench --mem-mib 64,128 --sweep dirty=0.01,0.05,0.1 --compare borg`,
    )
    .action(action(async (flags: BenchFlags, cmd: Command) => benchAction(flags, cmd)));
}

async function benchAction(flags: BenchFlags, cmd: Command): Promise<void> {
  const fromCli = (k: string) => cmd.getOptionValueSource(k) === 'cli';
  if (flags.images !== undefined) {
    const clash = WORKLOAD_FLAGS.filter(fromCli);
    if (clash.length) throw usage(`--images cannot be combined with workload flags (${clash.map(flagName).join(', ')})`);
    if (flags.sweep) throw usage('--sweep varies the generated workload; it cannot be combined with --images');
  }
  let params: WorkloadParams;
  try {
    params = resolveParams({
      vms: fromCli('memMib') && !fromCli('vms') ? flags.memMib.length : flags.vms,
      memMiB: flags.memMib,
      snapshots: flags.snapshots,
      zeroFraction: flags.zero,
      sharedFraction: flags.shared,
      randomFraction: flags.random,
      dirtyFraction: flags.dirty,
      seed: flags.seed,
      trailingBytes: flags.trailingBytes,
    });
  } catch (err) {
    if (err instanceof WorkloadParamError) throw usage(err.message);
    throw err;
  }
  for (const v of flags.sweep?.values ?? []) {
    try {
      resolveParams({ ...params, [SWEEP_KNOBS[flags.sweep!.knob]]: v });
    } catch (err) {
      if (err instanceof WorkloadParamError) throw usage(`--sweep ${flags.sweep!.knob}=${v}: ${err.message}`);
      throw err;
    }
  }
  const log = flags.quiet ? undefined : (line: string) => process.stderr.write(`bench: ${line}\n`);
  const base = {
    params,
    imagesDir: flags.images,
    compare: flags.compare ?? [],
    workDir: flags.workDir,
    keep: flags.keep,
    restoreAll: flags.restoreAll,
    vnstoreCli: defaultVnstoreCli(),
    log,
  };
  let result: BenchResult | SweepResult;
  try {
    result = flags.sweep ? await runSweep(base, flags.sweep.knob, flags.sweep.values) : await runBench(base);
  } catch (err) {
    if (err instanceof VnstoreError) throw err;
    if (err instanceof ImageDirError) throw new VnstoreError('E_INPUT', `--images ${err.message}`, { cause: err });
    throw new VnstoreError('E_IO', `bench: ${(err as Error).message}`, { cause: err });
  }
  const markdown = 'runs' in result ? renderSweepMarkdown(result) : renderMarkdown(result);
  const json = JSON.stringify(result, null, 2) + '\n';
  process.stdout.write(flags.json ? json : markdown + '\n');
  if (flags.out) {
    await mkdir(flags.out, { recursive: true });
    await writeFile(join(flags.out, 'report.md'), markdown + '\n');
    await writeFile(join(flags.out, 'report.json'), json);
    if ('runs' in result) {
      await writeFile(join(flags.out, 'sweep.svg'), sweepSvg(result));
      for (const [k, run] of result.runs.entries())
        await writeFile(join(flags.out, `bench-${result.knob}-${result.values[k]}.svg`), benchSvg(run));
    } else await writeFile(join(flags.out, 'bench.svg'), benchSvg(result));
    log?.(`wrote ${flags.out}/report.md, report.json and the SVG chart${'runs' in result ? 's' : ''}`);
  }
  const runs = 'runs' in result ? result.runs : [result];
  const bad = runs.flatMap((r) => r.tools.filter((t) => t.tool === 'vnstore' && t.restore.failed.length > 0));
  if (bad.length)
    throw new VnstoreError(
      'E_CORRUPT',
      `vnstore restored images that differ from the originals: ${bad.flatMap((t) => t.restore.failed).join(', ')}`,
    );
}

function flagName(k: string): string {
  return `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}
