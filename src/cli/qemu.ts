/** `vnstore qemu receive|send|info`: QEMU live migration into the store and back (docs/QEMU.md). */
import net from 'node:net';
import { isatty } from 'node:tty';
import { Option, type Command } from 'commander';
import { ChunkSource, eagerChunks } from '../qemu/byte-source.js';
import { Spool, earlySpool } from '../qemu/spool.js';
import { describeQemu, findQemuAncestor } from '../qemu/qemu-process.js';
import { receiveMigration } from '../qemu/receive.js';
import { loadStoredMigration, sendMigration, type StoredMigration } from '../qemu/send.js';
import type { QemuProcessInfo } from '../qemu/state-image.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';
import type { MigrationStore } from '../qemu/migration-store.js';
import type { QmpClient } from '../qemu/qmp.js';
import type { SyncStopChoice } from '../qemu/sync-stop-policy.js';
import { ONE_SHOT, action, lockWaitOption, storeDir, storeOption, usage, withStore } from './common.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';
import { parseCount, parseEndpoint } from './switch.js';

interface ReceiveOpts extends RemoteOptions {
  vm: string;
  group?: string;
  store?: string;
  listen?: string;
  qemuPid?: string;
  json?: boolean;
  detach?: boolean;
  fromSpoolFd?: string;
}

function parseListen(spec: string): { host: string; port: number } {
  const m = /^tcp:(.*):(\d+)$/.exec(spec);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw usage(`--listen ${spec}: expected tcp:HOST:PORT (e.g. tcp:127.0.0.1:4444; port 0 picks a free one)`);
  return { host: m[1].replace(/^\[(.*)\]$/, '$1') || '0.0.0.0', port };
}

/** Accepts one connection (QEMU's `migrate "tcp:HOST:PORT"`), announcing the address on stderr. */
async function acceptOne(host: string, port: number): Promise<net.Socket> {
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(fromSystemError(e, `listening on ${host}:${port}`)));
    server.listen(port, host, () => resolve());
  });
  const addr = server.address() as net.AddressInfo;
  process.stderr.write(`vnstore: listening on tcp:${host}:${addr.port}\n`);
  const socket = await new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  server.close(); // one stream per receive: multifd's extra channels are refused by not being accepted
  return socket; // paused until its reader attaches (streamInput)
}

/** Checked before the stream is read: a bad --qemu-pid must not cost a whole migration. */
function parseQemuPid(spec: string | undefined): number | undefined {
  if (spec === undefined) return undefined;
  const pid = Number(spec);
  if (!Number.isInteger(pid) || pid <= 0) throw usage(`--qemu-pid ${spec}: not a process id`);
  return pid;
}

interface SnapshotOpts extends RemoteOptions {
  env: string;
  vm: string[];
  switch: string;
  epoch?: string;
  listenHost: string;
  syncStop: string;
  channelState: string;
  store?: string;
  json?: boolean;
}

const collect = (v: string, all: string[]) => [...all, v];

/** `NAME=QMP` (a Unix socket path, unix:PATH or tcp:HOST:PORT). */
function parseVmQmp(spec: string): { vm: string; qmp: string } {
  const i = spec.indexOf('=');
  if (i < 1 || i === spec.length - 1)
    throw usage(`--vm ${spec}: expected NAME=QMP-SOCKET (e.g. web1=/run/web1.qmp or web1=tcp:127.0.0.1:4445)`);
  return { vm: spec.slice(0, i), qmp: spec.slice(i + 1) };
}

async function qemuInfo(pid: number | undefined): Promise<QemuProcessInfo> {
  const found = pid ?? (await findQemuAncestor());
  return found === undefined ? {} : describeQemu(found);
}

/** The command line that restores a stored VM: the source's, with -incoming from the store. */
export function restoreCommandLine(m: StoredMigration, source?: string): string[] | undefined {
  const argv = m.image.meta.qemu.commandLine;
  if (!argv) return undefined;
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '-incoming' || argv[i] === '--incoming') {
      i++;
      continue;
    }
    out.push(argv[i]);
  }
  out.push('-incoming', `exec:vnstore qemu send ${m.ram.id}${source ? ` ${source}` : ''}`);
  return out;
}

/** Bytes of stream read ahead of the store: VNSTORE_QEMU_SPOOL_MIB, default 2048 (a whole small VM). */
function spoolBudget(): number {
  const mib = Number(process.env.VNSTORE_QEMU_SPOOL_MIB ?? 2048);
  if (!Number.isFinite(mib) || mib < 1)
    throw usage(`VNSTORE_QEMU_SPOOL_MIB=${process.env.VNSTORE_QEMU_SPOOL_MIB}: expected a number of MiB`);
  return mib * 2 ** 20;
}

type SpoolMode = 'file' | 'memory' | 'none';

/**
 * How the receiver takes the stream while QEMU sends (docs/QEMU.md): `file` (default) spools it to
 * a temporary file and stores it once it has ended; `memory` holds it in memory (up to
 * VNSTORE_QEMU_SPOOL_MIB); `none` stores pages as they arrive (VNSTORE_QEMU_HOLD=0, as before).
 */
function spoolMode(): SpoolMode {
  const v = process.env.VNSTORE_QEMU_SPOOL ?? (process.env.VNSTORE_QEMU_HOLD === '0' ? 'none' : 'file');
  if (v !== 'file' && v !== 'memory' && v !== 'none') throw usage(`VNSTORE_QEMU_SPOOL=${v}: expected file, memory or none`);
  return v;
}

interface StreamInput {
  chunks: AsyncIterable<Buffer>;
  close(): void;
}

function parseSpoolFd(v: string): number {
  const fd = Number(v);
  if (!Number.isInteger(fd) || fd < 3) throw usage(`--from-spool-fd ${v}: expected a file descriptor number of 3 or more`);
  return fd;
}

/**
 * Hands a spooled stream to a detached `vnstore qemu receive --from-spool-fd 3` with the same
 * arguments, standard output and error, and returns without waiting for it (docs/QEMU.md). The
 * executable does this itself when it can (early-spool.cts); this is the way when it could not.
 */
async function detachReceive(spool: Spool, qemuPid: number | undefined): Promise<void> {
  try {
    const child = earlySpool().spawnDetachedReceive(spool.fileDescriptor, qemuPid);
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    child.unref();
  } catch (err) {
    throw fromSystemError(err, 'starting the background receive');
  } finally {
    spool.close();
  }
}

/** Standard input's spool: the one `--detach` handed over, the early spool, or one spooled now. */
async function stdinSpool(fromSpoolFd?: string): Promise<Spool> {
  if (fromSpoolFd !== undefined) return Spool.fromFd(parseSpoolFd(fromSpoolFd));
  return Spool.fromStdin();
}

/** The migration stream from standard input or a socket, taken as the spool mode says. */
async function streamInput(input: net.Socket | 'stdin', mode: SpoolMode, fromSpoolFd?: string): Promise<StreamInput> {
  if (mode === 'file') {
    const spool = input === 'stdin' ? await stdinSpool(fromSpoolFd) : await Spool.fromStream(input);
    return { chunks: spool.chunks(), close: () => spool.close() };
  }
  return { chunks: eagerChunks(input === 'stdin' ? process.stdin : input, spoolBudget(), mode === 'memory'), close: () => undefined };
}

/**
 * Runs `fn` on the store the options name: through a server (--server, $VNSTORE_SERVER) or the
 * local store. `where` is the option string a later `vnstore qemu send` needs to find it.
 */
async function withMigrations<T>(
  opts: RemoteOptions & { store?: string; lockWait?: number },
  fn: (store: MigrationStore, where: string) => Promise<T>,
): Promise<T> {
  const { serverMigrations, storeMigrations } = await import('../qemu/migration-store.js');
  const server = serverAddress(opts);
  if (server) {
    const where = `--server ${server}${opts.tokenFile ? ` --token-file ${opts.tokenFile}` : ''}${opts.tlsCa ? ` --tls-ca ${opts.tlsCa}` : ''}`;
    return withRemote(opts, server, (client) => fn(serverMigrations(client), where));
  }
  return withStore(opts, (store) => fn(storeMigrations(store), `--store ${storeDir(opts)}`), ONE_SHOT);
}

/** `--sync-stop`, with auto decided from what each VM's QEMU says (accelerator, version). */
async function decideSyncStop(mode: 'on' | 'off' | 'auto', vms: { vm: string }[], clients: QmpClient[]): Promise<SyncStopChoice> {
  const { chooseSyncStop } = await import('../qemu/sync-stop-policy.js');
  if (mode !== 'auto') return chooseSyncStop(mode, []);
  const runtimes = await Promise.all(
    clients.map(async (c, k) => {
      const kvm = await c.execute<{ enabled?: boolean }>('query-kvm');
      const v = await c.execute<{ qemu: { major: number; minor: number; micro: number } }>('query-version');
      return { vm: vms[k].vm, kvm: kvm.enabled === true, version: v.qemu };
    }),
  );
  return chooseSyncStop('auto', runtimes);
}

function writeOut(b: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    process.stdout.write(b, (err) => (err ? reject(err) : resolve()));
  });
}

export function registerQemu(program: Command): void {
  const qemu = program
    .command('qemu')
    .description('QEMU live migration into the store (receive) and back into a new QEMU (send); see docs/QEMU.md');

  const receive = qemu
    .command('receive')
    .description('store a QEMU pre-copy migration stream (standard input, or one TCP connection) as a snapshot of --vm')
    .requiredOption('--vm <name>', 'VM name the snapshot is stored under (its QEMU state goes under NAME.qemu)')
    .option('--group <id>', 'group snapshot (environment epoch) to commit into; default: a group of its own')
    .option('--listen <tcp:HOST:PORT>', 'accept one connection from `migrate "tcp:HOST:PORT"` instead of reading standard input')
    .option('--qemu-pid <pid>', "QEMU's process id, to record its version and command line (found automatically under `exec:`)")
    .option(
      '--detach',
      'exit as soon as the stream is spooled and store it from a background process: QEMU waits for an exec: command to exit before it lets the guest run again',
    )
    .addOption(new Option('--from-spool-fd <fd>', 'internal: the spool handed over by --detach').hideHelp())
    .option(
      '--json',
      'print {id, stateId, vm, group, machine, qemuVersion, blocks, logicalBytes, streamBytes, newChunks, addedBytes, seconds}',
    )
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(receive, false)
    .addHelpText(
      'after',
      `
The snapshot commits only when the stream ends with QEMU's EOF and VM description; a cut, malformed
or unsupported stream (multifd, compression, XBZRLE, postcopy) leaves nothing and exits 10.
Standard output of an exec: command goes nowhere: redirect it to keep the id.
QEMU closes an exec: target by waiting for the command to exit, and its main loop (QMP, 'cont')
waits with it: without --detach the guest stays paused until the snapshot is stored. With --detach
the command exits once the stream is spooled, and a background process stores it, writing the id
(or the one-line error) to the same standard output and error; the exit status then says only that
the stream was spooled.

Examples (QMP, or the HMP monitor):
  migrate "exec:vnstore qemu receive --vm web1 --store /var/lib/vnstore --detach > /tmp/web1.id 2> /tmp/web1.err"
  migrate "exec:vnstore qemu receive --vm web1 --server 10.0.0.5:7007 --token-file /etc/vnstore.token > /tmp/web1.id"
  vnstore qemu receive --vm web1 --listen tcp:127.0.0.1:4444 --qemu-pid 1234   # then migrate "tcp:127.0.0.1:4444"
`,
    )
    .action(
      action(async (opts: ReceiveOpts) => {
        const t0 = performance.now();
        const endpoint = opts.listen ? parseListen(opts.listen) : undefined;
        const qemuPid = parseQemuPid(opts.qemuPid);
        // isatty, not process.stdin.isTTY: making process.stdin would set the pipe non-blocking.
        if (!endpoint && isatty(0))
          throw usage('standard input is a terminal: run this as QEMU\'s migrate "exec:..." target, or use --listen');
        const mode = spoolMode();
        if (opts.detach && (endpoint || mode !== 'file'))
          throw usage('--detach is for exec: targets with the file spool (no --listen, VNSTORE_QEMU_SPOOL=file)');
        if (opts.detach) {
          // Standard input to its end, QEMU's ancestry while it is ours, then the rest in a process
          // QEMU does not wait for.
          await detachReceive(await stdinSpool(), qemuPid ?? (await findQemuAncestor()));
          return;
        }
        // Standard input is taken first, before the store opens: QEMU is already sending (with the
        // file spool, the whole stream is read before anything else happens).
        const stdin = endpoint ? undefined : await streamInput('stdin', mode, opts.fromSpoolFd);
        await withMigrations(opts, async (store) => {
          const input = stdin ?? (await streamInput(await acceptOne(endpoint!.host, endpoint!.port), mode));
          const r = await receiveMigration(store, new ChunkSource(input.chunks), {
            vm: opts.vm,
            group: opts.group,
            qemu: () => qemuInfo(qemuPid),
          }).finally(() => input.close());
          if (opts.json) {
            process.stdout.write(
              `${JSON.stringify({
                id: r.ram.id,
                stateId: r.state.id,
                vm: r.ram.vm,
                group: r.ram.group,
                machine: r.meta.machine,
                qemuVersion: r.meta.qemu.version,
                blocks: r.meta.blocks.map((b) => ({ name: b.name, bytes: b.bytes })),
                logicalBytes: r.ram.byteLength,
                streamBytes: r.meta.stream.bytes,
                newChunks: r.ram.newChunks + r.state.newChunks,
                addedBytes: r.ram.addedBytes + r.state.addedBytes,
                seconds: Number(((performance.now() - t0) / 1000).toFixed(3)),
              })}\n`,
            );
          } else process.stdout.write(`${r.ram.id}\n`);
        });
      }),
    );

  const send = qemu
    .command('send')
    .description('write a stored VM as a migration stream on standard output, for qemu-system-x86_64 -incoming "exec:vnstore qemu send ID"')
    .argument('<id>', 'the RAM snapshot id that receive printed, or its NAME.qemu state snapshot (a unique prefix is enough)')
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(send, false)
    .addHelpText('after', '\nStart QEMU with the command line `vnstore qemu info ID` prints (same machine, memory and devices).\n')
    .action(
      action(async (id: string, opts: RemoteOptions & { store?: string }) => {
        if (process.stdout.isTTY)
          throw usage('refusing to write a migration stream to a terminal; run this as QEMU\'s -incoming "exec:..." source');
        await withMigrations(opts, async (store) => {
          const m = await loadStoredMigration(store, id);
          try {
            await sendMigration(store, m, writeOut);
          } catch (err) {
            const code = (err as NodeJS.ErrnoException).code;
            if (code === 'EPIPE') throw new VnstoreError('E_IO', 'QEMU closed the stream before it was complete (see its error output)');
            if (typeof code === 'string' && !(err instanceof VnstoreError)) throw fromSystemError(err, 'writing standard output');
            throw err;
          }
        });
      }),
    );

  const info = qemu
    .command('info')
    .description('what a stored QEMU snapshot holds: machine, QEMU version, RAM blocks, and the command line that restores it')
    .argument('<id>', 'RAM snapshot id or its NAME.qemu state snapshot (a unique prefix is enough)')
    .option('--json', 'print it as JSON')
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(info, false).action(
    action(async (id: string, opts: RemoteOptions & { store?: string; json?: boolean }) => {
      await withMigrations(opts, async (store, where) => {
        const m = await loadStoredMigration(store, id);
        const { meta } = m.image;
        const restore = restoreCommandLine(m, where);
        const described = {
          id: m.ram.id,
          stateId: m.state.id,
          vm: meta.vm,
          group: m.ram.group,
          machine: meta.machine,
          qemuVersion: meta.qemu.version,
          blocks: meta.blocks,
          commandLine: meta.qemu.commandLine,
          restoreCommandLine: restore,
          stream: meta.stream,
        };
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(described)}\n`);
          return;
        }
        const lines = [
          `snapshot ${m.ram.id} (state ${m.state.id}) of ${meta.vm}, group ${m.ram.group ?? '-'}`,
          `machine ${meta.machine ?? 'unknown'}, ${meta.qemu.version ?? 'QEMU version unknown'}`,
          ...meta.blocks.map((b) => `  block ${b.name}: ${b.bytes} bytes`),
          restore
            ? `restore with: ${restore.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(' ')}`
            : 'restore: the source command line was not recorded; start QEMU as the source was, with -incoming "exec:vnstore qemu send ID"',
        ];
        process.stdout.write(`${lines.join('\n')}\n`);
      });
    }),
  );

  const snapshot = qemu
    .command('snapshot')
    .description(
      'a coordinated live snapshot of QEMU VMs on a vnstore switch: every VM migrated into the store at once, its colour flipped while QEMU pauses it, all committed as one group',
    )
    .requiredOption('--env <name>', 'environment name: the group is <env>-e<epoch>')
    .option(
      '--vm <name=qmp>',
      "a VM: its name (as on the switch's --port) and its QMP socket (path, unix:PATH or tcp:HOST:PORT); repeat per VM",
      collect,
      [],
    )
    .option('--switch <host:port>', "the VMs' switch's tunnel address, where colour flips go", '127.0.0.1:7100')
    .option(
      '--epoch <n>',
      "the epoch to take (default: one past the environment's last group in the store and the VMs' colours at the switch)",
    )
    .option('--listen-host <host>', 'address the migration streams come to (QEMU must reach it)', '127.0.0.1')
    .addOption(
      new Option(
        '--sync-stop <mode>',
        'on: hold every migration until all are nearly done, then let every QEMU pause its guest at once, so the colours flip together; off: each guest pauses when its own migration converges; auto: on unless a VM runs under TCG on a QEMU older than 9.0 (docs/QEMU.md)',
      )
        .choices(['on', 'off', 'auto'])
        .default('auto'),
    )
    .addOption(
      new Option(
        '--channel-state <mode>',
        'on: store the frames that crossed the cut, fetched from the switch (--channels hold), as the group member <env>.channels',
      )
        .choices(['on', 'off'])
        .default('off'),
    )
    .option(
      '--json',
      'print {group, epoch, syncStop, syncStopReason, flipSkewMs, stopSkewMs, channelFrames, members: [{vm, id, stateId, totalMs, downtimeMs, addedBytes}]}',
    )
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(snapshot, false)
    .addHelpText(
      'after',
      `
Each VM must run with a QMP socket and be attached to the switch (-netdev dgram, docs/QEMU.md).
The guests keep running: each is paused only for its migration's last round, as with receive.
With --sync-stop on each migration runs until little is left (QEMU's downtime-limit
held at 1 ms, then its max-bandwidth cut to 10 B/s, so that QEMU does not pause the guest by
itself); once every VM is there, all are released at once and every QEMU pauses its guest and
completes, so the colours flip together. Each VM's own settings are set back afterwards.
auto, the default, does that unless a VM runs under TCG on a QEMU older than 9.0, whose dirty
tracking can lose a guest write from a held migration (docs/QEMU.md); it says which it chose.
If any VM's migration or flip fails, nothing is committed (exit 12) and every VM is flipped to the
epoch anyway. Restore each member with \`vnstore qemu info ID\`'s command line.

Example:
  vnstore switch --port web1=127.0.0.1:5001 --port db1=127.0.0.1:5002 &
  vnstore qemu snapshot --env shop --vm web1=/run/web1.qmp --vm db1=/run/db1.qmp --store /var/lib/vnstore
`,
    )
    .action(
      action(async (opts: SnapshotOpts) => {
        if (opts.vm.length === 0) throw usage('at least one --vm NAME=QMP-SOCKET is needed');
        const vms = opts.vm.map(parseVmQmp);
        if (new Set(vms.map((v) => v.vm)).size !== vms.length) throw usage('a VM is named by two --vm options');
        const switchAddr = parseEndpoint(opts.switch, '--switch');
        const asked = opts.epoch === undefined ? undefined : parseCount(opts.epoch, '--epoch', 1);
        const { QmpClient } = await import('../qemu/qmp.js');
        const { QemuVmAgent } = await import('../qemu/vm-agent.js');
        const { nextEpoch, snapshotEnvironment } = await import('../qemu/environment.js');
        const { findQemuBySocket } = await import('../qemu/qemu-process.js');
        const clients = await Promise.all(vms.map((v) => QmpClient.connect(v.qmp)));
        try {
          const syncStop = await decideSyncStop(opts.syncStop as 'on' | 'off' | 'auto', vms, clients);
          await withMigrations(opts, async (store) => {
            const agents = vms.map(
              (v, k) =>
                new QemuVmAgent({
                  vm: v.vm,
                  qmp: clients[k],
                  switchAddr,
                  store,
                  listenHost: opts.listenHost,
                  qemuInfo: async () => {
                    const pid = v.qmp.startsWith('tcp:') ? undefined : await findQemuBySocket(v.qmp.replace(/^unix:/, ''));
                    return pid === undefined ? {} : describeQemu(pid);
                  },
                }),
            );
            const next = await nextEpoch(store, opts.env, agents);
            if (asked !== undefined && asked < next)
              throw usage(
                `--epoch ${asked}: ${opts.env} is at epoch ${next - 1} already (its groups or its VMs' colours); a new cut needs ${next} or more`,
              );
            const epoch = asked ?? next;
            const { requestChannelState } = await import('../switch/flip-client.js');
            const r = await snapshotEnvironment(store, agents, opts.env, epoch, {
              syncStop: syncStop.on,
              channelState:
                opts.channelState === 'on' ? () => requestChannelState(switchAddr, epoch, { retryMs: 50, attempts: 60 }) : undefined,
            });
            const members = r.members.map((m) => ({
              vm: m.vm,
              id: m.ram.id,
              stateId: m.state.id,
              totalMs: m.totalMs,
              downtimeMs: m.downtimeMs,
              addedBytes: m.ram.addedBytes + m.state.addedBytes,
            }));
            const ms = (x: number | undefined) => (x === undefined ? undefined : Number(x.toFixed(1)));
            if (opts.json)
              process.stdout.write(
                `${JSON.stringify({ group: r.group, epoch: r.epoch, syncStop: syncStop.on, syncStopReason: syncStop.reason, flipSkewMs: ms(r.flipSkewMs), stopSkewMs: ms(r.stopSkewMs), channelFrames: r.channelFrames, members })}\n`,
              );
            else {
              const lines = [
                `group ${r.group} committed (${members.length} VMs, ${syncStop.on ? 'stopped together' : 'each stopped by its migration'}, flips within ${r.flipSkewMs.toFixed(1)} ms)`,
              ];
              if (opts.syncStop === 'auto') lines.push(`  sync-stop ${syncStop.on ? 'on' : 'off'}: ${syncStop.reason}`);
              for (const m of members)
                lines.push(`  ${m.vm}: ${m.id} (state ${m.stateId}), migration ${m.totalMs} ms, downtime ${m.downtimeMs} ms`);
              process.stdout.write(`${lines.join('\n')}\n`);
            }
          });
        } finally {
          for (const c of clients) c.close();
        }
      }),
    );
}
