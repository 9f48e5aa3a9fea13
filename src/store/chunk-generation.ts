/**
 * Which generation of the chunk index the in-memory chunk table matches, and whether
 * chunk-table.bin on disk matches it too. Every index batch that changes chunk entries stamps a new
 * token (db.ts stampChunkGeneration); the holder of that batch calls advance() once it is written,
 * and the file is stale until the store saves the table again.
 */
export class ChunkGeneration {
  constructor(
    private current: Buffer | undefined,
    private fileMatches: boolean,
  ) {}

  /** The token of the index generation the table reflects (undefined: never stamped). */
  get token(): Buffer | undefined {
    return this.current;
  }

  /** Whether chunk-table.bin holds this generation's table. */
  get saved(): boolean {
    return this.fileMatches;
  }

  /** An index batch stamped `token` was written: the table file is stale. */
  advance(token: Buffer): void {
    this.current = token;
    this.fileMatches = false;
  }

  /** chunk-table.bin was written for `token`; a generation advanced since stays unsaved. */
  markSaved(token: Buffer): void {
    if (this.current === token) this.fileMatches = true;
  }
}
