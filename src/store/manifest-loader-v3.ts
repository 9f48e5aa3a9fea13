/**
 * The manifest loader of a format-3 store: version-2 manifests resolved through their delta bases
 * into numbered page tables, and each page's digest from the packs' TOCs (what sessions compare pages
 * with, and what the image digest is computed over). A small LRU cache as ManifestLoader's: a
 * manifest never changes, and neither does the digest a number names (gc and compact keep numbers).
 */
import { decodeManifestV2Header, decodeManifestV2Pages, type NumberedPages } from '../format/manifest-v2.js';
import type { ManifestHeader } from '../format/manifest.js';
import type { PageTable } from '../format/pages.js';
import { baseUnreadable, ManifestCache, readManifestBytes, readManifestOf } from './manifest-loader.js';
import type { NumberedChunks } from './numbered-chunks.js';
import type { PackReader } from './pack-reader.js';
import { pageDigests } from './read-v3.js';

export interface LoadedNumberedManifest {
  header: ManifestHeader;
  numbers: NumberedPages;
  fileBytes: number;
  /** Each page's digest, once loadWithDigests read them. */
  pages?: PageTable;
  /**
   * True when `pages` holds each page's whole digest (a session of this process just committed it),
   * not only the 24-byte prefix a pack TOC keeps: a child inheriting pages need not hash them.
   */
  wholeDigests?: boolean;
  /** chunkLossGeneration() at a moment every chunk it names was in the chunk table (a session just committed it). */
  presentAt?: number;
}

/** Default budget of the page tables of committed snapshots a process keeps as next parents. */
export const KEPT_PARENTS_BYTES = 128 * 1024 * 1024;

export class NumberedManifestLoader {
  private readonly cache: ManifestCache<LoadedNumberedManifest>;
  /** Each VM's latest snapshot committed by this process, with whole digests (remember). */
  private readonly latest = new Map<string, { id: string; loaded: LoadedNumberedManifest & { pages: PageTable }; bytes: number }>();
  private latestBytes = 0;
  constructor(
    private readonly fileOf: (id: string) => string,
    private readonly chunks: NumberedChunks,
    private readonly packs: PackReader,
    cacheSize = 8,
    /** Page tables remember keeps at most (41 B a page: 128 MiB is ~3.3 Mi pages, 12.8 GiB of VM memory). */
    readonly keptBudgetBytes = KEPT_PARENTS_BYTES,
  ) {
    this.cache = new ManifestCache(cacheSize);
  }

  async readHeader(id: string): Promise<ManifestHeader> {
    return decodeManifestV2Header(await readManifestBytes(this.fileOf(id), id), id).header;
  }

  /** The numbered page table, delta bases resolved. */
  async load(id: string, depth = 0): Promise<LoadedNumberedManifest> {
    const hit = this.cache.get(id);
    if (hit) return hit;
    const { bytes, header, reader } = await readManifestOf(this.fileOf(id), id, depth, decodeManifestV2Header);
    let base: NumberedPages | undefined;
    if (header.baseId) {
      try {
        base = (await this.load(header.baseId, depth + 1)).numbers;
      } catch (err) {
        throw baseUnreadable(id, header.baseId, err);
      }
    }
    const loaded: LoadedNumberedManifest = { header, numbers: decodeManifestV2Pages(header, reader, id, base), fileBytes: bytes.length };
    this.cache.put(id, loaded);
    return loaded;
  }

  /**
   * Keeps a snapshot this process just committed, as a session built it (the manifest it wrote
   * encodes these numbers, and its pages have whole digests): the VM's next session begins on it
   * without reading it back, and inherits whole digests instead of hashing the pages it keeps. One
   * per VM (its latest), within `keptBudgetBytes`, apart from the small LRU cache: a server with more
   * VMs than that cache holds would otherwise hash every dirty-list snapshot's inherited pages.
   */
  remember(vm: string, id: string, loaded: LoadedNumberedManifest & { pages: PageTable }): void {
    this.cache.put(id, loaded);
    this.forgetVm(vm);
    const bytes =
      loaded.pages.kinds.byteLength + loaded.pages.digests.byteLength + loaded.numbers.kinds.byteLength + loaded.numbers.numbers.byteLength;
    if (bytes > this.keptBudgetBytes) return;
    this.latest.set(vm, { id, loaded, bytes });
    this.latestBytes += bytes;
    // Over the budget: the VMs that committed longest ago go first (a Map iterates in insertion order).
    for (const old of this.latest.keys()) {
      if (this.latestBytes <= this.keptBudgetBytes) break;
      this.forgetVm(old);
    }
  }

  /** Bytes of page tables kept by remember (at most keptBudgetBytes). */
  get keptBytes(): number {
    return this.latestBytes;
  }

  private forgetVm(vm: string): void {
    const kept = this.latest.get(vm);
    if (!kept) return;
    this.latest.delete(vm);
    this.latestBytes -= kept.bytes;
  }

  /** The numbered page table and each page's digest (read from the TOCs once, then cached). */
  async loadWithDigests(id: string): Promise<LoadedNumberedManifest & { pages: PageTable }> {
    for (const kept of this.latest.values()) if (kept.id === id) return { ...kept.loaded };
    const loaded = await this.load(id); // the cached object: the digests are kept with it
    loaded.pages ??= await pageDigests(this.packs, this.chunks, loaded.numbers, `snapshot ${id}`);
    return { ...loaded, pages: loaded.pages };
  }
}
