/**
 * `vnstore restore --group ID -o DIR`: every member of one group (each VM's memory, its disk, the
 * channel state) as DIR/<member>.img. Each member is verified as it is written to a temp file; the
 * files are renamed into place only once all of them are verified, so a damaged member refuses the
 * whole group and leaves DIR as it was. The renames are journalled (DIR/.vnstore-restore.journal):
 * a crash among them leaves the journal, and the next `restore --group` into DIR completes them
 * first, so DIR never stays a mix of two groups' members.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { GroupSource } from '../coordinator/group-source.js';
import { writeFully } from '../util/durable.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';
import { recoverRenames, writeOutputFiles } from './output-file.js';

/** In DIR while a group restore renames its members into place (docs/COORDINATION.md). */
export const RESTORE_JOURNAL = '.vnstore-restore.journal';

export interface RestoredMember {
  vm: string;
  id: string;
  file: string;
  bytes: number;
  imageDigest: string;
}

/** The file a member restores to: `<member>.img` (docs/COORDINATION.md). */
export function memberFileName(vm: string): string {
  // Member names come from the catalog: never let one name a path outside DIR.
  if (vm === '' || vm === '.' || vm === '..' || vm.includes('/') || vm.includes('\\') || vm.includes('\0')) {
    throw new VnstoreError('E_CORRUPT', `group member name ${JSON.stringify(vm)} cannot be a file name`);
  }
  return `${vm}.img`;
}

export async function restoreGroupToDir(
  source: GroupSource,
  group: string,
  dir: string,
  options: { sync?: boolean } = {},
): Promise<RestoredMember[]> {
  const out = path.resolve(dir);
  const stat = await fsp.stat(out).catch(() => undefined);
  if (stat && !stat.isDirectory()) throw new VnstoreError('E_USAGE', `output ${out} is not a directory`);
  // First finish a restore into DIR that a crash interrupted among its renames, whatever comes next.
  const journal = path.join(out, RESTORE_JOURNAL);
  if (stat) await recoverRenames(journal);
  const members = await source.members(group);
  if (members.length === 0) throw new VnstoreError('E_NOT_FOUND', `no group ${group}`);
  if (!stat)
    await fsp.mkdir(out, { recursive: true, mode: 0o700 }).catch((err: unknown) => Promise.reject(fromSystemError(err, `creating ${out}`)));
  const files = members.map((r) => path.join(out, memberFileName(r.vm)));
  if (new Set(files).size !== files.length) throw new VnstoreError('E_CORRUPT', `group ${group} names a member twice`);
  await writeOutputFiles(files, (i, fh) => source.restore(members[i], (b) => writeFully(fh, b)), options.sync, { journal });
  return members.map((r, i) => ({ vm: r.vm, id: r.id, file: files[i], bytes: r.byteLength, imageDigest: r.imageDigest }));
}
