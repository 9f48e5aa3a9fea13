/** Reads sealed packs: cached file handles, positional reads, table-of-contents parsing and checks. */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import {
  packFileName,
  parsePackHeader,
  parsePackToc,
  parsePackTrailer,
  PACK_HEADER_BYTES,
  PACK_TRAILER_BYTES,
  TOC_ENTRY_BYTES,
  TOC_PREFIX_BYTES,
  type PackEntry,
} from '../format/pack.js';
import { PAGE_SIZE } from '../format/pages.js';
import { getCodec, type ChunkCodec } from '../chunk/codec.js';
import { hashPage } from '../chunk/hash.js';
import { CorruptError, fromSystemError } from '../util/errors.js';

const MAX_OPEN = 64;

export class PackReader {
  private readonly handles = new Map<number, Promise<FileHandle>>();
  /** How long a retired pack's handle stays open (see retire); tests shorten it. */
  retireGraceMs = 10_000;

  constructor(readonly packsDir: string) {}

  packPath(packId: number): string {
    return path.join(this.packsDir, packFileName(packId));
  }

  private handle(packId: number): Promise<FileHandle> {
    let h = this.handles.get(packId);
    if (h) {
      // Refresh LRU position.
      this.handles.delete(packId);
      this.handles.set(packId, h);
      return h;
    }
    if (this.handles.size >= MAX_OPEN) {
      const [oldId, old] = this.handles.entries().next().value as [number, Promise<FileHandle>];
      this.handles.delete(oldId);
      void old.then((fh) => fh.close()).catch(() => undefined);
    }
    h = fsp.open(this.packPath(packId), 'r').catch((err: unknown) => {
      this.handles.delete(packId);
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new CorruptError(`pack ${packFileName(packId)} is missing`);
      throw fromSystemError(err, `opening pack ${packFileName(packId)}`);
    });
    this.handles.set(packId, h);
    return h;
  }

  /** Reads exactly `length` bytes at `offset`, or fails naming the pack. */
  async read(packId: number, offset: number, length: number): Promise<Buffer> {
    const fh = await this.handle(packId);
    const buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    if (bytesRead !== length) throw new CorruptError(`pack ${packFileName(packId)}: short read at offset ${offset} (truncated pack)`);
    return buf;
  }

  /** Parses and checks a pack's trailer and table of contents (not the payload). */
  async readToc(packId: number): Promise<PackEntry[]> {
    return readPackTocAt(this.packPath(packId), packFileName(packId));
  }

  /**
   * gc is about to delete this pack: keep (or open) a handle for `graceMs`, so a read whose location
   * was resolved before the index moved still succeeds on the unlinked file, then close it.
   */
  async retire(packId: number, graceMs = this.retireGraceMs): Promise<void> {
    const h = this.handle(packId);
    await h.catch(() => undefined);
    const timer = setTimeout(() => {
      if (this.handles.get(packId) === h) this.handles.delete(packId);
      void h.then((fh) => fh.close()).catch(() => undefined);
    }, graceMs);
    timer.unref();
  }

  async close(): Promise<void> {
    const all = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(all.map((h) => h.then((fh) => fh.close()).catch(() => undefined)));
  }
}

/**
 * Reads a whole pack and names every chunk by decoding and hashing it: the way the index is rebuilt
 * from packs alone. Fails (CorruptError naming the pack) when a chunk does not decode or its digest
 * does not start with the prefix its table of contents records.
 */
export async function readPackChunks(file: string, name: string): Promise<(PackEntry & { digest: Buffer })[]> {
  const entries = await readPackTocAt(file, name);
  const data = await fsp.readFile(file);
  const page = new Uint8Array(PAGE_SIZE);
  return entries.map((e, i) => {
    const named = nameChunk(data.subarray(e.offset, e.offset + e.storedLength), e, page);
    if ('why' in named) throw new CorruptError(`pack ${name}: chunk ${i} at offset ${e.offset} ${named.why}`);
    return { ...e, digest: named.digest };
  });
}

/**
 * Names a stored chunk by its content: decodes it (into `page`, a 4 KiB scratch buffer), hashes it
 * and checks the digest against the prefix the pack's table of contents records.
 */
export function nameChunk(payload: Uint8Array, entry: Pick<PackEntry, 'codec' | 'digestPrefix'>, page: Uint8Array): { digest: Buffer } | { why: string } {
  try {
    getCodec().decodePage(payload, entry.codec as ChunkCodec, page, 0);
  } catch {
    return { why: 'does not decode' };
  }
  const digest = hashPage(page);
  if (!digest.subarray(0, TOC_PREFIX_BYTES).equals(entry.digestPrefix)) return { why: 'does not match its table of contents' };
  return { digest };
}

export async function readPackTocAt(file: string, name: string): Promise<PackEntry[]> {
  const fh = await fsp.open(file, 'r');
  try {
    const { size } = await fh.stat();
    if (size < PACK_HEADER_BYTES + PACK_TRAILER_BYTES) throw new CorruptError(`pack ${name}: too short (${size} bytes)`);
    const head = Buffer.alloc(PACK_HEADER_BYTES);
    await fh.read(head, 0, PACK_HEADER_BYTES, 0);
    parsePackHeader(head, name);
    const tail = Buffer.alloc(PACK_TRAILER_BYTES);
    await fh.read(tail, 0, PACK_TRAILER_BYTES, size - PACK_TRAILER_BYTES);
    const trailer = parsePackTrailer(tail, size, name);
    const toc = Buffer.alloc(trailer.count * TOC_ENTRY_BYTES);
    await fh.read(toc, 0, toc.length, trailer.tocOffset);
    return parsePackToc(toc, trailer, name);
  } finally {
    await fh.close();
  }
}
