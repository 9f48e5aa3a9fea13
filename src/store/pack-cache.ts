/**
 * The page cache held by the packs this process writes (docs/DESIGN.md, "The page cache of old
 * packs"): the newest `limitBytes` of them stay cached, for restores of the latest snapshots; the
 * pages of older ones are dropped once those packs are durable. Why: a server ingests GiBs per
 * snapshot round, and every pack left cached keeps its pages, so each new pack takes memory the
 * kernel must find elsewhere: on a hypervisor host, the VMs' own file cache, and on a virtual
 * machine with free page reporting, memory its host reclaimed, whose first touch costs ~2 ms a MB
 * here (bench/RESULTS.md). Dropped pages go back to the free lists, where the next pack's writes
 * find them. (restic's fs.ClearCache dropped files it had written in the same way.)
 */
import { dropFileCache } from '../chunk/codec.js';

/** Pack bytes kept in the page cache by default: about the packs of a 256 MiB VM's latest snapshots. */
export const DEFAULT_PACK_CACHE_BYTES = 256 * 1024 * 1024;

export class PackCacheWindow {
  /** Sealed packs still counted as cached, oldest first. */
  private readonly cached: { path: string; bytes: number }[] = [];
  private cachedBytes = 0;

  constructor(
    /** Bytes of the newest packs to keep cached; Infinity keeps all (the kernel decides alone). */
    readonly limitBytes: number = DEFAULT_PACK_CACHE_BYTES,
    /** Drops one file's pages (the addon's; tests count calls); undefined when nothing can. */
    private readonly drop: (path: string) => Promise<number> | undefined = dropFileCache,
  ) {}

  /** A pack was sealed (fsynced: its pages are clean): drops the oldest beyond the window. */
  sealed(path: string, bytes: number): void {
    if (this.limitBytes === Infinity) return;
    this.cached.push({ path, bytes });
    this.cachedBytes += bytes;
    while (this.cachedBytes > this.limitBytes && this.cached.length > 0) {
      const old = this.cached.shift()!;
      this.cachedBytes -= old.bytes;
      // Best effort, off the main thread: a pack gc removed meanwhile answers ENOENT, and a failed
      // advice only leaves pages cached, as without this window.
      void this.drop(old.path)?.catch(() => undefined);
    }
  }

  /** Bytes of sealed packs still counted as cached (at most the limit after each seal). */
  get bytes(): number {
    return this.cachedBytes;
  }
}
