/**
 * Typed errors with stable codes. The CLI maps each code to one exit status and prints one line;
 * scripts match on `code`, never on message text.
 */
export const ERROR_CODES = {
  E_USAGE: 2,
  E_NOT_STORE: 3,
  E_FORMAT_VERSION: 4,
  E_LOCKED: 5,
  E_NOT_FOUND: 6,
  E_CORRUPT: 7,
  E_IO: 8,
  E_NO_SPACE: 9,
  E_INPUT: 10,
  E_EXISTS: 11,
  E_SESSION: 12,
  E_AMBIGUOUS: 13,
  E_CODEC: 7,
  /** A network peer broke the agent protocol (src/protocol/errors.ts carries the wire code). */
  E_PROTOCOL: 14,
  /** The server refused the access token. */
  E_AUTH: 15,
  /** This machine lacks what the command needs (compact without libzstd). */
  E_UNSUPPORTED: 16,
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class VnstoreError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'VnstoreError';
  }
  get exitCode(): number {
    return ERROR_CODES[this.code];
  }
}

export class CorruptError extends VnstoreError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_CORRUPT', message, options);
    this.name = 'CorruptError';
  }
}

/**
 * Damage of one kind: a file the catalog says exists (a manifest, a pack) is not there. Same code and
 * exit status as CorruptError; check tells it apart by type, never by message text.
 */
export class MissingError extends CorruptError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MissingError';
  }
}

/** Damaged chunk data is found only by re-reading it: a plain 'vnstore check' reads structure alone. */
export const FIND_DAMAGE_ADVICE = "run 'vnstore check --read-data' to find every damaged chunk and the snapshots it affects";

/** How to go on from a damaged catalog (db/): nothing can rebuild its records from the packs. */
export const CATALOG_DAMAGE_ADVICE = 'restore the store from a backup (catalog records cannot be rebuilt from the packs)';

/** Maps a Node system error (ENOSPC, EACCES...) met while doing `what` to a typed error. */
export function fromSystemError(err: unknown, what: string): VnstoreError {
  if (err instanceof VnstoreError) return err;
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new VnstoreError('E_NO_SPACE', `${what}: no space left on device`, { cause: err });
    case 'EACCES':
    case 'EPERM':
      return new VnstoreError('E_IO', `${what}: permission denied`, { cause: err });
    case 'EROFS':
      return new VnstoreError('E_IO', `${what}: read-only file system`, { cause: err });
    default: {
      // LevelDB reports a full disk as an 'IO error: ...: No space left on device' with no errno code,
      // sometimes only in the cause of its own error.
      const text = `${String(e?.message ?? err)} ${String((e?.cause as Error | undefined)?.message ?? '')}`;
      if (/No space left on device|Disk quota exceeded/i.test(text))
        return new VnstoreError('E_NO_SPACE', `${what}: no space left on device`, { cause: err });
      // LevelDB on damaged files: 'Corruption: ...', or an 'IO error: ...: Invalid argument' when a
      // table's own (damaged) offsets point outside it. Damage, not a failing device.
      if (typeof e?.code === 'string' && e.code.startsWith('LEVEL_') && /Corruption|Invalid argument/.test(text)) {
        return new CorruptError(`${what}: store catalog (db/) is damaged (${text.trim()}); ${CATALOG_DAMAGE_ADVICE}`, { cause: err });
      }
      return new VnstoreError('E_IO', `${what}: ${e?.message ?? String(err)}`, { cause: err });
    }
  }
}
