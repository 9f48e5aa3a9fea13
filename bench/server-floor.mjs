#!/usr/bin/env node
// The floors under two of issue 12's ratios, measured in one run beside the baseline they divide:
//  - what a snapshot through `vnstore serve` costs whatever its size: a dirty-list snapshot that lists
//    no page (BEGIN with the parent's page table, PREPARE: manifest written durably and the prepared
//    snapshot held durably for a coordinator, COMMIT: the catalog batch), each step timed on its own,
//    and the fsync/fdatasync calls the server makes for it (counted with strace, when present);
//  - the same steps' durable writes done bare: write + fsync + rename + fsync of the directory for the
//    manifest's bytes, and a small write + fdatasync (a LevelDB log append with sync);
//  - write + fdatasync of the bytes LZ4 leaves of the image's non-zero pages (a first snapshot's pack
//    write) and of bench/server.mjs's 10% dirty pages (a dirty-list snapshot's).
// From these it prints the best ratio each floor allows: the 10% dirty list can be no faster than
// the empty snapshot, nor than its pack write (ratio <= image bytes / that time / baseline), and a
// first snapshot no faster than its pack write.
// The 10% dirty list's least mandated work, measured in the same run beside the measured ratio
// (`dirty10Minimum`): the agent hashes the dirty pages it offers and the server hashes every page it
// receives (the native multi-page hasher, single thread, timed over those pages), the pages cross
// a loopback TCP socket between two processes (the CPU of sender and receiver, each with one reused
// 4 MiB buffer), the server LZ4s the new pages (single thread) and writes them into new page-cache
// pages (the write's CPU), the disk takes them (fdatasync of bytes already in the page cache), and
// the commit is durable (the bare manifest write and the two synced log appends). The CPU work
// spreads at best over both cores and overlaps the disk; the commit's syncs follow (records last):
//   floor seconds = max((2 x hash + LZ4 + TCP send + TCP receive + page-cache write) / 2, disk)
//                   + bare durable steps
// and the best ratio that allows is image bytes / floor seconds / baseline. `firstMinimum` does the
// same for a first snapshot (zero-page scan and hash of the non-zero pages on the agent, the distinct
// non-zero pages over TCP, hashed, LZ4'd and written on the server). The page-cache writes go into
// new files after a pause (FRESH_PAUSE_MS), as the server's growing packs take new pages; the same
// write into just-freed pages is reported beside it (`dirty10RecycledCacheWriteSeconds`). The
// measured ratio is the median of `reps` 10% dirty-list snapshots through the server in this run.
// Run `npm run build` first.
//   node bench/server-floor.mjs [--mib 256] [--reps 7] [--json]
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, fdatasyncSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { blake3 } from '@napi-rs/blake-hash';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(root, 'dist', 'cli', 'bin.cjs');
const { AgentClient } = await import(join(root, 'dist', 'index.js'));
const { getCodec } = await import(join(root, 'dist', 'chunk', 'codec.js'));
const { hashPages } = await import(join(root, 'dist', 'chunk', 'hash.js'));
const { makeImage } = await import(join(root, 'bench', 'server-image.mjs'));
const { asExecutableRuns, emptySnapshot, startServe } = await import(join(root, 'bench', 'serve-child.mjs'));
// Agents and server allocate as `vnstore agent` and `vnstore serve` do (bin/vnstore's environment).
await asExecutableRuns(CLI);
const { values: args } = parseArgs({
  options: { mib: { type: 'string', default: '256' }, reps: { type: 'string', default: '7' }, json: { type: 'boolean', default: false } },
});
const PAGE = 4096;
const MB = 1e6;
const reps = Number(args.reps);
const now = () => performance.now() / 1000;
/** How long page-cache measurements wait after a large free (see the server's exit below). */
const FRESH_PAUSE_MS = 6000;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const loadavg = async () => (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).map(Number);

/**
 * CPU seconds (user + system) that moving `bytes` over loopback TCP costs the sender (a child
 * process, 4 MiB writes from one buffer) and the receiver (this process, reads into one reused
 * 4 MiB buffer): medians of `reps` transfers. Agents and server are separate processes, so every
 * page the server lacks crosses a socket at least this dearly.
 */
async function tcpCpu(bytes) {
  // The child listens and, once connected, sends; it prints its port, then its CPU seconds.
  const sender = `const net = require('node:net');
    const buf = Buffer.alloc(4 << 20, 7);
    const server = net.createServer((s) => {
      const c0 = process.cpuUsage();
      let left = ${bytes};
      const more = () => {
        while (left > 0) {
          const n = Math.min(left, buf.length);
          left -= n;
          if (!s.write(n === buf.length ? buf : buf.subarray(0, n))) return void s.once('drain', more);
        }
        s.end(() => {
          const c = process.cpuUsage(c0);
          process.stdout.write(' ' + String((c.user + c.system) / 1e6) + '\\n');
          server.close();
        });
      };
      more();
    });
    server.listen(0, '127.0.0.1', () => process.stdout.write(String(server.address().port)));`;
  const send = [];
  const recv = [];
  for (let r = 0; r < reps; r++) {
    const child = spawn(process.execPath, ['-e', sender], { stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    child.stdout.on('data', (d) => (text += d));
    const exited = new Promise((res) => child.on('exit', res));
    while (!/^\d+/.test(text)) await new Promise((res) => setTimeout(res, 5));
    const port = Number(/^\d+/.exec(text)[0]);
    let c0;
    await new Promise((res, rej) => {
      let got = 0;
      const sock = connect({
        port,
        host: '127.0.0.1',
        onread: {
          buffer: Buffer.alloc(4 << 20),
          callback: (n) => {
            c0 ??= process.cpuUsage();
            got += n;
          },
        },
      });
      sock.on('end', () => (got === bytes ? res() : rej(new Error(`received ${got} of ${bytes} bytes`))));
      sock.on('error', rej);
    });
    const c = process.cpuUsage(c0);
    recv.push((c.user + c.system) / 1e6);
    await exited;
    send.push(Number(/ ([\d.e-]+)\n/.exec(text)[1]));
  }
  return { senderSeconds: median(send), receiverSeconds: median(recv) };
}

const image = makeImage(Number(args.mib), 1);
const out = { date: new Date().toISOString(), imageMiB: Number(args.mib), reps, loadavg: await loadavg() };
// The best of three passes, as bench/server.mjs takes it (a first pass runs ~25% slower).
out.baselinePassesMBps = [];
for (let r = 0; r < 3; r++) {
  const t = now();
  for (let o = 0; o < image.length; o += PAGE) blake3(image.subarray(o, o + PAGE));
  out.baselinePassesMBps.push(image.length / MB / (now() - t));
}
out.baselineMBps = Math.max(...out.baselinePassesMBps);

const work = await mkdtemp(join(tmpdir(), 'vnstore-server-floor-'));
try {
  const store = join(work, 'store');
  spawnSync(process.execPath, [CLI, 'init', '--store', store], { stdio: 'ignore' });
  const token = (await readFile(join(store, 'access-token'), 'utf8')).trim();
  const { child, address } = await startServe(CLI, store, { nodeArgs: [] });
  const client = await AgentClient.connect({ server: address, token });
  const first = await client.beginSession({ vm: 'vm', memoryBytes: image.length, parent: 'none' });
  for (let o = 0; o < image.length; o += 4096 * PAGE) await first.writePages(o / PAGE, image.subarray(o, o + 4096 * PAGE));
  await first.commit();

  const empty = () => emptySnapshot(client, image.length);
  for (let r = 0; r < 2; r++) await empty(); // warm both processes
  const runs = [];
  for (let r = 0; r < reps; r++) runs.push(await empty());

  // The measured ratio: 10% dirty-list snapshots (every tenth page new), as bench/server.mjs pushes them.
  const dirtyPages = [];
  for (let p = 0; p < image.length / PAGE; p += 10) dirtyPages.push(p);
  const gather = Buffer.alloc(4096 * PAGE, 1); // the send buffer, gathered into as bench/server.mjs does
  const dirtySnapshot = async (round) => {
    for (const p of dirtyPages) image.writeUInt32LE((round * 7919 + p + 1) >>> 0, p * PAGE + 8);
    const t0 = now();
    const s = await client.beginSession({ vm: 'vm', memoryBytes: image.length, parent: 'auto' });
    for (let k = 0; k < dirtyPages.length; k += 4096) {
      const part = dirtyPages.slice(k, k + 4096);
      for (let j = 0; j < part.length; j++) image.copy(gather, j * PAGE, part[j] * PAGE, (part[j] + 1) * PAGE);
      await s.writeScattered(part, gather.subarray(0, part.length * PAGE));
    }
    await s.commit({ byteLength: image.length, unwritten: 'parent' });
    return now() - t0;
  };
  await dirtySnapshot(1); // warm
  const dirtyTimes = [];
  for (let r = 0; r < reps; r++) dirtyTimes.push(await dirtySnapshot(2 + r));
  out.dirty10Measured = { seconds: median(dirtyTimes), ratio: image.length / MB / median(dirtyTimes) / out.baselineMBps };
  const step = (k) => median(runs.map((x) => x[k]));
  out.emptySnapshot = { begin: step('begin'), prepare: step('prepare'), commit: step('commit') };
  out.emptySnapshot.total = median(runs.map((x) => x.begin + x.prepare + x.commit));
  const manifestBytes = runs[0].record.manifestBytes;
  out.manifestBytes = manifestBytes;

  // The server's fsync-family calls for `reps` empty snapshots (strace slows them: not timed).
  const traced = join(work, 'strace.txt');
  const strace = spawn('strace', ['-f', '-c', '-e', 'trace=fsync,fdatasync,sync_file_range', '-o', traced, '-p', String(child.pid)], {
    stdio: 'ignore',
  });
  const attached = await Promise.race([
    new Promise((res) => strace.once('error', () => res(false))),
    new Promise((res) => setTimeout(() => res(true), 500)),
  ]);
  if (attached) {
    for (let r = 0; r < reps; r++) await empty();
    strace.kill('SIGINT');
    await new Promise((res) => strace.once('exit', res));
    const summary = await readFile(traced, 'utf8').catch(() => '');
    out.syncCallsPerEmptySnapshot = {};
    for (const m of summary.matchAll(/^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync|sync_file_range)$/gm))
      out.syncCallsPerEmptySnapshot[m[2]] = Number(m[1]) / reps;
  }
  await client.close();
  child.kill('SIGTERM');
  await new Promise((res) => child.on('exit', res));
  // The server's memory, freed at its exit, goes back to the host within a few seconds (free page
  // reporting); until then the page cache would reuse it, which the server's own pack writes never
  // do (its page cache only grows). Pages of memory the host has to back again cost ~7-11 us each
  // to touch on this machine, so the writes below wait for that.
  await new Promise((res) => setTimeout(res, FRESH_PAUSE_MS));

  // The same durable writes, bare, on the same file system.
  const bare = (fn) => {
    const times = [];
    for (let r = 0; r < reps; r++) {
      const t0 = now();
      fn(r);
      times.push(now() - t0);
    }
    return median(times);
  };
  const manifest = Buffer.alloc(manifestBytes, 7);
  out.bareManifestWriteSeconds = bare((r) => {
    const tmp = join(work, `m${r}.tmp`);
    const fd = openSync(tmp, 'w', 0o600);
    writeSync(fd, manifest);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, join(work, `m${r}`));
    const dir = openSync(work, 'r');
    fsyncSync(dir);
    closeSync(dir);
  });
  const log = openSync(join(work, 'log'), 'a', 0o600);
  out.bareSmallSyncWriteSeconds = bare(() => {
    writeSync(log, Buffer.alloc(300, 1));
    fdatasyncSync(log);
  });
  closeSync(log);
  // Manifest (2 fsyncs) + hold + commit record (a synced log append each): the durable writes alone.
  out.bareDurableStepsSeconds = out.bareManifestWriteSeconds + 2 * out.bareSmallSyncWriteSeconds;

  // Pack writes: the LZ4 output of the pages, written in 4 MiB writes and fdatasync'ed (median of `reps`).
  const codec = getCodec();
  // LZ4 into one reused output, as the store compresses into its reused slabs: a fresh 27 MB output
  // per call made LZ4 look 5-10x slower than it is (page faults, not compression).
  const lz4Out = Buffer.alloc(image.length);
  const compress = (src, pageNumbers) =>
    codec.compressPages(
      src,
      pageNumbers.map((p) => p * PAGE),
      lz4Out,
    );
  /** The LZ4 output of those pages, as a pack holds it (a copy: the next compress reuses lz4Out). */
  const packed = (src, pageNumbers) => Buffer.from(compress(src, pageNumbers).payload);
  /** Writes all of `bytes` to `fd` in 4 MiB writes. */
  const writeWhole = (fd, bytes) => {
    for (let o = 0; o < bytes.length; o += 4 << 20) writeSync(fd, bytes, o, Math.min(4 << 20, bytes.length - o));
  };
  // Write (the copy into new page-cache pages, as the server's pack files grow) and fdatasync (the
  // disk's transfer of bytes already in the page cache), each the median of `reps` new files.
  const packWrite = (bytes, name) => {
    const writes = [];
    const syncs = [];
    for (let r = 0; r < reps; r++) {
      const fd = openSync(join(work, `${name}-${r}`), 'w', 0o600);
      const t0 = now();
      writeWhole(fd, bytes);
      const t1 = now();
      fdatasyncSync(fd);
      syncs.push(now() - t1);
      writes.push(t1 - t0);
      closeSync(fd);
    }
    const seconds = median(writes.map((w, r) => w + syncs[r]));
    return { bytes: bytes.length, writeSeconds: median(writes), syncSeconds: median(syncs), seconds, MBps: bytes.length / MB / seconds };
  };
  /** The same page-cache write right after deleting a file of that size (its pages reused): for comparison. */
  const recycledWrite = (bytes) =>
    bare((r) => {
      const f = join(work, `recycled${r}`);
      const fd = openSync(f, 'w', 0o600);
      writeWhole(fd, bytes);
      closeSync(fd);
      rmSync(f);
    });
  // A first snapshot stores every distinct non-zero page.
  const pageCount = image.length / PAGE;
  const allPages = new Uint32Array(pageCount).map((_, p) => p);
  const allDigests = new Uint8Array(pageCount * 32);
  const zero = codec.zeroMask(image, pageCount);
  const nonZero = allPages.filter((p) => !zero[p]);
  hashPages(image, nonZero, allDigests);
  const seen = new Set();
  const distinct = [];
  for (const p of nonZero) {
    const key = Buffer.from(allDigests.buffer, p * 32, 32).toString('latin1');
    if (!seen.has(key)) {
      seen.add(key);
      distinct.push(p);
    }
  }
  out.firstPages = { total: pageCount, nonZero: nonZero.length, distinct: distinct.length };
  out.firstPackWrite = packWrite(packed(image, distinct), 'first');
  // bench/server.mjs's 10% dirty list: every tenth page, rewritten word by word (so incompressible).
  const dirtyImage = Buffer.from(image);
  const dirty = [];
  for (let p = 0; p < image.length / PAGE; p += 10) dirty.push(p);
  for (const p of dirty)
    for (let o = 0; o < PAGE; o += 4) dirtyImage.writeUInt32LE((Math.imul(p, 2654435761) ^ o ^ 0x5a5a) >>> 0, p * PAGE + o);
  const dirtyPacked = packed(dirtyImage, dirty);
  out.dirty10PackWrite = packWrite(dirtyPacked, 'dirty');
  out.dirty10RecycledCacheWriteSeconds = recycledWrite(dirtyPacked);
  // Single-thread CPU of the dirty pages' mandated work: the fastest hash (native, many pages a call)
  // and LZ4, each the median of `reps` passes over the same pages.
  const dirtyList = Uint32Array.from(dirty);
  const digests = new Uint8Array((dirtyImage.length / PAGE) * 32);
  out.dirty10HashSeconds = bare(() => hashPages(dirtyImage, dirtyList, digests));
  out.dirty10Lz4Seconds = bare(() => compress(dirtyImage, dirty));
  out.dirty10TcpCpu = await tcpCpu(dirty.length * PAGE);
  // The pack write's CPU: the copy into new page-cache pages, without its fdatasync.
  out.dirty10CacheWriteSeconds = out.dirty10PackWrite.writeSeconds;
  const cpuWork =
    2 * out.dirty10HashSeconds +
    out.dirty10Lz4Seconds +
    out.dirty10TcpCpu.senderSeconds +
    out.dirty10TcpCpu.receiverSeconds +
    out.dirty10CacheWriteSeconds;
  out.dirty10Minimum = {
    cpuSecondsOnOneCore: cpuWork,
    seconds: Math.max(cpuWork / 2, out.dirty10PackWrite.syncSeconds) + out.bareDurableStepsSeconds,
  };
  out.dirty10Minimum.maxRatio = image.length / MB / out.dirty10Minimum.seconds / out.baselineMBps;

  // A first snapshot's least mandated work, the same way: the agent finds the zero pages and hashes
  // the others, every distinct non-zero page crosses the socket, and the server hashes, LZ4s and
  // writes it (into new page-cache pages), then the disk takes the packs and the commit is durable.
  const distinctList = Uint32Array.from(distinct);
  out.firstZeroScanSeconds = bare(() => codec.zeroMask(image, pageCount));
  out.firstAgentHashSeconds = bare(() => hashPages(image, nonZero, allDigests));
  out.firstServerHashSeconds = bare(() => hashPages(image, distinctList, allDigests));
  out.firstLz4Seconds = bare(() => compress(image, distinct));
  out.firstTcpCpu = await tcpCpu(distinct.length * PAGE);
  const firstCpu =
    out.firstZeroScanSeconds +
    out.firstAgentHashSeconds +
    out.firstServerHashSeconds +
    out.firstLz4Seconds +
    out.firstTcpCpu.senderSeconds +
    out.firstTcpCpu.receiverSeconds +
    out.firstPackWrite.writeSeconds;
  out.firstMinimum = {
    cpuSecondsOnOneCore: firstCpu,
    seconds: Math.max(firstCpu / 2, out.firstPackWrite.syncSeconds) + out.bareDurableStepsSeconds,
  };
  out.firstMinimum.maxRatio = image.length / MB / out.firstMinimum.seconds / out.baselineMBps;

  const imageMB = image.length / MB;
  out.floors = {
    dirty10Target: 8,
    dirty10BudgetSeconds: imageMB / (8 * out.baselineMBps),
    // Even with no page work at all, a dirty-list snapshot costs the empty one ...
    dirty10MaxRatioFromEmptySnapshot: imageMB / out.emptySnapshot.total / out.baselineMBps,
    // ... and, with everything else free and overlapped, the disk's transfer of its new pages.
    dirty10MaxRatioFromPackSync: imageMB / out.dirty10PackWrite.syncSeconds / out.baselineMBps,
    // The least mandated work (hashes, LZ4, TCP, page-cache write; disk; durable commit), beside the measured ratio.
    dirty10MaxRatioFromMinimumWork: out.dirty10Minimum.maxRatio,
    dirty10MeasuredRatio: out.dirty10Measured.ratio,
    firstTarget: 0.6,
    // Even with every other stage free and overlapped, the disk takes a first snapshot's packs ...
    firstMaxRatioFromPackSync: imageMB / out.firstPackWrite.syncSeconds / out.baselineMBps,
    // ... and the least mandated work, as for the dirty list.
    firstMaxRatioFromMinimumWork: out.firstMinimum.maxRatio,
  };
  out.loadavgAfter = await loadavg();
} finally {
  await rm(work, { recursive: true, force: true });
}
if (args.json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
else
  for (const [k, v] of Object.entries(out))
    process.stdout.write(`${k.padEnd(26)} ${typeof v === 'number' ? v.toFixed(4) : JSON.stringify(v)}\n`);
