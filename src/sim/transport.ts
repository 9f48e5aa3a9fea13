/**
 * The simulated guests' transports, as plain state plus pure steps (time passed in), so their whole
 * state is saved in a VM's memory image and a VM restored from a snapshot resumes them.
 *
 * - Reliable (TCP-like): byte sequence numbers, cumulative acks, one retransmission timer with
 *   exponential back-off (RTO doubles per timeout from 200 ms up to 60 s, back to 200 ms on progress),
 *   go-back-N. The sender is paced by its application (a file written at a fixed rate), and the
 *   receiver keeps a running FNV-1a checksum of the bytes it accepted in order.
 * - Datagram (UDP-like): one numbered datagram per interval, never repaired; the receiver counts.
 */
export const RTO_MIN_MS = 200;
export const RTO_MAX_MS = 60_000;

export interface ReliableSender {
  fileBytes: number;
  mss: number;
  windowBytes: number;
  /** Bytes the application has handed to the transport so far. */
  written: number;
  nextSeq: number;
  /** Highest byte sent so far (go-back-N moves nextSeq back below it). */
  sentUpTo: number;
  unacked: number;
  rto: number;
  /** Retransmission deadline, or -1 when no timer runs (absolute simulated time while running). */
  timerAt: number;
  longestRto: number;
  timeouts: number;
}

export interface ReliableReceiver {
  expected: number;
  checksum: number;
  /** Time of the last in-order progress, and the longest gap between two progresses (raw: the application's cadence included). */
  lastProgressAt: number;
  longestStall: number;
  /** When that longest gap ended (it began `longestStall` before). */
  longestStallEnd: number;
}

export interface Segment {
  seq: number;
  data: Uint8Array;
}

export function newSender(fileBytes: number, mss: number, windowBytes: number): ReliableSender {
  return {
    fileBytes,
    mss,
    windowBytes,
    written: 0,
    nextSeq: 0,
    sentUpTo: 0,
    unacked: 0,
    rto: RTO_MIN_MS,
    timerAt: -1,
    longestRto: RTO_MIN_MS,
    timeouts: 0,
  };
}

export function newReceiver(now: number): ReliableReceiver {
  return { expected: 0, checksum: FNV_OFFSET, lastProgressAt: now, longestStall: 0, longestStallEnd: now };
}

/** The transferred file's byte at `offset` (a pure function of the seed: the run's expected result). */
export function fileByte(seed: number, offset: number): number {
  return Math.imul(offset ^ seed, 2654435761) >>> 24;
}

/**
 * The file's bytes from `offset`, a view of one buffer per seed (the file is a pure function of the
 * seed, and every segment and checksum reads it): never write to it.
 */
export function fileSlice(seed: number, offset: number, length: number): Uint8Array {
  return fileOf(seed, offset + length).subarray(offset, offset + length);
}

/** The last few seeds' files, grown on demand (a run reads one seed's, a test file a handful). */
const files = new Map<number, Uint8Array>();
const FILES_KEPT = 4;

function fileOf(seed: number, length: number): Uint8Array {
  const had = files.get(seed);
  if (had && had.length >= length) return had;
  const f = new Uint8Array(Math.max(length, 2 * (had?.length ?? 0)));
  if (had) f.set(had);
  for (let i = had?.length ?? 0; i < f.length; i++) f[i] = fileByte(seed, i);
  files.delete(seed);
  files.set(seed, f);
  if (files.size > FILES_KEPT) files.delete(files.keys().next().value as number);
  return f;
}

export const FNV_OFFSET = 0x811c9dc5;

export function fnv1a(h: number, data: Uint8Array): number {
  for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data[i], 0x01000193) >>> 0;
  return h;
}

const checksums = new Map<string, number>();

/** The checksum an undisturbed transfer ends with (kept: every outcome asks for it). */
export function expectedChecksum(seed: number, fileBytes: number): number {
  const key = `${seed}:${fileBytes}`;
  let c = checksums.get(key);
  if (c === undefined) {
    c = fnv1a(FNV_OFFSET, fileSlice(seed, 0, fileBytes));
    if (checksums.size >= 1024) checksums.clear();
    checksums.set(key, c);
  }
  return c;
}

/** Segments the sender may send now (new data within the window), advancing it; starts the timer. */
export function senderPull(s: ReliableSender, seed: number, now: number): Segment[] {
  const out: Segment[] = [];
  while (s.nextSeq < s.written && s.nextSeq - s.unacked < s.windowBytes) {
    const len = Math.min(s.mss, s.written - s.nextSeq, s.windowBytes - (s.nextSeq - s.unacked));
    // Whole segments only while the application is still writing (Nagle): fewer, fuller frames.
    if (len < s.mss && s.written < s.fileBytes && s.nextSeq === s.sentUpTo) break;
    out.push({ seq: s.nextSeq, data: fileSlice(seed, s.nextSeq, len) });
    s.nextSeq += len;
  }
  s.sentUpTo = Math.max(s.sentUpTo, s.nextSeq);
  if (out.length > 0 && s.timerAt < 0) s.timerAt = now + s.rto;
  return out;
}

export function senderOnAck(s: ReliableSender, ack: number, now: number): void {
  if (ack <= s.unacked || ack > s.sentUpTo) return;
  s.unacked = ack;
  s.nextSeq = Math.max(s.nextSeq, ack);
  s.rto = RTO_MIN_MS;
  s.timerAt = s.unacked < s.sentUpTo ? now + s.rto : -1;
}

/** The retransmission timer fired: back off and go back to the first unacknowledged byte. */
export function senderOnTimeout(s: ReliableSender, now: number): void {
  if (s.unacked >= s.sentUpTo) {
    s.timerAt = -1;
    return;
  }
  s.timeouts++;
  s.rto = Math.min(s.rto * 2, RTO_MAX_MS);
  s.longestRto = Math.max(s.longestRto, s.rto);
  s.nextSeq = s.unacked;
  s.timerAt = now + s.rto;
}

export function senderDone(s: ReliableSender): boolean {
  return s.unacked >= s.fileBytes;
}

/** Accepts an in-order segment (others are dropped, go-back-N); returns the cumulative ack to send. */
export function receiverOnSegment(r: ReliableReceiver, seg: Segment, now: number): number {
  if (seg.seq === r.expected && seg.data.length > 0) {
    r.checksum = fnv1a(r.checksum, seg.data);
    // A stall is a gap between two progresses: the wait for the first byte is the transfer's start.
    if (r.expected > 0 && now - r.lastProgressAt > r.longestStall) {
      r.longestStall = now - r.lastProgressAt;
      r.longestStallEnd = now;
    }
    r.expected += seg.data.length;
    r.lastProgressAt = now;
  }
  return r.expected;
}

export interface DatagramSender {
  sent: number;
}

export interface DatagramReceiver {
  received: number;
  highest: number;
}
