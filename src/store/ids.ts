/** Snapshot ids: 16 hex digits, time-ordered (48-bit ms clock + 16 random bits), unique prefixes accepted. */
import { randomBytes } from 'node:crypto';

export const SNAPSHOT_ID_RE = /^[0-9a-f]{16}$/;
export const MIN_PREFIX = 4;
let lastMs = 0;

export function newSnapshotId(): string {
  // Strictly increasing time part within this process, so ids sort in creation order.
  const ms = Math.max(Date.now(), lastMs + 1);
  lastMs = ms;
  return ms.toString(16).padStart(12, '0') + randomBytes(2).toString('hex');
}

export function validateName(kind: string, name: string): string | undefined {
  if (name.length === 0 || name.length > 128) return `${kind} name must be 1-128 characters`;
  if (!/^[A-Za-z0-9][A-Za-z0-9._:@-]*$/.test(name)) return `${kind} name ${JSON.stringify(name)} may use letters, digits and . _ : @ - (starting with a letter or digit)`;
  return undefined;
}
