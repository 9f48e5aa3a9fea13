/**
 * The coordinator-to-agent control protocol (version 1; docs/PROTOCOL.md, "Coordinator-agent
 * control"): pure framing, no I/O. Every message is one frame, big-endian:
 *
 *   u32 length (bytes that follow) | u8 type | u32 header length | header (JSON) | payload (bytes)
 *
 * The coordinator owns the simulated clock and drives every agent in turns: a TURN names the instant
 * (`at`) and what happens (begin an epoch, the stop order, a timer the agent set, abort); the agent
 * answers with REPORTs, TIMERs and CALLs to the VM's hypervisor (answered by REPLYs) and ends the
 * turn with TURN_END. Time stands still until it does, so a run stays a function of its seed.
 */
import { VnstoreError } from '../util/errors.js';

export const CONTROL_MAGIC = 'VNCT';
export const CONTROL_VERSION = 1;
/** A frame's length at most: a round's pages are read in calls of at most MAX_CALL_PAGES pages. */
export const MAX_CONTROL_FRAME = 20 * 2 ** 20;
export const MAX_CALL_PAGES = 4096;

export const ControlType = {
  HELLO: 1,
  WELCOME: 2,
  TURN: 3,
  TURN_END: 4,
  CALL: 5,
  REPLY: 6,
  REPORT: 7,
  TIMER: 8,
  ERROR: 9,
} as const;
export type ControlTypeValue = (typeof ControlType)[keyof typeof ControlType];

export interface ControlFrame {
  type: ControlTypeValue;
  header: Record<string, unknown>;
  payload: Uint8Array;
}

const TYPES = new Set<number>(Object.values(ControlType));

export function encodeControl(type: ControlTypeValue, header: Record<string, unknown>, payload: Uint8Array = new Uint8Array(0)): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const length = 1 + 4 + json.length + payload.length;
  if (length > MAX_CONTROL_FRAME) throw new VnstoreError('E_PROTOCOL', `control frame of ${length} bytes exceeds ${MAX_CONTROL_FRAME}`);
  const out = Buffer.allocUnsafe(4 + length);
  out.writeUInt32BE(length, 0);
  out.writeUInt8(type, 4);
  out.writeUInt32BE(json.length, 5);
  json.copy(out, 9);
  out.set(payload, 9 + json.length);
  return out;
}

/** Splits a byte stream into frames; throws E_PROTOCOL on a frame that breaks the format (the stream is then lost). */
export class ControlReader {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): ControlFrame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: ControlFrame[] = [];
    while (this.buf.length >= 4) {
      const length = this.buf.readUInt32BE(0);
      if (length < 5 || length > MAX_CONTROL_FRAME) throw new VnstoreError('E_PROTOCOL', `control frame length ${length} out of range`);
      if (this.buf.length < 4 + length) break;
      out.push(decodeBody(this.buf.subarray(4, 4 + length)));
      this.buf = this.buf.subarray(4 + length);
    }
    return out;
  }
}

function decodeBody(body: Buffer): ControlFrame {
  const type = body.readUInt8(0);
  if (!TYPES.has(type)) throw new VnstoreError('E_PROTOCOL', `unknown control frame type ${type}`);
  const jsonLength = body.readUInt32BE(1);
  if (5 + jsonLength > body.length) throw new VnstoreError('E_PROTOCOL', 'control frame header runs past the frame');
  let header: unknown;
  try {
    header = JSON.parse(body.subarray(5, 5 + jsonLength).toString('utf8'));
  } catch {
    throw new VnstoreError('E_PROTOCOL', 'control frame header is not JSON');
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    throw new VnstoreError('E_PROTOCOL', 'control frame header is not a JSON object');
  // A copy: the reader's buffer is reused as more data arrives.
  return {
    type: type as ControlTypeValue,
    header: header as Record<string, unknown>,
    payload: Uint8Array.from(body.subarray(5 + jsonLength)),
  };
}

/** Page indices as a payload (u32 each, big-endian) and back. */
export function encodeIndices(pages: ArrayLike<number>): Uint8Array {
  const out = Buffer.allocUnsafe(4 * pages.length);
  for (let i = 0; i < pages.length; i++) out.writeUInt32BE(pages[i], 4 * i);
  return out;
}

export function decodeIndices(payload: Uint8Array): number[] {
  if (payload.length % 4 !== 0) throw new VnstoreError('E_PROTOCOL', 'page index list is not a whole number of u32');
  const view = Buffer.from(payload.buffer, payload.byteOffset, payload.length);
  return Array.from({ length: payload.length / 4 }, (_, i) => view.readUInt32BE(4 * i));
}

/** The HELLO a coordinator sends, and the check an agent makes of it. */
export function helloHeader(): Record<string, unknown> {
  return { magic: CONTROL_MAGIC, min: CONTROL_VERSION, max: CONTROL_VERSION };
}

export function checkHello(h: Record<string, unknown>): void {
  if (h.magic !== CONTROL_MAGIC) throw new VnstoreError('E_PROTOCOL', 'not a vnstore control connection (bad magic)');
  const min = Number(h.min);
  const max = Number(h.max);
  if (!(min <= CONTROL_VERSION && CONTROL_VERSION <= max))
    throw new VnstoreError('E_FORMAT_VERSION', `control protocol versions ${min}-${max} offered; this agent speaks ${CONTROL_VERSION}`);
}
