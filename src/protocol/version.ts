/** Version negotiation: the highest version both sides speak, from the client's HELLO range. */
import { MIN_PROTOCOL_VERSION, PROTOCOL_VERSION } from './limits.js';
import { ProtocolError } from './errors.js';

export function negotiateVersion(clientMin: number, clientMax: number): number {
  const v = Math.min(clientMax, PROTOCOL_VERSION);
  if (clientMin > clientMax || v < Math.max(clientMin, MIN_PROTOCOL_VERSION)) {
    throw new ProtocolError(
      'E_VERSION',
      `no protocol version in common (client speaks ${clientMin}..${clientMax}, server ${MIN_PROTOCOL_VERSION}..${PROTOCOL_VERSION})`,
    );
  }
  return v;
}
