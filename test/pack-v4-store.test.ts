/**
 * Pack versions 3 and 4 in one format-3 store (docs/FORMAT.md, "Store format 3"): new packs are
 * version 4 (24-byte digest prefixes in the TOC); version-3 packs (whole digests), made here by
 * rewriting some packs' TOCs as an older vnstore wrote them, keep being read. Such a mixed store
 * restores exactly (through the engine and from the files), checks clean with --read-data, takes a
 * session that inherits pages from both kinds with the right image digest, and compact and gc
 * rewrite version 3 into version 4. A stored page whose bytes no longer match its TOC prefix is
 * caught by restore and by check --read-data, in either version.
 */
import { readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodePackHeader, packFileName, PACK_HEADER_BYTES, PACK_TRAILER_BYTES, parsePackFileName } from '../src/format/pack.js';
import {
  encodePackFooterV3,
  metaCodec,
  metaMember,
  metaStoredLength,
  PACK_VERSION_NUMBERED,
  PACK_VERSION_PREFIXED,
  parsePackTocV3,
  parsePackTrailerV3,
  TOC_DIGEST_BYTES,
} from '../src/format/pack-v3.js';
import { CONTAINER_CODEC } from '../src/format/pack.js';
import { hashPage } from '../src/chunk/hash.js';
import { checkStore } from '../src/maintenance/check.js';
import { runCompact } from '../src/maintenance/compact.js';
import { forget } from '../src/maintenance/forget.js';
import { runGc } from '../src/maintenance/gc.js';
import { tocNumbers } from '../src/maintenance/pack-copy-v3.js';
import { PackReader } from '../src/store/pack-reader.js';
import type { Store } from '../src/store/store.js';
import { expectedImageDigest, removeDir, restoreToBuffer } from './helpers/engine.js';
import { newStore, putImage } from './helpers/maintenance.js';
import { changedImage, expectAllReadV3, mixedImage, openNumbered } from './helpers/numbered.js';

const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

const packsOf = (dir: string) => path.join(dir, 'packs');

/** The pack ids of a store and each file's pack version (from its header). */
function packVersions(dir: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const f of readdirSync(packsOf(dir))) {
    const id = parsePackFileName(f);
    if (id !== undefined) out.set(id, readFileSync(path.join(packsOf(dir), f)).readUInt16LE(8));
  }
  return out;
}

/** Parses a version-4 pack file: its TOC, trailer fields and bytes. */
function readV4(file: string) {
  const bytes = readFileSync(file);
  expect(bytes.readUInt16LE(8)).toBe(PACK_VERSION_PREFIXED);
  const trailer = parsePackTrailerV3(bytes.subarray(bytes.length - PACK_TRAILER_BYTES), bytes.length, file);
  const toc = parsePackTocV3(bytes.subarray(trailer.tocOffset, bytes.length - PACK_TRAILER_BYTES), trailer, file);
  return { bytes, trailer, toc };
}

/**
 * Rewrites a version-4 pack as version 3, as an older vnstore wrote it: the same payload, a TOC with
 * each chunk's whole digest (hashed from its decoded bytes, each checked against its prefix first).
 */
async function rewriteAsVersion3(dir: string, id: number): Promise<void> {
  const file = path.join(packsOf(dir), packFileName(id));
  const { bytes, trailer, toc } = readV4(file);
  const reader = new PackReader(packsOf(dir));
  const digests = new Uint8Array(toc.count * 32);
  try {
    for (let k = 0; k < toc.count; k++) {
      const meta = toc.metas[k];
      const codec = metaCodec(meta);
      const location = { pack: id, offset: toc.offsets[k], storedLength: metaStoredLength(meta), codec };
      const loc = codec === CONTAINER_CODEC ? { ...location, member: metaMember(meta) } : location;
      const page = await reader.readVerified(loc, toc.digests.subarray(k * TOC_DIGEST_BYTES, (k + 1) * TOC_DIGEST_BYTES));
      expect(page, `pack ${id} entry ${k}`).toBeDefined();
      digests.set(hashPage(page!), k * 32);
    }
  } finally {
    await reader.close();
  }
  const footer = encodePackFooterV3(
    {
      count: toc.count,
      numbers: tocNumbers(toc),
      digests,
      lengths: Array.from(toc.metas, metaStoredLength),
      codecs: Array.from(toc.metas, metaCodec),
      members: Array.from(toc.metas, metaMember),
    },
    trailer.tocOffset,
    trailer.payloadCrc,
    PACK_VERSION_NUMBERED,
  );
  const out = Buffer.concat([encodePackHeader(4096, PACK_VERSION_NUMBERED), bytes.subarray(PACK_HEADER_BYTES, trailer.tocOffset), footer]);
  writeFileSync(`${file}.tmp`, out, { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

/** A format-3 store of two VMs (a's second snapshot consecutive to its first), every pack version 4. */
async function storeOfTwoVms(prefix: string): Promise<{ dir: string; expected: Map<string, Buffer>; ids: string[] }> {
  const { root, dir, store } = await newStore(prefix, 64 * 1024);
  roots.push(root);
  const expected = new Map<string, Buffer>();
  const ids: string[] = [];
  try {
    const a1 = mixedImage(1, 160);
    const a2 = changedImage(a1, 2, 3);
    for (const [vm, image] of [
      ['a', a1],
      ['a', a2],
      ['b', mixedImage(3, 120)],
    ] as const) {
      const rec = await putImage(store, vm, image);
      expected.set(rec.id, image);
      ids.push(rec.id);
    }
  } finally {
    await store.close();
  }
  return { dir, expected, ids };
}

/** Every other pack rewritten as version 3; returns those ids. */
async function mixVersions(dir: string): Promise<number[]> {
  const ids = [...packVersions(dir).keys()].sort((a, b) => a - b);
  expect(ids.length).toBeGreaterThanOrEqual(4);
  expect([...packVersions(dir).values()].every((v) => v === PACK_VERSION_PREFIXED)).toBe(true); // written as version 4
  const old = ids.filter((_, i) => i % 2 === 0);
  for (const id of old) await rewriteAsVersion3(dir, id);
  return old;
}

describe('pack versions 3 and 4 in one store', () => {
  it('restores exactly, checks clean, inherits pages with the right image digest, and compact and gc move pack 3 to 4', async () => {
    const { dir, expected, ids } = await storeOfTwoVms('pack-v4-mixed');
    const old = await mixVersions(dir);
    const versions = packVersions(dir);
    for (const id of old) expect(versions.get(id)).toBe(PACK_VERSION_NUMBERED);
    let store: Store = await openNumbered(dir);
    try {
      await expectAllReadV3(store, expected, 'mixed versions');
      expect((await checkStore(store, { readData: true })).problems).toEqual([]);
      // A dirty-list session on a's second snapshot: the pages it does not write are inherited from
      // chunks of both versions, whose TOCs keep 24 or 32 bytes; the image digest binds all 32.
      const parent = expected.get(ids[1])!;
      const next = changedImage(parent, 4, 7, 2);
      const s = await store.beginSession({ vm: 'a', parent: ids[1] });
      for (let p = 2; (p + 1) * 4096 <= next.length; p += 7) await s.writePages(p, next.subarray(p * 4096, (p + 1) * 4096));
      const rec = await s.commit({ byteLength: next.length, unwritten: 'parent' });
      expect(rec.imageDigest).toBe(expectedImageDigest(next));
      expected.set(rec.id, next);
      await expectAllReadV3(store, expected, 'after a dirty-list put');
    } finally {
      await store.close();
    }
    store = await openNumbered(dir);
    try {
      await runCompact(store, { minAgeMs: 0 });
      const afterCompact = packVersions(dir);
      const rewritten = old.filter((id) => !afterCompact.has(id));
      expect(rewritten.length).toBeGreaterThan(0);
      for (const [id, v] of afterCompact) if (!versions.has(id)) expect(v, `pack ${id} written by compact`).toBe(PACK_VERSION_PREFIXED);
      await expectAllReadV3(store, expected, 'after compact');
      // Forget b and gc everything dead: whatever version-3 pack held b's chunks is rewritten or dropped.
      const b = ids[2];
      await forget(store, { ids: [b] });
      expected.delete(b);
      await runGc(store, { maxUnused: { bytes: 0 } });
      const afterGc = packVersions(dir);
      for (const [id, v] of afterGc) if (!afterCompact.has(id)) expect(v, `pack ${id} written by gc`).toBe(PACK_VERSION_PREFIXED);
      await expectAllReadV3(store, expected, 'after gc');
      expect((await checkStore(store, { readData: true })).problems).toEqual([]);
    } finally {
      await store.close();
    }
  });

  for (const version of [PACK_VERSION_NUMBERED, PACK_VERSION_PREFIXED]) {
    it(`catches a stored page that no longer matches its TOC digest (pack version ${version}): restore and check --read-data`, async () => {
      const { dir, expected, ids } = await storeOfTwoVms(`pack-v4-damage-${version}`);
      const old = await mixVersions(dir);
      // A stored raw page (random bytes: decoding cannot fail) of a pack of this version, one byte flipped.
      const pack = [...packVersions(dir)].find(([id, v]) => v === version && (version === PACK_VERSION_PREFIXED || old.includes(id)))![0];
      const file = path.join(packsOf(dir), packFileName(pack));
      const bytes = readFileSync(file);
      const trailer = parsePackTrailerV3(bytes.subarray(bytes.length - PACK_TRAILER_BYTES), bytes.length, file, version);
      const toc = parsePackTocV3(bytes.subarray(trailer.tocOffset, bytes.length - PACK_TRAILER_BYTES), trailer, file, version);
      const k = Array.from(toc.metas).findIndex((m) => metaCodec(m) === 0);
      expect(k, `a raw page in pack ${pack}`).toBeGreaterThanOrEqual(0);
      bytes[toc.offsets[k] + 100] ^= 0x01;
      writeFileSync(file, bytes);
      const number = tocNumbers(toc)[k];
      const store = await openNumbered(dir);
      try {
        let failed = 0;
        for (const id of ids) {
          const record = (await store.getSnapshot(id))!;
          const got = await restoreToBuffer(store, record).catch((err: unknown) => err);
          if (got instanceof Buffer) expect(got.equals(expected.get(id)!)).toBe(true);
          else {
            expect((got as { code?: string }).code).toBe('E_CORRUPT');
            failed++;
          }
        }
        expect(failed).toBeGreaterThan(0);
        const report = await checkStore(store, { readData: true });
        const corrupt = report.problems.filter((p) => p.kind === 'chunk-corrupt');
        expect(corrupt.map((p) => p.chunk)).toEqual([String(number)]);
        expect(corrupt[0].message).toContain('does not match its digest');
        // Found by reading the data only: without --read-data the TOCs are sound.
        expect((await checkStore(store)).problems).toEqual([]);
      } finally {
        await store.close();
      }
    });
  }
});

// A test of this file's own helper: the version-3 rewrite keeps each page's whole digest.
describe('rewriteAsVersion3 (this test file)', () => {
  it('keeps the payload and writes whole digests', async () => {
    const { dir } = await storeOfTwoVms('pack-v4-helper');
    const [id] = [...packVersions(dir).keys()];
    const before = readV4(path.join(packsOf(dir), packFileName(id)));
    await rewriteAsVersion3(dir, id);
    const bytes = readFileSync(path.join(packsOf(dir), packFileName(id)));
    expect(bytes.readUInt16LE(8)).toBe(PACK_VERSION_NUMBERED);
    expect(
      bytes
        .subarray(PACK_HEADER_BYTES, before.trailer.tocOffset)
        .equals(before.bytes.subarray(PACK_HEADER_BYTES, before.trailer.tocOffset)),
    ).toBe(true);
    const trailer = parsePackTrailerV3(bytes.subarray(bytes.length - PACK_TRAILER_BYTES), bytes.length, 'x', PACK_VERSION_NUMBERED);
    const toc = parsePackTocV3(bytes.subarray(trailer.tocOffset, bytes.length - PACK_TRAILER_BYTES), trailer, 'x', PACK_VERSION_NUMBERED);
    expect(toc.digestStride).toBe(32);
    expect(Buffer.from(toc.digests).equals(Buffer.from(before.toc.digests))).toBe(true);
    expect(bytes.length - before.bytes.length).toBe(8 * toc.count);
  });
});
