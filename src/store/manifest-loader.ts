/**
 * The one manifest loader: reads a snapshot's manifest file and resolves its delta bases into a full
 * page table, through a small LRU cache (bases are shared by their children). The store keeps one
 * for its lifetime (manifests never change once written); maintenance makes one per run, so check
 * sees what is on disk now.
 */
import { promises as fsp } from 'node:fs';
import { decodeManifestHeader, decodeManifestPages, type ManifestHeader } from '../format/manifest.js';
import type { PageTable } from '../format/pages.js';
import { CorruptError, fromSystemError, MissingError } from '../util/errors.js';

/** Deepest delta chain a manifest may have (a session writes a full manifest past it). */
export const MAX_BASE_DEPTH = 8;

export interface LoadedManifest {
  header: ManifestHeader;
  pages: PageTable;
  fileBytes: number;
}

export class ManifestLoader {
  private readonly cache = new Map<string, LoadedManifest>();
  constructor(
    /** Where snapshot `id`'s manifest file is. */
    private readonly fileOf: (id: string) => string,
    private readonly cacheSize = 16,
  ) {}

  /** The manifest's header alone (never cached: cheap, and a restore checks it against the catalog). */
  async readHeader(id: string): Promise<ManifestHeader> {
    return decodeManifestHeader(await this.readBytes(id), id).header;
  }

  async load(id: string, depth = 0): Promise<LoadedManifest> {
    const hit = this.cache.get(id);
    if (hit) {
      this.cache.delete(id);
      this.cache.set(id, hit);
      return hit;
    }
    if (depth > MAX_BASE_DEPTH + 1) throw new CorruptError(`manifest of snapshot ${id}: base chain too deep`);
    const bytes = await this.readBytes(id);
    const { header, reader } = decodeManifestHeader(bytes, id);
    if (header.meta.id !== id) throw new CorruptError(`manifest of snapshot ${id} names snapshot ${header.meta.id}`);
    let base: PageTable | undefined;
    if (header.baseId) {
      try {
        base = (await this.load(header.baseId, depth + 1)).pages;
      } catch (err) {
        // Not a MissingError even when the base's file is gone: this manifest is there, but unusable.
        if (err instanceof CorruptError)
          throw new CorruptError(`manifest of snapshot ${id}: its delta base ${header.baseId} is unreadable (${err.message})`, {
            cause: err,
          });
        throw err;
      }
    }
    const pages = decodeManifestPages(header, reader, id, base);
    const loaded = { header, pages, fileBytes: bytes.length };
    if (this.cache.size >= this.cacheSize) this.cache.delete(this.cache.keys().next().value as string);
    this.cache.set(id, loaded);
    return loaded;
  }

  private async readBytes(id: string): Promise<Buffer> {
    try {
      return await fsp.readFile(this.fileOf(id));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new MissingError(`manifest of snapshot ${id} is missing`);
      throw fromSystemError(err, `reading manifest of snapshot ${id}`);
    }
  }
}
