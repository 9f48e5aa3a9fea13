/**
 * The QEMU state image (docs/FORMAT.md, "QEMU state image"): what a migration stream holds besides
 * RAM pages, stored as a snapshot of its own (VM `<name>.qemu`) beside the RAM snapshot, so its bytes
 * are chunked, deduplicated and verified like any page. Pure codec.
 */
import { crc32 } from 'node:zlib';
import { CorruptError } from '../util/errors.js';
import type { RamBlock, RamSectionId, StreamConfig } from './stream-format.js';

export const STATE_MAGIC = 'VNSTQEMU';
export const STATE_VERSION = 1;
/** Suffix of the VM name under which a VM's state images are stored. */
export const STATE_VM_SUFFIX = '.qemu';

export interface QemuProcessInfo {
  /** `qemu-system-x86_64 --version`'s first line. */
  version?: string;
  /** The source QEMU's argv (its executable first). */
  commandLine?: string[];
}

export interface StateMeta {
  /** The RAM snapshot this state belongs to (committed in the same group). */
  ramSnapshot: string;
  vm: string;
  machine?: string;
  qemu: QemuProcessInfo;
  config?: StreamConfig;
  ram: RamSectionId;
  footers: boolean;
  /** RAM blocks in stream order; block k occupies pages firstPage.. of the RAM snapshot. */
  blocks: (RamBlock & { firstPage: number })[];
  stream: { bytes: number; ramSections: number; pageRecords: number; zeroRecords: number };
}

export interface StateImage {
  meta: StateMeta;
  /** Stream bytes from the magic to the end of the configuration section. */
  head: Buffer;
  /** Device sections, EOF and VM description. */
  tail: Buffer;
}

const HEADER_BYTES = 12;

export function encodeStateImage(s: StateImage): Buffer {
  const meta = Buffer.from(JSON.stringify(s.meta), 'utf8');
  const out = Buffer.alloc(HEADER_BYTES + 4 + meta.length + 4 + s.head.length + 4 + s.tail.length + 4);
  let at = out.write(STATE_MAGIC, 0, 'latin1');
  at = out.writeUInt16LE(STATE_VERSION, at);
  at = out.writeUInt16LE(0, at);
  for (const part of [meta, s.head, s.tail]) {
    at = out.writeUInt32LE(part.length, at);
    at += part.copy(out, at);
  }
  out.writeUInt32LE(crc32(out.subarray(0, at)), at);
  return out;
}

export function decodeStateImage(bytes: Buffer, what: string): StateImage {
  const bad = (why: string) => new CorruptError(`${what}: not a valid QEMU state image (${why})`);
  if (bytes.length < HEADER_BYTES + 16 || bytes.toString('latin1', 0, 8) !== STATE_MAGIC) throw bad('magic');
  const version = bytes.readUInt16LE(8);
  if (version !== STATE_VERSION) throw bad(`version ${version}, this vnstore reads ${STATE_VERSION}`);
  if (bytes.readUInt32LE(bytes.length - 4) !== crc32(bytes.subarray(0, bytes.length - 4))) throw bad('checksum');
  let at = HEADER_BYTES;
  const parts: Buffer[] = [];
  for (let k = 0; k < 3; k++) {
    if (at + 4 > bytes.length - 4) throw bad('length');
    const n = bytes.readUInt32LE(at);
    at += 4;
    if (at + n > bytes.length - 4) throw bad('length');
    parts.push(bytes.subarray(at, at + n));
    at += n;
  }
  if (at !== bytes.length - 4) throw bad('trailing bytes');
  return { meta: JSON.parse(parts[0].toString('utf8')) as StateMeta, head: Buffer.from(parts[1]), tail: Buffer.from(parts[2]) };
}
