/**
 * The agent of one real QEMU VM in a coordinated snapshot (docs/QEMU.md, "An environment"): it
 * drives QEMU's pre-copy migration over QMP into a receiver of its own (a loopback TCP listener in
 * this process), flips the VM's colour at its switch while QEMU has the guest paused for the final
 * round, lets the guest run on, and prepares the VM's two members (RAM and state image) in the
 * group without committing them: the environment commits every VM's members at once.
 *
 * The flip's timing is what makes the cut consistent. QEMU emits the STOP event when it pauses the
 * guest to send the last dirty pages and the device state; the guest stays paused after the
 * migration completes (`postmigrate`) until this agent sends `cont`, and `cont` is sent only once
 * the switch has acknowledged the flip. So every frame the guest sent before the pause carries the
 * old colour, every frame after `cont` the new one, whichever way the scheduler goes.
 */
import net from 'node:net';
import { ChunkSource } from './byte-source.js';
import { Spool } from './spool.js';
import { prepareMigration, type PreparedMigration } from './receive.js';
import type { MigrationStore } from './migration-store.js';
import type { QmpClient, QmpEvent } from './qmp.js';
import type { QemuProcessInfo } from './state-image.js';
import type { StopBarrier } from './stop-barrier.js';
import { requestFlip } from '../switch/flip-client.js';
import type { Endpoint } from '../switch/udp.js';
import { VnstoreError } from '../util/errors.js';

export interface QemuVmAgentOptions {
  /** The VM's name: in the store and at its switch (`vnstore switch --port NAME=...`). */
  vm: string;
  qmp: QmpClient;
  /** The switch's tunnel address, where FLIP datagrams go. */
  switchAddr: Endpoint;
  store: MigrationStore;
  /** Where the stream is spooled while QEMU sends (default: VNSTORE_QEMU_SPOOL_DIR, else the temp directory). */
  spoolDir?: string;
  /** Address the migration stream comes to; QEMU must reach it (default 127.0.0.1, QEMU on this host). */
  listenHost?: string;
  /** QEMU's version and command line, recorded in the state image. */
  qemuInfo?: () => Promise<QemuProcessInfo>;
  /** How often the migration's status is asked while it runs. */
  pollMs?: number;
  /** Clock for the member's timings (ms); performance.now by default. */
  now?: () => number;
}

export interface QemuMember {
  vm: string;
  prepared: PreparedMigration;
  /** QEMU's own figures for this migration (query-migrate). */
  totalMs?: number;
  downtimeMs?: number;
  /** When (agent clock, ms) QEMU reported the pause, and when the switch acknowledged the flip. */
  stoppedAt?: number;
  flippedAt: number;
}

interface MigrateInfo {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  'error-desc'?: string;
  ram?: { remaining?: number; 'dirty-sync-count'?: number };
}

/**
 * When a migration is ready for the synchronised stop: what is left to send is small (16 MiB, or
 * twice what was sent between the last two polls, so that a fast pass is not missed between polls),
 * or it has run this long anyway (a guest that dirties memory faster than it is sent must not hold
 * the others back for ever).
 */
export const SYNC_READY = { remainingBytes: 16 * 2 ** 20, afterMs: 30_000 };

/**
 * How QEMU 7.2 is held from pausing its guest until every VM is ready, and then released. QEMU
 * pauses the guest for the last round by itself once what is left could be sent within its
 * downtime limit (300 ms by default: a small guest's whole dirty RAM after the first pass), so the
 * limit is held at 1 ms while the first pass runs. That alone does not hold an idle guest (it
 * dirties less than 1 ms of transfer between passes: measured), so once ready the migration's
 * bandwidth is cut to 10 B/s (QEMU's rate limit, which leaves it a record per 100 ms; 0-9 would
 * mean no limit) and what is left stays unsent. Released, the bandwidth is set back and the limit
 * raised to QEMU's maximum, so QEMU pauses the guest at its next check (every 100 ms at most) and
 * sends the rest paused. Not QMP `stop`: QEMU records the source's run state in the stream, and a
 * guest stopped that way is restored paused. The VM's own settings are set back afterwards.
 */
const HOLD = { 'downtime-limit': 1 };
const HOLD_READY = { 'max-bandwidth': 10 };
const RELEASE_DOWNTIME_LIMIT_MS = 2_000_000;

interface MigrationParameters {
  'downtime-limit'?: number;
  'max-bandwidth'?: number;
}

const FINAL = new Set(['completed', 'failed', 'cancelled']);
/** A FLIP resent every 50 ms for up to 3 s: a busy host's switch may answer late (the guest waits paused). */
const FLIP_RETRY = { retryMs: 50, attempts: 60 };

/** Listens on `host`, port 0; resolves the port and (later) the one connection QEMU makes. */
async function listenOnce(host: string): Promise<{ port: number; connection: Promise<net.Socket>; close: () => void }> {
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) =>
      reject(new VnstoreError('E_IO', `cannot listen on ${host} for the migration stream: ${e.message}`, { cause: e })),
    );
    server.listen(0, host, () => resolve());
  });
  const connection = new Promise<net.Socket>((resolve) =>
    server.once('connection', (s: net.Socket) => {
      server.close(); // one stream: multifd's extra channels are refused by not being accepted
      resolve(s);
    }),
  );
  return { port: (server.address() as net.AddressInfo).port, connection, close: () => server.close() };
}

export class QemuVmAgent {
  private readonly now: () => number;

  constructor(private readonly options: QemuVmAgentOptions) {
    this.now = options.now ?? (() => performance.now());
  }

  get vm(): string {
    return this.options.vm;
  }

  /** The VM's colour at its switch now (a FLIP to 0 never lowers it; the answer carries the colour in force). */
  colour(): Promise<number> {
    return requestFlip(this.options.switchAddr, this.options.vm, 0, FLIP_RETRY);
  }

  /** Sets the VM's colour without a snapshot (an aborted epoch closes this way). */
  flip(epoch: number): Promise<number> {
    return requestFlip(this.options.switchAddr, this.options.vm, epoch, FLIP_RETRY);
  }

  /**
   * One live snapshot of the VM for `epoch`, prepared in `group`. On failure the migration is
   * cancelled, the guest is let run, and nothing this agent prepared is left behind. With `sync`,
   * QEMU is held from pausing the guest until every VM's migration is ready (StopBarrier), then
   * released, so all guests pause together instead of each when its own migration converges.
   */
  async snapshot(group: string, epoch: number, sync?: StopBarrier): Promise<QemuMember> {
    const o = this.options;
    const listener = await listenOnce(o.listenHost ?? '127.0.0.1');
    let stoppedAt: number | undefined;
    let flip: Promise<number> | undefined;
    let flippedAt: number | undefined;
    // The acknowledgement's time, not the time it is awaited (after the migration completed).
    const startFlip = () =>
      (flip ??= this.flip(epoch).then((colour) => {
        flippedAt = this.now();
        return colour;
      }));
    const onEvent = (ev: QmpEvent) => {
      if (ev.event !== 'STOP' || stoppedAt !== undefined) return;
      stoppedAt = this.now();
      // Handled (also by the await below): an unacknowledged flip must not surface as unhandled.
      startFlip().catch(() => undefined);
    };
    o.qmp.on('event', onEvent);
    let connected = false;
    const receiving = listener.connection.then(async (socket) => {
      connected = true;
      const spool = await Spool.fromStream(socket, o.spoolDir);
      try {
        return await prepareMigration(o.store, new ChunkSource(spool.chunks()), { vm: o.vm, group, qemu: o.qemuInfo });
      } finally {
        spool.close();
      }
    });
    receiving.catch(() => undefined); // awaited below, or never (no connection came)
    try {
      const info = await this.migrate(`tcp:${o.listenHost ?? '127.0.0.1'}:${listener.port}`, sync);
      // Paused (postmigrate) until `cont`: a flip that has not happened yet still falls in the pause.
      await startFlip();
      await o.qmp.execute('cont');
      const prepared = await receiving;
      return { vm: o.vm, prepared, totalMs: info['total-time'], downtimeMs: info.downtime, stoppedAt, flippedAt: flippedAt as number };
    } catch (err) {
      listener.close();
      await o.qmp.execute('migrate_cancel').catch(() => undefined);
      const status = await o.qmp.execute<{ status?: string }>('query-status').catch(() => undefined);
      if (status?.status === 'postmigrate' || status?.status === 'finish-migrate') await o.qmp.execute('cont').catch(() => undefined);
      // A connected receiver ends either way now (a cancelled stream is cut; it aborts its own
      // sessions): members it prepared from a completed stream are dropped here.
      const p = connected ? await receiving.catch(() => undefined) : undefined;
      if (p) await o.store.abortPrepared(p.ids).catch(() => undefined);
      throw err;
    } finally {
      o.qmp.off('event', onEvent);
    }
  }

  private async migrate(uri: string, sync?: StopBarrier): Promise<MigrateInfo> {
    const { qmp, vm } = this.options;
    let arrived = false;
    let own: MigrationParameters | undefined;
    try {
      if (sync) {
        const p = await qmp.execute<MigrationParameters>('query-migrate-parameters');
        own = { 'downtime-limit': p['downtime-limit'], 'max-bandwidth': p['max-bandwidth'] };
        await qmp.execute('migrate-set-parameters', HOLD);
      }
      const started = this.now();
      let lastRemaining: number | undefined;
      await qmp.execute('migrate', { uri });
      for (;;) {
        const info = await qmp.execute<MigrateInfo>('query-migrate');
        if (info.status && FINAL.has(info.status)) {
          if (info.status !== 'completed')
            throw new VnstoreError('E_IO', `migration of ${vm} ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
          return info;
        }
        const remaining = info.ram?.remaining;
        if (sync && own && !arrived && info.status === 'active' && readyToStop(remaining, lastRemaining, this.now() - started)) {
          await qmp.execute('migrate-set-parameters', HOLD_READY);
          arrived = true;
          await sync.arrive();
          // QEMU pauses the guest now (its STOP event flips the colour, in snapshot) and completes.
          await qmp.execute('migrate-set-parameters', {
            'max-bandwidth': own['max-bandwidth'],
            'downtime-limit': RELEASE_DOWNTIME_LIMIT_MS,
          });
          continue;
        }
        lastRemaining = remaining ?? lastRemaining;
        await new Promise((r) => setTimeout(r, this.options.pollMs ?? 20));
      }
    } finally {
      if (sync && !arrived) sync.leave();
      if (own) await qmp.execute('migrate-set-parameters', { ...own }).catch(() => undefined);
    }
  }
}

function readyToStop(remaining: number | undefined, lastRemaining: number | undefined, elapsedMs: number): boolean {
  if (elapsedMs >= SYNC_READY.afterMs) return true;
  if (remaining === undefined) return false;
  const drained = lastRemaining === undefined ? 0 : Math.max(0, lastRemaining - remaining);
  return remaining <= Math.max(SYNC_READY.remainingBytes, 2 * drained);
}
