/** In-process server fixtures for the server tests: a store, a VnServer on loopback, agent clients. */
import { Store, type OpenOptions } from '../../src/store/store.js';
import { VnServer, type ServerOptions } from '../../src/server/server.js';
import { AgentClient } from '../../src/agent/client.js';
import { parseAddress } from '../../src/server/address.js';
import { initStore, makePage, PAGE, type PageKindSpec } from './engine.js';

export const TEST_TOKEN = 'a'.repeat(64);

export interface Running {
  dir: string;
  store: Store;
  server: VnServer;
  address: string;
  /** `maxVersion`: speak as an agent of that protocol version at most. */
  connect(token?: string, maxVersion?: number): Promise<AgentClient>;
  stop(): Promise<void>;
}

export async function startServer(
  root: string,
  options: Partial<ServerOptions> = {},
  dir?: string,
  open: OpenOptions = {},
): Promise<Running> {
  const storeDir = dir ?? (await initStore(root));
  const store = await Store.open(storeDir, { workers: 0, ...open });
  const server = new VnServer(store, { token: TEST_TOKEN, ...options });
  await server.adoptHeld();
  const address = await server.listen(parseAddress('127.0.0.1:0'));
  const clients: AgentClient[] = [];
  return {
    dir: storeDir,
    store,
    server,
    address,
    async connect(token = TEST_TOKEN, maxVersion?: number) {
      const c = await AgentClient.connect({ server: address, token, maxVersion });
      clients.push(c);
      return c;
    },
    async stop() {
      for (const c of clients) await c.close().catch(() => undefined);
      await server.stop();
      await store.close();
    },
  };
}

/** An image of `pages` pages mixing kinds (a quarter zero), determined by `seed`. */
export function makeImage(pages: number, seed: number, tail = 0): Buffer {
  const kinds: PageKindSpec[] = ['random', 'zero', 'compressible', 'sparse'];
  const parts = Array.from({ length: pages }, (_, i) => makePage(kinds[(i * 7 + seed) % 4], seed * 100_003 + i));
  if (tail > 0) parts.push(makePage('random', seed * 7 + 1).subarray(0, tail));
  return Buffer.concat(parts);
}

export async function restoreRemote(client: AgentClient, id: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  await client.restore(id, (b) => void parts.push(Buffer.from(b)));
  return Buffer.concat(parts);
}

export { PAGE };
