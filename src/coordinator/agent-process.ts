/**
 * The agent as a process (`vnstore agent serve`): it listens for a coordinator's control connection
 * (control.ts) and runs the live snapshots of the VMs the coordinator names, the same SimAgent code
 * as in the coordinator's process, but here: pages are read from the VM's hypervisor over the control
 * connection (CALLs), stored through this process's own connections to `vnstore serve`, and the
 * colour is flipped by this process's own FLIP to the VM's switch. Its timers are the coordinator's
 * simulated clock's (TIMER, then a TURN of kind `wake`), so the whole run keeps one clock.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { SimAgent, type AgentOptions, type AgentVm } from './agent.js';
import type { CoordinatorEvent } from './protocol.js';
import type { SnapshotTarget } from './target.js';
import {
  checkHello,
  ControlReader,
  ControlType,
  CONTROL_VERSION,
  decodeIndices,
  encodeControl,
  encodeIndices,
  MAX_CALL_PAGES,
  type ControlFrame,
  type ControlTypeValue,
} from './control.js';
import { requestFlip, type FlipOptions } from '../switch/flip-client.js';
import type { Endpoint } from '../switch/udp.js';
import { VnstoreError } from '../util/errors.js';

/** A FLIP resent soon at first, backing off, for up to 2 s of real time (a loaded host's switch may be slow); a killed one fails it at once. */
const flipRetry = (): FlipOptions => ({ retryMs: 5, maxRetryMs: 100, attempts: Infinity, deadline: Date.now() + 2000, refusedFails: true });

export interface AgentServer {
  readonly address: Endpoint;
  readonly incarnation: string;
  close(): Promise<void>;
}

/** Listens on `listen`; every VM's snapshot goes into `target` (the server's, in `vnstore agent serve`). */
export async function serveAgents(listen: Endpoint, target: SnapshotTarget<string>): Promise<AgentServer> {
  const incarnation = randomBytes(8).toString('hex');
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.setNoDelay(true); // a turn is many small request-answer exchanges: no Nagle delay between them
    sock.on('close', () => sockets.delete(sock));
    controlConnection(sock, target, incarnation);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new VnstoreError('E_IO', `cannot listen on ${listen.host}:${listen.port}: ${err.message}`, { cause: err })),
    );
    server.listen(listen.port, listen.host, () => resolve());
  });
  const a = server.address() as net.AddressInfo;
  return {
    address: { host: listen.host, port: a.port },
    incarnation,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

interface Call {
  resolve: (f: ControlFrame) => void;
  reject: (err: Error) => void;
}

/** One coordinator's connection: its turns run one after another, each to its end (TURN_END). */
function controlConnection(sock: net.Socket, target: SnapshotTarget<string>, incarnation: string): void {
  const reader = new ControlReader();
  const agents = new Map<string, SimAgent<string>>();
  const timers = new Map<number, () => void | Promise<unknown>>();
  const calls = new Map<number, Call>();
  let greeted = false;
  let turnAt = 0;
  let nextId = 1;
  let turns: Promise<void> = Promise.resolve();
  const send = (type: ControlTypeValue, header: Record<string, unknown>, payload?: Uint8Array) => {
    if (!sock.destroyed) sock.write(encodeControl(type, header, payload));
  };
  const fail = (err: Error) => {
    send(ControlType.ERROR, { code: err instanceof VnstoreError ? err.code : 'E_PROTOCOL', message: err.message });
    sock.end();
    sock.destroy();
  };
  const call = (vm: string, op: string, header: Record<string, unknown> = {}, payload?: Uint8Array): Promise<ControlFrame> => {
    if (sock.destroyed) return Promise.reject(new VnstoreError('E_IO', 'the coordinator went away'));
    const id = nextId++;
    return new Promise<ControlFrame>((resolve, reject) => {
      calls.set(id, { resolve, reject });
      send(ControlType.CALL, { ...header, id, vm, op }, payload);
    });
  };

  const remoteVm = (h: Record<string, unknown>): AgentVm => {
    const vm = String(h.vm);
    const sw = h.switch as Endpoint | undefined;
    return {
      name: vm,
      pages: Number(h.pages),
      diskBytes: Number(h.diskBytes),
      pageMs: Number(h.pageMs),
      tickMs: Number(h.tickMs),
      now: () => turnAt,
      after(ms, run) {
        const id = nextId++;
        timers.set(id, run);
        // The delay, not the instant: the coordinator's clock adds it exactly as it would in-process.
        send(ControlType.TIMER, { vm, timer: id, ms });
        return { cancel: () => void timers.delete(id) };
      },
      dirtyCount: async () => Number((await call(vm, 'dirty-count')).header.value),
      takeDirty: async () => decodeIndices((await call(vm, 'take-dirty')).payload),
      async readPages(pages) {
        const parts: Uint8Array[] = [];
        for (let i = 0; i < pages.length; i += MAX_CALL_PAGES)
          parts.push((await call(vm, 'read', {}, encodeIndices(pages.slice(i, i + MAX_CALL_PAGES)))).payload);
        return parts.length === 1 ? parts[0] : Buffer.concat(parts);
      },
      pause: async () => void (await call(vm, 'pause')),
      // The agent's own FLIP to its VM's switch, as a real agent sends it; in-process switches through the hypervisor.
      flip: async (epoch) =>
        sw ? requestFlip(sw, vm, epoch, flipRetry()).then(() => undefined) : void (await call(vm, 'flip', { epoch })),
      stateBytes: async (pausedAt) => (await call(vm, 'state', { pausedAt })).payload,
      disk: async () => (await call(vm, 'disk')).payload,
      resume: async () => void (await call(vm, 'resume')),
    };
  };

  const turn = async (h: Record<string, unknown>): Promise<void> => {
    turnAt = Number(h.at);
    const vm = String(h.vm);
    const agent = agents.get(vm);
    if (h.kind === 'begin') {
      const options: AgentOptions = {
        dirtyThresholdPages: Number(h.dirtyThresholdPages),
        maxRounds: Number(h.maxRounds),
        pauseOverheadMs: Number(h.pauseOverheadMs),
      };
      const report = (event: CoordinatorEvent) =>
        send(ControlType.REPORT, { vm, event, members: event.type === 'prepared' ? fresh.preparedMembers : undefined });
      const fresh: SimAgent<string> = new SimAgent(remoteVm(h), target, options, report);
      agents.set(vm, fresh);
      await fresh.start(String(h.group), Number(h.epoch), h.syncStop === true);
    } else if (h.kind === 'wake') {
      const run = timers.get(Number(h.timer));
      timers.delete(Number(h.timer));
      if (run) await run();
    } else if (h.kind === 'abort') {
      // An agent that has prepared or failed was let go already: the coordinator aborts its members itself.
      agents.delete(vm);
      await agent?.abort();
    } else if (!agent) throw new VnstoreError('E_SESSION', `no epoch of ${vm} runs here (was this agent restarted?)`);
    else if (h.kind === 'stop') await agent.stop(Number(h.epoch));
    else throw new VnstoreError('E_PROTOCOL', `unknown turn ${JSON.stringify(h.kind)}`);
    // Prepared or failed: the members' fate (commit or abort) is the coordinator's from now on, so a
    // coordinator that goes away later must not make this process abort them.
    for (const [name, a] of agents) if (a.settled) agents.delete(name);
  };

  sock.on('data', (chunk: Buffer) => {
    let frames: ControlFrame[];
    try {
      frames = reader.push(chunk);
    } catch (err) {
      return fail(err as Error);
    }
    for (const f of frames) {
      if (!greeted) {
        try {
          if (f.type !== ControlType.HELLO) throw new VnstoreError('E_PROTOCOL', 'expected HELLO first');
          checkHello(f.header);
        } catch (err) {
          return fail(err as Error);
        }
        greeted = true;
        send(ControlType.WELCOME, { version: CONTROL_VERSION, incarnation });
      } else if (f.type === ControlType.REPLY) {
        const c = calls.get(Number(f.header.id));
        calls.delete(Number(f.header.id));
        if (typeof f.header.error === 'string') c?.reject(new VnstoreError('E_IO', `hypervisor: ${f.header.error}`));
        else c?.resolve(f);
      } else if (f.type === ControlType.TURN) {
        const h = f.header;
        turns = turns.then(() =>
          turn(h).then(
            () => send(ControlType.TURN_END, { turn: h.turn }),
            (err: Error) => send(ControlType.TURN_END, { turn: h.turn, error: err.message }),
          ),
        );
      } else return fail(new VnstoreError('E_PROTOCOL', `unexpected control frame type ${f.type}`));
    }
  });
  sock.on('error', () => undefined);
  sock.on('close', () => {
    for (const c of calls.values()) c.reject(new VnstoreError('E_IO', 'the coordinator went away'));
    calls.clear();
    timers.clear();
    // The coordinator is gone: its epochs cannot commit, so drop their sessions now (not at the server's idle timeout).
    for (const a of agents.values()) void a.abort().catch(() => undefined);
    agents.clear();
  });
}
