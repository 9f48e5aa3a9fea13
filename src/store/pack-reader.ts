/**
 * The one reader of sealed packs (page workers aside, which read by descriptor in their own threads):
 * one LRU cache of open file handles, positional reads, table-of-contents parsing and checks, whole-pack
 * reads for recovery and check, verified single-chunk reads.
 */
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
  CONTAINER_CODEC,
  type PackEntry,
} from '../format/pack.js';
import { NUMBERED_PACK_VERSIONS, TOC_DIGEST_BYTES, parsePackTocV3, parsePackTrailerV3, type TocV3 } from '../format/pack-v3.js';
import { ContainerCache } from '../chunk/container.js';
import { PAGE_SIZE } from '../format/pages.js';
import { getCodec, type ChunkCodec } from '../chunk/codec.js';
import { hashPage } from '../chunk/hash.js';
import type { ChunkLocation } from '../index/chunk-table.js';
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

  /** Parses and checks a pack's header, trailer and table of contents (not the payload). */
  async readToc(packId: number): Promise<PackEntry[]> {
    const fh = await this.handle(packId);
    const { size } = await fh.stat();
    return (await parseLayout(packFileName(packId), size, (offset, length) => readAt(fh, offset, length))).entries;
  }

  /**
   * A version-3/4 pack's header, trailer and table of contents, checked (not the payload): the index of
   * store format 3. `tocOffset` + toc.digestsAt + toc.digestStride·k is entry k's digest in the file.
   */
  async readTocV3(packId: number): Promise<PackTocV3> {
    const fh = await this.handle(packId);
    const { size } = await fh.stat();
    const name = packFileName(packId);
    if (size < PACK_HEADER_BYTES + PACK_TRAILER_BYTES) throw new CorruptError(`pack ${name}: too short (${size} bytes)`);
    const { version } = parsePackHeader(await readAt(fh, 0, PACK_HEADER_BYTES), name, NUMBERED_PACK_VERSIONS);
    const trailer = parsePackTrailerV3(await readAt(fh, size - PACK_TRAILER_BYTES, PACK_TRAILER_BYTES), size, name, version);
    const toc = parsePackTocV3(await readAt(fh, trailer.tocOffset, trailer.tocBytes), trailer, name, version);
    return { toc, tocOffset: trailer.tocOffset, payloadCrc: trailer.payloadCrc, version };
  }

  /**
   * The whole pack file, its table of contents checked (CorruptError naming the pack when it does
   * not parse). For the rare whole-pack passes: recovery, check --read-data, repair.
   */
  async readWhole(packId: number): Promise<WholePack> {
    const fh = await this.handle(packId);
    const { size } = await fh.stat();
    const data = Buffer.allocUnsafe(size);
    const { bytesRead } = await fh.read(data, 0, size, 0);
    const name = packFileName(packId);
    if (bytesRead !== size) throw new CorruptError(`pack ${name}: short read (truncated pack)`);
    const { entries, payloadCrc } = await parseLayout(name, size, async (offset, length) => data.subarray(offset, offset + length));
    return { data, entries, payloadCrc };
  }

  /**
   * Reads a whole pack and names every chunk by decoding and hashing it: the way the index is rebuilt
   * from packs alone. Fails (CorruptError naming the pack) when a chunk does not decode or its digest
   * does not start with the prefix its table of contents records.
   */
  async readChunks(packId: number): Promise<(PackEntry & { digest: Buffer })[]> {
    const { data, entries } = await this.readWhole(packId);
    const page = new Uint8Array(PAGE_SIZE);
    const containers = new ContainerCache();
    return entries.map((e, i) => {
      const named = nameChunk(data.subarray(e.offset, e.offset + e.storedLength), e, page, containers);
      if ('why' in named) throw new CorruptError(`pack ${packFileName(packId)}: chunk ${i} at offset ${e.offset} ${named.why}`);
      return { ...e, digest: named.digest };
    });
  }

  /** One stored chunk, decoded and checked against `digest`; undefined when it does not decode or match. */
  async readVerified(loc: ChunkLocation, digest: Uint8Array): Promise<Uint8Array | undefined> {
    return (await this.readHashed(loc, digest))?.page;
  }

  /**
   * readVerified, with the page's whole digest as it hashed it: a `digest` of 24 bytes (a format-3
   * TOC's prefix) compares as a prefix, and a caller that needs all 32 need not hash the page again.
   */
  async readHashed(loc: ChunkLocation, digest: Uint8Array): Promise<{ page: Uint8Array; digest: Buffer } | undefined> {
    const payload = await this.read(loc.pack, loc.offset, loc.storedLength);
    let page: Uint8Array;
    try {
      page = decodeOne(payload, loc.codec, loc.member ?? 0, new Uint8Array(PAGE_SIZE));
    } catch {
      return undefined;
    }
    if (digest.length < TOC_DIGEST_BYTES) throw new RangeError(`a digest of ${digest.length} bytes`);
    const whole = hashPage(page);
    return whole.subarray(0, digest.length).equals(digest) ? { page: Uint8Array.from(page), digest: whole } : undefined;
  }

  /** The pack's file left packs/ (quarantined, removed): close its handle now. */
  async evict(packId: number): Promise<void> {
    const h = this.handles.get(packId);
    if (!h) return;
    this.handles.delete(packId);
    await h.then((fh) => fh.close()).catch(() => undefined);
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

/** Where a pack's table of contents places an entry, as the index records it. */
export function entryLocation(pack: number, e: PackEntry): ChunkLocation {
  const loc: ChunkLocation = { pack, offset: e.offset, storedLength: e.storedLength, codec: e.codec };
  if (e.codec === CONTAINER_CODEC) {
    loc.member = e.member;
    loc.pages = e.pages;
  }
  return loc;
}

/**
 * Decodes one stored chunk: a per-page payload into `page`, or page `member` of a container (through
 * `containers`, which keeps the last container decoded); returns the page's bytes.
 */
export function decodeOne(payload: Uint8Array, codec: number, member: number, page: Uint8Array, containers?: ContainerCache): Uint8Array {
  if (codec === CONTAINER_CODEC) return (containers ?? new ContainerCache()).page(`${payload.byteOffset}`, payload, member);
  getCodec().decodePage(payload, codec as ChunkCodec, page, 0);
  return page;
}

/**
 * Names a stored chunk by its content: decodes it (into `page`, a 4 KiB scratch buffer, or through
 * `containers`), hashes it and checks the digest against the prefix the pack's table of contents records.
 */
export function nameChunk(
  payload: Uint8Array,
  entry: Pick<PackEntry, 'codec' | 'digestPrefix' | 'member'>,
  page: Uint8Array,
  containers?: ContainerCache,
): { digest: Buffer } | { why: string } {
  let decoded: Uint8Array;
  try {
    decoded = decodeOne(payload, entry.codec, entry.member, page, containers);
  } catch {
    return { why: 'does not decode' };
  }
  const digest = hashPage(decoded);
  if (!digest.subarray(0, TOC_PREFIX_BYTES).equals(entry.digestPrefix)) return { why: 'does not match its table of contents' };
  return { digest };
}

export interface PackTocV3 {
  toc: TocV3;
  /** The pack's version (3 or 4). */
  version: number;
  /** File offset of the TOC. */
  tocOffset: number;
  payloadCrc: number;
}

export interface WholePack {
  data: Buffer;
  entries: PackEntry[];
  /** The payload checksum the trailer records (check compares it with the payload read). */
  payloadCrc: number;
}

/** `length` bytes at `offset`, zero-filled past the end (the parsers' checksums then fail). */
async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await fh.read(buf, 0, length, offset);
  return buf;
}

/** Header, trailer and table of contents of a pack of `size` bytes, read through `read`. */
async function parseLayout(
  name: string,
  size: number,
  read: (offset: number, length: number) => Promise<Uint8Array>,
): Promise<{ entries: PackEntry[]; payloadCrc: number }> {
  if (size < PACK_HEADER_BYTES + PACK_TRAILER_BYTES) throw new CorruptError(`pack ${name}: too short (${size} bytes)`);
  const { version } = parsePackHeader(await read(0, PACK_HEADER_BYTES), name);
  const trailer = parsePackTrailer(await read(size - PACK_TRAILER_BYTES, PACK_TRAILER_BYTES), size, name);
  const entries = parsePackToc(await read(trailer.tocOffset, trailer.count * TOC_ENTRY_BYTES), trailer, name, version);
  return { entries, payloadCrc: trailer.payloadCrc };
}
