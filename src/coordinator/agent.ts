/**
 * The agent side for a simulated VM: one VM's live snapshot as pre-copy rounds into a target
 * session, the colour flip at the stop-and-copy pause, prepare, report. Round k sends the pages
 * dirtied during round k-1 (round 1 sends every page) and lasts pages × the host's per-page time;
 * the pause lasts as long as copying the last dirty pages and the state pages, plus a fixed cost.
 * The VM's disk, as it is at the pause, goes into a second session of the group (`<vm>.disk`): a
 * copy-on-write snapshot taken at the pause and written out after it, so it adds no downtime.
 */
import type { SimEnv } from '../sim/env.js';
import { diskMemberName, STATE_PAGES, type SimVm } from '../sim/vm.js';
import { PAGE_SIZE } from '../format/pages.js';
import type { TimerHandle } from '../sim/events.js';
import type { CoordinatorEvent } from './protocol.js';
import type { SnapshotTarget, TargetSession } from './target.js';

export interface AgentOptions {
  /** The dirty set is small enough to stop and copy at this many pages or fewer. */
  dirtyThresholdPages: number;
  maxRounds: number;
  /** Fixed cost of a pause (device state, resume), simulated ms. */
  pauseOverheadMs: number;
  /** Fault injection: the agent crashes (reports failure) or hangs (goes silent) at this time after the start. */
  fault?: { kind: 'crash' | 'hang'; atMs: number };
}

export class SimAgent<P> {
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
  private readonly vm: SimVm;

  constructor(
    private readonly env: SimEnv,
    readonly name: string,
    private readonly target: SnapshotTarget<P>,
    private readonly options: AgentOptions,
    private readonly report: (ev: CoordinatorEvent) => void,
  ) {
    this.vm = env.vms.get(name) as SimVm;
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
      this.env.clock.after(f.atMs, () => {
        if (this.dead || this.prepared) return;
        this.dead = true;
        this.round?.cancel();
        if (this.vm.paused) this.env.resume(this.name);
        if (f.kind === 'crash') this.report({ type: 'failed', vm: this.name, now: this.env.clock.now, reason: 'agent crashed' });
      });
    }
    await this.guard(async () => {
      this.session = await this.target.beginSession({ vm: this.name, group, epoch, memoryBytes: this.vm.spec.pages * PAGE_SIZE });
      if (this.vm.disk.length > 0)
        this.diskSession = await this.target.beginSession({
          vm: diskMemberName(this.name),
          group,
          epoch,
          memoryBytes: this.vm.disk.length,
        });
    });
    this.vm.takeDirty(); // round 1 sends every page: what was dirtied before does not matter
    await this.sendRound(
      Array.from({ length: this.vm.spec.pages }, (_, i) => i),
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
      if (this.vm.paused) this.env.resume(this.name);
      this.report({ type: 'failed', vm: this.name, now: this.env.clock.now, reason: `${what} failed: ${(err as Error).message}` });
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
    if (this.vm.paused) this.env.resume(this.name);
    // Best effort: a session whose connection is gone was aborted by the server already.
    await this.session?.abort().catch(() => undefined);
    await this.diskSession?.abort().catch(() => undefined);
    // Unreachable target: its prepared members stay invisible and expire there (never committed).
    await this.target.abortPrepared([this.prepared, this.diskPrepared].filter((p): p is P => p !== undefined)).catch(() => undefined);
  }

  private async sendRound(pages: number[], epoch: number): Promise<void> {
    if (this.dead) return;
    this.rounds++;
    if (pages.length > 0) await this.guard(() => (this.session as TargetSession<P>).writeScattered(pages, this.vm.pagesBytes(pages)));
    if (this.dead) return;
    const ms = Math.max(pages.length * this.env.host(this.vm.spec.host).pageMs, this.env.spec.tickMs);
    this.round = this.env.clock.after(ms, () => this.endRound(epoch));
  }

  private endRound(epoch: number): Promise<void> | undefined {
    if (this.dead) return undefined;
    this.report({ type: 'round', vm: this.name, now: this.env.clock.now });
    const small = this.vm.dirtyCount() <= this.options.dirtyThresholdPages || this.rounds >= this.options.maxRounds;
    if (!this.syncStop && small) return this.stopAndCopy(epoch);
    if (this.syncStop && small && !this.ready) {
      this.ready = true;
      this.report({ type: 'ready', vm: this.name, now: this.env.clock.now });
      if (this.stopped || this.dead) return undefined; // the report made the coordinator stop us
    }
    // Not small yet, or ready and waiting for the order: keep the dirty set small with another round.
    return this.sendRound(this.vm.takeDirty(), epoch);
  }

  private async stopAndCopy(epoch: number): Promise<void> {
    this.stopped = true;
    const env = this.env;
    const paused = env.clock.now;
    // Over switch processes: every frame already delivered to the VM is handled before its cut.
    await env.quiesce();
    env.pause(this.name);
    // The cut: the VM's state now, its colour from now on. A flip its switch does not confirm
    // fails the VM's snapshot, and so the epoch.
    await this.guard(() => env.flip(this.name, epoch), 'flipping the colour');
    if (this.dead) return;
    const dirty = this.vm.takeDirty();
    const s = this.session as TargetSession<P>;
    await this.guard(async () => {
      await s.writeScattered(dirty, this.vm.pagesBytes(dirty));
      await s.writePages(0, this.vm.stateBytes(paused));
    });
    if (this.dead) return;
    const disk = this.vm.disk.slice(); // the disk at the pause
    const downtimeMs = (dirty.length + STATE_PAGES) * env.host(this.vm.spec.host).pageMs + this.options.pauseOverheadMs;
    this.round = env.clock.after(downtimeMs, async () => {
      if (this.dead) return;
      env.resume(this.name);
      this.report({ type: 'flipped', vm: this.name, now: paused, downtimeMs });
      await this.guard(async () => {
        if (this.diskSession) {
          await this.diskSession.writePages(0, disk);
          this.diskPrepared = await this.diskSession.prepare({ byteLength: disk.length });
        }
        this.prepared = await s.prepare({ byteLength: this.vm.spec.pages * PAGE_SIZE });
      });
      if (!this.dead) this.report({ type: 'prepared', vm: this.name, now: env.clock.now });
    });
  }
}
