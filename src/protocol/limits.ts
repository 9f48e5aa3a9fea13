/** Protocol constants: the version range this build speaks and the limits every frame is checked against. */
import { PAGE_SIZE, DIGEST_BYTES } from '../format/pages.js';

/** Four bytes that open every HELLO: a peer that is not a vnstore agent is refused at once. */
export const HELLO_MAGIC = 0x564e5350; // "VNSP"
/**
 * Version 2 restores with SPARSE_DATA frames (zero pages without bytes, digest prefixes, the client
 * the only hasher); version 1 clients are still served DATA frames.
 */
export const PROTOCOL_VERSION = 2;
export const MIN_PROTOCOL_VERSION = 1;
/** The first version whose restores stream SPARSE_DATA frames. */
export const SPARSE_RESTORE_VERSION = 2;

/** Frame header: u32 length of what follows (type byte + body), then the type byte. */
export const FRAME_HEADER_BYTES = 5;
/**
 * Pages in one PAGES frame at most: 1024 pages = 4 MiB of page bytes, a page job's block (the
 * server says how many it takes in WELCOME, and agents send no more). Four times the 256 of the
 * first servers: a first snapshot cost the server ~15% and the agent ~25% less CPU (bench/RESULTS.md,
 * issue 12, session 15).
 */
export const MAX_PAGES_PER_BATCH = 1024;
/** Offers (page index + digest) in one OFFER frame. */
export const MAX_OFFERS_PER_BATCH = 4096;
/** Zero ranges in one ZERO frame. */
export const MAX_ZERO_RANGES = 4096;
/** Pages in one DATA frame of a restore: a restore window (1 MiB). */
export const MAX_DATA_PAGES = 256;
/**
 * Bytes of each page digest in a SPARSE_DATA frame: a prefix the client compares with its own hash
 * of the page, to name a bad page; the whole digests it computes make the image digest, which is
 * the check that counts. 24 is what a format-3 pack's TOC keeps, so the server sends what it holds.
 */
export const DATA_DIGEST_PREFIX_BYTES = 24;
/** Bytes of page data in one DATA frame of a restore. */
export const MAX_DATA_BYTES = MAX_DATA_PAGES * PAGE_SIZE;
/** Longest string field (names, tokens, messages, JSON arguments). */
export const MAX_STRING_BYTES = 64 * 1024;
/** Largest JSON reply (a catalog listing); a larger one is an error, not an allocation. */
export const MAX_JSON_BYTES = MAX_DATA_BYTES;
/** A PAGES entry and its page: u32 index, digest, page bytes. */
const PAGES_ENTRY_BYTES = 4 + DIGEST_BYTES + PAGE_SIZE;
/** Room in a frame limit beyond its entries: type byte, req, sid, count. */
const FRAME_SLACK_BYTES = 64;

/** The frame limit that holds a PAGES batch of `pages` pages. */
function pagesFrameLimit(pages: number): number {
  return pages * PAGES_ENTRY_BYTES + FRAME_SLACK_BYTES;
}

/**
 * Largest frame, header excluded: a full PAGES batch (its entries and bytes) plus slack for ids.
 * The decoder refuses a larger length before it buffers anything of the frame.
 */
export const MAX_FRAME_BYTES = pagesFrameLimit(MAX_PAGES_PER_BATCH);
/**
 * Largest frame a server sends (a DATA batch, or 1 MiB of JSON), what agents decode: the limit of
 * the first servers' frames in both directions (their 256-page PAGES batch), so agents keep 1 MiB
 * read buffers.
 */
export const MAX_REPLY_FRAME_BYTES = pagesFrameLimit(MAX_DATA_PAGES);

/**
 * Pages in one PAGES frame to a server that sent `welcome`: its maxPagesPerBatch, no more than fit
 * its maxFrameBytes, and no more than this build sends (a server of the first release takes 256).
 */
export function pagesPerBatch(welcome: { maxFrameBytes: number; maxPagesPerBatch: number }): number {
  const fit = Math.floor((welcome.maxFrameBytes - FRAME_SLACK_BYTES) / PAGES_ENTRY_BYTES);
  return Math.max(1, Math.min(MAX_PAGES_PER_BATCH, welcome.maxPagesPerBatch, fit));
}
/** Requests a client may have outstanding on one connection (the server's window, sent in WELCOME). */
export const DEFAULT_WINDOW = 8;
