/**
 * Damage to a LevelDB table made on purpose (test/damage-index.test.ts): the flip that makes a
 * compaction abort. Walks the table as doc/table_format.md lays it out (independently of
 * src/store/leveldb-files.ts, which checks tables) to find a key in an uncompressed data block, and
 * changes the byte where that key first differs from the one before it so that it sorts before it:
 * the block then holds keys out of order, which only its checksum tells.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { snappyUncompress } from '../../src/util/snappy.js';

function varint(b: Uint8Array, at: { pos: number }): number {
  let v = 0;
  for (let shift = 0; ; shift += 7) {
    const x = b[at.pos++];
    v += (x & 0x7f) * 2 ** shift;
    if (x < 0x80) return v;
  }
}

interface Entry {
  /** Offset of the first key byte this entry stores (its first unshared byte), within the block. */
  unsharedAt: number;
  shared: number;
  key: Buffer;
}

function entries(block: Uint8Array): Entry[] {
  const restarts = Buffer.from(block).readUInt32LE(block.length - 4);
  const end = block.length - 4 - 4 * restarts;
  const out: Entry[] = [];
  const at = { pos: 0 };
  let key = Buffer.alloc(0);
  while (at.pos < end) {
    const shared = varint(block, at);
    const unshared = varint(block, at);
    const valueLength = varint(block, at);
    const unsharedAt = at.pos;
    key = Buffer.concat([key.subarray(0, shared), block.subarray(at.pos, at.pos + unshared)]);
    at.pos += unshared + valueLength;
    out.push({ unsharedAt, shared, key });
  }
  return out;
}

/** Data block handles of a table, from its index block. */
function dataBlocks(table: Buffer): { offset: number; size: number }[] {
  const footer = table.subarray(table.length - 48);
  const at = { pos: 0 };
  varint(footer, at); // metaindex offset
  varint(footer, at); // metaindex size
  const index = { offset: varint(footer, at), size: varint(footer, at) };
  let block: Uint8Array = table.subarray(index.offset, index.offset + index.size);
  if (table[index.offset + index.size] === 1) block = snappyUncompress(block);
  return entries(block).map((e) => {
    const start = e.unsharedAt + (e.key.length - e.shared); // the value follows the key bytes
    const v = { pos: 0 };
    const value = block.subarray(start);
    return { offset: varint(value, v), size: varint(value, v) };
  });
}

/**
 * Puts a key out of order in the first uncompressed data block of the largest table under `dbDir`
 * that has one: the block's middle entry's first unshared byte becomes one below the previous key's
 * byte there. Returns the table's name and the byte's offset.
 */
export function putKeyOutOfOrder(dbDir: string): { table: string; offset: number } {
  const tables = readdirSync(dbDir)
    .filter((n) => n.endsWith('.ldb'))
    .map((n) => ({ n, bytes: readFileSync(path.join(dbDir, n)) }))
    .sort((a, b) => b.bytes.length - a.bytes.length);
  for (const { n, bytes } of tables) {
    for (const h of dataBlocks(bytes)) {
      if (bytes[h.offset + h.size] !== 0) continue; // compressed: its bytes are not the keys
      const list = entries(bytes.subarray(h.offset, h.offset + h.size));
      for (let i = Math.floor(list.length / 2); i < list.length; i++) {
        if (i === 0) continue;
        const prev = list[i - 1].key[list[i].shared];
        if (prev === undefined || prev === 0) continue;
        const offset = h.offset + list[i].unsharedAt;
        bytes[offset] = prev - 1;
        writeFileSync(path.join(dbDir, n), bytes);
        return { table: n, offset };
      }
    }
  }
  throw new Error(`no uncompressed data block with a key to move in ${dbDir}`);
}
