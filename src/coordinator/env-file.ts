/**
 * The environment file of `vnstore snapshot --env FILE` (JSON). For now it describes a simulated
 * environment, either generated from a few knobs or spelled out:
 *
 *   {"name": "env7", "seed": 1, "scenario": {"vms": 4, "hosts": 2, "minPages": 512, "sizeRatio": 4,
 *    "pageMs": 1, "bytesPerSec": 40000, "transferMs": 20000}}
 *   (or "bytesPerSec": 0 for bulk transfers of "transferBytes" each over links of "linkBytesPerSec")
 *
 *   {"name": "env7", "seed": 1, "hosts": [{"name": "h0", "pageMs": 1}, ...],
 *    "vms": [{"name": "web1", "host": "h0", "pages": 4096, "dirtyPerSec": 100, "hotPages": 32,
 *             "commonPages": 1024}, ...],
 *    "transfers": [{"from": "web1", "to": "db1", "bytes": 800000, "bytesPerSec": 40000}],  (0: bulk)
 *    "linkBytesPerSec": 400000,  (optional: each tunnel direction's rate)
 *    "datagrams": [{"from": "web1", "to": "db1", "everyMs": 20}]}
 *
 * A spelled-out file may name each host's agent process, for `--agents env` ("agent": "127.0.0.1:7431"
 * in a host), and running switches and the VMs' NICs, for `--switches env`:
 *   "hosts": [{"name": "h0", "pageMs": 1, "switch": {"vm": "127.0.0.1:7000", "tunnel": "127.0.0.1:7100"}}],
 *   "vms": [{"name": "web1", "host": "h0", "pages": 4096, "nic": "127.0.0.1:5001"}, ...]
 */
import { readFile } from 'node:fs/promises';
import type { EnvSpec } from '../sim/env.js';
import { scenarioSpec } from '../sim/scenario.js';
import type { ChannelMode } from '../switch/colour.js';
import { STATE_PAGES } from '../sim/vm.js';
import { VnstoreError } from '../util/errors.js';
import type { Endpoint } from '../switch/udp.js';
import type { UdpNetworkOptions } from '../sim/udp-network.js';

type Json = Record<string, unknown>;

export async function readEnvFile(file: string, channels: ChannelMode): Promise<EnvSpec> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new VnstoreError(
      'E_INPUT',
      `cannot read environment file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      { cause: err },
    );
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new VnstoreError('E_INPUT', `environment file ${file} is not JSON: ${(err as Error).message}`, { cause: err });
  }
  return parseEnv(doc, channels, file);
}

export function parseEnv(doc: unknown, channels: ChannelMode, where = 'environment'): EnvSpec {
  const bad = (msg: string) => new VnstoreError('E_INPUT', `${where}: ${msg}`);
  if (!isObject(doc)) throw bad('expected a JSON object');
  const name = doc.name;
  if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$/.test(name))
    throw bad('"name" must be 1-41 letters, digits, ".", "_" or "-"');
  const seed = int(doc.seed ?? 1, 'seed', 0, 2 ** 31 - 1, bad);
  if (isObject(doc.scenario)) {
    const s = doc.scenario;
    const vms = int(s.vms, 'scenario.vms', 2, 64, bad);
    return scenarioSpec({
      name,
      seed,
      vms,
      hosts: int(s.hosts ?? 2, 'scenario.hosts', 1, vms, bad),
      minPages: int(s.minPages ?? 512, 'scenario.minPages', STATE_PAGES + 1, 1 << 20, bad),
      sizeRatio: num(s.sizeRatio ?? 1, 'scenario.sizeRatio', 1, 1024, bad),
      pageMs: num(s.pageMs ?? 1, 'scenario.pageMs', 0.001, 1000, bad),
      bytesPerSec: int(s.bytesPerSec ?? 40_000, 'scenario.bytesPerSec', 0, 1e9, bad),
      transferMs: int(s.transferMs ?? 20_000, 'scenario.transferMs', 1, 3_600_000, bad),
      transferBytes: s.transferBytes === undefined ? undefined : int(s.transferBytes, 'scenario.transferBytes', 1, 2 ** 31 - 1, bad),
      linkBytesPerSec: s.linkBytesPerSec === undefined ? undefined : int(s.linkBytesPerSec, 'scenario.linkBytesPerSec', 1000, 1e10, bad),
      channels,
    });
  }
  const list = (k: string): Json[] => {
    const v = doc[k] ?? [];
    if (!Array.isArray(v) || !v.every(isObject)) throw bad(`"${k}" must be an array of objects`);
    return v;
  };
  const hosts = list('hosts').map((h, i) => {
    const sw = h.switch;
    const agent = h.agent === undefined ? undefined : endpoint(h.agent, `hosts[${i}].agent`, bad);
    if (sw !== undefined && !isObject(sw)) throw bad(`"hosts[${i}].switch" must be {"vm": "HOST:PORT", "tunnel": "HOST:PORT"}`);
    return {
      name: str(h.name, `hosts[${i}].name`, bad),
      pageMs: num(h.pageMs ?? 1, `hosts[${i}].pageMs`, 0.001, 1000, bad),
      ...(sw
        ? { switch: { vm: endpoint(sw.vm, `hosts[${i}].switch.vm`, bad), tunnel: endpoint(sw.tunnel, `hosts[${i}].switch.tunnel`, bad) } }
        : {}),
      ...(agent ? { agent } : {}),
    };
  });
  if (hosts.length === 0) throw bad('give "scenario", or "hosts" and "vms"');
  const vms = list('vms').map((v, i) => {
    const pages = int(v.pages, `vms[${i}].pages`, STATE_PAGES + 1, 1 << 24, bad);
    const host = str(v.host, `vms[${i}].host`, bad);
    if (!hosts.some((h) => h.name === host)) throw bad(`vms[${i}].host "${host}" is not one of the hosts`);
    const vmName = str(v.name, `vms[${i}].name`, bad);
    if (vmName.includes('.'))
      throw bad(`vms[${i}].name "${vmName}" must not contain "." (group members <vm>.disk and <env>.channels use it)`);
    return {
      name: vmName,
      host,
      pages,
      dirtyPerSec: num(v.dirtyPerSec ?? 100, `vms[${i}].dirtyPerSec`, 0, 1e7, bad),
      hotPages: int(v.hotPages ?? 32, `vms[${i}].hotPages`, 1, pages, bad),
      commonPages: int(v.commonPages ?? 0, `vms[${i}].commonPages`, 0, pages - STATE_PAGES, bad),
      ...(v.nic !== undefined ? { nic: endpoint(v.nic, `vms[${i}].nic`, bad) } : {}),
    };
  });
  if (vms.length === 0 || vms.length > 250) throw bad('"vms" must list 1 to 250 VMs');
  const names = new Set(vms.map((v) => v.name));
  if (names.size !== vms.length) throw bad('two VMs have the same name');
  const vmName = (v: unknown, k: string) => {
    const n = str(v, k, bad);
    if (!names.has(n)) throw bad(`${k} "${n}" is not one of the VMs`);
    return n;
  };
  const transfers = list('transfers').map((t, i) => ({
    from: vmName(t.from, `transfers[${i}].from`),
    to: vmName(t.to, `transfers[${i}].to`),
    bytes: int(t.bytes, `transfers[${i}].bytes`, 1, 2 ** 31 - 1, bad),
    bytesPerSec: int(t.bytesPerSec ?? 40_000, `transfers[${i}].bytesPerSec`, 0, 1e9, bad),
  }));
  const datagrams = list('datagrams').map((d, i) => ({
    from: vmName(d.from, `datagrams[${i}].from`),
    to: vmName(d.to, `datagrams[${i}].to`),
    everyMs: int(d.everyMs ?? 20, `datagrams[${i}].everyMs`, 10, 3_600_000, bad),
  }));
  const pairs = [...transfers, ...datagrams].map((x) => `${x.from}>${x.to}`);
  if (new Set(pairs.filter((_, i) => i < transfers.length)).size !== transfers.length)
    throw bad('two transfers between the same VMs in the same direction');
  if ([...transfers, ...datagrams].some((x) => x.from === x.to)) throw bad('a flow from a VM to itself');
  const linkBytesPerSec = doc.linkBytesPerSec === undefined ? undefined : int(doc.linkBytesPerSec, 'linkBytesPerSec', 1000, 1e10, bad);
  return {
    name,
    seed,
    hosts,
    vms,
    transfers,
    datagrams,
    tickMs: 10,
    mss: 1000,
    windowBytes: 8000,
    tunnelMs: 1,
    linkBytesPerSec,
    channels,
    holdFrames: 4096,
  };
}

/**
 * The switches and NICs the file names, for `snapshot --switches env`: every host's running switch
 * and every VM's NIC address (the switch's --port), or a one-line error naming what is missing.
 */
export function namedNetwork(spec: EnvSpec): UdpNetworkOptions {
  const noSwitch = spec.hosts.find((h) => !h.switch);
  if (noSwitch)
    throw new VnstoreError(
      'E_INPUT',
      `--switches env: host ${noSwitch.name} names no "switch": {"vm": "HOST:PORT", "tunnel": "HOST:PORT"}`,
    );
  const noNic = spec.vms.find((v) => !v.nic);
  if (noNic) throw new VnstoreError('E_INPUT', `--switches env: VM ${noNic.name} names no "nic": "HOST:PORT" (its switch's --port)`);
  return {
    switches: new Map(spec.hosts.map((h) => [h.name, h.switch as { vm: Endpoint; tunnel: Endpoint }])),
    vms: new Map(spec.vms.map((v) => [v.name, { host: v.host, addr: v.nic as Endpoint }])),
  };
}

/** Each host's running agent process the file names (`hosts[].agent`), for `snapshot --agents env`. */
export function namedAgents(spec: EnvSpec): Map<string, Endpoint> {
  const missing = spec.hosts.find((h) => !h.agent);
  if (missing)
    throw new VnstoreError(
      'E_INPUT',
      `--agents env: host ${missing.name} names no "agent": "HOST:PORT" (its 'vnstore agent serve --listen')`,
    );
  return new Map(spec.hosts.map((h) => [h.name, h.agent as Endpoint]));
}

function endpoint(v: unknown, k: string, bad: (m: string) => Error): Endpoint {
  const m = typeof v === 'string' ? /^(.+):(\d{1,5})$/.exec(v) : null;
  if (!m || Number(m[2]) > 65535) throw bad(`"${k}" must be "HOST:PORT"`);
  return { host: m[1], port: Number(m[2]) };
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: unknown, k: string, bad: (m: string) => Error): string {
  if (typeof v !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$/.test(v))
    throw bad(`"${k}" must be a name of 1-41 letters, digits, ".", "_" or "-"`);
  return v;
}

function num(v: unknown, k: string, min: number, max: number, bad: (m: string) => Error): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw bad(`"${k}" must be a number from ${min} to ${max}`);
  return v;
}

function int(v: unknown, k: string, min: number, max: number, bad: (m: string) => Error): number {
  if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) throw bad(`"${k}" must be an integer from ${min} to ${max}`);
  return v as number;
}
