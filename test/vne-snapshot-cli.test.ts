/**
 * `vnstore snapshot --env FILE` against a local store (the README demo's path): three coordinated
 * snapshots of a simulated environment under traffic, each one group in the store, every group
 * verified by resuming the environment from what the store gives back; and its errors, one line each.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI, initStore, runCli, singleErrorLine, tempDirs } from './helpers/engine.js';
import { parseEnv } from '../src/coordinator/env-file.js';
import { startSwitchProcesses } from '../src/sim/switch-processes.js';

const tempDir = tempDirs();

const ENV = {
  name: 'env7',
  seed: 3,
  scenario: { vms: 4, hosts: 2, minPages: 128, sizeRatio: 4, pageMs: 1, bytesPerSec: 40_000, transferMs: 6000 },
};

describe('vnstore snapshot --env', () => {
  it('takes three coordinated snapshots as groups and verifies each by a group restore', async () => {
    const root = tempDir('vne-cli');
    const store = await initStore(root);
    const env = path.join(root, 'env.json');
    writeFileSync(env, JSON.stringify(ENV));
    const r = await runCli(['snapshot', '--env', env, '--store', store, '--epochs', '3', '--verify-restore', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout.toString());
    expect(out.epochs.map((e: { group: string; outcome: string }) => [e.group, e.outcome])).toEqual([
      ['env7-e1', 'committed'],
      ['env7-e2', 'committed'],
      ['env7-e3', 'committed'],
    ]);
    for (const e of out.epochs) {
      expect(e.vms).toHaveLength(4);
      expect(e.skewMs).toBeLessThan(5); // sync-stop is the default
      expect(e.framesDropped).toBe(0); // and hold mode
    }
    expect(out.live.transfers.every((t: { checksum: number; expected: number }) => t.checksum === t.expected)).toBe(true);
    expect(
      out.verified.map((v: { group: string; transfersOk: boolean; check: { violations: string[]; lost: number } }) => [
        v.group,
        v.transfersOk,
        v.check.violations.length,
        v.check.lost,
      ]),
    ).toEqual([
      ['env7-e1', true, 0, 0],
      ['env7-e2', true, 0, 0],
      ['env7-e3', true, 0, 0],
    ]);
    const ls = JSON.parse((await runCli(['ls', '--store', store, '--json'])).stdout.toString()) as { group: string; vm: string }[];
    expect(ls).toHaveLength(27); // per epoch: 4 VMs' memory and disk, the channel state
    expect(new Set(ls.map((s) => s.group))).toEqual(new Set(['env7-e1', 'env7-e2', 'env7-e3']));
    // the same environment again continues with the next epoch
    const again = await runCli(['snapshot', '--env', env, '--store', store, '--json']);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout.toString()).epochs.map((e: { group: string; outcome: string }) => [e.group, e.outcome])).toEqual([
      ['env7-e4', 'committed'],
    ]);
  });

  it(
    'with --switches process, runs the VMs over real switch processes: the same groups as a rerun, verified',
    { timeout: 120_000 },
    async () => {
      const root = tempDir('vne-cli-sw');
      const env = path.join(root, 'env.json');
      writeFileSync(env, JSON.stringify({ ...ENV, name: 'envp', scenario: { ...ENV.scenario, minPages: 64, transferMs: 3000 } }));
      const runs = [];
      for (const dir of ['a', 'b']) {
        const store = await initStore(path.join(root, dir));
        const r = await runCli([
          'snapshot',
          '--env',
          env,
          '--store',
          store,
          '--epochs',
          '2',
          '--switches',
          'process',
          '--verify-restore',
          '--json',
        ]);
        expect(r.stderr).toBe('');
        expect(r.code).toBe(0);
        runs.push(JSON.parse(r.stdout.toString()));
      }
      const [a, b] = runs;
      expect(a.epochs.map((e: { group: string; outcome: string }) => [e.group, e.outcome])).toEqual([
        ['envp-e1', 'committed'],
        ['envp-e2', 'committed'],
      ]);
      expect(
        a.verified.map((v: { transfersOk: boolean; check: { violations: string[]; lost: number } }) => [
          v.transfersOk,
          v.check.violations.length,
          v.check.lost,
        ]),
      ).toEqual([
        [true, 0, 0],
        [true, 0, 0],
      ]);
      expect(b.epochs).toEqual(a.epochs); // deterministic over real processes too
    },
  );

  it('with --switches env, attaches the VMs to running switches the environment file names', { timeout: 120_000 }, async () => {
    const root = tempDir('vne-cli-env-sw');
    const store = await initStore(root);
    const doc = {
      name: 'envn',
      seed: 2,
      hosts: [
        { name: 'hostA', pageMs: 1 },
        { name: 'hostB', pageMs: 1.3 },
      ],
      vms: [
        { name: 'web1', host: 'hostA', pages: 96, dirtyPerSec: 100, hotPages: 16 },
        { name: 'db1', host: 'hostB', pages: 192, dirtyPerSec: 150, hotPages: 24 },
        { name: 'cache1', host: 'hostB', pages: 64, dirtyPerSec: 50, hotPages: 8 },
      ],
      transfers: [
        { from: 'db1', to: 'web1', bytes: 60_000, bytesPerSec: 20_000 },
        { from: 'web1', to: 'cache1', bytes: 60_000, bytesPerSec: 20_000 },
      ],
      datagrams: [{ from: 'web1', to: 'db1', everyMs: 20 }],
    };
    // The switches run before the snapshot and after it, as on real hosts; the file names them.
    const switches = await startSwitchProcesses(parseEnv(doc, 'hold'), CLI);
    try {
      const addr = (e: { host: string; port: number }) => `${e.host}:${e.port}`;
      const named = {
        ...doc,
        hosts: doc.hosts.map((h) => ({
          ...h,
          switch: { vm: addr(switches.network.switches.get(h.name)!.vm), tunnel: addr(switches.network.switches.get(h.name)!.tunnel) },
        })),
        vms: doc.vms.map((v) => ({ ...v, nic: addr(switches.network.vms.get(v.name)!.addr) })),
      };
      const env = path.join(root, 'env.json');
      writeFileSync(env, JSON.stringify(named));
      const r = await runCli([
        'snapshot',
        '--env',
        env,
        '--store',
        store,
        '--epochs',
        '2',
        '--switches',
        'env',
        '--verify-restore',
        '--json',
      ]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const out = JSON.parse(r.stdout.toString());
      expect(out.epochs.map((e: { group: string; outcome: string }) => [e.group, e.outcome])).toEqual([
        ['envn-e1', 'committed'],
        ['envn-e2', 'committed'],
      ]);
      expect(
        out.verified.map((v: { transfersOk: boolean; check: { violations: string[]; lost: number } }) => [
          v.transfersOk,
          v.check.violations.length,
          v.check.lost,
        ]),
      ).toEqual([
        [true, 0, 0],
        [true, 0, 0],
      ]);
      // a file that does not name them is refused with one line
      const bare = path.join(root, 'bare.json');
      writeFileSync(bare, JSON.stringify(doc));
      const refused = await runCli(['snapshot', '--env', bare, '--store', store, '--switches', 'env']);
      expect(refused.code).toBe(10);
      expect(singleErrorLine(refused.stderr)).toMatch(/--switches env: host hostA names no "switch"/);
    } finally {
      await switches.stop();
    }
  });

  it('refuses a bad environment file or option with one line and its exit code', async () => {
    const root = tempDir('vne-cli-bad');
    const file = (doc: unknown) => {
      const f = path.join(root, `env-${Math.random().toString(36).slice(2)}.json`);
      writeFileSync(f, typeof doc === 'string' ? doc : JSON.stringify(doc));
      return f;
    };
    const cases: [string[], number, RegExp][] = [
      [['--env', path.join(root, 'missing.json')], 10, /cannot read environment file .*missing\.json: ENOENT/],
      [['--env', file('{"name": ')], 10, /is not JSON/],
      [
        ['--env', file({ name: 'x', hosts: [{ name: 'h0' }], vms: [{ name: 'a', host: 'h9', pages: 64 }] })],
        10,
        /vms\[0\]\.host "h9" is not one of the hosts/,
      ],
      [['--env', file({ name: 'x', scenario: { vms: 1 } })], 10, /"scenario\.vms" must be an integer from 2 to 64/],
      [['--env', file(ENV), '--sync-stop', 'maybe'], 2, /--sync-stop takes on or off/],
      [['--env', file(ENV), '--epochs', '0'], 2, /--epochs: expected an integer >= 1/],
      [['--env', file(ENV), '--switches', 'remote'], 2, /--switches takes in-process, process or env/],
      [
        ['--env', file({ name: 'x', hosts: [{ name: 'h0' }], vms: [{ name: 'a', host: 'h0', pages: 64, nic: '5001' }] })],
        10,
        /"vms\[0\]\.nic" must be "HOST:PORT"/,
      ],
    ];
    // all at once (each a CLI process start), each on a store of its own
    const results = await Promise.all(
      cases.map(async ([args], i) => runCli(['snapshot', '--store', await initStore(path.join(root, `s${i}`)), ...args])),
    );
    cases.forEach(([args, code, message], i) => {
      expect(results[i].code, args.join(' ')).toBe(code);
      expect(singleErrorLine(results[i].stderr)).toMatch(message);
    });
  });
});
