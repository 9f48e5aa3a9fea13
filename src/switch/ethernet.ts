/** The two Ethernet header fields a layer-2 switch reads. */
export const ETH_HEADER_BYTES = 14;

export function destinationMac(frame: Uint8Array): string {
  return macString(frame, 0);
}

export function sourceMac(frame: Uint8Array): string {
  return macString(frame, 6);
}

/** Broadcast and multicast destinations have the group bit set in the first octet. */
export function isGroupMac(frame: Uint8Array): boolean {
  return (frame[0] & 1) === 1;
}

function macString(frame: Uint8Array, at: number): string {
  let s = '';
  for (let i = at; i < at + 6; i++) s += (i > at ? ':' : '') + frame[i].toString(16).padStart(2, '0');
  return s;
}

/** Builds a frame (tests, the simulated NICs): MACs as 'aa:bb:..', ethertype, payload. */
export function buildFrame(dst: string, src: string, etherType: number, payload: Uint8Array): Buffer {
  const f = Buffer.allocUnsafe(ETH_HEADER_BYTES + payload.length);
  Buffer.from(dst.replaceAll(':', ''), 'hex').copy(f, 0);
  Buffer.from(src.replaceAll(':', ''), 'hex').copy(f, 6);
  f.writeUInt16BE(etherType, 12);
  f.set(payload, ETH_HEADER_BYTES);
  return f;
}
