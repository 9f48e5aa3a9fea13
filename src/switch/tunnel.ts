/**
 * The switch-to-switch tunnel datagram (versioned; docs/COORDINATION.md, "Tunnel header").
 *
 *   0  2  magic 'VT'
 *   2  1  version (1)
 *   3  1  kind: 1 FRAME, 2 FLIP (set a VM's colour), 3 FLIP_ACK, 4 STATUS, 5 STATUS_ACK,
 *           6 CHANNEL_GET, 7 CHANNEL_PART (the coordinator's questions and their answers)
 *   4  4  epoch, big-endian: FRAME the sender's colour when it sent; FLIP/FLIP_ACK the new colour
 *   8  1  n, the VM name's length in bytes (1..64)
 *   9  n  VM name (UTF-8): FRAME the sending VM; FLIP/FLIP_ACK the VM whose colour changes
 * 9+n  …  FRAME: the Ethernet frame exactly as the guest sent it (guests never see this header);
 *          STATUS_ACK: the switch's status as UTF-8 JSON (SwitchStatus, udp.ts); CHANNEL_GET: u32
 *          first index; CHANNEL_PART: u32 total, u32 first index, then a channel-state image
 *          (channel-state.ts) of the frames from that index on; others: empty
 */
import { VnstoreError } from '../util/errors.js';

export const TUNNEL_MAGIC = 0x5654; // 'VT'
export const TUNNEL_VERSION = 1;
export const MAX_VM_NAME_BYTES = 64;

export const TunnelKind = { FRAME: 1, FLIP: 2, FLIP_ACK: 3, STATUS: 4, STATUS_ACK: 5, CHANNEL_GET: 6, CHANNEL_PART: 7 } as const;
export type TunnelKindValue = (typeof TunnelKind)[keyof typeof TunnelKind];

export interface TunnelMessage {
  kind: TunnelKindValue;
  epoch: number;
  vm: string;
  /** FRAME only: the guest's Ethernet frame. */
  payload: Uint8Array;
}

export function encodeTunnel(msg: TunnelMessage): Buffer {
  const name = Buffer.from(msg.vm, 'utf8');
  if (name.length < 1 || name.length > MAX_VM_NAME_BYTES)
    throw new VnstoreError('E_USAGE', `VM name must be 1-${MAX_VM_NAME_BYTES} bytes: '${msg.vm}'`);
  if (!Number.isInteger(msg.epoch) || msg.epoch < 0 || msg.epoch > 0xffffffff)
    throw new VnstoreError('E_USAGE', `epoch out of range: ${msg.epoch}`);
  const out = Buffer.allocUnsafe(9 + name.length + msg.payload.length);
  out.writeUInt16BE(TUNNEL_MAGIC, 0);
  out[2] = TUNNEL_VERSION;
  out[3] = msg.kind;
  out.writeUInt32BE(msg.epoch, 4);
  out[8] = name.length;
  name.copy(out, 9);
  out.set(msg.payload, 9 + name.length);
  return out;
}

/** Decodes a tunnel datagram; a foreign, truncated or newer-version datagram is an E_CODEC error. */
export function decodeTunnel(buf: Uint8Array): TunnelMessage {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 10 || b.readUInt16BE(0) !== TUNNEL_MAGIC) throw new VnstoreError('E_CODEC', 'not a vnstore tunnel datagram');
  if (b[2] !== TUNNEL_VERSION)
    throw new VnstoreError('E_CODEC', `unsupported tunnel version ${b[2]} (this switch speaks ${TUNNEL_VERSION})`);
  const kind = b[3] as TunnelKindValue;
  if (kind < TunnelKind.FRAME || kind > TunnelKind.CHANNEL_PART) throw new VnstoreError('E_CODEC', `unknown tunnel message kind ${kind}`);
  const n = b[8];
  if (n < 1 || n > MAX_VM_NAME_BYTES || b.length < 9 + n) throw new VnstoreError('E_CODEC', 'truncated tunnel header');
  return { kind, epoch: b.readUInt32BE(4), vm: b.toString('utf8', 9, 9 + n), payload: b.subarray(9 + n) };
}
