/**
 * Pack I/O for gc and repair: copy chunks as stored (no recompression) after verifying each against
 * its digest, write a new pack in the rule's order, move a bad pack aside.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { encodePackFooter, encodePackHeader, packFileName, PACK_HEADER_BYTES } from '../format/pack.js';
import type { PackRecord } from '../store/db.js';
import { Store } from '../store/store.js';
import { ensurePrivateDir, FILE_MODE, fsyncDir } from '../util/durable.js';
import { fromSystemError } from '../util/errors.js';

export interface StoredChunk {
  digest: Uint8Array;
  payload: Uint8Array;
  codec: number;
}

const VERIFY_BATCH = 1024;

/**
 * Decodes every chunk and checks it against its digest (in the page workers); returns the indices of
 * chunks that do not decode or do not match.
 */
export async function verifyChunks(store: Store, chunks: readonly StoredChunk[]): Promise<number[]> {
  const bad: number[] = [];
  for (let start = 0; start < chunks.length; start += VERIFY_BATCH) {
    const part = chunks.slice(start, start + VERIFY_BATCH);
    const total = part.reduce((s, c) => s + c.payload.length, 0);
    const payload = new Uint8Array(total);
    const lengths = new Uint32Array(part.length);
    const codecs = new Uint8Array(part.length);
    const digests = new Uint8Array(part.length * DIGEST_BYTES);
    let pos = 0;
    part.forEach((c, i) => {
      payload.set(c.payload, pos);
      pos += c.payload.length;
      lengths[i] = c.payload.length;
      codecs[i] = c.codec;
      digests.set(c.digest, i * DIGEST_BYTES);
    });
    const slots = Uint32Array.from(part.keys());
    const r = await store.pool.decode({ kind: 'decode', payload, lengths, codecs, digests, slots, windowPages: part.length });
    for (const i of r.bad) bad.push(start + i);
  }
  return bad;
}

/**
 * Writes `chunks` as a new sealed pack: temp file, fsync, rename into packs/, fsync packs/. The pack
 * is durable but not indexed when this returns (the caller's index batch does that; a crash before it
 * leaves a pack that recovery indexes, which is harmless: every chunk in it is a valid copy).
 */
export async function writePack(store: Store, packId: number, chunks: readonly StoredChunk[]): Promise<{ record: PackRecord; offsets: number[] }> {
  const p = Store.paths(store.dir);
  const name = packFileName(packId);
  const tmp = path.join(p.tmp, `${name}.gc.tmp`);
  const final = path.join(p.packs, name);
  const offsets: number[] = [];
  let offset = PACK_HEADER_BYTES;
  let crc = 0;
  for (const c of chunks) {
    if (c.payload.length < 1 || c.payload.length > PAGE_SIZE) throw new RangeError(`payload length ${c.payload.length}`);
    if (c.digest.length !== DIGEST_BYTES) throw new RangeError('digest must be 32 bytes');
    offsets.push(offset);
    offset += c.payload.length;
    crc = crc32(c.payload, crc);
  }
  const toc = { count: chunks.length, digests: Buffer.concat(chunks.map((c) => c.digest)), lengths: chunks.map((c) => c.payload.length), codecs: chunks.map((c) => c.codec) };
  const footer = encodePackFooter(toc, offset, crc);
  const fh = await fsp.open(tmp, 'wx', FILE_MODE);
  try {
    await fh.writeFile(Buffer.concat([encodePackHeader(PAGE_SIZE), ...chunks.map((c) => c.payload), footer]));
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw fromSystemError(err, `writing pack ${name}`);
  }
  await fh.close();
  await fsp.rename(tmp, final);
  await fsyncDir(p.packs);
  const record: PackRecord = {
    id: packId,
    chunks: chunks.length,
    bytes: offset + footer.length,
    payloadBytes: offset - PACK_HEADER_BYTES,
    sealedAt: new Date().toISOString(),
  };
  return { record, offsets };
}

/** Moves a pack file into quarantine/ (never deleting it); returns the quarantined file's path. */
export async function quarantinePack(store: Store, name: string): Promise<string> {
  const p = Store.paths(store.dir);
  await ensurePrivateDir(p.quarantine);
  let dest = path.join(p.quarantine, name);
  for (let n = 1; await fsp.access(dest).then(() => true, () => false); n++) dest = path.join(p.quarantine, `${name}.${n}`);
  await fsp.rename(path.join(p.packs, name), dest);
  await fsyncDir(p.quarantine);
  await fsyncDir(p.packs);
  return dest;
}

/** Removes pack files (after their index entries are gone) and syncs the directory. */
export async function removePackFiles(store: Store, ids: readonly number[]): Promise<void> {
  if (ids.length === 0) return;
  const dir = Store.paths(store.dir).packs;
  store.pool.forgetPacks(store.packs.packsDir, ids); // the key page jobs cache descriptors under
  for (const id of ids) await fsp.rm(path.join(dir, packFileName(id)), { force: true });
  await fsyncDir(dir);
}
