/**
 * Protocol errors: a VnstoreError (code E_PROTOCOL) with a stable wire code, the string an ERROR frame
 * carries. Store errors cross the wire under their own E_* code.
 */
import { VnstoreError, type ErrorCode } from '../util/errors.js';

export const WIRE_CODES = [
  'E_FRAME_TOO_LARGE', // a frame's length is past MAX_FRAME_BYTES
  'E_MALFORMED', // a frame's body does not decode (truncated, trailing bytes, bad field)
  'E_UNKNOWN_TYPE', // a frame type this version does not know
  'E_VERSION', // no protocol version in common
  'E_AUTH', // missing or wrong token
  'E_HELLO_REQUIRED', // a frame before HELLO, or a second HELLO
  'E_LIMIT', // a batch past its limit (pages, offers, ranges), or the window exceeded
  'E_UNKNOWN_SESSION', // a session number this connection did not begin (or has ended)
  'E_SESSION_STATE', // write after prepare, commit twice, session number reused
  'E_PAGE_RANGE', // a page index past the session's memory size
  'E_DIGEST_MISMATCH', // page bytes whose BLAKE3 is not the digest sent with them
  'E_TIMEOUT', // an idle session was aborted
  'E_SHUTDOWN', // the server is stopping
] as const;

export type WireCode = (typeof WIRE_CODES)[number];

export class ProtocolError extends VnstoreError {
  constructor(
    readonly wire: WireCode,
    message: string,
  ) {
    super('E_PROTOCOL', message);
    this.name = 'ProtocolError';
  }
}

/** The code an ERROR frame carries for `err`: the wire code of a protocol error, else the store's code. */
export function wireCodeOf(err: unknown): string {
  if (err instanceof ProtocolError) return err.wire;
  if (err instanceof VnstoreError) return err.code;
  return 'E_INTERNAL';
}

/** An error received in an ERROR frame, as the client raises it: the peer's code, kept as given. */
export class RemoteError extends VnstoreError {
  constructor(
    readonly wire: string,
    message: string,
  ) {
    super(localCode(wire), message);
    this.name = 'RemoteError';
  }
}

/** Store codes map to themselves (same exit status as a local command); wire-only codes to E_PROTOCOL. */
function localCode(wire: string): ErrorCode {
  const store: readonly string[] = [
    'E_USAGE',
    'E_NOT_STORE',
    'E_FORMAT_VERSION',
    'E_LOCKED',
    'E_NOT_FOUND',
    'E_CORRUPT',
    'E_IO',
    'E_NO_SPACE',
    'E_INPUT',
    'E_EXISTS',
    'E_SESSION',
    'E_AMBIGUOUS',
  ];
  if (store.includes(wire)) return wire as ErrorCode;
  if (wire === 'E_AUTH') return 'E_AUTH';
  return 'E_PROTOCOL';
}
