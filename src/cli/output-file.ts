/** Writing a restored image to a file: a private temp file, renamed into place only once complete. */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { FILE_MODE } from '../util/durable.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';

/**
 * Refuses an output that is a directory, or whose directory is missing or a file, before any work:
 * the temp file would be written in full first, and its failure would name the internal temp name.
 */
export async function checkOutputPath(output: string): Promise<string> {
  const out = path.resolve(output);
  if ((await fsp.stat(out).catch(() => undefined))?.isDirectory()) throw new VnstoreError('E_USAGE', `output ${out} is a directory; name a file`);
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
export async function writeOutputFiles(outs: string[], fill: (index: number, fh: FileHandle, tmp: string) => Promise<void>, sync = false): Promise<void> {
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
    for (let i = 0; i < outs.length; i++) {
      current = outs[i];
      await fsp.rename(tmps[i], outs[i]);
    }
  } catch (err) {
    await fh?.close().catch(() => undefined);
    for (const tmp of tmps) await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw fromSystemError(err, `writing ${current}`);
  }
}
