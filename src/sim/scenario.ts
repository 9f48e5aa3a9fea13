/**
 * Simulated environments from a few knobs and a seed: VM sizes spread geometrically between the
 * smallest and `sizeRatio` times it, unequal dirtying rates and hot sets, hosts of unequal snapshot
 * bandwidth, a ring of file transfers (VM i to VM i+1, so most cross hosts; paced, or bulk over
 * links of a set rate) and two datagram flows between the first and the last VM.
 */
import { Rng } from './events.js';
import type { EnvSpec } from './env.js';
import type { ChannelMode } from '../switch/colour.js';

export interface ScenarioOptions {
  name?: string;
  seed: number;
  vms: number;
  hosts: number;
  minPages: number;
  sizeRatio: number;
  /** Simulated ms to copy one page on the fastest host. */
  pageMs: number;
  channels: ChannelMode;
  holdFrames?: number;
  /** Each transfer's rate (0: bulk, the whole file written at once) and length: `transferBytes`, or the rate times `transferMs`. */
  bytesPerSec: number;
  transferMs: number;
  transferBytes?: number;
  /** Each tunnel direction's link rate (EnvSpec.linkBytesPerSec); none by default. */
  linkBytesPerSec?: number;
}

export function scenarioSpec(o: ScenarioOptions): EnvSpec {
  const rng = new Rng(o.seed);
  const hosts = Array.from({ length: o.hosts }, (_, i) => ({ name: `h${i}`, pageMs: o.pageMs * (i === 0 ? 1 : rng.range(1, 1.5)) }));
  const sizes = Array.from({ length: o.vms }, (_, i) => Math.round(o.minPages * o.sizeRatio ** (o.vms === 1 ? 0 : i / (o.vms - 1))));
  for (let i = sizes.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [sizes[i], sizes[j]] = [sizes[j], sizes[i]];
  }
  const vms = sizes.map((pages, i) => ({
    name: `vm${i}`,
    host: hosts[i % o.hosts].name,
    pages,
    dirtyPerSec: Math.round(rng.range(20, 300)),
    hotPages: Math.round(rng.range(8, 48)),
    commonPages: Math.floor(pages / 4),
  }));
  const bytes = o.transferBytes ?? Math.round((o.bytesPerSec * o.transferMs) / 1000);
  return {
    name: o.name ?? `sim${o.seed}`,
    seed: o.seed,
    hosts,
    vms,
    transfers:
      o.vms < 2 ? [] : vms.map((v, i) => ({ from: v.name, to: vms[(i + 1) % vms.length].name, bytes, bytesPerSec: o.bytesPerSec })),
    datagrams:
      o.vms < 2
        ? []
        : [
            { from: vms[0].name, to: vms[vms.length - 1].name, everyMs: 20 },
            { from: vms[vms.length - 1].name, to: vms[0].name, everyMs: 20 },
          ],
    tickMs: 10,
    mss: 1000,
    windowBytes: 8000,
    tunnelMs: 1,
    linkBytesPerSec: o.linkBytesPerSec,
    channels: o.channels,
    holdFrames: o.holdFrames ?? 100_000,
  };
}
