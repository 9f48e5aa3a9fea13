/**
 * Which of a session's new chunks a later write of the same page replaced (a pre-copy round sending
 * a page again with new content): one bit per page says "this page's current digest is a chunk this
 * session stored first". Overwriting such a page with other content counts one superseded chunk.
 * An estimate, cheap enough for every page of every round: a chunk another page also names (two
 * pages with the same content) still counts when the page that stored it is overwritten; gc, which
 * the count may trigger (src/store/reclaim.ts), decides exactly what is dead.
 */
import { DIGEST_BYTES } from '../format/pages.js';

export class SupersededTracker {
  private bits = new Uint8Array(0);
  /** New chunks replaced since the session began. */
  chunks = 0;

  /** Page `page` now names `digest` (at `offset`), replacing `current` (at `currentOffset`). */
  replace(page: number, current: Uint8Array, currentOffset: number, digest: Uint8Array, offset: number): void {
    const byte = page >>> 3;
    if (byte >= this.bits.length) return;
    const bit = 1 << (page & 7);
    if ((this.bits[byte] & bit) === 0) return;
    for (let k = 0; k < DIGEST_BYTES; k++) {
      if (current[currentOffset + k] !== digest[offset + k]) {
        this.bits[byte] &= ~bit;
        this.chunks++;
        return;
      }
    }
  }

  /** Page `page`'s current digest is a chunk this session just stored. */
  stored(page: number): void {
    const byte = page >>> 3;
    if (byte >= this.bits.length) {
      const grown = new Uint8Array(Math.max(byte + 1, this.bits.length * 2, 64));
      grown.set(this.bits);
      this.bits = grown;
    }
    this.bits[byte] |= 1 << (page & 7);
  }
}
