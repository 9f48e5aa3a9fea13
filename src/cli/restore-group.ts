/**
 * `vnstore restore --group ID -o DIR`: every member of one group (each VM's memory, its disk, the
 * channel state) as DIR/<member>.img. Each member is verified as it is written to a temp file; the
 * files are renamed into place only once all of them are verified, so a damaged member refuses the
 * whole group and leaves DIR as it was.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { GroupSource } from '../coordinator/group-source.js';
import { writeFully } from '../util/durable.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';
import { writeOutputFiles } from './output-file.js';

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

export async function restoreGroupToDir(source: GroupSource, group: string, dir: string, options: { sync?: boolean } = {}): Promise<RestoredMember[]> {
  const members = await source.members(group);
  if (members.length === 0) throw new VnstoreError('E_NOT_FOUND', `no group ${group}`);
  const out = path.resolve(dir);
  const stat = await fsp.stat(out).catch(() => undefined);
  if (stat && !stat.isDirectory()) throw new VnstoreError('E_USAGE', `output ${out} is not a directory`);
  if (!stat) await fsp.mkdir(out, { recursive: true, mode: 0o700 }).catch((err: unknown) => Promise.reject(fromSystemError(err, `creating ${out}`)));
  const files = members.map((r) => path.join(out, memberFileName(r.vm)));
  if (new Set(files).size !== files.length) throw new VnstoreError('E_CORRUPT', `group ${group} names a member twice`);
  await writeOutputFiles(files, (i, fh) => source.restore(members[i], (b) => writeFully(fh, b)), options.sync);
  return members.map((r, i) => ({ vm: r.vm, id: r.id, file: files[i], bytes: r.byteLength, imageDigest: r.imageDigest }));
}
