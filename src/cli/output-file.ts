/** Writing a restored image to a file: a private temp file, renamed into place only once complete. */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { FILE_MODE, fsyncDir } from '../util/durable.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';

/**
 * Refuses an output that is a directory, or whose directory is missing or a file, before any work:
 * the temp file would be written in full first, and its failure would name the internal temp name.
 */
export async function checkOutputPath(output: string): Promise<string> {
  const out = path.resolve(output);
  if ((await fsp.stat(out).catch(() => undefined))?.isDirectory())
    throw new VnstoreError('E_USAGE', `output ${out} is a directory; name a file`);
  const parent = await fsp.stat(path.dirname(out)).catch(() => undefined);
  if (!parent) throw new VnstoreError('E_USAGE', `cannot write ${output}: directory ${path.dirname(out)} does not exist`);
  if (!parent.isDirectory()) throw new VnstoreError('E_USAGE', `cannot write ${output}: ${path.dirname(out)} is not a directory`);
  return out;
}

/**
 * Runs `fill` on a new temp file next to `out`, then (fsynced first with `sync`) renames it to `out`;
 * on any failure the temp file is removed and `out` is left as it was.
 */
export async function writeOutputFile(out: string, fill: (fh: FileHandle, tmp: string) => Promise<void>, sync = false): Promise<void> {
  await writeOutputFiles([out], (_, fh, tmp) => fill(fh, tmp), sync);
}

/**
 * Several outputs as one: each filled into its own temp file (in order), and only once every one is
 * complete are they renamed into place. On any failure every temp file is removed and no output is
 * touched, so a caller never leaves some of a set written.
 */
export async function writeOutputFiles(
  outs: string[],
  fill: (index: number, fh: FileHandle, tmp: string) => Promise<void>,
  sync = false,
  options: { journal?: string } = {},
): Promise<void> {
  const tmps = outs.map((out) => path.join(path.dirname(out), `.${path.basename(out)}.vnstore-${process.pid}.tmp`));
  let fh: FileHandle | undefined;
  let current = outs[0];
  try {
    for (let i = 0; i < outs.length; i++) {
      current = outs[i];
      fh = await fsp.open(tmps[i], 'wx', FILE_MODE);
      await fill(i, fh, tmps[i]);
      if (sync) await fh.sync();
      await fh.close();
      fh = undefined;
    }
    // With a journal, the renames are recorded first: a crash among them leaves the journal, and
    // recoverRenames completes them, so the outputs never stay a mix of old and new.
    if (options.journal)
      await writeJournal(
        options.journal,
        tmps.map((t, i) => [t, outs[i]]),
        sync,
      );
    for (let i = 0; i < outs.length; i++) {
      current = outs[i];
      await fsp.rename(tmps[i], outs[i]);
      failpoint('renamed');
    }
    if (options.journal) {
      if (sync) await fsyncDir(path.dirname(options.journal));
      await fsp.rm(options.journal);
    }
  } catch (err) {
    await fh?.close().catch(() => undefined);
    for (const tmp of tmps) await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw fromSystemError(err, `writing ${current}`);
  }
}

/**
 * A rename journal (version 1, JSON): `{"version": 1, "renames": [[tmp, out], ...]}`, names relative
 * to the journal's directory, written whole (temp file, then rename) before the first rename.
 */
async function writeJournal(journal: string, renames: [string, string][], sync: boolean): Promise<void> {
  const dir = path.dirname(journal);
  const tmp = `${journal}.${process.pid}.tmp`;
  const fh = await fsp.open(tmp, 'w', FILE_MODE);
  try {
    await fh.writeFile(JSON.stringify({ version: 1, renames: renames.map(([t, o]) => [path.relative(dir, t), path.relative(dir, o)]) }));
    if (sync) await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, journal);
  if (sync) await fsyncDir(dir);
}

/**
 * Completes the renames of a journal left by a crash (every temp file it names was complete
 * before it was written; one already renamed is gone) and removes it. Returns whether there was one.
 */
export async function recoverRenames(journal: string): Promise<boolean> {
  const dir = path.dirname(journal);
  let text: string;
  try {
    text = await fsp.readFile(journal, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw fromSystemError(err, `reading ${journal}`);
  }
  let doc: { version?: unknown; renames?: unknown };
  try {
    doc = JSON.parse(text) as typeof doc;
  } catch {
    throw new VnstoreError('E_CORRUPT', `${journal} is not a rename journal`);
  }
  if (doc.version !== 1)
    throw new VnstoreError(
      'E_FORMAT_VERSION',
      `${journal}: rename journal version ${String(doc.version)} is not supported (this vnstore reads 1)`,
    );
  const renames = doc.renames;
  const inside = (n: unknown) => typeof n === 'string' && n !== '' && !n.includes('/') && !n.includes('\\') && n !== '..' && n !== '.';
  if (!Array.isArray(renames) || !renames.every((r) => Array.isArray(r) && r.length === 2 && inside(r[0]) && inside(r[1])))
    throw new VnstoreError('E_CORRUPT', `${journal} is not a rename journal`);
  for (const [tmp, out] of renames as [string, string][]) {
    await fsp.rename(path.join(dir, tmp), path.join(dir, out)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw fromSystemError(err, `completing ${path.join(dir, out)}`);
    });
  }
  await fsyncDir(dir);
  await fsp.rm(journal);
  return true;
}

/**
 * Test hook, as VNSTORE_GC_FAILPOINT: VNSTORE_OUTPUT_FAILPOINT=renamed:<n> SIGKILLs the process
 * after its nth output rename, so a crash test can stop a group restore between two renames.
 */
const FAILPOINT = /^([a-z-]+):(\d+)$/.exec(process.env.VNSTORE_OUTPUT_FAILPOINT ?? '');
let failpointHits = 0;
function failpoint(point: string): void {
  if (FAILPOINT && FAILPOINT[1] === point && ++failpointHits >= Number(FAILPOINT[2])) process.kill(process.pid, 'SIGKILL');
}
