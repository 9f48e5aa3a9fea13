/**
 * The agent's and coordinator's side of a switch's control messages (tunnel.ts): FLIP (a VM passed
 * its cut), STATUS and CHANNEL_GET, each a datagram to the switch's tunnel port resent until the
 * matching answer comes. UDP may lose either datagram; every request is harmless to repeat (a
 * switch never lowers a colour; STATUS and CHANNEL_GET change nothing).
 */
import dgram from 'node:dgram';
import { decodeTunnel, encodeTunnel, TunnelKind, type TunnelKindValue, type TunnelMessage } from './tunnel.js';
import type { Endpoint, SwitchStatus } from './udp.js';
import { decodeChannelState } from '../coordinator/channel-state.js';
import type { ChannelFrame } from './core.js';
import { VnstoreError } from '../util/errors.js';

export interface FlipOptions {
  /** Wait this long for an answer before sending again. */
  retryMs?: number;
  attempts?: number;
  /** Wait twice as long after each resend, up to this many ms (default: `retryMs`, a fixed wait). */
  maxRetryMs?: number;
  /** Stop at this `Date.now()` whatever attempts are left: a slow answer is waited for, but not forever. */
  deadline?: number;
  /**
   * Connect the socket to the switch, so that a host answering "port unreachable" (no switch listens
   * there: a killed process) fails the request at the next resend instead of after every attempt
   * (`isRefused`). The switch must answer from the address asked, as one bound to it does.
   */
  refusedFails?: boolean;
}

/** The request failed because no switch listens at the address (the host said so), not for want of an answer. */
export function isRefused(err: unknown): boolean {
  return (err as { cause?: { code?: string } } | undefined)?.cause?.code === 'ECONNREFUSED';
}

/** Sends `request` until an answer of kind `answer` that `accept` takes; rejects after the last attempt. */
async function ask<T>(
  sw: Endpoint,
  request: TunnelMessage,
  answer: TunnelKindValue,
  accept: (m: TunnelMessage) => T | undefined,
  what: string,
  options: FlipOptions,
): Promise<T> {
  const retryMs = options.retryMs ?? 50;
  const maxRetryMs = Math.max(retryMs, options.maxRetryMs ?? retryMs);
  const attempts = options.attempts ?? 10;
  const sock = dgram.createSocket('udp4');
  const bytes = encodeTunnel(request);
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(0, () => resolve());
    });
    if (options.refusedFails) await new Promise<void>((resolve) => sock.connect(sw.port, sw.host, () => resolve()));
    return await new Promise<T>((resolve, reject) => {
      let sent = 0;
      let wait = retryMs;
      let timer: NodeJS.Timeout | undefined;
      let done = false;
      const finish = (err: Error | undefined, value?: T) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(value as T);
      };
      const send = () => {
        if (done) return;
        if (sent >= attempts || (options.deadline !== undefined && sent > 0 && Date.now() >= options.deadline)) {
          const apart = maxRetryMs > retryMs ? `${retryMs}-${maxRetryMs}` : `${retryMs}`;
          finish(new VnstoreError('E_IO', `switch ${sw.host}:${sw.port} did not ${what} (${sent} attempts, ${apart} ms apart)`));
          return;
        }
        sent++;
        // A send error is a lost datagram (the next attempt retries), unless the host said nobody listens.
        const onSent = (err: Error | null) => void (err && refused(err));
        if (options.refusedFails) sock.send(bytes, onSent);
        else sock.send(bytes, sw.port, sw.host, onSent);
        timer = setTimeout(send, options.deadline === undefined ? wait : Math.max(1, Math.min(wait, options.deadline - Date.now())));
        wait = Math.min(wait * 2, maxRetryMs);
      };
      const refused = (err: Error) => {
        if ((err as NodeJS.ErrnoException).code === 'ECONNREFUSED')
          finish(new VnstoreError('E_IO', `switch ${sw.host}:${sw.port} is not running (port unreachable)`, { cause: err }));
      };
      // A connected socket hears "port unreachable" on its next send or receive; other errors are lost datagrams.
      sock.on('error', refused);
      sock.on('message', (msg) => {
        let m;
        try {
          m = decodeTunnel(msg);
        } catch {
          return; // not an answer to us
        }
        const got = m.kind === answer ? accept(m) : undefined;
        if (got !== undefined) finish(undefined, got);
      });
      send();
    });
  } finally {
    sock.close();
  }
}

const EMPTY = new Uint8Array(0);

/** Sets `vm`'s colour to at least `epoch` at its switch; resolves to the colour now in force. */
export function requestFlip(sw: Endpoint, vm: string, epoch: number, options: FlipOptions = {}): Promise<number> {
  return ask(
    sw,
    { kind: TunnelKind.FLIP, epoch, vm, payload: EMPTY },
    TunnelKind.FLIP_ACK,
    (m) => (m.vm === vm && m.epoch >= epoch ? m.epoch : undefined),
    `acknowledge the flip of ${vm} to epoch ${epoch}`,
    options,
  );
}

/** The switch's status; pair counters of `epoch` and the one before. */
export function requestStatus(sw: Endpoint, epoch: number, options: FlipOptions = {}): Promise<SwitchStatus> {
  return ask(
    sw,
    { kind: TunnelKind.STATUS, epoch, vm: '-', payload: EMPTY },
    TunnelKind.STATUS_ACK,
    (m) => (m.epoch === epoch ? (JSON.parse(Buffer.from(m.payload).toString('utf8')) as SwitchStatus) : undefined),
    'answer STATUS',
    options,
  );
}

/** The channel state the switch recorded for `epoch`, fetched part by part; the incarnation it came from is checked by the caller. */
export async function requestChannelState(sw: Endpoint, epoch: number, options: FlipOptions = {}): Promise<ChannelFrame[]> {
  const out: ChannelFrame[] = [];
  for (;;) {
    const first = Buffer.alloc(4);
    first.writeUInt32BE(out.length, 0);
    const part = await ask(
      sw,
      { kind: TunnelKind.CHANNEL_GET, epoch, vm: '-', payload: first },
      TunnelKind.CHANNEL_PART,
      (m) => {
        const b = Buffer.from(m.payload);
        return m.epoch === epoch && b.length >= 8 && b.readUInt32BE(4) === out.length
          ? { total: b.readUInt32BE(0), frames: decodeChannelState(b.subarray(8), epoch) }
          : undefined;
      },
      `send the channel state of epoch ${epoch}`,
      options,
    );
    out.push(...part.frames);
    if (out.length >= part.total || part.frames.length === 0) return out;
  }
}
