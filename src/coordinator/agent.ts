/**
 * The agent side of one VM's live snapshot: pre-copy rounds into a target session, the colour flip
 * at the stop-and-copy pause, prepare, report. Round k sends the pages dirtied during round k-1
 * (round 1 sends every page) and lasts pages × the host's per-page time; the pause lasts as long as
 * copying the last dirty pages and the state pages, plus a fixed cost. The VM's disk, as it is at
 * the pause, goes into a second session of the group (`<vm>.disk`): a copy-on-write snapshot taken
 * at the pause and written out after it, so it adds no downtime.
 *
 * The agent reaches its VM, its switch and the clock only through `AgentVm`: in-process over the
 * simulated environment (`localVm`), or from an agent process over the control protocol
 * (control-link.ts, agent-process.ts), so both forms run this very code.
 */
import type { SimEnv } from '../sim/env.js';
import { diskMemberName, STATE_PAGES, type SimVm } from '../sim/vm.js';
import { PAGE_SIZE } from '../format/pages.js';
import type { TimerHandle } from '../sim/events.js';
import type { CoordinatorEvent } from './protocol.js';
import type { SnapshotTarget, TargetSession } from './target.js';

/** What an agent needs of its VM's hypervisor, its switch and the (simulated) clock. */
export interface AgentVm {
  readonly name: string;
  /** Memory pages, disk bytes (0: no disk), and the host's copy time per page (simulated ms). */
  readonly pages: number;
  readonly diskBytes: number;
  readonly pageMs: number;
  readonly tickMs: number;
  now(): number;
  after(ms: number, run: () => void | Promise<unknown>): TimerHandle;
  dirtyCount(): Promise<number>;
  /** The dirty log since the last call, and a fresh log. */
  takeDirty(): Promise<number[]>;
  /** The bytes of `pages`, packed one after another. */
  readPages(pages: number[]): Promise<Uint8Array>;
  /** Pauses the VM once every frame delivered to it so far has been handled (its cut). */
  pause(): Promise<void>;
  /** Sets the VM's colour at its switch; rejects if the switch does not acknowledge it. */
  flip(epoch: number): Promise<void>;
  /** The VM's software state pages, times relative to `pausedAt`. */
  stateBytes(pausedAt: number): Promise<Uint8Array>;
  disk(): Promise<Uint8Array>;
  /** Resumes the VM if it is paused. */
  resume(): Promise<void>;
}

/** A VM of the simulated environment in this process, for an agent in this process. */
export function localVm(env: SimEnv, name: string): AgentVm {
  const vm = env.vms.get(name) as SimVm;
  const alive = () => env.hypervisorOf(name); // a VM whose hypervisor died answers nothing
  return {
    name,
    pages: vm.spec.pages,
    diskBytes: vm.disk.length,
    pageMs: env.host(vm.spec.host).pageMs,
    tickMs: env.spec.tickMs,
    now: () => env.clock.now,
    after: (ms, run) => env.clock.after(ms, run),
    dirtyCount: async () => alive().dirtyCount(),
    takeDirty: async () => alive().takeDirty(),
    readPages: async (pages) => alive().pagesBytes(pages),
    async pause() {
      alive();
      // Over switch processes: every frame already delivered to the VM is handled before its cut.
      await env.quiesce();
      env.pause(name);
    },
    flip: (epoch) => env.flip(name, epoch),
    stateBytes: async (pausedAt) => alive().stateBytes(pausedAt),
    disk: async () => alive().disk.slice(),
    resume: async () => {
      if (alive().paused) env.resume(name);
    },
  };
}

export interface AgentOptions {
  /** The dirty set is small enough to stop and copy at this many pages or fewer. */
  dirtyThresholdPages: number;
  maxRounds: number;
  /** Fixed cost of a pause (device state, resume), simulated ms. */
  pauseOverheadMs: number;
  /** Fault injection: the agent crashes (reports failure) or hangs (goes silent) at this time after the start. */
  fault?: { kind: 'crash' | 'hang'; atMs: number };
}

/** The epoch's side of an agent, as the executor drives it: in this process (SimAgent) or another (RemoteAgent). */
export interface EpochAgent<P> {
  readonly preparedMembers: P[];
  start(group: string, epoch: number, syncStop: boolean): Promise<void>;
  stop(epoch: number): Promise<void>;
  abort(): Promise<void>;
}

export class SimAgent<P> implements EpochAgent<P> {
  private session?: TargetSession<P>;
  private diskSession?: TargetSession<P>;
  private prepared?: P;
  private diskPrepared?: P;
  private round?: TimerHandle;
  private syncStop = false;
  private ready = false;
  private stopped = false;
  private dead = false;
  private rounds = 0;
  readonly name: string;

  constructor(
    private readonly vm: AgentVm,
    private readonly target: SnapshotTarget<P>,
    private readonly options: AgentOptions,
    private readonly report: (ev: CoordinatorEvent) => void,
  ) {
    this.name = vm.name;
  }

  /** It has prepared, failed or been aborted: nothing of the epoch is left for it to do. */
  get settled(): boolean {
    return this.dead || this.prepared !== undefined;
  }

  /** The VM's prepared members (memory, and disk if it has one), once all are prepared; else none. */
  get preparedMembers(): P[] {
    if (this.prepared === undefined) return [];
    return this.diskPrepared === undefined ? [this.prepared] : [this.prepared, this.diskPrepared];
  }

  /** Opens the session and starts round 1 (an event of the simulation: the queue awaits it). */
  async start(group: string, epoch: number, syncStop: boolean): Promise<void> {
    this.syncStop = syncStop;
    const f = this.options.fault;
    if (f) {
      this.vm.after(f.atMs, async () => {
        if (this.dead || this.prepared) return;
        this.dead = true;
        this.round?.cancel();
        await this.vm.resume();
        if (f.kind === 'crash') this.report({ type: 'failed', vm: this.name, now: this.vm.now(), reason: 'agent crashed' });
      });
    }
    await this.guard(async () => {
      this.session = await this.target.beginSession({ vm: this.name, group, epoch, memoryBytes: this.vm.pages * PAGE_SIZE });
      if (this.vm.diskBytes > 0)
        this.diskSession = await this.target.beginSession({
          vm: diskMemberName(this.name),
          group,
          epoch,
          memoryBytes: this.vm.diskBytes,
        });
    });
    // round 1 sends every page: what was dirtied before does not matter
    await this.guard(async () => void (await this.vm.takeDirty()), 'reading the dirty log');
    await this.sendRound(
      Array.from({ length: this.vm.pages }, (_, i) => i),
      epoch,
    );
  }

  /**
   * Runs a step that talks to the target. A failure there (a connection to the server lost) is the
   * agent's failure: it stops, lets its VM run and reports it, so the coordinator aborts the epoch.
   */
  private async guard(step: () => Promise<void>, what = 'storing'): Promise<void> {
    if (this.dead) return;
    try {
      await step();
    } catch (err) {
      if (this.dead) return;
      this.dead = true;
      this.round?.cancel();
      await this.vm.resume().catch(() => undefined); // a hypervisor that is gone cannot be asked
      this.report({ type: 'failed', vm: this.name, now: this.vm.now(), reason: `${what} failed: ${(err as Error).message}` });
    }
  }

  /** The coordinator orders the stop-and-copy (synchronised stop): pause now, wherever the round is. */
  async stop(epoch: number): Promise<void> {
    if (this.dead || this.stopped) return;
    this.round?.cancel();
    await this.stopAndCopy(epoch);
  }

  /** The epoch is aborted: drop the sessions and whatever they prepared, let the VM run. */
  async abort(): Promise<void> {
    this.dead = true;
    this.round?.cancel();
    await this.vm.resume().catch(() => undefined); // the coordinator (the hypervisor's side) may be gone
    // Best effort: a session whose connection is gone was aborted by the server already.
    await this.session?.abort().catch(() => undefined);
    await this.diskSession?.abort().catch(() => undefined);
    // Unreachable target: its prepared members stay invisible and expire there (never committed).
    await this.target.abortPrepared([this.prepared, this.diskPrepared].filter((p): p is P => p !== undefined)).catch(() => undefined);
  }

  private async sendRound(pages: number[], epoch: number): Promise<void> {
    if (this.dead) return;
    this.rounds++;
    if (pages.length > 0)
      await this.guard(async () => (this.session as TargetSession<P>).writeScattered(pages, await this.vm.readPages(pages)));
    if (this.dead) return;
    const ms = Math.max(pages.length * this.vm.pageMs, this.vm.tickMs);
    this.round = this.vm.after(ms, () => this.endRound(epoch));
  }

  private async endRound(epoch: number): Promise<void> {
    if (this.dead) return;
    this.report({ type: 'round', vm: this.name, now: this.vm.now() });
    let dirtyCount = 0;
    await this.guard(async () => void (dirtyCount = await this.vm.dirtyCount()), 'reading the dirty log');
    const small = dirtyCount <= this.options.dirtyThresholdPages || this.rounds >= this.options.maxRounds;
    if (this.dead || this.stopped) return;
    if (!this.syncStop && small) return this.stopAndCopy(epoch);
    if (this.syncStop && small && !this.ready) {
      this.ready = true;
      this.report({ type: 'ready', vm: this.name, now: this.vm.now() });
      if (this.stopped || this.dead) return; // the report made the coordinator stop us
    }
    // Not small yet, or ready and waiting for the order: keep the dirty set small with another round.
    let dirty: number[] = [];
    await this.guard(async () => void (dirty = await this.vm.takeDirty()), 'reading the dirty log');
    return this.sendRound(dirty, epoch);
  }

  private async stopAndCopy(epoch: number): Promise<void> {
    this.stopped = true;
    const vm = this.vm;
    const paused = vm.now();
    // A pause whose network cannot be confirmed quiet fails the VM's snapshot (and so the epoch).
    await this.guard(() => vm.pause(), 'pausing the VM');
    if (this.dead) return;
    // The cut: the VM's state now, its colour from now on. A flip its switch does not confirm
    // fails the VM's snapshot, and so the epoch.
    await this.guard(() => vm.flip(epoch), 'flipping the colour');
    if (this.dead) return;
    let dirty: number[] = [];
    let disk: Uint8Array = new Uint8Array(0);
    const s = this.session as TargetSession<P>;
    await this.guard(async () => {
      dirty = await vm.takeDirty();
      await s.writeScattered(dirty, await vm.readPages(dirty));
      await s.writePages(0, await vm.stateBytes(paused));
      disk = await vm.disk(); // the disk at the pause
    }, 'the stop-and-copy');
    if (this.dead) return;
    const downtimeMs = (dirty.length + STATE_PAGES) * vm.pageMs + this.options.pauseOverheadMs;
    this.round = vm.after(downtimeMs, async () => {
      if (this.dead) return;
      await this.guard(() => vm.resume(), 'resuming the VM');
      if (this.dead) return;
      this.report({ type: 'flipped', vm: this.name, now: paused, downtimeMs });
      await this.guard(async () => {
        if (this.diskSession) {
          await this.diskSession.writePages(0, disk);
          this.diskPrepared = await this.diskSession.prepare({ byteLength: disk.length });
        }
        this.prepared = await s.prepare({ byteLength: vm.pages * PAGE_SIZE });
      });
      if (!this.dead) this.report({ type: 'prepared', vm: this.name, now: vm.now() });
    });
  }
}
