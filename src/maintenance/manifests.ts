/**
 * Reading manifests for maintenance without the store's small cache: every call reads the file
 * (check must see what is on disk now), resolving delta bases through a per-run cache.
 */
import { promises as fsp } from 'node:fs';
import { decodeManifestHeader, decodeManifestPages, type ManifestHeader } from '../format/manifest.js';
import type { PageTable } from '../format/pages.js';
import { MAX_BASE_DEPTH, type Store } from '../store/store.js';
import { CorruptError, fromSystemError } from '../util/errors.js';
import { manifestFile } from './live.js';

export interface LoadedManifest {
  header: ManifestHeader;
  pages: PageTable;
  fileBytes: number;
}

export class ManifestLoader {
  private readonly cache = new Map<string, LoadedManifest>();
  constructor(
    private readonly store: Store,
    private readonly cacheSize = 16,
  ) {}

  async load(id: string, depth = 0): Promise<LoadedManifest> {
    const hit = this.cache.get(id);
    if (hit) {
      this.cache.delete(id);
      this.cache.set(id, hit);
      return hit;
    }
    if (depth > MAX_BASE_DEPTH + 1) throw new CorruptError(`manifest of snapshot ${id}: base chain too deep`);
    let bytes: Buffer;
    try {
      bytes = await fsp.readFile(manifestFile(this.store, id));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new CorruptError(`manifest of snapshot ${id} is missing`);
      throw fromSystemError(err, `reading manifest of snapshot ${id}`);
    }
    const { header, reader } = decodeManifestHeader(bytes, id);
    if (header.meta.id !== id) throw new CorruptError(`manifest of snapshot ${id} names snapshot ${header.meta.id}`);
    let base: PageTable | undefined;
    if (header.baseId) {
      try {
        base = (await this.load(header.baseId, depth + 1)).pages;
      } catch (err) {
        if (err instanceof CorruptError) throw new CorruptError(`manifest of snapshot ${id}: its delta base ${header.baseId} is unreadable (${err.message})`, { cause: err });
        throw err;
      }
    }
    const pages = decodeManifestPages(header, reader, id, base);
    const loaded = { header, pages, fileBytes: bytes.length };
    if (this.cache.size >= this.cacheSize) this.cache.delete(this.cache.keys().next().value as string);
    this.cache.set(id, loaded);
    return loaded;
  }
}
