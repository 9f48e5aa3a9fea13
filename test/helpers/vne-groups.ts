/** The groups a `vnstore serve` holds, for the coordinated-snapshot tests. */
import { AgentClient } from '../../src/agent/client.js';

/** Every group on the server with its members' names (sorted), through a fresh client. */
export async function groupsOn(address: string, token: string): Promise<Map<string, string[]>> {
  const c = await AgentClient.connect({ server: address, token });
  try {
    const out = new Map<string, string[]>();
    for (const r of await c.listSnapshots()) out.set(r.group ?? '', [...(out.get(r.group ?? '') ?? []), r.vm].sort());
    return out;
  } finally {
    await c.close();
  }
}
