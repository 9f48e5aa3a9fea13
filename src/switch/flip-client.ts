/**
 * The agent's side of a colour flip for a real VM: a FLIP datagram to the VM's switch (its tunnel
 * port), resent until the switch answers FLIP_ACK with a colour at least the one asked for. UDP may
 * lose either datagram, and a repeated FLIP is harmless (a switch never lowers a colour).
 */
import dgram from 'node:dgram';
import { decodeTunnel, encodeTunnel, TunnelKind } from './tunnel.js';
import type { Endpoint } from './udp.js';
import { VnstoreError } from '../util/errors.js';

export interface FlipOptions {
  /** Wait this long for an answer before sending again. */
  retryMs?: number;
  attempts?: number;
}

export async function requestFlip(sw: Endpoint, vm: string, epoch: number, options: FlipOptions = {}): Promise<number> {
  const retryMs = options.retryMs ?? 50;
  const attempts = options.attempts ?? 10;
  const sock = dgram.createSocket('udp4');
  const request = encodeTunnel({ kind: TunnelKind.FLIP, epoch, vm, payload: new Uint8Array(0) });
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(0, () => resolve());
    });
    return await new Promise<number>((resolve, reject) => {
      let sent = 0;
      const send = () => {
        if (sent++ >= attempts) {
          clearInterval(timer);
          reject(new VnstoreError('E_IO', `switch ${sw.host}:${sw.port} did not acknowledge the flip of ${vm} to epoch ${epoch} (${attempts} attempts, ${retryMs} ms apart)`));
          return;
        }
        sock.send(request, sw.port, sw.host);
      };
      const timer = setInterval(send, retryMs);
      sock.on('message', (msg) => {
        let m;
        try {
          m = decodeTunnel(msg);
        } catch {
          return; // not an answer to us
        }
        if (m.kind === TunnelKind.FLIP_ACK && m.vm === vm && m.epoch >= epoch) {
          clearInterval(timer);
          resolve(m.epoch);
        }
      });
      send();
    });
  } finally {
    sock.close();
  }
}
