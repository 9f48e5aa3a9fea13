/**
 * A damaged LevelDB table never aborts the process (the CI flake: `table_builder.cc:97 …
 * Assertion 'Compare(key, last_key) > 0' failed`, exit 134). The prebuilt classic-level reads tables
 * without checking their block checksums, and a compaction that merges a table whose keys damage put
 * out of order hits LevelDB's assertion. The store checks every live table before LevelDB opens the
 * database (src/store/index-check.ts): such a store is refused with one line, exit 7.
 *
 * The damage here is made, not drawn at random: one key of an uncompressed data block is changed to
 * sort before the key ahead of it (test/helpers/leveldb-damage.ts), which is what random flips did
 * about 1 run in 12 depending on the snapshot ids.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkIndexFiles, TABLE_DAMAGE_ADVICE, VERIFIED_FILE } from '../src/store/index-check.js';
import { checkTable, LevelFileDamage, liveTables, salvageTable } from '../src/store/leveldb-files.js';
import { Store } from '../src/store/store.js';
import { crc32c, maskCrc } from '../src/util/crc32c.js';
import { CorruptError } from '../src/util/errors.js';
import { snappyUncompress } from '../src/util/snappy.js';
import { makeTempDir, randomPage, removeDir, REPO_ROOT, restoreToBuffer, runCli } from './helpers/engine.js';
import { putKeyOutOfOrder } from './helpers/leveldb-damage.js';
import { putImage } from './helpers/maintenance.js';

let root: string;
let base: string;
const ids: string[] = [];
const images: Buffer[] = [];

/** 400 random pages per snapshot: 400 chunk keys each, several 4 KiB data blocks of raw keys. */
function image(seed: number): Buffer {
  return Buffer.concat(Array.from({ length: 400 }, (_, i) => randomPage(seed * 1000 + i)));
}

beforeAll(async () => {
  root = makeTempDir('damage-index');
  base = path.join(root, 'base');
  await Store.init(base, { format: 1 }); // damage to the legacy LevelDB chunk index
  const store = await Store.open(base, { workers: 0 });
  for (let s = 0; s < 2; s++) {
    images.push(image(s));
    ids.push((await putImage(store, 'a', images[s])).id);
  }
  await store.close(); // the memtable goes to a table (flushMemtable)
});

afterAll(() => removeDir(root));

function copyOfBase(name: string): string {
  const dir = path.join(root, name);
  cpSync(base, dir, { recursive: true });
  return dir;
}

function tablesOf(dbDir: string): string[] {
  return readdirSync(dbDir).filter((n) => n.endsWith('.ldb'));
}

describe('a LevelDB table with a key out of order', () => {
  it('aborts LevelDB itself in a compaction (exit 134): what the store must never reach', () => {
    const dir = copyOfBase('raw-leveldb');
    putKeyOutOfOrder(path.join(dir, 'db'));
    // classic-level straight, as the store opens it: open, compact every key.
    const script = `
      const { Level } = await import('level');
      const db = new Level(process.argv[1], { keyEncoding: 'buffer', valueEncoding: 'buffer' });
      await db.open();
      await db.compactRange(Buffer.of(0), Buffer.of(0xff));
      await db.close();`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, path.join(dir, 'db')], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
    });
    expect(r.signal, r.stderr).toBe('SIGABRT');
    expect(r.stderr).toMatch(/table_builder\.cc:\d+: .*Assertion .*Compare\(key, Slice\(r->last_key\)\) > 0' failed/);
  });

  it('is refused at open with one line, exit 7, by restore, forget, gc and check: none aborts, none writes to the table', async () => {
    const dir = copyOfBase('cli');
    const { table } = putKeyOutOfOrder(path.join(dir, 'db'));
    const damaged = readFileSync(path.join(dir, 'db', table));
    // Before the check, `forget` then `gc` (which compacts every key) died with exit 134.
    const commands = [['restore', ids[1]], ['forget', ids[0]], ['gc'], ['check']];
    const results = [];
    for (const args of commands) results.push(await runCli([args[0], '--store', dir, ...args.slice(1)]));
    expect(results.map((r) => r.signal)).toEqual(commands.map(() => null));
    for (const [i, r] of results.entries()) {
      expect(r.code, `${commands[i].join(' ')}: ${r.stderr}`).toBe(7);
      expect(r.stderr).toBe(
        `vnstore: error: store catalog (db/) is damaged: table ${table}: block at ${blockAt(r.stderr)} fails its checksum ` +
          `(in ${path.join(dir, 'db')}); ${TABLE_DAMAGE_ADVICE}\n`,
      );
    }
    expect(readFileSync(path.join(dir, 'db', table)).equals(damaged)).toBe(true);
  });

  it('check --repair-index salvages the table: the intact blocks kept, the lost chunk entries rebuilt from the packs', async () => {
    const dir = copyOfBase('salvage');
    const db = path.join(dir, 'db');
    const { table } = putKeyOutOfOrder(db);
    const damaged = readFileSync(path.join(db, table));
    const r = await runCli(['check', '--store', dir, '--repair-index']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = r.stdout.toString();
    expect(out).toMatch(
      new RegExp(
        `^salvaged index table ${table}: kept \\d+ data block\\(s\\), dropped 1; the damaged file is in ${dir}/quarantine/db-${table}\\n`,
      ),
    );
    expect(out).toMatch(/index entries \+[1-9]\d* /); // the dropped block's chunk entries, re-indexed
    expect(out).toMatch(/no problems found\n$/);
    expect(readFileSync(path.join(dir, 'quarantine', `db-${table}`)).equals(damaged)).toBe(true);
    expect(statSync(path.join(db, table)).size).toBe(damaged.length); // the size the MANIFEST gives
    // Every snapshot restores exactly, and the store takes the abort's trigger (forget, then gc).
    for (const [i, id] of ids.entries()) {
      const x = await runCli(['restore', '--store', dir, id]);
      expect(x.code, x.stderr).toBe(0);
      expect(x.stdout.equals(images[i])).toBe(true);
    }
    expect((await runCli(['forget', '--store', dir, ids[0]])).code).toBe(0);
    const gc = await runCli(['gc', '--store', dir]);
    expect([gc.code, gc.signal, gc.stderr]).toEqual([0, null, '']);
    const again = await runCli(['restore', '--store', dir, ids[1]]);
    expect(again.stdout.equals(images[1])).toBe(true);
  });

  it('check --repair-index on a missing table: an empty one in its place, the store opens again', async () => {
    const dir = copyOfBase('salvage-missing');
    const db = path.join(dir, 'db');
    const live = liveTables(readFileSync(path.join(db, readFileSync(path.join(db, 'CURRENT'), 'latin1').trim())));
    const [number, size] = [...live].sort((a, b) => b[1] - a[1])[0];
    const name = `${String(number).padStart(6, '0')}.ldb`;
    rmSync(path.join(db, name));
    const r = await runCli(['check', '--store', dir, '--repair-index']);
    expect(r.signal).toBeNull();
    expect(r.stdout.toString()).toMatch(new RegExp(`^salvaged index table ${name}: nothing kept \\(0 bytes, not ${size}\\)\\n`));
    expect(statSync(path.join(db, name)).size).toBe(size);
    // The records that table held are gone (check says what it finds); the store opens and lists.
    const ls = await runCli(['ls', '--store', dir]);
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.stderr).not.toMatch(/error/);
  });

  it('is refused by the library too (CorruptError), and again on every open', async () => {
    const dir = copyOfBase('library');
    const { table } = putKeyOutOfOrder(path.join(dir, 'db'));
    for (let i = 0; i < 2; i++) {
      const err = await Store.open(dir, { workers: 0 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(CorruptError);
      expect((err as Error).message).toContain(`table ${table}: block at `);
    }
  });
});

/** "(4127 bytes)" after "block at N": the message's block, for the exact-line comparison. */
function blockAt(stderr: string): string {
  return /block at (\d+ \(\d+ bytes\))/.exec(stderr)?.[1] ?? '?';
}

describe('the table check', () => {
  it('reads each table once: a later open reads none, a changed file is read again, recheck reads all', async () => {
    const dir = copyOfBase('cache');
    const db = path.join(dir, 'db');
    const first = await checkIndexFiles(db);
    expect(first.tables).toBeGreaterThan(0);
    expect(first.read).toBe(first.tables); // a copy: new inodes and times
    expect(statSync(path.join(db, VERIFIED_FILE)).mode & 0o777).toBe(0o600);
    expect(await checkIndexFiles(db)).toEqual({ tables: first.tables, read: 0 });
    const [one] = tablesOf(db);
    utimesSync(path.join(db, one), new Date(), new Date(Date.now() + 5000));
    expect(await checkIndexFiles(db)).toEqual({ tables: first.tables, read: 1 });
    expect(await checkIndexFiles(db, { recheck: true })).toEqual({ tables: first.tables, read: first.tables });
    // A damaged list is a cache lost, not damage.
    writeFileSync(path.join(db, VERIFIED_FILE), '{"version":1,"tables":{"x":');
    expect(await checkIndexFiles(db)).toEqual({ tables: first.tables, read: first.tables });
  });

  it('vnstore check reads every table again: damage the verified list would pass is found', async () => {
    const dir = copyOfBase('recheck');
    const db = path.join(dir, 'db');
    const { table } = putKeyOutOfOrder(db);
    // A list that vouches for the damaged file as it is now: what bit rot after a check looks like.
    const st = statSync(path.join(db, table), { bigint: true });
    const entry = `${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.ino}`;
    const others = Object.fromEntries(tablesOf(db).map((n) => [n, n === table ? entry : 'x']));
    writeFileSync(path.join(db, VERIFIED_FILE), JSON.stringify({ version: 1, tables: others }));
    expect((await checkIndexFiles(db)).read).toBe(tablesOf(db).length - 1);
    writeFileSync(path.join(db, VERIFIED_FILE), JSON.stringify({ version: 1, tables: others }));
    const r = await runCli(['check', '--store', dir]);
    expect(r.code, r.stderr).toBe(7);
    expect(r.stderr).toContain(`store catalog (db/) is damaged: table ${table}: block at `);
  });

  it('a table the MANIFEST does not list (a compaction a kill stopped) does not stop the open', async () => {
    const dir = copyOfBase('partial');
    writeFileSync(path.join(dir, 'db', '000999.ldb'), Buffer.alloc(3000, 7));
    const store = await Store.open(dir, { workers: 0 });
    try {
      expect((await restoreToBuffer(store, await store.resolveSnapshot(ids[0]))).equals(images[0])).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('a lost CURRENT next to the database files is damage (LevelDB would start an empty database)', async () => {
    const dir = copyOfBase('no-current');
    const before = readdirSync(path.join(dir, 'db')).sort();
    rmSync(path.join(dir, 'db', 'CURRENT'));
    const r = await runCli(['ls', '--store', dir]);
    expect(r.code, r.stderr).toBe(7);
    expect(r.stderr).toMatch(/^vnstore: error: store catalog \(db\/\) is damaged: CURRENT is missing, next to \d{6}\.(ldb|log)/);
    expect(readdirSync(path.join(dir, 'db')).sort()).toEqual(before.filter((n) => n !== 'CURRENT'));
  });

  it('a live table cut short or missing is damage', async () => {
    const dir = copyOfBase('short');
    const db = path.join(dir, 'db');
    const live = liveTables(readFileSync(path.join(db, readFileSync(path.join(db, 'CURRENT'), 'latin1').trim())));
    const [number, size] = [...live][0];
    const name = `${String(number).padStart(6, '0')}.ldb`;
    writeFileSync(path.join(db, name), readFileSync(path.join(db, name)).subarray(0, size - 1));
    await expect(checkIndexFiles(db)).rejects.toThrow(`table ${name} is ${size - 1} bytes, not ${size}`);
    rmSync(path.join(db, name));
    await expect(checkIndexFiles(db)).rejects.toThrow(`table ${name} is missing`);
  });

  it('every single-byte change of a table is found, but in the footer padding no reader looks at', () => {
    const db = path.join(base, 'db');
    const table = readFileSync(
      path.join(db, tablesOf(db).sort((a, b) => statSync(path.join(db, a)).size - statSync(path.join(db, b)).size)[0]),
    );
    checkTable(table);
    const paddingEnd = table.length - 8; // the magic number follows the padding
    let missed = 0;
    for (let at = 0; at < table.length; at++) {
      const copy = Buffer.from(table);
      copy[at] ^= 0x5a;
      try {
        checkTable(copy);
        // Passed: only a byte after both block handles and before the magic number may do that.
        expect(at, `byte ${at} of ${table.length} changed and not found`).toBeGreaterThanOrEqual(table.length - 48);
        expect(at).toBeLessThan(paddingEnd);
        missed++;
      } catch (err) {
        expect(err, `byte ${at}`).toBeInstanceOf(LevelFileDamage);
      }
    }
    expect(missed).toBeLessThan(40);
  });

  it('a salvaged table is whole: the blocks that read, same size; nothing kept when the footer or size is wrong', () => {
    const db = path.join(base, 'db');
    const table = readFileSync(
      path.join(db, tablesOf(db).sort((a, b) => statSync(path.join(db, b)).size - statSync(path.join(db, a)).size)[0]),
    );
    const whole = salvageTable(table, table.length);
    expect([whole.dropped, whole.lost]).toEqual([0, undefined]);
    checkTable(whole.bytes);
    // A flip inside the first data block: that block goes, the others stay where they were.
    const copy = Buffer.from(table);
    copy[10] ^= 0xff;
    const s = salvageTable(copy, copy.length);
    expect([s.dropped, s.dataBlocks]).toEqual([1, whole.dataBlocks - 1]);
    expect(s.bytes.length).toBe(table.length);
    checkTable(s.bytes);
    // The blocks kept stay byte for byte where they were (the second and third here).
    expect(s.bytes.subarray(4200, 8000).equals(table.subarray(4200, 8000))).toBe(true);
    for (const broken of [table.subarray(0, table.length - 1), Buffer.concat([table.subarray(0, table.length - 8), Buffer.alloc(8)])]) {
      const none = salvageTable(broken, table.length);
      expect(none.dataBlocks).toBe(0);
      expect(none.lost).toMatch(/bytes, not|magic/);
      expect(none.bytes.length).toBe(table.length);
      checkTable(none.bytes);
    }
  });

  it('damage anywhere in a table throws LevelFileDamage and nothing else', () => {
    const db = path.join(base, 'db');
    const table = readFileSync(path.join(db, tablesOf(db)[0]));
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(table.length - 1), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 16 }),
        fc.nat(),
        (flips, cut) => {
          const copy = Buffer.from(table);
          for (const [at, x] of flips) copy[at] ^= x;
          for (const t of [copy, copy.subarray(0, cut % table.length)]) {
            try {
              checkTable(t);
            } catch (err) {
              if (!(err instanceof LevelFileDamage)) throw err;
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('CRC-32C and snappy', () => {
  it('CRC-32C matches the published check values and LevelDB masking', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(32))).toBe(0x8a9136aa); // RFC 3720 B.4
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
    expect(crc32c(Buffer.from('1234'), Buffer.from('56789'))).toBe(0xe3069283);
    expect(maskCrc(0)).toBe(0xa282ead8);
    // Lengths around the 8-byte stride agree with a bytewise CRC.
    for (let n = 0; n < 40; n++) {
      const b = Buffer.from(Array.from({ length: n }, (_, i) => (i * 37 + 11) & 0xff));
      expect(crc32c(b)).toBe(bytewiseCrc32c(b));
    }
  });

  it('snappy: literals, short and long copies, overlapping runs; damage is a RangeError', () => {
    // "abcabcabcabcX": literal "abc", copy (offset 3, length 9, overlapping), literal "X".
    const src = Buffer.from([13, (3 - 1) << 2, 0x61, 0x62, 0x63, 0x01 | ((9 - 4) << 2), 3, (1 - 1) << 2, 0x58]);
    expect(snappyUncompress(src).toString('latin1')).toBe('abcabcabcabcX');
    // A 2-byte-offset copy of 64 bytes and a long literal (length in one extra byte).
    const lit = Buffer.alloc(70, 0x41);
    const two = Buffer.concat([Buffer.from([134, 1, 60 << 2, 69]), lit, Buffer.from([0x02 | (63 << 2), 70, 0])]);
    expect(snappyUncompress(two).equals(Buffer.alloc(134, 0x41))).toBe(true);
    for (const bad of [
      Buffer.from([5, 0x01 | (1 << 2), 0]), // copy with nothing before it
      Buffer.from([3, 4 << 2, 0x61]), // literal past the end
      Buffer.from([9, 0, 0x61]), // shorter than stated
      Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), // length varint too long
    ])
      expect(() => snappyUncompress(bad)).toThrow(RangeError);
  });
});

function bytewiseCrc32c(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}
