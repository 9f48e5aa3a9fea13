/**
 * The agent's writes pipeline across calls (issue 12): a write call settles once its frames are
 * written, not once its PAGES are answered, so the next call hashes and offers while the server
 * stores; frames still reach the server in call order, and a PAGES error fails the next call or
 * prepare. Checked against a scripted server that holds PAGES answers back.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/agent/client.js';
import type { Message } from '../src/protocol/index.js';
import { scriptedServer } from './helpers/scripted-server.js';

const PAGE = 4096;
const servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/** A server that answers OFFER (every page missing) and PREPARE, and keeps PAGES unanswered in `held`. */
async function pipelineServer() {
  const log: string[] = [];
  const held: { req: number; indices: number[]; answer: (m: Message) => void }[] = [];
  const { address, server } = await scriptedServer((m, answer) => {
    if (m.t === 'offer') {
      log.push(`offer ${Array.from(m.indices).join(',')}`);
      answer({ t: 'missing', req: m.req, positions: Uint32Array.from(m.indices.keys()) });
    } else if (m.t === 'pages') {
      log.push(`pages ${Array.from(m.indices).join(',')} ${Buffer.from(m.data.subarray(0, 1)).toString('hex')}`);
      held.push({ req: m.req, indices: Array.from(m.indices), answer });
    } else if (m.t === 'prepare') {
      log.push('prepare');
      answer({ t: 'result', req: m.req, json: '{"id":"0123456789abcdef"}' });
    }
  });
  servers.push(server);
  return { address, log, held };
}

const pages = (n: number, fill: number) => Buffer.alloc(n * PAGE, fill);

/** Waits (up to 5 s) until `ok()`: frames written by the agent take a moment to reach the server. */
async function until(ok: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !ok(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(ok()).toBe(true);
}

describe('agent write pipelining', () => {
  it("a write settles with its PAGES unanswered; the next write's frames follow it in order", async () => {
    const srv = await pipelineServer();
    const client = await AgentClient.connect({ server: srv.address, token: 't' });
    const s = await client.beginSession({ vm: 'vm', memoryBytes: 16 * PAGE });
    await s.writePages(0, pages(2, 0x11)); // settles although the server never answers its PAGES
    await s.writePages(1, pages(1, 0x22)); // page 1 again, new content
    await until(() => srv.held.length === 2);
    expect(srv.log).toEqual(['offer 0,1', 'pages 0,1 11', 'offer 1', 'pages 1 22']);
    for (const h of srv.held) h.answer({ t: 'result', req: h.req, json: '{}' });
    await expect(s.prepare()).resolves.toMatchObject({ id: '0123456789abcdef' });
    await client.close();
  });

  it("a PAGES error fails the next write, and prepare, with the server's code", async () => {
    const srv = await pipelineServer();
    const client = await AgentClient.connect({ server: srv.address, token: 't' });
    const s = await client.beginSession({ vm: 'vm', memoryBytes: 16 * PAGE });
    await s.writePages(0, pages(2, 0x33));
    await until(() => srv.held.length === 1);
    const h = srv.held[0];
    h.answer({ t: 'error', req: h.req, code: 'E_DIGEST_MISMATCH', message: 'page 0: bytes do not match' });
    await new Promise((resolve) => setTimeout(resolve, 50));
    await expect(s.writePages(4, pages(1, 0x44))).rejects.toMatchObject({ wire: 'E_DIGEST_MISMATCH' });
    await expect(s.prepare()).rejects.toMatchObject({ wire: 'E_DIGEST_MISMATCH' });
    expect(srv.log).not.toContain('prepare');
    await client.close();
  });
});
