/**
 * The simulated environment: the reliable transport repairs any loss pattern and backs off
 * exponentially; a VM's memory image decodes back into the same VM (exact bytes); runs are
 * deterministic from their seed; an undisturbed environment delivers every file with its checksum.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SimEnv } from '../src/sim/env.js';
import { EventQueue, Rng } from '../src/sim/events.js';
import { parseEnv } from '../src/coordinator/env-file.js';
import { scenarioSpec } from '../src/sim/scenario.js';
import {
  expectedChecksum,
  newReceiver,
  newSender,
  receiverOnSegment,
  RTO_MIN_MS,
  senderOnAck,
  senderOnTimeout,
  senderPull,
  senderDone,
} from '../src/sim/transport.js';
import { decodeGuestState, SimVm, STATE_PAGES, addToRuns, inRuns } from '../src/sim/vm.js';
import { outcomeOf } from '../src/sim/outcome.js';
import { addedStall, progressLogs, type ProgressLogs } from '../src/sim/progress.js';

describe('reliable transport', () => {
  it('delivers the exact file through random losses (both ways), and delivers nothing when everything is lost', () => {
    fc.assert(
      fc.property(
        fc.double({ min: 0, max: 0.6, noNaN: true }),
        fc.integer({ min: 1, max: 20_000 }),
        fc.nat(1000),
        (lossRate, bytes, seed) => {
          // every run also tries total loss, briefly: nothing may get through, the RTO reaches its cap
          for (const [rate, steps] of [
            [lossRate, 20_000],
            [1, 40],
          ]) {
            const rng = new Rng(seed);
            const s = newSender(bytes, 700, 2800);
            const r = newReceiver(0);
            s.written = bytes;
            let now = 0;
            for (let step = 0; step < steps && !senderDone(s); step++) {
              for (const seg of senderPull(s, seed, now)) {
                if (rng.next() < rate) continue;
                const ack = receiverOnSegment(r, seg, now);
                if (rng.next() >= rate) senderOnAck(s, ack, now);
              }
              if (s.timerAt >= 0 && !senderDone(s)) {
                now = s.timerAt;
                senderOnTimeout(s, now);
              }
            }
            if (rate === 1) {
              expect([senderDone(s), r.expected, s.longestRto]).toEqual([false, 0, 60_000]);
            } else {
              expect([senderDone(s), r.expected, r.checksum]).toEqual([true, bytes, expectedChecksum(seed, bytes)]);
            }
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  it('doubles the RTO per timeout up to 60 s and resets it on progress', () => {
    const s = newSender(5000, 1000, 4000);
    s.written = 5000;
    senderPull(s, 1, 0);
    expect(s.timerAt).toBe(RTO_MIN_MS);
    const rtos: number[] = [];
    for (let i = 0; i < 10; i++) {
      senderOnTimeout(s, s.timerAt);
      rtos.push(s.rto);
      senderPull(s, 1, s.timerAt); // the go-back-N resend
    }
    expect(rtos).toEqual([400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000]);
    senderOnTimeout(s, s.timerAt);
    expect(s.nextSeq).toBe(0); // go back to the first unacknowledged byte
    senderPull(s, 1, 1000);
    senderOnAck(s, 2000, 1000);
    expect(s.rto).toBe(RTO_MIN_MS);
    expect(s.timerAt).toBe(1000 + RTO_MIN_MS);
    expect(s.longestRto).toBe(60000);
  });
});

describe('simulated VMs', () => {
  const spec = scenarioSpec({
    seed: 3,
    vms: 3,
    hosts: 2,
    minPages: 64,
    sizeRatio: 4,
    pageMs: 2,
    channels: 'drop',
    bytesPerSec: 20_000,
    transferMs: 3000,
  });

  it('runs an undisturbed environment to the end: every file arrives with its checksum, no datagram lost', async () => {
    const env = new SimEnv(spec);
    await env.clock.runUntil(() => env.transfersDone(), 60_000);
    const o = outcomeOf(env);
    expect(o.done).toBe(true);
    expect(o.transfers.map((t) => [t.received, t.checksum, t.diskChecksum])).toEqual(
      o.transfers.map((t) => [t.bytes, t.expected, t.expected]),
    );
    expect(o.datagrams.every((d) => d.sent > 100 && d.sent - d.received <= 1)).toBe(true); // at most one in flight
    expect(o.timeouts).toBe(0);
  });

  it('is deterministic: the same seed gives the same images and outcome', async () => {
    const run = async () => {
      const env = new SimEnv(spec);
      await env.clock.runUntil(() => false, 1234);
      return { images: [...env.vms.values()].map((v) => Buffer.from(v.image(env.clock.now)).toString('base64')), outcome: outcomeOf(env) };
    };
    const [a, b] = [await run(), await run()];
    expect(a).toEqual(b);
  });

  it('decodes a memory image back into the same VM: the same image bytes, and it resumes its transfers', async () => {
    const env = new SimEnv(spec);
    await env.clock.runUntil(() => false, 700);
    for (const vm of env.vms.values()) {
      const image = vm.image(env.clock.now);
      expect(decodeGuestState(image).ticks).toBe(vm.state.ticks);
      const back = SimVm.fromImage(
        vm.spec,
        env.app,
        spec.vms.map((v, i) => ({ name: v.name, index: i + 1 })),
        image,
        env.clock.now,
      );
      expect(Buffer.from(back.image(env.clock.now)).equals(Buffer.from(image))).toBe(true);
      expect(back.versions.some((v, p) => p >= STATE_PAGES && v > 0)).toBe(true);
    }
    const images = new Map([...env.vms].map(([n, v]) => [n, v.image(env.clock.now)]));
    const resumed = new SimEnv(spec, { images });
    await resumed.clock.runUntil(() => resumed.transfersDone(), 60_000);
    const o = outcomeOf(resumed);
    expect(o.transfers.map((t) => [t.received, t.checksum])).toEqual(o.transfers.map((t) => [t.bytes, t.expected]));
  });

  it('runs bulk transfers over rate-limited links: as fast as the link, one segment time between progresses', async () => {
    // as an environment file gives it: bulk (bytesPerSec 0) transfers of transferBytes over 100 kB/s links
    const bulk = parseEnv(
      {
        name: 'bulk',
        seed: 4,
        scenario: { vms: 4, hosts: 2, minPages: 32, bytesPerSec: 0, transferBytes: 200_000, linkBytesPerSec: 100_000 },
      },
      'drop',
    );
    expect(bulk.linkBytesPerSec).toBe(100_000);
    expect(bulk.transfers.map((t) => [t.bytes, t.bytesPerSec])).toEqual(bulk.transfers.map(() => [200_000, 0]));
    const env = new SimEnv(bulk);
    await env.clock.runUntil(() => env.transfersDone(), 60_000);
    const o = outcomeOf(env);
    expect(o.transfers.map((t) => [t.received, t.checksum, t.diskChecksum])).toEqual(
      o.transfers.map((t) => [t.bytes, t.expected, t.expected]),
    );
    // 200 segments of 1000 bytes, each 1024 bytes on the wire at 100 kB/s: 10.24 ms apart, about 2 s
    expect(o.longestGapMs).toBeGreaterThanOrEqual(10.24);
    expect(o.longestGapMs).toBeLessThan(12);
    expect(o.finishedAtMs).toBeGreaterThan(2000);
    expect(o.finishedAtMs).toBeLessThan(2200);
    expect(o.timeouts).toBe(0);
  });

  it('logs every in-order progress, and measures the stall a disturbance adds against the undisturbed run', async () => {
    const spec = scenarioSpec({
      seed: 5,
      vms: 2,
      hosts: 2,
      minPages: 32,
      sizeRatio: 1,
      pageMs: 1,
      channels: 'drop',
      bytesPerSec: 0,
      transferMs: 0,
      transferBytes: 20_000,
      linkBytesPerSec: 100_000,
    });
    const env = new SimEnv(spec);
    await env.clock.runUntil(() => env.transfersDone(), 60_000);
    const logs = progressLogs(env);
    expect([...logs.keys()].sort()).toEqual(['vm0>vm1', 'vm1>vm0']);
    for (const log of logs.values()) {
      expect(log.bytes).toEqual(Array.from({ length: 20 }, (_, i) => 1000 * (i + 1)));
      for (let i = 1; i < log.at.length; i++) expect(log.at[i]).toBeGreaterThan(log.at[i - 1]);
    }
    // against itself: nothing added, never different
    expect(addedStall(logs, logs)).toMatchObject({ stallMs: 0, divergedAtMs: Infinity });

    // by hand: the reference progresses every 5 ms; the run waits 20 ms for its third segment, then
    // goes on at the reference's pace, 15 ms late; its first wait (the start) is not a stall
    const ref: ProgressLogs = new Map([['a>b', { bytes: [1000, 2000, 3000, 4000, 5000], at: [10, 15, 20, 25, 30] }]]);
    const run: ProgressLogs = new Map([['a>b', { bytes: [1000, 2000, 3000, 4000, 5000], at: [40, 45, 65, 70, 75] }]]);
    expect(addedStall(run, ref)).toEqual({
      stallMs: 15,
      transfer: 'a>b',
      gapStartMs: 45,
      gapEndMs: 65,
      referenceGapMs: 5,
      divergedAtMs: 10,
    });
    // progress in other steps than the reference's: the reference's time from having the gap's first
    // bytes to having its last; the runs differ from when the reference had 2000 bytes and this run not
    const coarse: ProgressLogs = new Map([['a>b', { bytes: [1000, 3000, 5000], at: [10, 32, 40] }]]);
    expect(addedStall(coarse, ref)).toEqual({
      stallMs: 12,
      transfer: 'a>b',
      gapStartMs: 10,
      gapEndMs: 32,
      referenceGapMs: 10,
      divergedAtMs: 15,
    });
    expect(() => addedStall(new Map([['a>b', { bytes: [1000, 6000], at: [10, 40] }]]), ref)).toThrow(/never reached 6000 bytes/);
  });

  it('yields to the event loop during a long run of synchronous events, in the same order', async () => {
    const q = new EventQueue();
    const order: number[] = [];
    for (let i = 0; i < 10_000; i++) q.after(i % 7, () => void order.push(i));
    let ranWhenYielded = -1;
    setImmediate(() => (ranWhenYielded = order.length));
    await q.runUntil(() => false, Infinity);
    expect(order.length).toBe(10_000);
    expect(ranWhenYielded, 'the event loop ran during the run').toBeGreaterThan(0);
    expect(ranWhenYielded).toBeLessThan(10_000);
    // by time, then by insertion
    expect(order).toEqual([...order].sort((a, b) => (a % 7) - (b % 7) || a - b));
  });

  it('keeps receipt logs as merged runs', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(200)), (ids) => {
        const runs: number[] = [];
        for (const id of ids) addToRuns(runs, id);
        for (let i = 0; i < 210; i++) expect(inRuns(runs, i)).toBe(ids.includes(i));
        for (let i = 2; i < runs.length; i += 2) expect(runs[i]).toBeGreaterThan(runs[i - 1]);
      }),
    );
  });
});
