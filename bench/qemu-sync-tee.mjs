#!/usr/bin/env node
// Which side is at fault when a guest restored from a `qemu snapshot --sync-stop on` group fails
// its memory check (docs/QEMU.md, "Synchronised stop")? The environment test's first scenario,
// with the exact bytes QEMU sends kept beside the store:
//   two 96 MiB guests pinging each other through `vnstore switch`; epoch 1 aborted by vm2's
//   refused (compressed) stream; epoch 2 committed. Both epochs go through `vnstore qemu snapshot`
//   unchanged, but its QMP connections pass through a proxy (test/qemu/harness.mjs's qmpProxy)
//   that rewrites each `migrate` URI to a tee: a TCP relay to the agent's listener that also
//   writes the stream to a file.
// Then, per VM of the committed epoch:
//   (0) the stream's pc.ram against the source's memory as QEMU left it paused after the migration
//       (QMP pmemsave, taken before the agent's `cont` is let through): pages the stream got wrong;
//   (a) a fresh QEMU restored from the raw stream (`-incoming "exec:cat FILE"`): its first checks;
//   (b) `vnstore qemu send` of the stored snapshot, decoded to page images (RAM pages by offset,
//       last copy wins) and device state, compared byte for byte with the raw stream's, and a
//       fresh QEMU restored from the store: its first checks.
// Run `npm run build` first; needs qemu-system-x86_64 and busybox-static.
//   node bench/qemu-sync-tee.mjs [--runs N] [--sync-stop on|off] [--mem SIZE] [--restore both|raw|none]
//                                [--refused on|off] [--load PAGES] [--keep DIR] [--json]
// --mem is QEMU's -m (96 MiB; 98312K is 96 MiB + 8 KiB, a RAM block that is not a whole number of
// 64-page bitmap words); --restore raw restores only from the raw stream, none from neither (the
// stored bytes are compared either way); --refused off leaves out the aborted epoch 1; --load PAGES
// has each guest rewrite that many pages with random bytes for ever (guest-init.sh's vnload).
// Prints one line per run; --keep keeps the streams and consoles of runs where any check failed.
import { spawn } from 'node:child_process';
import { createWriteStream, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dgram from 'node:dgram';
import { parseArgs } from 'node:util';
import { buildGuest, pingReplies, qmpProxy, startGuest, ticks, vnstoreBin, waitFor } from '../test/qemu/harness.mjs';
import { ChunkSource } from '../dist/qemu/byte-source.js';
import { decodeStream } from '../dist/qemu/stream-decoder.js';

const { values: opts } = parseArgs({
  options: {
    runs: { type: 'string', default: '1' },
    'sync-stop': { type: 'string', default: 'on' },
    keep: { type: 'string' },
    mem: { type: 'string', default: '96' },
    restore: { type: 'string', default: 'both' },
    refused: { type: 'string', default: 'on' },
    load: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});

function runCli(args, { stdoutFile } = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [vnstoreBin, ...args], { stdio: ['ignore', stdoutFile ? 'pipe' : 'pipe', 'pipe'] });
    const out = [];
    let err = '';
    const sink = stdoutFile ? createWriteStream(stdoutFile) : undefined;
    child.stdout.on('data', (d) => (sink ? sink.write(d) : out.push(d)));
    child.stderr.on('data', (d) => (err += d));
    child.once('exit', (code) => {
      const done = () => resolve({ code, stdout: Buffer.concat(out).toString(), stderr: err });
      if (sink) sink.end(done);
      else done();
    });
  });
}

async function freeUdpPorts(n) {
  const socks = await Promise.all(
    Array.from({ length: n }, () => {
      const s = dgram.createSocket('udp4');
      return new Promise((resolve) => s.bind(0, '127.0.0.1', () => resolve(s)));
    }),
  );
  const ports = socks.map((s) => s.address().port);
  await Promise.all(socks.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

async function startSwitch(ports) {
  const args = [vnstoreBin, 'switch', '--vm-listen', '127.0.0.1:0', '--tunnel-listen', '127.0.0.1:0', '--channels', 'hold', '--epoch', '0'];
  for (const [vm, port] of Object.entries(ports)) args.push('--port', `${vm}=127.0.0.1:${port}`);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const [vmPort, tunnelPort] = await waitFor('the switch', () => {
    const m = /VMs on udp port (\d+), tunnel on udp port (\d+)/.exec(err);
    return m ? [Number(m[1]), Number(m[2])] : undefined;
  });
  return { vmPort, tunnelPort, stop: () => child.kill('SIGKILL') };
}

/** A stream decoded to page images (block name -> bytes, last copy of each page winning) and its device state. */
async function pageImages(bytes) {
  const images = new Map();
  let blocks = [];
  const decoded = await decodeStream(ChunkSource.ofBuffer(bytes), {
    blocks(b) {
      blocks = b;
      for (const x of b) images.set(x.name, Buffer.alloc(x.bytes));
    },
    page(block, page, data, fill) {
      const img = images.get(blocks[block].name);
      if (data) data.copy(img, page * 4096);
      else img.fill(fill, page * 4096, (page + 1) * 4096);
    },
  });
  return { images, tail: decoded.tail, head: decoded.head, rounds: decoded.ramSections, pageRecords: decoded.pageRecords };
}

/** Pages that differ between two decoded streams, per block. */
function diffImages(a, b) {
  const out = [];
  for (const [name, img] of a.images) {
    const other = b.images.get(name);
    if (!other || other.length !== img.length) {
      out.push({ block: name, sizeDiffers: true });
      continue;
    }
    const pages = [];
    for (let p = 0; p * 4096 < img.length; p++)
      if (img.compare(other, p * 4096, (p + 1) * 4096, p * 4096, (p + 1) * 4096) !== 0) pages.push(p);
    if (pages.length) out.push({ block: name, pages });
  }
  return { pages: out, tailEqual: a.tail.equals(b.tail), headEqual: a.head.equals(b.head) };
}

const NIC = (k, own, remote, qmp) => [
  '-netdev',
  `dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=${own},remote.type=inet,remote.host=127.0.0.1,remote.port=${remote}`,
  '-device',
  `virtio-net-pci,netdev=n0,mac=52:54:00:00:00:0${k},romfile=`,
  '-qmp',
  `unix:${qmp},server=on,wait=off`,
];
const ADDRS = { vm1: ['10.0.0.1', '10.0.0.2'], vm2: ['10.0.0.2', '10.0.0.1'] };

/** A fresh QEMU from `incoming`; its first three checks. */
async function restoreChecks(dir, guest, vm, k, incoming, name) {
  const [own, dead] = await freeUdpPorts(2);
  const [ip, peer] = ADDRS[vm];
  const g = await startGuest({
    dir,
    name,
    guest,
    memMiB: opts.mem,
    incoming,
    append: `vnip=${ip} vnpeer=${peer}${opts.load ? ` vnload=${opts.load}` : ''}`,
    extraArgs: NIC(k, own, dead, join(dir, `${name}.agent.qmp`)),
  });
  try {
    await waitFor(`${name} counting`, () => ticks(g.consolePath).length >= 3, 400_000);
    return ticks(g.consolePath).slice(0, 3);
  } finally {
    await g.stop();
  }
}

async function oneRun(run, guest, mode) {
  const dir = mkdtempSync(join(tmpdir(), 'vnstore-sync-tee-'));
  const store = join(dir, 'store');
  const guests = [];
  let sw;
  try {
    await runCli(['init', '--store', store]);
    const [p1, p2] = await freeUdpPorts(2);
    sw = await startSwitch({ vm1: p1, vm2: p2 });
    const boot = (vm, k, port) =>
      startGuest({
        dir,
        name: vm,
        guest,
        memMiB: opts.mem,
        append: `vnip=${ADDRS[vm][0]} vnpeer=${ADDRS[vm][1]}${opts.load ? ` vnload=${opts.load}` : ''}`,
        extraArgs: NIC(k, port, sw.vmPort, join(dir, `${vm}.agent.qmp`)),
      });
    guests.push(...(await Promise.all([boot('vm1', 1, p1), boot('vm2', 2, p2)])));
    const [g1, g2] = guests;
    await waitFor('pings', () => pingReplies(g1.consolePath).length >= 3 && pingReplies(g2.consolePath).length >= 3, 400_000);
    const proxies = {};
    for (const vm of ['vm1', 'vm2'])
      proxies[vm] = await qmpProxy(join(dir, `${vm}.proxy.qmp`), join(dir, `${vm}.agent.qmp`), { teePrefix: join(dir, vm) });
    const args = [
      'qemu',
      'snapshot',
      '--env',
      'lab',
      '--vm',
      `vm1=${join(dir, 'vm1.proxy.qmp')}`,
      '--vm',
      `vm2=${join(dir, 'vm2.proxy.qmp')}`,
      '--switch',
      `127.0.0.1:${sw.tunnelPort}`,
      '--sync-stop',
      mode,
      '--json',
      '--store',
      store,
    ];
    if (opts.refused === 'on') {
      await g2.qmp.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'compress', state: true }] });
      const failed = await runCli(args);
      if (failed.code !== 12) throw new Error(`epoch 1 should abort (exit 12), got ${failed.code}: ${failed.stderr}`);
      await g2.qmp.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'compress', state: false }] });
    }
    // The source's memory as it is after the migration, before the agent's `cont`: the truth the
    // stream must hold (the guest has not run since QEMU paused it).
    const syncs = {};
    const ramBytes = Number((await g1.qmp.cmd('query-memory-size-summary'))['base-memory']);
    for (const [k, vm] of ['vm1', 'vm2'].entries())
      proxies[vm].hooks.beforeCont = async () => {
        await guests[k].qmp.cmd('pmemsave', { val: 0, size: ramBytes, filename: join(dir, `${vm}.pmem`) });
        syncs[vm] = (await guests[k].qmp.cmd('query-migrate')).ram?.['dirty-sync-count'];
      };
    const snap = await runCli(args);
    if (snap.code !== 0) throw new Error(`epoch 2: ${snap.stderr}`);
    const result = JSON.parse(snap.stdout);
    await Promise.all(guests.map((g) => g.stop()));
    guests.length = 0;
    sw.stop();
    sw = undefined;
    for (const p of Object.values(proxies)) p.close();

    const vms = [];
    for (const [k, vm] of ['vm1', 'vm2'].entries()) {
      const member = result.members.find((m) => m.vm === vm);
      const raw = proxies[vm].streams.at(-1);
      const sent = join(dir, `${vm}.sent.stream`);
      const s = await runCli(['qemu', 'send', member.id, '--store', store], { stdoutFile: sent });
      if (s.code !== 0) throw new Error(`qemu send ${vm}: ${s.stderr}`);
      const a = await pageImages(readFileSync(raw));
      const b = await pageImages(readFileSync(sent));
      const diff = diffImages(a, b);
      // Pages of pc.ram whose content in the stream is not the paused source's (0xa0000-0xfffff is
      // the VGA window and BIOS shadow in physical memory, not pc.ram: left out).
      const truth = readFileSync(join(dir, `${vm}.pmem`));
      const ram = a.images.get('pc.ram');
      const staleInStream = [];
      for (let p = 0; p * 4096 < truth.length; p++) {
        if (p >= 0xa0 && p < 0x100) continue;
        if (truth.compare(ram, p * 4096, (p + 1) * 4096, p * 4096, (p + 1) * 4096) !== 0) staleInStream.push(p);
      }
      const fromRaw = opts.restore === 'none' ? [] : await restoreChecks(dir, guest, vm, k + 1, `exec:cat ${raw}`, `${vm}-raw`);
      const fromStore =
        opts.restore === 'both'
          ? await restoreChecks(
              dir,
              guest,
              vm,
              k + 1,
              `exec:${process.execPath} ${vnstoreBin} qemu send ${member.id} --store ${store}`,
              `${vm}-store`,
            )
          : [];
      vms.push({
        vm,
        staleInStream,
        dirtySyncs: syncs[vm],
        rawRounds: a.rounds,
        rawPageRecords: a.pageRecords,
        differingPages: diff.pages,
        tailEqual: diff.tailEqual,
        headEqual: diff.headEqual,
        raw: fromRaw.map((t) => `${t.n}${t.ok ? '' : ' BAD'}`).join(','),
        store: fromStore.map((t) => `${t.n}${t.ok ? '' : ' BAD'}`).join(','),
        downtimeMs: member.downtimeMs,
      });
    }
    const bad = vms.some((v) => /BAD/.test(v.raw + v.store) || v.differingPages.length || !v.tailEqual || v.staleInStream.length);
    const line = {
      run,
      mode,
      mem: opts.mem,
      refused: opts.refused,
      load: opts.load,
      stopSkewMs: result.stopSkewMs,
      flipSkewMs: result.flipSkewMs,
      loadavg: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
      vms,
    };
    if (bad && opts.keep) {
      const keep = join(opts.keep, `run-${Date.now()}`);
      mkdirSync(keep, { recursive: true });
      cpSync(dir, keep, { recursive: true, filter: (src) => !src.endsWith('.qmp') });
      writeFileSync(join(keep, 'result.json'), JSON.stringify(line, null, 2));
      line.kept = keep;
    }
    return line;
  } finally {
    for (const g of guests) await g.stop();
    sw?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const guest = buildGuest();
for (let run = 1; run <= Number(opts.runs); run++) {
  let line;
  try {
    line = await oneRun(run, guest, opts['sync-stop']);
  } catch (err) {
    // A run that could not be completed (a guest too slow to start on a loaded machine) says so and counts for nothing.
    console.log(JSON.stringify({ run, failed: err.message }));
    continue;
  }
  if (opts.json) console.log(JSON.stringify(line));
  else
    console.log(
      `run ${run} (${line.mode}): stop skew ${line.stopSkewMs} ms, flip skew ${line.flipSkewMs} ms, load ${line.loadavg}; ` +
        line.vms
          .map(
            (v) =>
              `${v.vm}: ${v.rawRounds} RAM sections, stream pages unlike the paused source ${JSON.stringify(v.staleInStream)}, store pages differing ${JSON.stringify(v.differingPages)}, state ${v.tailEqual ? 'equal' : 'DIFFERS'}; restored from raw [${v.raw}], from store [${v.store}]`,
          )
          .join('; ') +
        (line.kept ? `; kept in ${line.kept}` : ''),
    );
}
