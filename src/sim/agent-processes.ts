/**
 * One `vnstore agent serve` process per simulated host, on loopback, for `vnstore snapshot --agents
 * process` and the tests: ports chosen up front, so a restarted agent comes back at the same address.
 */
import type { EnvSpec } from './env.js';
import type { Endpoint } from '../switch/udp.js';
import { ChildProcesses } from './children.js';
import { freeLoopbackPorts } from './ports.js';

export interface AgentProcesses {
  addresses: Map<string, Endpoint>;
  /** SIGKILLs a host's agent process and waits for it to be gone. */
  kill(host: string): Promise<void>;
  /** Starts a host's agent process again (a fresh process knows no epoch). */
  start(host: string): Promise<void>;
  /** Stops every agent process (SIGTERM). */
  stop(): Promise<void>;
}

/** `cli`: the vnstore command's script (dist/cli/bin.cjs); `remote`: its --server and --token-file arguments. */
export async function startAgentProcesses(spec: EnvSpec, cli: string, remote: string[]): Promise<AgentProcesses> {
  const addresses = new Map<string, Endpoint>();
  const ports = await freeLoopbackPorts(spec.hosts.length, 'tcp');
  spec.hosts.forEach((h, i) => addresses.set(h.name, { host: '127.0.0.1', port: ports[i] }));
  const children = new ChildProcesses();
  const start = async (host: string): Promise<void> => {
    const a = addresses.get(host) as Endpoint;
    const args = [cli, 'agent', 'serve', '--listen', `${a.host}:${a.port}`, ...remote];
    await children.start(`vnstore agent serve for ${host}`, args, /^listening /m, 'stdout');
  };
  const kill = (host: string) => children.kill(`vnstore agent serve for ${host}`);
  try {
    await Promise.all(spec.hosts.map((h) => start(h.name))); // together: each is a node process start
  } catch (err) {
    for (const h of spec.hosts) await kill(h.name);
    throw err;
  }
  return {
    addresses,
    kill,
    start,
    stop: () => children.stop(),
  };
}
