/**
 * A simulated VM: memory whose pages its workload dirties, a virtual NIC, and the transports of its
 * applications. Its memory image is what a snapshot captures: page 0..STATE_PAGES-1 hold the
 * guest's software state (transports, counters, frame logs, PRNG) as length-prefixed JSON, every
 * other page is workload memory whose content is a pure function of (owner, page, version), so an
 * image decodes back into a VM that resumes exactly where the snapshot left it.
 */
import { Rng } from './events.js';
import {
  newReceiver,
  newSender,
  receiverOnSegment,
  senderDone,
  senderOnAck,
  senderOnTimeout,
  senderPull,
  type DatagramReceiver,
  type DatagramSender,
  type ReliableReceiver,
  type ReliableSender,
} from './transport.js';
import type { ProgressLog } from './progress.js';
import { PAGE_SIZE } from '../format/pages.js';
import { buildFrame, ETH_HEADER_BYTES, macBytes } from '../switch/ethernet.js';

export const STATE_PAGES = 8;
/** The experimental ethertype the simulated guests use. */
export const SIM_ETHERTYPE = 0x88b5;
const PATTERN_MAGIC = 0x564d5047; // 'VMPG'

export interface VmSpec {
  name: string;
  /** Index in the environment (1-based: owner 0 is the pages every VM starts with). */
  index: number;
  host: string;
  pages: number;
  /** Pages dirtied per simulated second, mostly within `hotPages`. */
  dirtyPerSec: number;
  hotPages: number;
  /** Pages after the state region that start with common content (an OS all VMs share). */
  commonPages: number;
  /** The VM's NIC address, as its switch's `--port VM=HOST:PORT` names it (for `snapshot --switches env`). */
  nic?: { host: string; port: number };
}

export interface TransferSpec {
  from: string;
  to: string;
  bytes: number;
  /** The rate the application writes the file at; 0: the whole file at once (a bulk transfer, paced only by TCP's window and the link). */
  bytesPerSec: number;
}

export interface DatagramSpec {
  from: string;
  to: string;
  everyMs: number;
}

export interface AppSpec {
  seed: number;
  tickMs: number;
  mss: number;
  windowBytes: number;
  transfers: TransferSpec[];
  datagrams: DatagramSpec[];
}

/** Everything of a guest that is not workload memory; saved as JSON in the state pages. */
export interface GuestState {
  rng: number;
  dirtyCarry: number;
  tcpOut: Record<string, ReliableSender>;
  tcpIn: Record<string, ReliableReceiver>;
  udpOut: Record<string, DatagramSender>;
  udpIn: Record<string, DatagramReceiver>;
  /** Frames sent to each peer (frame ids 0..n-1) and the ids received from each, as [from, to) runs. */
  sentFrames: Record<string, number>;
  recvFrames: Record<string, number[]>;
  ticks: number;
}

export const MSG = { DATA: 1, ACK: 2, DATAGRAM: 3 } as const;

export interface DecodedFrame {
  kind: number;
  from: number;
  frameId: number;
  seq: number;
  data: Uint8Array;
}

/** Simulated guests' payload: kind u8, sender index u8, frame id u32, seq/ack u32, data. */
export function decodeSimFrame(frame: Uint8Array): DecodedFrame | undefined {
  if (frame.length < ETH_HEADER_BYTES + 10 || ((frame[12] << 8) | frame[13]) !== SIM_ETHERTYPE) return undefined;
  const v = Buffer.from(frame.buffer, frame.byteOffset + ETH_HEADER_BYTES, frame.length - ETH_HEADER_BYTES);
  return { kind: v[0], from: v[1], frameId: v.readUInt32BE(2), seq: v.readUInt32BE(6), data: v.subarray(10) };
}

export function vmMac(index: number): string {
  return `02:00:00:00:${((index >> 8) & 0xff).toString(16).padStart(2, '0')}:${(index & 0xff).toString(16).padStart(2, '0')}`;
}

/**
 * The content of a workload page: zero, or a 16-byte pattern naming its owner, index and version.
 * `into` must be zeroed already (a fresh buffer): zero pages are left as they are.
 */
export function pageContent(spec: VmSpec, page: number, version: number, into: Uint8Array): void {
  const owner = version > 0 ? spec.index : page < STATE_PAGES + spec.commonPages ? 0 : -1;
  if (owner < 0) return;
  const b = Buffer.from(into.buffer, into.byteOffset, into.byteLength);
  b.writeUInt32BE(PATTERN_MAGIC, 0);
  b.writeUInt32BE(owner, 4);
  b.writeUInt32BE(page, 8);
  b.writeUInt32BE(version, 12);
  for (let n = 16; n < b.length; n *= 2) b.copyWithin(n, 0, Math.min(n, b.length - n));
}

export interface VmNetwork {
  /** The NIC emits a frame (the switch receives it at once: the VM and its switch share a host). */
  emit(vm: SimVm, frame: Uint8Array): void;
}

export class SimVm {
  readonly mac: string;
  private readonly macBytes: Buffer;
  readonly versions: Uint32Array;
  state: GuestState;
  paused = false;
  private readonly dirtyMark: Uint8Array;
  private dirtyList: number[] = [];
  private readonly rxQueue: Uint8Array[] = [];
  /** Frames that arrived while this VM was already handling something at the same instant. */
  private readonly pending: Uint8Array[] = [];
  private busy = false;
  private readonly peerByIndex: Map<number, string>;
  private readonly peerMac: Map<string, Uint8Array>;
  /** Bytes of each transfer this VM receives, by sender. */
  private readonly incoming: [string, number][];
  /**
   * The VM's disk: each incoming transfer's file is written at its own offset as its bytes arrive
   * in order (empty when the VM receives nothing). A snapshot takes it as it is at the pause.
   */
  readonly disk: Uint8Array;
  private readonly diskBase = new Map<string, number>();
  /**
   * Each incoming transfer's in-order progress (progress.ts), by sender: an observer's trace for
   * measuring stalls, not guest state (not in the memory image; a restored VM starts a fresh one).
   */
  readonly progress = new Map<string, ProgressLog>();

  constructor(
    readonly spec: VmSpec,
    readonly app: AppSpec,
    private readonly peers: { name: string; index: number }[],
    state?: GuestState,
    versions?: Uint32Array,
    disk?: Uint8Array,
  ) {
    this.mac = vmMac(spec.index);
    this.macBytes = Buffer.from(macBytes(this.mac));
    this.versions = versions ?? new Uint32Array(spec.pages);
    this.dirtyMark = new Uint8Array(spec.pages);
    this.peerByIndex = new Map(peers.map((p) => [p.index, p.name]));
    this.peerMac = new Map(peers.map((p) => [p.name, macBytes(vmMac(p.index))]));
    this.incoming = app.transfers.filter((t) => t.to === spec.name).map((t) => [t.from, t.bytes]);
    let size = 0;
    for (const [from, bytes] of this.incoming) {
      this.diskBase.set(from, size);
      size += bytes;
    }
    this.disk = new Uint8Array(size);
    if (disk) this.disk.set(disk.subarray(0, size));
    this.state = state ?? SimVm.initialState(spec, app);
  }

  static initialState(spec: VmSpec, app: AppSpec): GuestState {
    const s: GuestState = {
      rng: (app.seed ^ Math.imul(spec.index, 0x9e3779b1)) | 0,
      dirtyCarry: 0,
      tcpOut: {},
      tcpIn: {},
      udpOut: {},
      udpIn: {},
      sentFrames: {},
      recvFrames: {},
      ticks: 0,
    };
    for (const t of app.transfers) {
      if (t.from === spec.name) s.tcpOut[t.to] = newSender(t.bytes, app.mss, app.windowBytes);
      if (t.to === spec.name) s.tcpIn[t.from] = newReceiver(0);
    }
    for (const d of app.datagrams) {
      if (d.from === spec.name) s.udpOut[d.to] = { sent: 0 };
      if (d.to === spec.name) s.udpIn[d.from] = { received: 0, highest: -1 };
    }
    return s;
  }

  /** One tick of the guest: its workload dirties memory, its applications write and send, timers fire. */
  tick(now: number, net: VmNetwork): void {
    this.exclusive(now, net, () => this.runTick(now, net));
  }

  private runTick(now: number, net: VmNetwork): void {
    const s = this.state;
    s.ticks++;
    const rng = new Rng(s.rng);
    const perTick = (this.spec.dirtyPerSec * this.app.tickMs) / 1000 + s.dirtyCarry;
    const n = Math.floor(perTick);
    s.dirtyCarry = perTick - n;
    const work = this.spec.pages - STATE_PAGES;
    for (let i = 0; i < n && work > 0; i++) {
      const p = STATE_PAGES + (rng.next() < 0.8 ? rng.int(Math.min(this.spec.hotPages, work)) : rng.int(work));
      this.versions[p]++;
      this.markDirty(p);
    }
    s.rng = rng.state;
    for (const t of this.app.transfers) {
      if (t.from !== this.spec.name) continue;
      const snd = s.tcpOut[t.to];
      snd.written = t.bytesPerSec > 0 ? Math.min(snd.fileBytes, snd.written + (t.bytesPerSec * this.app.tickMs) / 1000) : snd.fileBytes;
      snd.written = Math.floor(snd.written);
      if (snd.timerAt >= 0 && now >= snd.timerAt) senderOnTimeout(snd, now);
      for (const seg of senderPull(snd, this.app.seed, now)) this.send(net, t.to, MSG.DATA, seg.seq, seg.data);
    }
    for (const d of this.app.datagrams) {
      if (d.from !== this.spec.name || s.ticks % Math.max(1, Math.round(d.everyMs / this.app.tickMs)) !== 0) continue;
      const u = s.udpOut[d.to];
      this.send(net, d.to, MSG.DATAGRAM, u.sent++, new Uint8Array(32));
    }
  }

  /** A frame the switch delivered: handled now, or after the pause if the VM is paused. */
  receive(frame: Uint8Array, now: number, net: VmNetwork): void {
    if (this.paused) this.rxQueue.push(frame);
    else if (this.busy) this.pending.push(frame);
    else this.exclusive(now, net, () => this.handle(frame, now, net));
  }

  /**
   * Runs `fn` with frames that arrive meanwhile (a local peer answering at the same instant) queued
   * and handled right after, so a guest never re-enters its own transport code.
   */
  private exclusive(now: number, net: VmNetwork, fn: () => void): void {
    this.busy = true;
    try {
      fn();
      while (this.pending.length > 0 && !this.paused) this.handle(this.pending.shift() as Uint8Array, now, net);
    } finally {
      this.busy = false;
    }
  }

  private handle(frame: Uint8Array, now: number, net: VmNetwork): void {
    const f = decodeSimFrame(frame);
    if (!f || !this.macBytes.equals(frame.subarray(0, 6))) return; // not addressed to this NIC
    const from = this.peerByIndex.get(f.from);
    if (from === undefined) return;
    addToRuns((this.state.recvFrames[from] ??= []), f.frameId);
    if (f.kind === MSG.DATA && this.state.tcpIn[from]) {
      const r = this.state.tcpIn[from];
      const before = r.expected;
      const ack = receiverOnSegment(r, { seq: f.seq, data: f.data }, now);
      if (r.expected > before) {
        this.disk.set(f.data, (this.diskBase.get(from) as number) + before);
        const log = this.progress.get(from) ?? { bytes: [], at: [] };
        this.progress.set(from, log);
        log.bytes.push(r.expected);
        log.at.push(now);
      }
      this.send(net, from, MSG.ACK, ack, new Uint8Array(0));
    } else if (f.kind === MSG.ACK && this.state.tcpOut[from]) {
      const snd = this.state.tcpOut[from];
      senderOnAck(snd, f.seq, now);
      for (const seg of senderPull(snd, this.app.seed, now)) this.send(net, from, MSG.DATA, seg.seq, seg.data);
    } else if (f.kind === MSG.DATAGRAM && this.state.udpIn[from]) {
      const u = this.state.udpIn[from];
      u.received++;
      u.highest = Math.max(u.highest, f.seq);
    }
  }

  pause(): void {
    this.paused = true;
  }

  resume(now: number, net: VmNetwork): void {
    this.paused = false;
    for (const f of this.rxQueue.splice(0)) this.receive(f, now, net);
  }

  /** Every transfer this VM takes part in has finished. */
  transfersDone(): boolean {
    for (const k in this.state.tcpOut) if (!senderDone(this.state.tcpOut[k])) return false;
    for (const [from, bytes] of this.incoming) if (this.state.tcpIn[from].expected < bytes) return false;
    return true;
  }

  /** Pages dirtied since the last call (the hypervisor's dirty log), and a fresh log. */
  takeDirty(): number[] {
    const out = this.dirtyList;
    this.dirtyList = [];
    for (const p of out) this.dirtyMark[p] = 0;
    return out;
  }

  dirtyCount(): number {
    return this.dirtyList.length;
  }

  /** The bytes of `pages` (workload pages) packed one after another, for a pre-copy round. */
  pagesBytes(pages: ArrayLike<number>): Uint8Array {
    const out = new Uint8Array(pages.length * PAGE_SIZE);
    for (let k = 0; k < pages.length; k++)
      pageContent(this.spec, pages[k], this.versions[pages[k]], out.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE));
    return out;
  }

  /** The state pages at `now`: times are saved relative to it, so a restore can place them anywhere. */
  stateBytes(now: number): Uint8Array {
    const json = Buffer.from(JSON.stringify(shiftTimes(this.state, -now)), 'utf8');
    const out = new Uint8Array(STATE_PAGES * PAGE_SIZE);
    if (json.length + 4 > out.length)
      throw new Error(`guest state of ${this.spec.name} is ${json.length} bytes, over the ${out.length - 4} the state pages hold`);
    Buffer.from(out.buffer).writeUInt32BE(json.length, 0);
    out.set(json, 4);
    return out;
  }

  /** The whole memory image now (tests compare it with what a snapshot stored). */
  image(now: number): Uint8Array {
    const all = Array.from({ length: this.spec.pages - STATE_PAGES }, (_, i) => STATE_PAGES + i);
    const out = new Uint8Array(this.spec.pages * PAGE_SIZE);
    out.set(this.stateBytes(now), 0);
    out.set(this.pagesBytes(all), STATE_PAGES * PAGE_SIZE);
    return out;
  }

  /** The disk region holding the file received from `from` (its first `length` bytes). */
  diskRegion(from: string, length: number): Uint8Array {
    const base = this.diskBase.get(from) as number;
    return this.disk.subarray(base, base + length);
  }

  /** A VM resumed from a memory image (and its disk image) at time `now`. */
  static fromImage(
    spec: VmSpec,
    app: AppSpec,
    peers: { name: string; index: number }[],
    image: Uint8Array,
    now: number,
    disk?: Uint8Array,
  ): SimVm {
    const state = shiftTimes(decodeGuestState(image), now);
    const versions = new Uint32Array(spec.pages);
    const b = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
    for (let p = STATE_PAGES; p < spec.pages; p++) {
      const at = p * PAGE_SIZE;
      if (b.readUInt32BE(at) === PATTERN_MAGIC && b.readUInt32BE(at + 8) === p) versions[p] = b.readUInt32BE(at + 12);
    }
    return new SimVm(spec, app, peers, state, versions, disk);
  }

  private markDirty(p: number): void {
    if (this.dirtyMark[p]) return;
    this.dirtyMark[p] = 1;
    this.dirtyList.push(p);
  }

  private send(net: VmNetwork, to: string, kind: number, seq: number, data: Uint8Array): void {
    const frameId = this.state.sentFrames[to] ?? 0;
    this.state.sentFrames[to] = frameId + 1;
    const payload = Buffer.alloc(10 + data.length);
    payload[0] = kind;
    payload[1] = this.spec.index;
    payload.writeUInt32BE(frameId, 2);
    payload.writeUInt32BE(seq, 6);
    payload.set(data, 10);
    net.emit(this, buildFrame(this.peerMac.get(to) as Uint8Array, this.macBytes, SIM_ETHERTYPE, payload));
  }
}

/** The group member that holds a VM's disk. */
export function diskMemberName(vm: string): string {
  return `${vm}.disk`;
}

export function decodeGuestState(image: Uint8Array): GuestState {
  const b = Buffer.from(image.buffer, image.byteOffset, STATE_PAGES * PAGE_SIZE);
  const n = b.readUInt32BE(0);
  return JSON.parse(b.toString('utf8', 4, 4 + n)) as GuestState;
}

/** Adds `id` to sorted [from, to) runs (flattened), merging neighbours. */
export function addToRuns(runs: number[], id: number): void {
  const last = runs.length - 1;
  if (last >= 1 && runs[last] === id) {
    runs[last] = id + 1;
    return;
  }
  if (last < 1 || id > runs[last]) {
    runs.push(id, id + 1);
    return;
  }
  for (let i = 0; i < runs.length; i += 2) if (id >= runs[i] && id < runs[i + 1]) return; // a duplicate
  runs.push(id, id + 1);
  const pairs: [number, number][] = [];
  for (let i = 0; i < runs.length; i += 2) pairs.push([runs[i], runs[i + 1]]);
  pairs.sort((x, y) => x[0] - y[0]);
  runs.length = 0;
  for (const [a, z] of pairs) {
    if (runs.length > 0 && runs[runs.length - 1] >= a) runs[runs.length - 1] = Math.max(runs[runs.length - 1], z);
    else runs.push(a, z);
  }
}

export function inRuns(runs: number[] | undefined, id: number): boolean {
  if (!runs) return false;
  for (let i = 0; i < runs.length; i += 2) if (id >= runs[i] && id < runs[i + 1]) return true;
  return false;
}

/** The guest state with every absolute time moved by `delta` (timers, the receiver's last progress). */
function shiftTimes(s: GuestState, delta: number): GuestState {
  const c = JSON.parse(JSON.stringify(s)) as GuestState;
  for (const snd of Object.values(c.tcpOut)) if (snd.timerAt >= 0) snd.timerAt += delta;
  for (const r of Object.values(c.tcpIn)) {
    r.lastProgressAt += delta;
    r.longestStallEnd += delta;
  }
  return c;
}
