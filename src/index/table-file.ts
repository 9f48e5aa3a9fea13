/**
 * Saved chunk table (DIR/chunk-table.bin), so opening a store does not rebuild the table from LevelDB
 * entry by entry. Only occupied slots are saved (16 B a chunk; the table is rebuilt by insertion on
 * load). It is a cache: used only when its generation token equals the one LevelDB holds ('m'
 * "chunkgen", rewritten in every batch that changes chunk entries) and its checksum holds; otherwise
 * the table is rebuilt from the index. Format (little-endian; docs/FORMAT.md):
 *   magic "VNSTTABL" | u16 version=3 | u16 slotWords=4 | u32 count | u32 reserved | token[16]
 *   | seed[12] | u32 reserved | count × 4 u32 words | u32 crc32 of everything before it
 * The seed keys the slots' fingerprints (chunk-table.ts), so it travels with them. A file of
 * another version (2: unkeyed fingerprints, no seed) is ignored like a stale one: rebuilt, not read.
 */
import { promises as fsp } from 'node:fs';
import { crc32 } from 'node:zlib';
import { writevFully } from '../util/durable.js';
import { ChunkTable, SEED_BYTES, SLOT_WORDS } from './chunk-table.js';

const MAGIC = Buffer.from('VNSTTABL', 'latin1');
export const TABLE_FILE_VERSION = 3;
const TOKEN_AT = 20;
const SEED_AT = TOKEN_AT + 16;
const HEADER_BYTES = SEED_AT + SEED_BYTES + 4;

export async function readTableFile(file: string, token: Buffer): Promise<ChunkTable | undefined> {
  let buf: Buffer;
  try {
    buf = await fsp.readFile(file);
  } catch {
    return undefined;
  }
  if (buf.length < HEADER_BYTES + 4 || !buf.subarray(0, 8).equals(MAGIC)) return undefined;
  if (buf.readUInt16LE(8) !== TABLE_FILE_VERSION || buf.readUInt16LE(10) !== SLOT_WORDS) return undefined;
  const count = buf.readUInt32LE(12);
  if (!buf.subarray(TOKEN_AT, TOKEN_AT + 16).equals(token)) return undefined;
  if (buf.length !== HEADER_BYTES + count * SLOT_WORDS * 4 + 4) return undefined;
  if (crc32(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4)) return undefined;
  // The slots are read in place when the file's bytes sit 4-byte aligned (a fresh buffer: always),
  // not copied first: a copy of megabytes costs a page fault per 4 KiB on this project's machine.
  const at = buf.byteOffset + HEADER_BYTES;
  const words =
    at % 4 === 0 ? new Uint32Array(buf.buffer, at, count * SLOT_WORDS) : new Uint32Array(buf.buffer.slice(at, at + count * SLOT_WORDS * 4));
  return ChunkTable.fromSlots(words, count, buf.subarray(SEED_AT, SEED_AT + SEED_BYTES));
}

export async function writeTableFile(file: string, tmp: string, table: ChunkTable, token: Buffer): Promise<void> {
  const slots = table.occupiedSlots();
  const header = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(header, 0);
  header.writeUInt16LE(TABLE_FILE_VERSION, 8);
  header.writeUInt16LE(SLOT_WORDS, 10);
  header.writeUInt32LE(slots.length / SLOT_WORDS, 12);
  token.copy(header, TOKEN_AT);
  table.seed.copy(header, SEED_AT);
  const body = Buffer.from(slots.buffer, slots.byteOffset, slots.byteLength);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(body, crc32(header)));
  // Three buffers in one writev: no concatenated copy of the slots.
  const fh = await fsp.open(tmp, 'w', 0o600);
  try {
    await writevFully(fh, [header, body, crc]);
    await fh.close();
  } catch (err) {
    // A full disk: no half-written temp file may keep holding the space.
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  await fsp.rename(tmp, file);
}
