/**
 * The one manifest loader: reads a snapshot's manifest file and resolves its delta bases into a full
 * page table, through a small LRU cache (bases are shared by their children). The store keeps one
 * for its lifetime (manifests never change once written); maintenance makes one per run, so check
 * sees what is on disk now.
 */
import { promises as fsp } from 'node:fs';
import { decodeManifestHeader, decodeManifestPages, type ManifestHeader } from '../format/manifest.js';
import type { PageTable } from '../format/pages.js';
import type { ByteReader } from '../format/varint.js';
import { CorruptError, fromSystemError, MissingError } from '../util/errors.js';

/** Deepest delta chain a manifest may have (a session writes a full manifest past it). */
export const MAX_BASE_DEPTH = 8;

export interface LoadedManifest {
  header: ManifestHeader;
  pages: PageTable;
  fileBytes: number;
}

export class ManifestLoader {
  private readonly cache: ManifestCache<LoadedManifest>;
  constructor(
    /** Where snapshot `id`'s manifest file is. */
    private readonly fileOf: (id: string) => string,
    cacheSize = 16,
  ) {
    this.cache = new ManifestCache(cacheSize);
  }

  /** The manifest's header alone (never cached: cheap, and a restore checks it against the catalog). */
  async readHeader(id: string): Promise<ManifestHeader> {
    return decodeManifestHeader(await this.readBytes(id), id).header;
  }

  async load(id: string, depth = 0): Promise<LoadedManifest> {
    const hit = this.cache.get(id);
    if (hit) return hit;
    const { bytes, header, reader } = await readManifestOf(this.fileOf(id), id, depth, decodeManifestHeader);
    let base: PageTable | undefined;
    if (header.baseId) {
      try {
        base = (await this.load(header.baseId, depth + 1)).pages;
      } catch (err) {
        // Not a MissingError even when the base's file is gone: this manifest is there, but unusable.
        throw baseUnreadable(id, header.baseId, err);
      }
    }
    const pages = decodeManifestPages(header, reader, id, base);
    const loaded = { header, pages, fileBytes: bytes.length };
    this.cache.put(id, loaded);
    return loaded;
  }

  private readBytes(id: string): Promise<Buffer> {
    return readManifestBytes(this.fileOf(id), id);
  }
}

/** Recently loaded manifests, least recently used dropped first (a manifest never changes once written). */
export class ManifestCache<T> {
  private readonly map = new Map<string, T>();
  constructor(private readonly size: number) {}
  get(id: string): T | undefined {
    const hit = this.map.get(id);
    if (hit !== undefined) {
      this.map.delete(id);
      this.map.set(id, hit);
    }
    return hit;
  }
  put(id: string, value: T): void {
    if (this.map.size >= this.size) this.map.delete(this.map.keys().next().value as string);
    this.map.set(id, value);
  }
}

/** Reads and decodes the header of snapshot `id`'s manifest, `depth` links down a base chain. */
export async function readManifestOf(
  file: string,
  id: string,
  depth: number,
  decode: (bytes: Uint8Array, name: string) => { header: ManifestHeader; reader: ByteReader },
): Promise<{ bytes: Buffer; header: ManifestHeader; reader: ByteReader }> {
  if (depth > MAX_BASE_DEPTH + 1) throw new CorruptError(`manifest of snapshot ${id}: base chain too deep`);
  const bytes = await readManifestBytes(file, id);
  const { header, reader } = decode(bytes, id);
  if (header.meta.id !== id) throw new CorruptError(`manifest of snapshot ${id} names snapshot ${header.meta.id}`);
  return { bytes, header, reader };
}

/** Snapshot `id`'s manifest file (MissingError when it is gone). */
export async function readManifestBytes(file: string, id: string): Promise<Buffer> {
  try {
    return await fsp.readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new MissingError(`manifest of snapshot ${id} is missing`);
    throw fromSystemError(err, `reading manifest of snapshot ${id}`);
  }
}

/** A delta base that does not load makes its child unusable (not missing, even when the base's file is). */
export function baseUnreadable(id: string, baseId: string, err: unknown): unknown {
  if (err instanceof CorruptError)
    return new CorruptError(`manifest of snapshot ${id}: its delta base ${baseId} is unreadable (${err.message})`, { cause: err });
  return err;
}
