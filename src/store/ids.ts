/**
 * Snapshot ids: 16 hex digits, time-ordered, unique prefixes accepted.
 *
 *   8 hex  Unix time in seconds     (so ids of snapshots a second or more apart differ in 8 digits)
 *   3 hex  milliseconds, 000-3e7     (strictly increasing within a process)
 *   5 hex  random                    (processes storing in the same millisecond)
 *
 * The order matters: the catalog lists snapshots, and picks a VM's latest (the default parent), in
 * id order. Ids of stores made before this layout (12 hex digits of Unix milliseconds, 4 random)
 * start with "01" until the year 2039 and sort before every id of this layout ("6" and up from
 * 2021), so mixed stores keep their order and old ids resolve as before.
 */
import { randomBytes } from 'node:crypto';
import { VnstoreError } from '../util/errors.js';

export const SNAPSHOT_ID_RE = /^[0-9a-f]{16}$/;
export const MIN_PREFIX = 4;
let lastMs = 0;

export function newSnapshotId(nowMs = Date.now()): string {
  // Strictly increasing time part within this process, so ids sort in creation order.
  const ms = Math.max(nowMs, lastMs + 1);
  lastMs = ms;
  return snapshotIdAt(ms, randomBytes(3).readUIntBE(0, 3) & 0xfffff);
}

/** The id for time `ms` (Unix milliseconds) and 20 random bits. */
export function snapshotIdAt(ms: number, random20: number): string {
  const seconds = Math.floor(ms / 1000);
  return seconds.toString(16).padStart(8, '0') + (ms % 1000).toString(16).padStart(3, '0') + random20.toString(16).padStart(5, '0');
}

/** The error for a prefix that matches several snapshots: how many, a few of them, and what to do. */
export function ambiguousPrefixError(prefix: string, matches: readonly string[]): VnstoreError {
  const shown = matches.slice(0, 3).join(', ');
  return new VnstoreError(
    'E_AMBIGUOUS',
    `snapshot prefix ${prefix} is ambiguous: it matches ${matches.length} snapshots (${shown}${matches.length > 3 ? ', ...' : ''}); give more digits ('vnstore ls' shows full ids)`,
  );
}

export function validateName(kind: string, name: string): string | undefined {
  if (name.length === 0 || name.length > 128) return `${kind} name must be 1-128 characters`;
  if (!/^[A-Za-z0-9][A-Za-z0-9._:@-]*$/.test(name))
    return `${kind} name ${JSON.stringify(name)} may use letters, digits and . _ : @ - (starting with a letter or digit)`;
  return undefined;
}
