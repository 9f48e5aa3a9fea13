/**
 * How many pages one page job moves: shared by sessions (hash jobs), restores (windows) and the
 * store, which sizes the slabs it lends to both. Kept here, below all three, so none imports another.
 */

/** Pages per hash job: large enough to amortise messaging, small enough to keep both cores busy. */
export const BLOCK_PAGES = 1024;

/**
 * Pages per restore window (1 MiB). A window's output and read buffers are reused, but each is
 * touched fresh once per process, and a first touch costs ~12 µs a page on the project's virtual
 * machines: 4 MiB windows cost a one-shot 448 MiB restore ~2,000 more page faults and 5-7% of its
 * time (bench/RESULTS.md).
 */
export const WINDOW_PAGES = 256;

/**
 * Pages per window of a server's streaming restore (2 MiB). A server touches its windows' memory
 * once and keeps it, and half as many windows cost its main thread half the per-window work: 256
 * against 512 pages, five A/B pairs through bench/server.mjs, restore 0.149-0.176 s against
 * 0.156-0.230 s a 256 MiB image (bench/RESULTS.md, issue 12, session 18).
 */
export const STREAM_WINDOW_PAGES = 512;

/** The largest window (or block) a store's lent slabs hold. */
export const SLAB_PAGES = Math.max(BLOCK_PAGES, WINDOW_PAGES, STREAM_WINDOW_PAGES);

/**
 * Lent slabs a store keeps for reuse (its SlabPool): the jobs in flight across its sessions and
 * restores. A server keeps as many frame buffers beyond its budget's, for PAGES frames lent to
 * page jobs in the slabs' place.
 */
export const SLABS_KEPT = 12;

/** Windows a restore keeps in flight: decoded ahead of the one being written out. */
export const RESTORE_WINDOWS_IN_FLIGHT = 4;
