/**
 * A SnapshotTarget over `vnstore serve`: every VM's agent has its own connection (its memory and disk
 * sessions go through it), the coordinator another for the group's channel state, GROUP_COMMIT and
 * abort-prepared. Members are prepared snapshots named by id, so the coordinator commits what the
 * agents prepared on their connections, all or none (docs/PROTOCOL.md). A connection that failed
 * (an agent or the server gone) is replaced by a fresh one at its next use, so the epoch after a
 * failure starts clean.
 */
import type { AgentClient } from '../agent/client.js';
import type { RemoteSession } from '../agent/session.js';
import { readGroupImages, serverGroupSource } from './group-source.js';
import type { GroupReader, SnapshotTarget, TargetSession } from './target.js';

export interface ServerTarget extends SnapshotTarget<string>, GroupReader {
  /** Every committed group member's record through the coordinator's connection. */
  listGroupNames(): Promise<string[]>;
  close(): Promise<void>;
}

/** `connect` opens one client connection (called per agent and for the coordinator, and again after a failure). */
export function serverTarget(connect: () => Promise<AgentClient>, options: { agentOf?: (member: string) => string } = {}): ServerTarget {
  const agentOf = options.agentOf ?? ((member: string) => member.replace(/\.disk$/, ''));
  const clients = new Map<string, Promise<AgentClient>>();
  const COORDINATOR = '\0coordinator';

  const client = async (key: string): Promise<AgentClient> => {
    const existing = clients.get(key);
    if (existing) {
      const c = await existing.catch(() => undefined);
      if (c?.usable) return c;
      if (c) await c.close().catch(() => undefined);
    }
    const fresh = connect();
    clients.set(key, fresh);
    fresh.catch(() => clients.delete(key));
    return fresh;
  };

  return {
    async beginSession(o): Promise<TargetSession<string>> {
      const agent = await client(agentOf(o.vm));
      const s: RemoteSession = await agent.beginSession({ vm: o.vm, group: o.group, memoryBytes: o.memoryBytes, parent: 'auto' });
      return {
        writeScattered: (i, b) => s.writeScattered(i, b),
        writePages: (first, b) => s.writePages(first, b),
        prepare: async (p) => (await s.prepare({ byteLength: p.byteLength })).id,
        abort: () => s.abort(),
      };
    },
    async commitGroup(groupId, prepared) {
      await (await client(COORDINATOR)).commitPrepared(prepared, { id: groupId });
    },
    async abortPrepared(prepared) {
      if (prepared.length > 0) await (await client(COORDINATOR)).abortPrepared(prepared);
    },
    readGroup: async (groupId) => readGroupImages(serverGroupSource(await client(COORDINATOR)), groupId),
    async listGroupNames() {
      const c = await client(COORDINATOR);
      return [...new Set((await c.listSnapshots()).map((r) => r.group).filter((g): g is string => !!g))];
    },
    async close() {
      const all = [...clients.values()];
      clients.clear();
      for (const p of all) await (await p.catch(() => undefined))?.close().catch(() => undefined);
    },
  };
}
