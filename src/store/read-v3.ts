/**
 * Reading a snapshot of store format 3, the simple way: resolve its version-2 manifest chain to
 * numbered pages, take each page's digest prefix from its pack's TOC, decode every page verified
 * against its prefix, and check the image digest over the digests of the decoded pages (a TOC keeps
 * 24 bytes of each digest, the image digest binds all 32). Used to verify `vnstore upgrade`'s output.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { imageDigest } from '../chunk/hash.js';
import { TOC_DIGEST_BYTES } from '../format/pack-v3.js';
import type { ManifestHeader } from '../format/manifest.js';
import { decodeManifestV2Header, decodeManifestV2Pages, type NumberedPages } from '../format/manifest-v2.js';
import { DIGEST_BYTES, PAGE_SIZE, PageKind, PageTable } from '../format/pages.js';
import { CorruptError } from '../util/errors.js';
import { MAX_BASE_DEPTH } from './manifest-loader.js';
import { readDigestPrefixes, type DigestColumn, type NumberIndexLoad } from './number-load.js';
import type { PackReader } from './pack-reader.js';

/** Snapshot `id`'s numbered pages from `manifestsDir`, its base chain resolved (at most MAX_BASE_DEPTH deep). */
export async function loadNumberedManifest(
  manifestsDir: string,
  id: string,
  depth = 0,
): Promise<{ header: ManifestHeader; pages: NumberedPages }> {
  if (depth > MAX_BASE_DEPTH + 1) throw new CorruptError(`manifest of snapshot ${id}: base chain too deep`);
  const bytes = await fsp.readFile(path.join(manifestsDir, `${id}.vnm`));
  const { header, reader } = decodeManifestV2Header(bytes, id);
  if (header.meta.id !== id) throw new CorruptError(`manifest of snapshot ${id} names snapshot ${header.meta.id}`);
  const base = header.baseId === undefined ? undefined : (await loadNumberedManifest(manifestsDir, header.baseId, depth + 1)).pages;
  return { header, pages: decodeManifestV2Pages(header, reader, id, base) };
}

/**
 * A format-3 index cannot say which pack held a number once that pack is gone or was quarantined as
 * damaged (its TOC was the only record): say where to look and what to run.
 */
const LOST_CHUNK_ADVICE = " (its pack is missing, or was moved to quarantine/ as damaged); run 'vnstore check'";

/**
 * Each page's digest prefix from the TOCs, in a page table (the first 24 bytes of each page's slot;
 * the last 8 are zero; zero pages stay zero): what a session's parent or a restore compares pages
 * with, by prefix (tocDigestsEqual). Not what the image digest is computed over: that needs each
 * page's whole digest, from its bytes. One read per pack of the span of its digest column the pages
 * use, not a read a page (a 512 MiB image names ~130k chunks).
 */
export async function pageDigests(
  packs: PackReader,
  load: Pick<NumberIndexLoad, 'index' | 'digestColumns'>,
  pages: NumberedPages,
  what: string,
): Promise<PageTable> {
  // A gc beside us may swap a pack out between our reads: its file stays readable for a while
  // (PackReader.retire), and when it is gone the pages are located again, in their copies.
  for (let attempt = 1; ; attempt++) {
    const table = await pageDigestsOnce(packs, load, pages, what, attempt < 4);
    if (table) return table;
  }
}

/** pageDigests, or undefined when a pack left the index meanwhile and could not be read (`retry`). */
async function pageDigestsOnce(
  packs: PackReader,
  load: Pick<NumberIndexLoad, 'index' | 'digestColumns'>,
  pages: NumberedPages,
  what: string,
  retry: boolean,
): Promise<PageTable | undefined> {
  const table = new PageTable(pages.pageCount);
  const packOf = new Int32Array(pages.pageCount).fill(-1);
  const entryOf = new Uint32Array(pages.pageCount);
  // Per pack: the span of entries the pages use, and where its digest column is (taken in the same
  // turn as the locations: gc may take the pack out of the index before it is read).
  const span = new Map<number, { lo: number; hi: number; column: DigestColumn }>();
  for (let p = 0; p < pages.pageCount; p++) {
    if (pages.kinds[p] !== PageKind.Digest) {
      table.setZero(p);
      continue;
    }
    // No location object a page: a parent's ~130k pages are located at every session's start.
    const run = load.index.runOf(pages.numbers[p]);
    if (run < 0) throw new CorruptError(`${what}: page ${p} names chunk ${pages.numbers[p]}, which no pack holds${LOST_CHUNK_ADVICE}`);
    const pack = load.index.runPack(run);
    const entry = load.index.runEntry(run, pages.numbers[p]);
    packOf[p] = pack;
    entryOf[p] = entry;
    const s = span.get(pack);
    if (!s) span.set(pack, { lo: entry, hi: entry, column: load.digestColumns.get(pack)! });
    else {
      s.lo = Math.min(s.lo, entry);
      s.hi = Math.max(s.hi, entry);
    }
  }
  const columns = new Map<number, { lo: number; bytes: Uint8Array }>();
  for (const [pack, { lo, hi, column }] of span) {
    let bytes: Uint8Array;
    try {
      bytes = await readDigestPrefixes(packs, pack, column, lo, hi - lo + 1);
    } catch (err) {
      if (retry && !load.index.hasPack(pack)) return undefined;
      throw err;
    }
    columns.set(pack, { lo, bytes });
  }
  for (let p = 0; p < pages.pageCount; p++) {
    if (packOf[p] < 0) continue;
    const col = columns.get(packOf[p])!;
    const at = TOC_DIGEST_BYTES * (entryOf[p] - col.lo);
    table.kinds[p] = PageKind.Digest;
    table.digests.set(col.bytes.subarray(at, at + TOC_DIGEST_BYTES), p * DIGEST_BYTES);
  }
  return table;
}

/** The snapshot's exact image bytes: every page checked against its digest prefix, then the image digest over the pages' digests. */
export async function readImageV3(
  packs: PackReader,
  load: Pick<NumberIndexLoad, 'index' | 'digestColumns'>,
  header: ManifestHeader,
  pages: NumberedPages,
): Promise<Buffer> {
  const what = `snapshot ${header.meta.id}`;
  const digests = await pageDigests(packs, load, pages, what);
  const image = Buffer.alloc(pages.pageCount * PAGE_SIZE);
  for (let p = 0; p < pages.pageCount; p++) {
    if (pages.kinds[p] !== PageKind.Digest) continue;
    const at = load.index.locate(pages.numbers[p])!;
    const read = await packs.readHashed(at.location, digests.digestAt(p).subarray(0, TOC_DIGEST_BYTES));
    if (!read) throw new CorruptError(`${what}: page ${p} (chunk ${pages.numbers[p]}) does not match its digest`);
    image.set(read.page, p * PAGE_SIZE);
    digests.setDigest(p, read.digest);
  }
  if (!imageDigest(digests, header.byteLength).equals(header.imageDigest)) throw new CorruptError(`${what}: image digest mismatch`);
  return image.subarray(0, header.byteLength);
}
