/**
 * Loopback ports for the simulated environment's processes, chosen up front so that a process
 * restarted after a kill comes back at the same address. They are taken below the kernel's ephemeral
 * range: a port from that range (what binding port 0 gives) can be taken meanwhile by any outgoing
 * connection's local end, and then the restart fails with EADDRINUSE.
 */
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import net from 'node:net';

/** Lowest port of the ephemeral range (Linux: /proc/sys/net/ipv4/ip_local_port_range), else 32768. */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 1024 ? low : 32768;
  } catch {
    return 32768;
  }
}

async function canBind(kind: 'tcp' | 'udp', port: number): Promise<boolean> {
  if (kind === 'tcp') {
    const s = net.createServer();
    const ok = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (ok) await new Promise<void>((r) => s.close(() => r()));
    return ok;
  }
  const s = dgram.createSocket('udp4');
  const ok = await new Promise<boolean>((resolve) => {
    s.once('error', () => resolve(false));
    s.bind(port, '127.0.0.1', () => resolve(true));
  });
  await new Promise<void>((r) => {
    try {
      s.close(() => r());
    } catch {
      r(); // never bound
    }
  });
  return ok;
}

/** `n` distinct loopback ports of `kind` free now, below the ephemeral range (random, so runs at once rarely collide). */
export async function freeLoopbackPorts(n: number, kind: 'tcp' | 'udp'): Promise<number[]> {
  const high = ephemeralLow() - 1;
  const low = Math.max(1025, Math.min(10_000, high - 4096));
  const out: number[] = [];
  for (let tries = 0; out.length < n; tries++) {
    if (tries > 1000) throw new Error(`no free ${kind} port between ${low} and ${high}`);
    const port = low + Math.floor(Math.random() * (high - low + 1));
    if (!out.includes(port) && (await canBind(kind, port))) out.push(port);
  }
  return out;
}
