/**
 * The VNsnap coordination protocol as a pure state machine (no I/O, time passed in): one epoch from
 * start to group commit or abort. The executor (executor.ts) turns its commands into agent calls
 * and store operations and feeds back what happened as events.
 *
 *   start ──▶ every VM in pre-copy rounds
 *   without sync-stop: each agent stops and copies on its own when its dirty set is small (or its
 *     round limit is reached), flipping the VM's colour at the pause
 *   with sync-stop: an agent whose dirty set is small reports ready and keeps running short rounds;
 *     when every VM is ready, the coordinator orders every stop-and-copy at once
 *   every VM flipped and prepared, `settleMs` after the last flip, and no frame sent before a cut
 *     still travelling (frames in flight across the cut have reached their switch) ──▶ commit the
 *     group (all VMs, and the channel state)
 *   any failure, or the deadline passing ──▶ abort every VM of the epoch
 */
export interface CoordinatorConfig {
  vms: string[];
  syncStop: boolean;
  /** From the epoch's start: past it, an epoch not yet committing is aborted. */
  timeoutMs: number;
  /** Wait after the last flip before committing, so frames in flight across the cut are recorded. */
  settleMs: number;
}

export type VmPhase = 'precopy' | 'ready' | 'stopping' | 'flipped' | 'prepared';
export type EpochPhase = 'running' | 'committing' | 'committed' | 'aborted';

export interface VmProgress {
  phase: VmPhase;
  rounds: number;
  readyAt?: number;
  flipAt?: number;
  downtimeMs?: number;
  preparedAt?: number;
}

export interface EpochState {
  epoch: number;
  phase: EpochPhase;
  startedAt: number;
  stopOrderedAt?: number;
  vms: Record<string, VmProgress>;
  reason?: string;
}

export type CoordinatorEvent =
  | { type: 'round'; vm: string; now: number }
  | { type: 'ready'; vm: string; now: number }
  | { type: 'flipped'; vm: string; now: number; downtimeMs: number }
  | { type: 'prepared'; vm: string; now: number }
  | { type: 'failed'; vm: string; now: number; reason: string }
  /** `cutInFlight`: frames sent before their sender's cut still travelling (the executor counts them). */
  | { type: 'tick'; now: number; cutInFlight?: number }
  | { type: 'committed'; now: number }
  | { type: 'commit-failed'; now: number; reason: string };

export type CoordinatorCommand =
  { type: 'precopy'; vm: string } | { type: 'stop'; vm: string } | { type: 'commit' } | { type: 'abort'; reason: string };

export interface Step {
  state: EpochState;
  commands: CoordinatorCommand[];
}

export function startEpoch(config: CoordinatorConfig, epoch: number, now: number): Step {
  const vms: Record<string, VmProgress> = {};
  for (const vm of config.vms) vms[vm] = { phase: 'precopy', rounds: 0 };
  return { state: { epoch, phase: 'running', startedAt: now, vms }, commands: config.vms.map((vm) => ({ type: 'precopy', vm })) };
}

export function isFinal(state: EpochState): boolean {
  return state.phase === 'committed' || state.phase === 'aborted';
}

export function step(config: CoordinatorConfig, prev: EpochState, ev: CoordinatorEvent): Step {
  if (isFinal(prev)) return { state: prev, commands: [] };
  const state: EpochState = { ...prev, vms: { ...prev.vms } };
  const abort = (reason: string): Step => ({ state: { ...state, phase: 'aborted', reason }, commands: [{ type: 'abort', reason }] });
  if (ev.type === 'committed')
    return state.phase === 'committing' ? { state: { ...state, phase: 'committed' }, commands: [] } : { state, commands: [] };
  if (ev.type === 'commit-failed') return abort(`group commit failed: ${ev.reason}`);
  if (ev.type === 'failed') return abort(`${ev.vm}: ${ev.reason}`);
  if (state.phase === 'running' && ev.now - state.startedAt > config.timeoutMs) return abort(`timed out after ${config.timeoutMs} ms`);
  const commands: CoordinatorCommand[] = [];
  if (ev.type !== 'tick') {
    const vm = state.vms[ev.vm];
    if (!vm) return abort(`event from unknown VM ${ev.vm}`);
    const next = { ...vm };
    state.vms[ev.vm] = next;
    if (ev.type === 'round') next.rounds++;
    else if (ev.type === 'ready' && next.phase === 'precopy') {
      next.phase = 'ready';
      next.readyAt = ev.now;
    } else if (ev.type === 'flipped') {
      next.phase = 'flipped';
      next.flipAt = ev.now;
      next.downtimeMs = ev.downtimeMs;
    } else if (ev.type === 'prepared') {
      if (next.phase !== 'flipped') return abort(`${ev.vm} prepared before its stop-and-copy`);
      next.phase = 'prepared';
      next.preparedAt = ev.now;
    }
  }
  const all = Object.values(state.vms);
  if (config.syncStop && state.phase === 'running' && state.stopOrderedAt === undefined && all.every((v) => v.phase === 'ready')) {
    state.stopOrderedAt = ev.now;
    for (const name of config.vms) {
      state.vms[name] = { ...state.vms[name], phase: 'stopping' };
      commands.push({ type: 'stop', vm: name });
    }
  }
  if (state.phase === 'running' && all.every((v) => v.phase === 'prepared')) {
    const lastFlip = Math.max(...all.map((v) => v.flipAt as number));
    // Commit on a tick at least settleMs after the last flip with no frame from before a cut still
    // travelling: every frame in flight across the cut has reached its switch, so the channel state is whole.
    if (ev.type === 'tick' && ev.now >= lastFlip + config.settleMs && (ev.cutInFlight ?? 0) === 0) {
      state.phase = 'committing';
      commands.push({ type: 'commit' });
    }
  }
  return { state, commands };
}

/** Per-epoch figures from a final state: each VM's timings and the skew between flips. */
export function epochFigures(state: EpochState): {
  vms: { vm: string; rounds: number; durationMs: number; downtimeMs: number; flipAtMs: number }[];
  skewMs: number;
} {
  const vms = Object.entries(state.vms)
    .filter(([, v]) => v.flipAt !== undefined)
    .map(([vm, v]) => ({
      vm,
      rounds: v.rounds,
      durationMs: (v.preparedAt ?? v.flipAt ?? state.startedAt) - state.startedAt,
      downtimeMs: v.downtimeMs ?? 0,
      flipAtMs: (v.flipAt as number) - state.startedAt,
    }));
  const flips = vms.map((v) => v.flipAtMs);
  return { vms, skewMs: flips.length > 0 ? Math.max(...flips) - Math.min(...flips) : 0 };
}
