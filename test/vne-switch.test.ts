/**
 * The virtual switch: the colour rule (pure, property-tested), the switch core over two simulated
 * hosts (no frame ever reaches a receiver whose colour is older than its sender's; hold mode loses
 * nothing while its buffer has room), the tunnel header, and the real UDP relay on loopback.
 */
import dgram from 'node:dgram';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { forwardDecision } from '../src/switch/colour.js';
import { SwitchCore, type SwitchOutput } from '../src/switch/core.js';
import { buildFrame } from '../src/switch/ethernet.js';
import { decodeTunnel, encodeTunnel, TunnelKind } from '../src/switch/tunnel.js';
import { UdpSwitch } from '../src/switch/udp.js';
import { requestChannelState, requestFlip, requestStatus } from '../src/switch/flip-client.js';

const mac = (i: number) => `02:00:00:00:00:${i.toString(16).padStart(2, '0')}`;

describe('colour rule', () => {
  it('never delivers a post-snapshot frame to a pre-snapshot receiver; delivers every other frame', () => {
    fc.assert(
      fc.property(fc.nat(5), fc.nat(5), fc.constantFrom('drop' as const, 'hold' as const), fc.boolean(), (s, r, mode, room) => {
        const d = forwardDecision(s, r, mode, room);
        if (s > r) expect(d).toBe(mode === 'hold' && room ? 'hold' : 'drop');
        else expect(d).toBe(s < r ? 'deliver-crossing' : 'deliver');
      }),
    );
  });
});

describe('tunnel header', () => {
  it('round-trips every field and the frame bytes', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 3, 4, 5, 6, 7) as fc.Arbitrary<1 | 2 | 3 | 4 | 5 | 6 | 7>,
        fc.nat({ max: 0xffffffff }),
        fc.string({ minLength: 1, maxLength: 20 }),
        fc.uint8Array({ maxLength: 1600 }),
        (kind, epoch, vm, payload) => {
          const m = decodeTunnel(encodeTunnel({ kind, epoch, vm, payload }));
          expect(m.kind).toBe(kind);
          expect(m.epoch).toBe(epoch);
          expect(m.vm).toBe(vm);
          expect(Buffer.from(m.payload).equals(Buffer.from(payload))).toBe(true);
        },
      ),
    );
  });

  it('lays out the header as documented and refuses other versions and foreign datagrams', () => {
    const b = encodeTunnel({ kind: TunnelKind.FRAME, epoch: 0x01020304, vm: 'ab', payload: Uint8Array.of(9, 8) });
    expect([...b]).toEqual([0x56, 0x54, 1, 1, 1, 2, 3, 4, 2, 0x61, 0x62, 9, 8]);
    const v2 = Buffer.from(b);
    v2[2] = 2;
    expect(() => decodeTunnel(v2)).toThrow(/unsupported tunnel version 2/);
    expect(() => decodeTunnel(Buffer.from('hello world'))).toThrow(/not a vnstore tunnel/);
    expect(() => decodeTunnel(b.subarray(0, 10))).toThrow(/truncated/);
  });
});

/** Two switches joined directly: tunnel outputs of one go into the other at once. */
function twoHosts(channels: 'drop' | 'hold', holdFrames: number) {
  const a = new SwitchCore({ localVms: ['v0', 'v1'], peers: ['B'], channels, holdFrames });
  const b = new SwitchCore({ localVms: ['v2', 'v3'], peers: ['A'], channels, holdFrames });
  const hostOf = (vm: string) => (vm === 'v0' || vm === 'v1' ? a : b);
  const delivered: { vm: string; frame: Uint8Array; receiverColour: number }[] = [];
  const route = (from: SwitchCore, outs: SwitchOutput[]) => {
    for (const o of outs) {
      if (o.kind === 'local') delivered.push({ vm: o.vm, frame: o.frame, receiverColour: from.colourOf(o.vm) as number });
      else route(from === a ? b : a, (from === a ? b : a).fromTunnel(from === a ? 'A' : 'B', o.srcVm, o.epoch, o.frame));
    }
  };
  return { a, b, hostOf, delivered, route };
}

describe('switch core on two hosts', () => {
  const step = fc.oneof(
    fc.record({ t: fc.constant('send' as const), src: fc.nat(3), dst: fc.nat(4) }),
    fc.record({ t: fc.constant('flip' as const), vm: fc.nat(3) }),
  );

  it('learns MACs, never delivers post-to-pre, and in hold mode loses nothing while the buffer has room', () => {
    fc.assert(
      fc.property(fc.constantFrom('drop' as const, 'hold' as const), fc.array(step, { maxLength: 120 }), (mode, steps) => {
        const h = twoHosts(mode, 10_000);
        const colour = [0, 0, 0, 0];
        const sent: string[] = [];
        let n = 0;
        for (const s of steps) {
          if (s.t === 'flip') {
            colour[s.vm] = Math.min(colour[s.vm] + 1, 2);
            h.route(h.hostOf(`v${s.vm}`), h.hostOf(`v${s.vm}`).flip(`v${s.vm}`, colour[s.vm]));
            continue;
          }
          // dst 4 = broadcast; the payload names the frame and its sender's colour
          const dst = s.dst === 4 ? 'ff:ff:ff:ff:ff:ff' : mac(s.dst);
          const id = `${n++}:${colour[s.src]}`;
          const frame = buildFrame(dst, mac(s.src), 0x88b5, Buffer.from(id));
          if (s.dst !== s.src) sent.push(id);
          h.route(h.hostOf(`v${s.src}`), h.hostOf(`v${s.src}`).fromLocal(`v${s.src}`, frame));
        }
        for (const d of h.delivered) {
          const senderColour = Number(Buffer.from(d.frame.subarray(14)).toString().split(':')[1]);
          expect(senderColour).toBeLessThanOrEqual(d.receiverColour);
        }
        if (mode === 'hold') {
          // flip everyone to the last colour: every held frame comes out, none was dropped
          for (let v = 0; v < 4; v++) h.route(h.hostOf(`v${v}`), h.hostOf(`v${v}`).flip(`v${v}`, 2));
          expect(h.a.heldFrames() + h.b.heldFrames()).toBe(0);
          const got = new Set(h.delivered.map((d) => Buffer.from(d.frame.subarray(14)).toString()));
          for (const id of sent) expect(got.has(id)).toBe(true);
          expect([...h.a.counters(), ...h.b.counters()].every((c) => c.dropped === 0)).toBe(true);
        }
        const counters = [...h.a.counters(), ...h.b.counters()];
        expect(counters.reduce((x, c) => x + c.delivered, 0)).toBe(h.delivered.length);
      }),
      { numRuns: 300 },
    );
  });

  it('drops beyond a full hold buffer and counts it; records crossing frames as channel state in hold mode', () => {
    const h = twoHosts('hold', 2);
    // teach the switches where v0 and v2 live
    h.route(h.a, h.a.fromLocal('v0', buildFrame('ff:ff:ff:ff:ff:ff', mac(0), 0x88b5, Buffer.from('hi'))));
    h.route(h.b, h.b.fromLocal('v2', buildFrame('ff:ff:ff:ff:ff:ff', mac(2), 0x88b5, Buffer.from('hi'))));
    h.delivered.length = 0;
    h.a.flip('v0', 1);
    for (let i = 0; i < 3; i++) h.route(h.a, h.a.fromLocal('v0', buildFrame(mac(2), mac(0), 0x88b5, Buffer.from(`p${i}`))));
    expect(h.delivered).toEqual([]);
    const c = h.b.counters().find((x) => x.src === 'v0' && x.dst === 'v2' && x.epoch === 1);
    expect(c).toMatchObject({ held: 2, dropped: 1, droppedBytes: 16, delivered: 0 });
    // v2 still pre-snapshot sends to post-snapshot v0: delivered, recorded as channel state of epoch 1
    h.route(h.b, h.b.fromLocal('v2', buildFrame(mac(0), mac(2), 0x88b5, Buffer.from('late'))));
    expect(h.delivered.map((d) => Buffer.from(d.frame.subarray(14)).toString())).toEqual(['late']);
    const ch = h.a.takeChannelState(1);
    expect(ch.map((x) => [x.src, x.dst, Buffer.from(x.frame.subarray(14)).toString()])).toEqual([['v2', 'v0', 'late']]);
    expect(h.a.takeChannelState(1)).toEqual([]);
    h.route(h.b, h.b.flip('v2', 1));
    expect(h.delivered.map((d) => Buffer.from(d.frame.subarray(14)).toString())).toEqual(['late', 'p0', 'p1']);
  });
});

describe('UDP relay on loopback', () => {
  const sockets: dgram.Socket[] = [];
  const switches: UdpSwitch[] = [];
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.close();
    for (const s of switches.splice(0)) await s.close();
  });

  async function guest(): Promise<{ sock: dgram.Socket; port: number; inbox: Buffer[] }> {
    const sock = dgram.createSocket('udp4');
    sockets.push(sock);
    const inbox: Buffer[] = [];
    sock.on('message', (m) => inbox.push(m));
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    return { sock, port: sock.address().port, inbox };
  }
  const until = async (cond: () => boolean) => {
    for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
    expect(cond()).toBe(true);
  };

  it('relays plain frames between guests on two switches through the tunnel, and applies the colours', async () => {
    const [g0, g1, g2] = [await guest(), await guest(), await guest()];
    const lo = (port: number) => ({ host: '127.0.0.1', port });
    // tunnel ports must be known to both sides: bind A first on an ephemeral port, then B knowing A
    const probe = dgram.createSocket('udp4');
    await new Promise<void>((r) => probe.bind(0, '127.0.0.1', () => r()));
    const bTunnel = probe.address().port;
    probe.close();
    const A = await UdpSwitch.start({
      vmListen: lo(0),
      tunnelListen: lo(0),
      ports: [
        { vm: 'v0', addr: lo(g0.port) },
        { vm: 'v1', addr: lo(g1.port) },
      ],
      peers: [{ name: 'B', addr: lo(bTunnel) }],
      channels: 'drop',
      holdFrames: 16,
    });
    switches.push(A);
    const B = await UdpSwitch.start({
      vmListen: lo(0),
      tunnelListen: lo(bTunnel),
      ports: [{ vm: 'v2', addr: lo(g2.port) }],
      peers: [{ name: 'A', addr: lo(A.tunnelPort) }],
      channels: 'drop',
      holdFrames: 16,
    });
    switches.push(B);

    const hello2 = buildFrame('ff:ff:ff:ff:ff:ff', mac(2), 0x0800, Buffer.from('hello from v2'));
    g2.sock.send(hello2, B.vmPort, '127.0.0.1');
    await until(() => g0.inbox.length === 1 && g1.inbox.length === 1);
    expect(g0.inbox[0].equals(hello2)).toBe(true); // exactly the guest's bytes: no tunnel header
    const f = buildFrame(mac(2), mac(0), 0x0800, Buffer.from('unicast v0 to v2'));
    g0.sock.send(f, A.vmPort, '127.0.0.1');
    await until(() => g2.inbox.length === 1);
    expect(g2.inbox[0].equals(f)).toBe(true);
    expect(g1.inbox.length).toBe(1); // learned: the unicast was not flooded

    // v0 passes its cut for epoch 1; v2 has not: v0's frames to v2 are dropped at B and counted there
    A.flip('v0', 1);
    g0.sock.send(buildFrame(mac(2), mac(0), 0x0800, Buffer.from('post to pre')), A.vmPort, '127.0.0.1');
    await until(() => B.core.counters().some((c) => c.dropped === 1));
    expect(B.core.counters().find((c) => c.src === 'v0' && c.dst === 'v2' && c.epoch === 1)).toMatchObject({
      dropped: 1,
      droppedBytes: 25,
      delivered: 0,
    });
    // a FLIP datagram flips v2 remotely and is acknowledged; then v0's frames pass again
    const ctl = await guest();
    ctl.sock.send(encodeTunnel({ kind: TunnelKind.FLIP, epoch: 1, vm: 'v2', payload: new Uint8Array(0) }), B.tunnelPort, '127.0.0.1');
    await until(() => ctl.inbox.length === 1);
    expect(decodeTunnel(ctl.inbox[0])).toMatchObject({ kind: TunnelKind.FLIP_ACK, epoch: 1, vm: 'v2' });
    const g = buildFrame(mac(2), mac(0), 0x0800, Buffer.from('both post'));
    g0.sock.send(g, A.vmPort, '127.0.0.1');
    await until(() => g2.inbox.length === 2);
    expect(g2.inbox[1].equals(g)).toBe(true);
    // a datagram from an address not in the port table is counted, not forwarded
    ctl.sock.send(f, A.vmPort, '127.0.0.1');
    await until(() => A.core.unknownSource === 1);
  });
});

describe('an unreachable peer', () => {
  it('is counted as a send error and the switch keeps relaying', async () => {
    const [a, b] = [dgram.createSocket('udp4'), dgram.createSocket('udp4')];
    await Promise.all([a, b].map((s) => new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()))));
    const got: Buffer[] = [];
    b.on('message', (m) => got.push(m));
    const sw = await UdpSwitch.start({
      vmListen: { host: '127.0.0.1', port: 0 },
      tunnelListen: { host: '127.0.0.1', port: 0 },
      ports: [
        { vm: 'a', addr: { host: '127.0.0.1', port: a.address().port } },
        { vm: 'b', addr: { host: '127.0.0.1', port: b.address().port } },
      ],
      peers: [{ name: 'gone', addr: { host: 'no-such-host.invalid', port: 9 } }],
      channels: 'drop',
      holdFrames: 4,
    });
    try {
      const frame = buildFrame('ff:ff:ff:ff:ff:ff', mac(1), 0x0800, Buffer.from('flooded to b and to the unreachable peer'));
      a.send(frame, sw.vmPort, '127.0.0.1');
      for (let i = 0; i < 300 && (sw.sendErrors === 0 || got.length === 0); i++) await new Promise((r) => setTimeout(r, 10));
      expect(sw.sendErrors).toBe(1);
      expect(got.map((g) => g.equals(frame))).toEqual([true]);
    } finally {
      a.close();
      b.close();
      await sw.close();
    }
  });
});

describe('flip requests (the agent side)', () => {
  it('flips a VM on a remote switch and returns the acknowledged colour; an unknown VM times out with one clear error', async () => {
    const g = dgram.createSocket('udp4');
    await new Promise<void>((r) => g.bind(0, '127.0.0.1', () => r()));
    const sw = await UdpSwitch.start({
      vmListen: { host: '127.0.0.1', port: 0 },
      tunnelListen: { host: '127.0.0.1', port: 0 },
      ports: [{ vm: 'v0', addr: { host: '127.0.0.1', port: g.address().port } }],
      peers: [],
      channels: 'hold',
      holdFrames: 4,
    });
    try {
      const at = { host: '127.0.0.1', port: sw.tunnelPort };
      expect(await requestFlip(at, 'v0', 3)).toBe(3);
      expect(sw.core.colourOf('v0')).toBe(3);
      expect(await requestFlip(at, 'v0', 2)).toBe(3); // never lowered: the colour in force is returned
      await expect(requestFlip(at, 'nope', 1, { retryMs: 10, attempts: 3 })).rejects.toThrow(
        `switch 127.0.0.1:${sw.tunnelPort} did not acknowledge the flip of nope to epoch 1 (3 attempts, 10 ms apart)`,
      );
    } finally {
      g.close();
      await sw.close();
    }
  });
});

describe('status and channel state (the coordinator side)', () => {
  it('answers STATUS with its incarnation and counts, and CHANNEL_GET with the whole channel state in parts', async () => {
    const [g0, g1] = [dgram.createSocket('udp4'), dgram.createSocket('udp4')];
    await Promise.all([g0, g1].map((s) => new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()))));
    let got = 0;
    g1.on('message', () => got++);
    const lo = (port: number) => ({ host: '127.0.0.1', port });
    const sw = await UdpSwitch.start({
      vmListen: lo(0),
      tunnelListen: lo(0),
      ports: [
        { vm: 'v0', addr: lo(g0.address().port) },
        { vm: 'v1', addr: lo(g1.address().port) },
      ],
      peers: [],
      channels: 'hold',
      holdFrames: 4,
    });
    try {
      const at = lo(sw.tunnelPort);
      // v1 passes its cut first: v0's frames to it cross the cut and are recorded, 120 of 1014 bytes (three parts)
      expect(await requestFlip(at, 'v1', 1)).toBe(1);
      const frames = Array.from({ length: 120 }, (_, i) => buildFrame(mac(1), mac(0), 0x0800, Buffer.alloc(1000, i)));
      for (const [k, f] of frames.entries()) {
        g0.send(f, sw.vmPort, '127.0.0.1');
        // in tens: a burst larger than the socket's receive buffer would be lost, as on a wire
        if (k % 10 === 9) for (let i = 0; i < 300 && got <= k; i++) await new Promise((r) => setTimeout(r, 2));
      }
      const st = await requestStatus(at, 1);
      expect(st).toMatchObject({ incarnation: sw.incarnation, vmIn: 120, vmOut: { v1: 120 }, colours: { v0: 0, v1: 1 } });
      expect(st.pairs).toEqual([
        { src: 'v0', dst: 'v1', epoch: 0, delivered: 120, deliveredBytes: 120 * 1014, dropped: 0, droppedBytes: 0, held: 0, crossing: 120 },
      ]);
      const ch = await requestChannelState(at, 1);
      expect(ch.map((c) => [c.src, c.dst, c.epoch])).toEqual(frames.map(() => ['v0', 'v1', 1]));
      expect(ch.every((c, i) => Buffer.from(c.frame).equals(frames[i]))).toBe(true);
      expect(await requestChannelState(at, 2)).toEqual([]);
      // a newer epoch's flip forgets the older channel state (it was committed or dropped by then)
      await requestFlip(at, 'v0', 2);
      expect(await requestChannelState(at, 1)).toEqual([]);
    } finally {
      g0.close();
      g1.close();
      await sw.close();
    }
  });
});

describe('vnstore switch (the command)', () => {
  it('relays between attached guests and prints its counters as JSON when stopped', async () => {
    const { spawn } = await import('node:child_process');
    const { CLI } = await import('./helpers/engine.js');
    const socks: dgram.Socket[] = [];
    const bindGuest = async () => {
      const s = dgram.createSocket('udp4');
      socks.push(s);
      await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
      return s;
    };
    const [g0, g1] = [await bindGuest(), await bindGuest()];
    const got: Buffer[] = [];
    g1.on('message', (m) => got.push(m));
    const child = spawn(
      process.execPath,
      [
        CLI,
        'switch',
        '--vm-listen',
        '127.0.0.1:0',
        '--tunnel-listen',
        '127.0.0.1:0',
        '--port',
        `a=127.0.0.1:${g0.address().port}`,
        '--port',
        `b=127.0.0.1:${g1.address().port}`,
        '--json',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    try {
      for (let i = 0; i < 400 && !/VMs on udp port \d+/.test(err); i++) await new Promise((r) => setTimeout(r, 10));
      const vmPort = Number(/VMs on udp port (\d+)/.exec(err)?.[1]);
      const frame = buildFrame('ff:ff:ff:ff:ff:ff', mac(0), 0x0800, Buffer.from('to everyone'));
      g0.send(frame, vmPort, '127.0.0.1');
      for (let i = 0; i < 200 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(got.map((g) => g.equals(frame))).toEqual([true]);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      for (const s of socks) s.close();
    }
    expect(child.exitCode).toBe(0);
    const report = JSON.parse(out);
    expect(report.pairs).toEqual([
      { src: 'a', dst: 'b', epoch: 0, delivered: 1, deliveredBytes: 25, dropped: 0, droppedBytes: 0, held: 0, crossing: 0 },
    ]);
  });
});
