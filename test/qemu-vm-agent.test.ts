/**
 * The QEMU VM agent's ordering (src/qemu/vm-agent.ts), with a scripted QEMU: a QMP server on a Unix
 * socket that, when told to migrate, sends a synthetic stream to the agent's listener and emits
 * STOP half way, and answers `cont`. The switch is a real UdpSwitch on loopback; the flip travels
 * as a FLIP datagram. What must hold: the VM's colour at the switch is still the old one when QEMU
 * pauses and already the new one when `cont` arrives (so every frame after the pause carries the
 * new colour); the group commits the VM's two members with the exact memory; a failed migration
 * aborts the epoch, stores nothing and still flips the VM.
 */
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient } from '../src/qemu/qmp.js';
import { QemuVmAgent } from '../src/qemu/vm-agent.js';
import { snapshotEnvironment } from '../src/qemu/environment.js';
import { storeMigrations } from '../src/qemu/migration-store.js';
import { Store } from '../src/store/store.js';
import { UdpSwitch } from '../src/switch/udp.js';
import { VnstoreError } from '../src/util/errors.js';
import { initStore, makeTempDir, removeDir, restoreToBuffer } from './helpers/engine.js';
import { memoryOf, model } from './qemu/cli-model.js';
import { encodeModel } from './qemu/stream-model.js';

let dir: string;
let store: Store;
let sw: UdpSwitch;

beforeAll(async () => {
  dir = makeTempDir('qemu-vm-agent');
  store = await Store.open(await initStore(dir));
  sw = await UdpSwitch.start({
    vmListen: { host: '127.0.0.1', port: 0 },
    tunnelListen: { host: '127.0.0.1', port: 0 },
    ports: [{ vm: 'vm1', addr: { host: '127.0.0.1', port: 9 } }],
    peers: [],
    channels: 'hold',
    holdFrames: 16,
  });
});

afterAll(async () => {
  await sw?.close();
  await store?.close();
  if (dir) removeDir(dir);
});

/**
 * A scripted QEMU monitor. On `migrate` it streams `stream` to the URI, emitting STOP after the
 * first half (as QEMU does before its last round), and reports `completed`, or `failed` with
 * `fail`. It logs every command with the VM's colour at the switch at that moment.
 */
async function fakeQemu(socketPath: string, stream: Buffer, fail = false) {
  const log: { what: string; colour: number | undefined }[] = [];
  let status = 'none';
  const server = net.createServer((c) => {
    const say = (msg: unknown) => c.write(`${JSON.stringify(msg)}\n`);
    say({ QMP: { version: {}, capabilities: [] } });
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      for (let nl; (nl = buf.indexOf('\n')) >= 0;) {
        const cmd = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: { uri?: string } };
        buf = buf.slice(nl + 1);
        log.push({ what: cmd.execute, colour: sw.core.colourOf('vm1') });
        if (cmd.execute === 'query-migrate') say({ return: status === 'none' ? {} : { status, 'total-time': 5, downtime: 1 } });
        else if (cmd.execute === 'query-status') say({ return: { status: 'running', running: true } });
        else say({ return: {} });
        if (cmd.execute === 'migrate') {
          status = 'active';
          const m = /^tcp:(.+):(\d+)$/.exec(cmd.arguments?.uri ?? '') as RegExpExecArray;
          const out = net.connect(Number(m[2]), m[1], () => {
            const half = stream.length >> 1;
            out.write(stream.subarray(0, half), () => {
              log.push({ what: 'STOP', colour: sw.core.colourOf('vm1') });
              say({ event: 'STOP', timestamp: { seconds: 0, microseconds: 0 } });
              if (fail) {
                out.destroy();
                status = 'failed';
                return;
              }
              out.end(stream.subarray(half), () => (status = 'completed'));
            });
          });
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(socketPath, r));
  return { log, close: () => new Promise<void>((r) => server.close(() => r())) };
}

describe('the QEMU VM agent', () => {
  it('flips the colour between the pause and cont, and commits the members with the exact memory', async () => {
    const m = model();
    const qemu = await fakeQemu(path.join(dir, 'ok.qmp'), encodeModel(m).bytes);
    const qmp = await QmpClient.connect(path.join(dir, 'ok.qmp'));
    const migrations = storeMigrations(store);
    const agent = new QemuVmAgent({
      vm: 'vm1',
      qmp,
      switchAddr: { host: '127.0.0.1', port: sw.tunnelPort },
      store: migrations,
      spoolDir: dir,
    });
    const r = await snapshotEnvironment(migrations, [agent], 'lab', 1);
    qmp.close();
    await qemu.close();

    const at = (what: string) => qemu.log.find((e) => e.what === what);
    expect(at('STOP')?.colour).toBe(0); // paused with the old colour
    expect(at('cont')?.colour).toBe(1); // resumed only once the switch had flipped it
    expect(qemu.log.map((e) => e.what).filter((w) => w !== 'query-migrate')).toEqual(['qmp_capabilities', 'migrate', 'STOP', 'cont']);
    expect(r.group).toBe('lab-e1');
    expect(r.members.map((x) => [x.ram.vm, x.state.vm, x.ram.group])).toEqual([['vm1', 'vm1.qemu', 'lab-e1']]);
    expect((await restoreToBuffer(store, r.members[0].ram)).equals(memoryOf(m))).toBe(true);
  });

  it('aborts the epoch when the migration fails: nothing stored, the VM flipped anyway', async () => {
    const qemu = await fakeQemu(path.join(dir, 'fail.qmp'), encodeModel(model()).bytes, true);
    const qmp = await QmpClient.connect(path.join(dir, 'fail.qmp'));
    const migrations = storeMigrations(store);
    const agent = new QemuVmAgent({
      vm: 'vm1',
      qmp,
      switchAddr: { host: '127.0.0.1', port: sw.tunnelPort },
      store: migrations,
      spoolDir: dir,
    });
    const before = (await store.listSnapshots()).length;
    const err = await snapshotEnvironment(migrations, [agent], 'lab', 2).catch((e: unknown) => e);
    qmp.close();
    await qemu.close();
    expect(err).toBeInstanceOf(VnstoreError);
    expect((err as VnstoreError).code).toBe('E_SESSION');
    expect((err as Error).message).toMatch(/^epoch 2 of lab aborted, no group stored: vm1: migration of vm1 failed/);
    expect(await store.listSnapshots()).toHaveLength(before);
    expect(sw.core.colourOf('vm1')).toBe(2);
    expect(qemu.log.some((e) => e.what === 'migrate_cancel')).toBe(true);
  });
});
