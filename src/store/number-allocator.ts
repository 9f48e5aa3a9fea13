/**
 * Chunk numbers of store format 3 (docs/FORMAT.md, "Chunk numbers"): one owner hands them out in
 * increasing order and says what the high-water mark `m nextnumber` must record. The mark goes into
 * every synced batch that publishes or removes data (commit, `d`, quarantine); on open the next
 * number is the larger of the mark and one past the highest number any pack holds, so a number is
 * never given twice even when the packs that held the highest ones were deleted.
 */
import { MAX_CHUNK_NUMBER } from '../format/pack-v3.js';
import { CorruptError } from '../util/errors.js';
import { KEY_META, type StoreDb } from './db.js';

/** `m nextnumber`: one more than the highest chunk number ever given (decimal text). */
export const NEXT_NUMBER_KEY = Buffer.concat([Buffer.of(KEY_META), Buffer.from('nextnumber', 'latin1')]);

/** The mark's value; 0 when absent (an empty store). */
export function parseNextNumber(v: Uint8Array | undefined): number {
  if (v === undefined) return 0;
  const text = Buffer.from(v).toString('latin1');
  const n = Number(text);
  if (!/^(0|[1-9][0-9]{0,14})$/.test(text) || n > MAX_CHUNK_NUMBER + 1) {
    throw new CorruptError(
      `store catalog (db/) is damaged: chunk number mark ${JSON.stringify(text.slice(0, 20))}; restore the store from a backup`,
    );
  }
  return n;
}

export async function readNextNumber(db: StoreDb): Promise<number> {
  return parseNextNumber(await db.get(NEXT_NUMBER_KEY));
}

export class NumberAllocator {
  private next: number;

  /** `mark`: the catalog's `m nextnumber`; `pastPacks`: one past the highest number any pack holds. */
  constructor(mark: number, pastPacks: number) {
    this.next = Math.max(mark, pastPacks);
  }

  /** The first of `count` consecutive new numbers. */
  take(count = 1): number {
    if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`cannot take ${count} chunk numbers`);
    if (this.next + count - 1 > MAX_CHUNK_NUMBER) throw new RangeError('chunk numbers exhausted (2^48 given)');
    const first = this.next;
    this.next += count;
    return first;
  }

  /** The next number to give (what the mark records). */
  get nextNumber(): number {
    return this.next;
  }

  /** The mark's value for a batch: put(NEXT_NUMBER_KEY, markValue()). */
  markValue(): Buffer {
    return Buffer.from(String(this.next), 'latin1');
  }
}
