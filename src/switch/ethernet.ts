/** The two Ethernet header fields a layer-2 switch reads. */
export const ETH_HEADER_BYTES = 14;

/** The destination MAC as a number (48 bits fit a double exactly): a cheap table key. */
export function destinationMac(frame: Uint8Array): number {
  return macNumber(frame, 0);
}

export function sourceMac(frame: Uint8Array): number {
  return macNumber(frame, 6);
}

/** Broadcast and multicast destinations have the group bit set in the first octet. */
export function isGroupMac(frame: Uint8Array): boolean {
  return (frame[0] & 1) === 1;
}

function macNumber(frame: Uint8Array, at: number): number {
  return (
    (frame[at] * 0x10000 + ((frame[at + 1] << 8) | frame[at + 2])) * 0x1000000 +
    ((frame[at + 3] << 16) | (frame[at + 4] << 8) | frame[at + 5])
  );
}

/** A MAC written 'aa:bb:cc:dd:ee:ff' as its six bytes. */
export function macBytes(mac: string): Uint8Array {
  return Buffer.from(mac.replaceAll(':', ''), 'hex');
}

/** Builds a frame (tests, the simulated NICs): MACs as 'aa:bb:..' or bytes, ethertype, payload. */
export function buildFrame(dst: string | Uint8Array, src: string | Uint8Array, etherType: number, payload: Uint8Array): Buffer {
  const f = Buffer.allocUnsafe(ETH_HEADER_BYTES + payload.length);
  f.set(typeof dst === 'string' ? macBytes(dst) : dst, 0);
  f.set(typeof src === 'string' ? macBytes(src) : src, 6);
  f.writeUInt16BE(etherType, 12);
  f.set(payload, ETH_HEADER_BYTES);
  return f;
}
