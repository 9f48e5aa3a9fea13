/**
 * Reads LevelDB's own files far enough to check them before LevelDB opens them (see index-check.ts):
 * the MANIFEST's log records (which tables are live, and their sizes) and a table's blocks (each one's
 * checksum, and that they tile the file). Formats: leveldb doc/log_format.md and doc/table_format.md
 * (LevelDB 1.20, as classic-level bundles it). Pure: bytes in, findings out.
 */
import { ByteReader } from '../format/varint.js';
import { crc32c, maskCrc } from '../util/crc32c.js';
import { snappyUncompress } from '../util/snappy.js';

/** A file's bytes do not read as LevelDB wrote them; `message` says where. */
export class LevelFileDamage extends Error {}

const LOG_BLOCK = 32768;
const LOG_HEADER = 7; // masked crc32c u32 · length u16 · type u8
const enum LogType {
  Zero = 0,
  Full = 1,
  First = 2,
  Middle = 3,
  Last = 4,
}

/**
 * The records of a LevelDB log file (the MANIFEST is one), reassembled from their fragments. As
 * LevelDB's reader: a header or record cut short by the end of the file is a write a crash stopped
 * (the end); anything else that does not read is damage.
 */
export function readLogRecords(bytes: Uint8Array): Buffer[] {
  const records: Buffer[] = [];
  let parts: Uint8Array[] | undefined;
  let pos = 0;
  while (pos < bytes.length) {
    const blockLeft = LOG_BLOCK - (pos % LOG_BLOCK);
    if (blockLeft < LOG_HEADER) {
      pos += blockLeft; // the block's trailer: zeros the writer pads with
      continue;
    }
    if (pos + LOG_HEADER > bytes.length) break;
    const length = bytes[pos + 4] | (bytes[pos + 5] << 8);
    const type = bytes[pos + 6];
    if (type === LogType.Zero && length === 0) {
      pos += blockLeft; // preallocated space (LevelDB skips it the same way)
      continue;
    }
    if (LOG_HEADER + length > blockLeft) {
      if (pos + LOG_HEADER + length > bytes.length) break;
      throw new LevelFileDamage(`log record at ${pos}: length ${length} runs past its block`);
    }
    if (pos + LOG_HEADER + length > bytes.length) break;
    const data = bytes.subarray(pos + LOG_HEADER, pos + LOG_HEADER + length);
    const stored = (bytes[pos] | (bytes[pos + 1] << 8) | (bytes[pos + 2] << 16) | (bytes[pos + 3] << 24)) >>> 0;
    if (maskCrc(crc32c(bytes.subarray(pos + 6, pos + 7), data)) !== stored)
      throw new LevelFileDamage(`log record at ${pos} fails its checksum`);
    if (type === LogType.Full && !parts) records.push(Buffer.from(data));
    else if (type === LogType.First && !parts) parts = [data];
    else if (type === LogType.Middle && parts) parts.push(data);
    else if (type === LogType.Last && parts) {
      parts.push(data);
      records.push(Buffer.concat(parts));
      parts = undefined;
    } else throw new LevelFileDamage(`log record at ${pos} has type ${type} out of place`);
    pos += LOG_HEADER + length;
  }
  return records;
}

/** A reader of LevelDB's varints and length-prefixed slices; bad bytes throw LevelFileDamage. */
function cursor(bytes: Uint8Array, what: string): ByteReader {
  return new ByteReader(bytes, what, (message) => new LevelFileDamage(message));
}

/** VersionEdit tags (leveldb db/version_edit.cc). */
const enum EditTag {
  Comparator = 1,
  LogNumber = 2,
  NextFileNumber = 3,
  LastSequence = 4,
  CompactPointer = 5,
  DeletedFile = 6,
  NewFile = 7,
  PrevLogNumber = 9,
}

/** The live tables a MANIFEST describes: file number → size in bytes, after all its edits. */
export function liveTables(manifest: Uint8Array): Map<number, number> {
  const live = new Map<number, number>();
  for (const record of readLogRecords(manifest)) {
    const c = cursor(record, 'MANIFEST edit');
    const added: [number, number][] = [];
    while (c.remaining > 0) {
      const tag = c.varint();
      switch (tag) {
        case EditTag.Comparator:
          c.bytes(c.varint());
          break;
        case EditTag.LogNumber:
        case EditTag.NextFileNumber:
        case EditTag.LastSequence:
        case EditTag.PrevLogNumber:
          c.varint();
          break;
        case EditTag.CompactPointer:
          c.varint();
          c.bytes(c.varint());
          break;
        case EditTag.DeletedFile:
          c.varint();
          live.delete(c.varint());
          break;
        case EditTag.NewFile: {
          c.varint();
          const number = c.varint();
          const size = c.varint();
          c.bytes(c.varint());
          c.bytes(c.varint());
          added.push([number, size]);
          break;
        }
        default:
          throw new LevelFileDamage(`MANIFEST edit: unknown tag ${tag}`);
      }
    }
    // As LevelDB applies an edit: its deletions first, then its additions.
    for (const [number, size] of added) live.set(number, size);
  }
  return live;
}

const FOOTER = 48; // two block handles padded to 40 bytes, then the magic number
const TABLE_MAGIC = Buffer.from([0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb]); // 0xdb4775248b80fb57, little-endian
const BLOCK_TRAILER = 5; // type u8 (0 raw, 1 snappy) · masked crc32c of contents + type

interface BlockHandle {
  offset: number;
  size: number;
}

function readHandle(c: ByteReader): BlockHandle {
  return { offset: c.varint(), size: c.varint() };
}

/** A block's contents once its checksum holds, uncompressed. */
function readBlock(table: Uint8Array, h: BlockHandle, what: string): Uint8Array {
  if (h.offset + h.size + BLOCK_TRAILER > table.length - FOOTER)
    throw new LevelFileDamage(`${what} at ${h.offset} (${h.size} bytes) runs past the table's blocks`);
  const contents = table.subarray(h.offset, h.offset + h.size);
  const trailer = table.subarray(h.offset + h.size, h.offset + h.size + BLOCK_TRAILER);
  const stored = (trailer[1] | (trailer[2] << 8) | (trailer[3] << 16) | (trailer[4] << 24)) >>> 0;
  if (maskCrc(crc32c(contents, trailer.subarray(0, 1))) !== stored)
    throw new LevelFileDamage(`${what} at ${h.offset} (${h.size} bytes) fails its checksum`);
  if (trailer[0] === 0) return contents;
  if (trailer[0] !== 1) throw new LevelFileDamage(`${what} at ${h.offset}: unknown compression ${trailer[0]}`);
  try {
    return snappyUncompress(contents);
  } catch (err) {
    throw new LevelFileDamage(`${what} at ${h.offset}: ${(err as Error).message}`);
  }
}

/** A block's entries, keys restored from their shared prefixes. */
function blockEntries(block: Uint8Array, what: string): [Uint8Array, Uint8Array][] {
  if (block.length < 4) throw new LevelFileDamage(`${what}: shorter than its restart count`);
  const restarts = Buffer.from(block.buffer, block.byteOffset, block.length).readUInt32LE(block.length - 4);
  const end = block.length - 4 - 4 * restarts;
  if (restarts === 0 || end < 0) throw new LevelFileDamage(`${what}: bad restart count ${restarts}`);
  const c = cursor(block.subarray(0, end), what);
  const entries: [Uint8Array, Uint8Array][] = [];
  let key: Uint8Array = new Uint8Array(0);
  while (c.remaining > 0) {
    const shared = c.varint();
    const unshared = c.varint();
    const valueLength = c.varint();
    if (shared > key.length) throw new LevelFileDamage(`${what}: entry shares ${shared} bytes of a ${key.length}-byte key`);
    key = shared === 0 ? c.bytes(unshared) : Buffer.concat([key.subarray(0, shared), c.bytes(unshared)]);
    entries.push([key, c.bytes(valueLength)]);
  }
  return entries;
}

/** The parts of a table its footer and index name, each block with its handle. */
interface TableLayout {
  metaindex: BlockHandle;
  index: BlockHandle;
  /** Data blocks, with the index entry (separator key, handle bytes) that names each. */
  data: { handle: BlockHandle; entry: [Uint8Array, Uint8Array] }[];
  /** The filter block, if the metaindex names one. */
  meta: BlockHandle[];
}

/** Reads the footer, index and metaindex (each checked); throws LevelFileDamage. */
function readLayout(table: Uint8Array): TableLayout {
  if (table.length < FOOTER) throw new LevelFileDamage(`${table.length} bytes: shorter than a table's footer`);
  const footer = table.subarray(table.length - FOOTER);
  if (!Buffer.from(footer.subarray(FOOTER - 8)).equals(TABLE_MAGIC)) throw new LevelFileDamage('bad magic number in the footer');
  const f = cursor(footer.subarray(0, FOOTER - 8), 'footer');
  const metaindex = readHandle(f);
  const index = readHandle(f);
  const data = blockEntries(readBlock(table, index, 'index block'), 'index block').map((entry) => ({
    handle: readHandle(cursor(entry[1], 'index entry')),
    entry,
  }));
  const meta = blockEntries(readBlock(table, metaindex, 'metaindex block'), 'metaindex block').map(([, v]) =>
    readHandle(cursor(v, 'metaindex entry')),
  );
  return { metaindex, index, data, meta };
}

/**
 * Checks a LevelDB table (`.ldb`) whole: the footer's magic number, then every block the table has
 * (data blocks through the index, the filter block through the metaindex, both of those through the
 * footer) against its checksum; and that no two blocks overlap. A table LevelDB wrote has its blocks
 * tile the file, so every byte LevelDB reads is checked; one `salvageTable` rewrote has gaps where
 * it dropped blocks, which nothing reads. Throws LevelFileDamage naming the first fault.
 */
export function checkTable(table: Uint8Array): void {
  const t = readLayout(table); // reads the metaindex and index blocks
  const toRead = [...t.data.map((d) => d.handle), ...t.meta];
  const blocks = [...toRead, t.metaindex, t.index].sort((x, y) => x.offset - y.offset);
  let at = 0;
  for (const h of blocks) {
    if (h.offset < at) throw new LevelFileDamage(`block at ${h.offset} overlaps the one before it (which ends at ${at})`);
    at = h.offset + h.size + BLOCK_TRAILER;
  }
  if (at > table.length - FOOTER) throw new LevelFileDamage(`blocks end at ${at}, past the footer (${table.length - FOOTER})`);
  for (const h of toRead) readBlock(table, h, 'block');
}

/** What salvageTable kept of a table. */
export interface TableSalvage {
  /** The new table, as long as the MANIFEST says the table is (LevelDB reads its footer there). */
  bytes: Buffer;
  dataBlocks: number;
  dropped: number;
  /** Why the whole table was dropped (footer, index or metaindex unreadable), if it was. */
  lost?: string;
}

/**
 * A table LevelDB can read in place of a damaged one, of the same `size`: the data blocks whose
 * checksums hold, kept where they are, under a new index block without the others; the filter
 * block kept if it reads, else a metaindex without it. When the footer or the index does not read,
 * or the file is shorter than `size`, no block can be trusted: the new table holds none. A key in a
 * dropped block is gone (and so is a deletion recorded there, so an older value of its key, in
 * another table, shows again).
 */
export function salvageTable(table: Uint8Array, size: number): TableSalvage {
  let layout: TableLayout | undefined;
  let lost: string | undefined;
  try {
    if (table.length !== size) throw new LevelFileDamage(`${table.length} bytes, not ${size}`);
    layout = readLayout(table);
  } catch (err) {
    if (!(err instanceof LevelFileDamage)) throw err;
    lost = err.message;
  }
  const kept = (layout?.data ?? []).filter(({ handle }) => {
    try {
      readBlock(table, handle, 'block');
      return true;
    } catch (err) {
      if (err instanceof LevelFileDamage) return false;
      throw err;
    }
  });
  let metaEntries: [Uint8Array, Uint8Array][] = [];
  if (layout) {
    try {
      for (const h of layout.meta) readBlock(table, h, 'filter block');
      metaEntries = blockEntries(readBlock(table, layout.metaindex, 'metaindex block'), 'metaindex block');
    } catch (err) {
      if (!(err instanceof LevelFileDamage)) throw err;
    }
  }
  const index = blockWithTrailer(kept.map((d) => d.entry));
  // Where the new metaindex and index go: after the last block kept (where the old ones were), or
  // in a dropped block's place. LevelDB may have compressed the old index, so the new one can be
  // larger: failing every place, the filter block is dropped too (a filter only saves reads).
  const tailFrom = (withFilter: boolean) =>
    layout ? Math.min(layout.metaindex.offset, layout.index.offset, ...(withFilter ? [] : layout.meta.map((h) => h.offset))) : 0;
  const dropped = (layout?.data ?? [])
    .filter((d) => !kept.includes(d))
    .map((d) => ({ offset: d.handle.offset, room: d.handle.size + BLOCK_TRAILER }));
  let metaindex = blockWithTrailer(metaEntries);
  const placeFor = (tail: number) =>
    [{ offset: tail, room: size - FOOTER - tail }, ...dropped].find((r) => r.room >= metaindex.length + index.length)?.offset;
  let start = placeFor(tailFrom(true));
  if (start === undefined && metaEntries.length > 0) {
    metaindex = blockWithTrailer([]);
    start = placeFor(tailFrom(false));
  }
  if (start === undefined) throw new LevelFileDamage(`no room for a new index in ${size} bytes`);
  const out = Buffer.alloc(size);
  if (layout) out.set(table.subarray(0, tailFrom(true))); // then the new blocks over it
  metaindex.copy(out, start);
  index.copy(out, start + metaindex.length);
  const footer = Buffer.alloc(FOOTER);
  let p = putLevelVarint(footer, 0, start);
  p = putLevelVarint(footer, p, metaindex.length - BLOCK_TRAILER);
  p = putLevelVarint(footer, p, start + metaindex.length);
  putLevelVarint(footer, p, index.length - BLOCK_TRAILER);
  TABLE_MAGIC.copy(footer, FOOTER - 8);
  footer.copy(out, size - FOOTER);
  return { bytes: out, dataBlocks: kept.length, dropped: (layout?.data.length ?? 0) - kept.length, lost };
}

function putLevelVarint(out: Buffer, p: number, v: number): number {
  while (v >= 0x80) {
    out[p++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  out[p++] = v;
  return p;
}

/** An uncompressed block of `entries`, each a restart point (as LevelDB writes its index), with its trailer. */
function blockWithTrailer(entries: [Uint8Array, Uint8Array][]): Buffer {
  const parts: Buffer[] = [];
  const restarts: number[] = [];
  let at = 0;
  for (const [key, value] of entries) {
    const head = Buffer.alloc(15);
    let p = putLevelVarint(head, 0, 0);
    p = putLevelVarint(head, p, key.length);
    p = putLevelVarint(head, p, value.length);
    restarts.push(at);
    parts.push(head.subarray(0, p), Buffer.from(key), Buffer.from(value));
    at += p + key.length + value.length;
  }
  if (restarts.length === 0) restarts.push(0);
  const tail = Buffer.alloc(4 * restarts.length + 4);
  restarts.forEach((r, i) => tail.writeUInt32LE(r, 4 * i));
  tail.writeUInt32LE(restarts.length, 4 * restarts.length);
  const contents = Buffer.concat([...parts, tail]);
  const trailer = Buffer.alloc(BLOCK_TRAILER);
  trailer.writeUInt32LE(maskCrc(crc32c(contents, trailer.subarray(0, 1))), 1);
  return Buffer.concat([contents, trailer]);
}
