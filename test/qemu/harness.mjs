// Real-QEMU harness for test/qemu-live.test.ts and bench/qemu.mjs: builds the guest
// (build-guest.sh), starts qemu-system-x86_64 under TCG with a QMP socket and the serial console in a
// file, speaks QMP, and reads the guest's "vntick N ok" lines.
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = join(here, '..', '..');
export const vnstoreBin = join(repoRoot, 'dist', 'cli', 'bin.cjs');

export function qemuAvailable() {
  return spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).status === 0;
}

/** Builds (or reuses) the cached guest; returns { kernel, initrd }. */
export function buildGuest() {
  const r = spawnSync('bash', [join(here, 'build-guest.sh')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`build-guest.sh failed: ${r.stderr}`);
  const dir = r.stdout.trim().split('\n').pop();
  return { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.gz') };
}

export async function waitFor(what, fn, timeoutMs = 60_000, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A minimal QMP client: one command at a time, events kept in a list. */
export class Qmp {
  constructor(socket) {
    this.socket = socket;
    this.buf = '';
    this.waiting = [];
    this.events = [];
    socket.setEncoding('utf8');
    socket.on('data', (d) => {
      this.buf += d;
      let nl;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line);
        if (msg.event) this.events.push(msg);
        else if (msg.QMP) continue;
        else this.waiting.shift()?.(msg);
      }
    });
  }

  static async connect(path) {
    const socket = await waitFor(
      `QMP socket ${path}`,
      () =>
        new Promise((resolve) => {
          const s = net.connect(path);
          s.once('connect', () => resolve(s));
          s.once('error', () => resolve(undefined));
        }),
    );
    const q = new Qmp(socket);
    await q.cmd('qmp_capabilities');
    return q;
  }

  cmd(execute, args) {
    return new Promise((resolve, reject) => {
      this.waiting.push((msg) => (msg.error ? reject(new Error(`QMP ${execute}: ${msg.error.desc}`)) : resolve(msg.return)));
      this.socket.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
    });
  }

  close() {
    this.socket.destroy();
  }
}

/**
 * Starts a guest: 'pc' machine, TCG, `memMiB` of RAM, no default devices, console in
 * `${dir}/${name}.console`, QMP at `${dir}/${name}.qmp`. With `incoming`, waits for that stream.
 * `append` is added to the kernel command line, `extraArgs` to QEMU's (a NIC, for the environment test).
 */
export async function startGuest({ dir, name, memMiB = 96, incoming, guest, append = '', extraArgs = [] }) {
  const consolePath = join(dir, `${name}.console`);
  const qmpPath = join(dir, `${name}.qmp`);
  const argv = [
    'qemu-system-x86_64',
    '-machine',
    'pc',
    '-accel',
    'tcg',
    '-m',
    String(memMiB),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-serial',
    `file:${consolePath}`,
    '-kernel',
    guest.kernel,
    '-initrd',
    guest.initrd,
    '-append',
    `console=ttyS0 quiet panic=-1${append ? ` ${append}` : ''}`,
    '-qmp',
    `unix:${qmpPath},server=on,wait=off`,
    ...extraArgs,
  ];
  if (incoming) argv.push('-incoming', incoming);
  const proc = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const qmp = await Promise.race([
    Qmp.connect(qmpPath),
    exited.then((e) => {
      throw new Error(`qemu exited (${JSON.stringify(e)}): ${stderr}`);
    }),
  ]);
  return {
    name,
    proc,
    qmp,
    qmpPath,
    argv,
    consolePath,
    exited,
    stderr: () => stderr,
    async stop() {
      qmp.close();
      if (proc.exitCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}

/** The guest's console lines "vntick N ok|BAD", in order. */
export function ticks(consolePath) {
  if (!existsSync(consolePath)) return [];
  const out = [];
  for (const m of readFileSync(consolePath, 'latin1').matchAll(/vntick (\d+) (ok|BAD)/g)) out.push({ n: Number(m[1]), ok: m[2] === 'ok' });
  return out;
}

/** The sequence numbers of the ping replies the guest printed ("64 bytes from ...: seq=N ..."), in order. */
export function pingReplies(consolePath) {
  if (!existsSync(consolePath)) return [];
  return [...readFileSync(consolePath, 'latin1').matchAll(/bytes from [\d.]+: seq=(\d+)/g)].map((m) => Number(m[1]));
}

export function lastTick(consolePath) {
  const t = ticks(consolePath);
  return t.length ? t[t.length - 1].n : 0;
}

/**
 * Migrates to `uri` and waits for the outcome; returns query-migrate's final answer (status,
 * total-time, downtime, ram). The source is left paused (postmigrate) unless `resume`.
 */
export async function migrate(vm, uri, { resume = true, timeoutMs = 120_000 } = {}) {
  await vm.qmp.cmd('migrate', { uri });
  const info = await waitFor(
    `migration of ${vm.name}`,
    async () => {
      const q = await vm.qmp.cmd('query-migrate');
      return q.status === 'completed' || q.status === 'failed' || q.status === 'cancelled' ? q : undefined;
    },
    timeoutMs,
    50,
  );
  if (resume) await vm.qmp.cmd('cont');
  return info;
}

/**
 * A QMP proxy at `path` in front of QEMU's socket `upstream`, for a client (`vnstore qemu snapshot`)
 * that must not know: lines pass unchanged, except that with `teePrefix` a `migrate` to
 * tcp:HOST:PORT goes to a relay of ours that forwards to HOST:PORT and also writes the stream to
 * `${teePrefix}-N.stream` (N counts migrations, listed in `streams`), and that a `cont` waits for
 * `hooks.beforeCont` when one is set (once): the paused guest can be looked at first.
 */
export function qmpProxy(path, upstream, { teePrefix } = {}) {
  let migrations = 0;
  const streams = [];
  const hooks = { beforeCont: undefined };
  const server = net.createServer((client) => {
    const up = net.connect(upstream);
    up.pipe(client);
    client.on('error', () => up.destroy());
    up.on('error', () => client.destroy());
    client.on('close', () => up.destroy());
    let buf = '';
    let chain = Promise.resolve();
    client.setEncoding('utf8');
    client.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl + 1);
        buf = buf.slice(nl + 1);
        chain = chain.then(async () => up.write(await rewrite(line)));
      }
    });
  });
  async function rewrite(line) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      return line;
    }
    if (msg.execute === 'cont' && hooks.beforeCont) {
      const hook = hooks.beforeCont;
      hooks.beforeCont = undefined;
      await hook();
      return line;
    }
    const m = teePrefix && msg.execute === 'migrate' ? /^tcp:(.+):(\d+)$/.exec(msg.arguments?.uri ?? '') : null;
    if (!m) return line;
    const file = `${teePrefix}-${++migrations}.stream`;
    streams.push(file);
    const relay = net.createServer((from) => {
      relay.close();
      const to = net.connect({ host: m[1], port: Number(m[2]) });
      const tee = createWriteStream(file);
      from.on('data', (d) => {
        tee.write(d);
        if (!to.write(d)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
      });
      from.on('end', () => {
        tee.end();
        to.end();
      });
      from.on('error', () => to.destroy());
      to.on('error', () => from.destroy());
      to.on('data', (d) => from.write(d));
    });
    await new Promise((r) => relay.listen(0, '127.0.0.1', r));
    msg.arguments.uri = `tcp:127.0.0.1:${relay.address().port}`;
    return `${JSON.stringify(msg)}\n`;
  }
  return new Promise((resolve) => server.listen(path, () => resolve({ streams, hooks, close: () => server.close() })));
}
