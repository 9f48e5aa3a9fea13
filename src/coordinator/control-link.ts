/**
 * The coordinator's side of the control protocol (control.ts): a link to one agent process (one per
 * simulated host), and `RemoteAgent`, the executor's handle on one VM's agent in that process. The
 * coordinator's process also plays the VMs' hypervisor: it answers the agent's CALLs (dirty log,
 * pages, pause, state, disk, resume) from the simulated environment, and holds the agent's timers
 * on the simulated clock. Each turn is an event of that clock, awaited to its TURN_END, so the
 * agent's work happens at one simulated instant, as it does in-process. An agent process that is
 * lost (its connection closes, or a turn outlasts `turnTimeoutMs`) fails its VMs' snapshots, so
 * the epoch aborts; the next epoch's first turn connects afresh (a restarted agent).
 */
import net from 'node:net';
import type { AgentOptions, EpochAgent } from './agent.js';
import type { CoordinatorEvent } from './protocol.js';
import type { SnapshotTarget } from './target.js';
import { ControlReader, ControlType, decodeIndices, encodeControl, encodeIndices, helloHeader, type ControlFrame } from './control.js';
import type { SimEnv } from '../sim/env.js';
import type { SimVm } from '../sim/vm.js';
import type { Endpoint } from '../switch/udp.js';
import { VnstoreError } from '../util/errors.js';

interface TurnHandler {
  call(f: ControlFrame): Promise<{ header?: Record<string, unknown>; payload?: Uint8Array }>;
  other(f: ControlFrame): void;
}

interface Pending {
  handler: TurnHandler;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class AgentLink {
  private sock?: net.Socket;
  private pending?: Pending;
  private work: Promise<void> = Promise.resolve();
  private turnNo = 0;
  /** The agent process's identity (its WELCOME): a different one means it was restarted. */
  incarnation?: string;

  constructor(
    readonly name: string,
    readonly address: Endpoint,
    private readonly options: { turnTimeoutMs?: number; connectTimeoutMs?: number } = {},
  ) {}

  get connected(): boolean {
    return !!this.sock && !this.sock.destroyed;
  }

  /** Runs one turn to its end; `connect`: (re)connect first if the link is down (an epoch's first turn). */
  turn(header: Record<string, unknown>, handler: TurnHandler, connect = false): Promise<void> {
    const run = async () => {
      if (!this.connected) {
        if (!connect) throw new VnstoreError('E_IO', `agent process ${this.name} is gone`);
        await this.connect();
      }
      const sock = this.sock as net.Socket;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(
            new VnstoreError('E_IO', `agent process ${this.name} did not end its turn within ${this.options.turnTimeoutMs ?? 30_000} ms`),
          );
          sock.destroy();
        }, this.options.turnTimeoutMs ?? 30_000);
        this.pending = {
          handler,
          resolve: () => (clearTimeout(timer), resolve()),
          reject: (err) => (clearTimeout(timer), reject(err)),
        };
        sock.write(encodeControl(ControlType.TURN, { ...header, turn: ++this.turnNo }));
      }).finally(() => (this.pending = undefined));
    };
    const p = this.work.then(run);
    this.work = p.catch(() => undefined);
    return p;
  }

  close(): void {
    this.sock?.destroy();
    this.sock = undefined;
  }

  private async connect(): Promise<void> {
    const { host, port } = this.address;
    const sock = net.connect({ host, port });
    sock.setNoDelay(true); // a turn is many small request-answer exchanges: no Nagle delay between them
    const reader = new ControlReader();
    const lost = (why: string) => {
      const p = this.pending;
      this.pending = undefined;
      p?.reject(new VnstoreError('E_IO', `agent process ${this.name} at ${host}:${port} lost: ${why}`));
    };
    let chain: Promise<void> = Promise.resolve();
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new VnstoreError('E_IO', `agent process ${this.name} at ${host}:${port} did not answer`));
      }, this.options.connectTimeoutMs ?? 5000);
      sock.once('error', (err) => {
        clearTimeout(timer);
        reject(new VnstoreError('E_IO', `cannot reach agent process ${this.name} at ${host}:${port}: ${err.message}`, { cause: err }));
      });
      sock.once('connect', () => sock.write(encodeControl(ControlType.HELLO, helloHeader())));
      sock.on('data', (chunk: Buffer) => {
        let frames: ControlFrame[];
        try {
          frames = reader.push(chunk);
        } catch (err) {
          sock.destroy();
          return lost((err as Error).message);
        }
        for (const f of frames) {
          if (f.type === ControlType.WELCOME) {
            this.incarnation = String(f.header.incarnation);
            this.sock = sock;
            clearTimeout(timer);
            resolve();
          } else if (f.type === ControlType.ERROR) {
            clearTimeout(timer);
            reject(new VnstoreError('E_PROTOCOL', `agent process ${this.name}: ${String(f.header.message)}`));
            sock.destroy();
            lost(String(f.header.message));
          } else chain = chain.then(() => this.dispatch(sock, f));
        }
      });
    });
    sock.on('error', () => undefined);
    sock.on('close', () => lost('connection closed'));
  }

  /** Frames of the turn in progress, in the order the agent sent them. */
  private async dispatch(sock: net.Socket, f: ControlFrame): Promise<void> {
    const p = this.pending;
    if (!p) return;
    if (f.type === ControlType.TURN_END) {
      if (typeof f.header.error === 'string') p.reject(new VnstoreError('E_SESSION', f.header.error));
      else p.resolve();
    } else if (f.type === ControlType.CALL) {
      let reply: { header?: Record<string, unknown>; payload?: Uint8Array };
      try {
        reply = await p.handler.call(f);
      } catch (err) {
        reply = { header: { error: (err as Error).message } };
      }
      if (!sock.destroyed) sock.write(encodeControl(ControlType.REPLY, { ...reply.header, id: f.header.id }, reply.payload));
    } else p.handler.other(f);
  }
}

/** The executor's handle on one VM's agent in an agent process. */
export class RemoteAgent implements EpochAgent<string> {
  private members: string[] = [];
  /** The epoch is over for this agent (failed or aborted): later turns are not sent. */
  private finished = false;
  /** The link failed during one of this agent's turns: the process that ran it is gone. */
  private lost = false;
  private readonly vm: SimVm;
  private readonly handler: TurnHandler;

  constructor(
    private readonly env: SimEnv,
    readonly name: string,
    private readonly link: AgentLink,
    private readonly target: SnapshotTarget<string>,
    private readonly options: AgentOptions,
    private readonly report: (ev: CoordinatorEvent) => void,
  ) {
    this.vm = env.vms.get(name) as SimVm;
    this.handler = { call: (f) => this.hypervisor(f), other: (f) => this.other(f) };
  }

  get preparedMembers(): string[] {
    return this.members;
  }

  async start(group: string, epoch: number, syncStop: boolean): Promise<void> {
    const { dirtyThresholdPages, maxRounds, pauseOverheadMs } = this.options;
    await this.turn(
      {
        kind: 'begin',
        group,
        epoch,
        syncStop,
        dirtyThresholdPages,
        maxRounds,
        pauseOverheadMs,
        pages: this.vm.spec.pages,
        diskBytes: this.vm.disk.length,
        pageMs: this.env.host(this.vm.spec.host).pageMs,
        tickMs: this.env.spec.tickMs,
        switch: this.env.switchControl(this.name),
      },
      true,
    );
  }

  async stop(epoch: number): Promise<void> {
    await this.turn({ kind: 'stop', epoch });
  }

  /** The agent drops its sessions and members; if it is gone, the hypervisor resumes the VM and the coordinator aborts what it reported prepared. */
  async abort(): Promise<void> {
    this.finished = true;
    if (!this.lost) await this.link.turn({ kind: 'abort', vm: this.name, at: this.env.clock.now }, this.handler).catch(() => undefined);
    if (this.vm.paused) this.env.resume(this.name);
    if (this.members.length > 0) await this.target.abortPrepared(this.members).catch(() => undefined);
  }

  private async turn(h: Record<string, unknown>, connect = false): Promise<void> {
    if (this.finished) return;
    try {
      await this.link.turn({ ...h, vm: this.name, at: this.env.clock.now }, this.handler, connect);
    } catch (err) {
      if (this.finished) return;
      this.finished = true;
      this.lost = true;
      this.report({ type: 'failed', vm: this.name, now: this.env.clock.now, reason: (err as Error).message });
    }
  }

  private other(f: ControlFrame): void {
    if (f.header.vm !== this.name) return;
    if (f.type === ControlType.TIMER) {
      const timer = f.header.timer;
      this.env.clock.after(Number(f.header.ms), () => this.turn({ kind: 'wake', timer }));
    } else if (f.type === ControlType.REPORT) {
      const ev = f.header.event as CoordinatorEvent;
      if (ev.type === 'prepared') this.members = (f.header.members as string[]) ?? [];
      if (ev.type === 'failed') this.finished = true;
      this.report({ ...ev, vm: this.name } as CoordinatorEvent);
    }
  }

  /** The VM's hypervisor, answering its agent. */
  private async hypervisor(f: ControlFrame): Promise<{ header?: Record<string, unknown>; payload?: Uint8Array }> {
    if (f.header.vm !== this.name) throw new VnstoreError('E_PROTOCOL', `a call for ${String(f.header.vm)} in ${this.name}'s turn`);
    const vm = this.env.hypervisorOf(this.name); // a VM whose hypervisor died answers nothing
    switch (f.header.op) {
      case 'dirty-count':
        return { header: { value: vm.dirtyCount() } };
      case 'take-dirty':
        return { payload: encodeIndices(vm.takeDirty()) };
      case 'read': {
        const pages = decodeIndices(f.payload);
        if (pages.some((p) => p >= vm.spec.pages))
          throw new VnstoreError('E_PROTOCOL', `page index past ${this.name}'s ${vm.spec.pages} pages`);
        return { payload: vm.pagesBytes(pages) };
      }
      case 'pause':
        // Every frame delivered to the VM handled before its cut; the agent's own FLIP releases held frames next.
        await this.env.quiesce();
        this.env.pause(this.name);
        this.env.expectFrames();
        return {};
      case 'flip':
        await this.env.flip(this.name, Number(f.header.epoch));
        return {};
      case 'state':
        return { payload: vm.stateBytes(Number(f.header.pausedAt)) };
      case 'disk':
        return { payload: vm.disk.slice() };
      case 'resume':
        if (vm.paused) this.env.resume(this.name);
        return {};
      default:
        throw new VnstoreError('E_PROTOCOL', `unknown hypervisor call ${JSON.stringify(f.header.op)}`);
    }
  }
}

/** The executor's agent factory for agents in processes: each VM's agent on its host's link. */
export function remoteAgents(
  links: Map<string, AgentLink>,
  target: SnapshotTarget<string>,
): (env: SimEnv, vm: string, options: AgentOptions, report: (ev: CoordinatorEvent) => void) => EpochAgent<string> {
  return (env, vm, options, report) => {
    const host = env.spec.vms.find((v) => v.name === vm)?.host as string;
    const link = links.get(host);
    if (!link) throw new VnstoreError('E_INPUT', `no agent process for host ${host}`);
    return new RemoteAgent(env, vm, link, target, options, report);
  };
}
