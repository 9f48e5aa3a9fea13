/**
 * A small QMP client (QEMU's JSON monitor) for the QEMU VM agent: one connection to a VM's QMP
 * socket (`-qmp unix:PATH,server=on,wait=off` or `tcp:HOST:PORT`), commands answered in order,
 * asynchronous events (STOP, RESUME, MIGRATION...) handed to listeners as they arrive.
 */
import net from 'node:net';
import { EventEmitter } from 'node:events';
import { VnstoreError } from '../util/errors.js';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  execute: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

/** `unix:PATH`, `tcp:HOST:PORT`, or a bare path (a Unix socket). */
export function parseQmpAddress(spec: string): net.NetConnectOpts {
  const tcp = /^tcp:(.+):(\d{1,5})$/.exec(spec);
  if (tcp) return { host: tcp[1], port: Number(tcp[2]) };
  return { path: spec.replace(/^unix:/, '') };
}

export class QmpClient extends EventEmitter {
  private buffered = '';
  private readonly pending: Pending[] = [];
  private closed?: Error;
  private greeted?: () => void;
  /** Resolves when QEMU's greeting arrives (it greets one client per -qmp socket at a time). */
  private readonly greeting = new Promise<void>((resolve) => (this.greeted = resolve));

  private constructor(
    private readonly socket: net.Socket,
    readonly address: string,
  ) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => this.onData(d));
    const fail = (err?: Error) => {
      this.closed ??= new VnstoreError('E_IO', `QMP ${address}: connection closed${err ? ` (${err.message})` : ''}`);
      for (const p of this.pending.splice(0)) p.reject(this.closed);
      this.emit('close', this.closed);
    };
    socket.on('error', fail);
    socket.on('close', () => fail());
  }

  /** Connects and leaves capabilities negotiation mode, so commands and events flow. */
  static async connect(spec: string, timeoutMs = 10_000): Promise<QmpClient> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(parseQmpAddress(spec));
      const timer = setTimeout(() => {
        s.destroy();
        reject(new VnstoreError('E_IO', `QMP ${spec}: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(s);
      });
      s.once('error', (err) => {
        clearTimeout(timer);
        reject(new VnstoreError('E_IO', `QMP ${spec}: cannot connect: ${err.message}`, { cause: err }));
      });
    });
    const q = new QmpClient(socket, spec);
    let timer: NodeJS.Timeout | undefined;
    const silent = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new VnstoreError(
              'E_IO',
              `QMP ${spec}: no greeting within ${timeoutMs} ms (QEMU serves one client per -qmp socket: is another connected? give the agent a -qmp socket of its own)`,
            ),
          ),
        timeoutMs,
      );
    });
    try {
      await Promise.race([q.greeting, silent]);
    } catch (err) {
      q.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    await q.execute('qmp_capabilities');
    return q;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(this.closed);
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ execute: command, resolve: resolve as (v: unknown) => void, reject });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(d: string): void {
    this.buffered += d;
    let nl;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl).trim();
      this.buffered = this.buffered.slice(nl + 1);
      if (!line) continue;
      let msg: { QMP?: unknown; event?: string; return?: unknown; error?: { class?: string; desc?: string } };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        this.socket.destroy(new Error(`not JSON: ${line.slice(0, 80)}`));
        return;
      }
      if (msg.QMP) {
        this.greeted?.();
        continue;
      }
      if (msg.event) {
        this.emit('event', msg as QmpEvent);
        continue;
      }
      const p = this.pending.shift();
      if (!p) continue;
      if (msg.error) p.reject(new VnstoreError('E_IO', `QMP ${p.execute}: ${msg.error.desc ?? msg.error.class ?? 'error'}`));
      else p.resolve(msg.return);
    }
  }
}
