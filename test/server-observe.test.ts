/** Metrics over HTTP, TLS on request, and one backend interface for a local store or a server. */
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { AgentClient } from '../src/agent/client.js';
import { openBackend, type BackendConfig } from '../src/agent/backend.js';
import { restoreToBuffer, tempDirs, initStore } from './helpers/engine.js';
import { makeImage, restoreRemote, startServer, TEST_TOKEN } from './helpers/server.js';
import { Store } from '../src/store/store.js';

const tempDir = tempDirs();

/** Stores `image` through the client as one snapshot of `vm`, restores it exactly, and closes. */
async function expectRoundTrip(c: AgentClient, vm: string, image: Buffer): Promise<void> {
  const s = await c.beginSession({ vm });
  await s.writePages(0, image);
  const rec = await s.commit();
  expect((await restoreRemote(c, rec.id)).equals(image)).toBe(true);
  await c.close();
}

describe('server observability and transports', () => {
  it('Prometheus metrics: sessions, pages offered/new/duplicate, wire and stored bytes, commit latency, errors by code', async () => {
    const r = await startServer(tempDir('metrics'));
    const http = r.server.metrics.httpServer();
    await new Promise<void>((res) => http.listen(0, '127.0.0.1', res));
    try {
      const c = await r.connect();
      const image = makeImage(64, 7);
      const s1 = await c.beginSession({ vm: 'm' });
      await s1.writePages(0, image);
      await s1.commit();
      const s2 = await c.beginSession({ vm: 'm' });
      await s2.writePages(0, image); // all duplicates now
      await s2.commit();
      await expect(r.connect('wrong')).rejects.toMatchObject({ wire: 'E_AUTH' });
      const open = await c.beginSession({ vm: 'n' });
      const text = await (await fetch(`http://127.0.0.1:${(http.address() as AddressInfo).port}/metrics`)).text();
      const value = (name: string) => Number(new RegExp(`^${name.replace(/[{}"]/g, (ch) => `\\${ch}`)} (\\S+)$`, 'm').exec(text)?.[1]);
      const offered = s1.stats.pagesOffered + s2.stats.pagesOffered;
      expect(value('vnstore_pages_offered_total')).toBe(offered);
      expect(value('vnstore_pages_new_total')).toBe(s1.stats.pagesSent);
      expect(value('vnstore_pages_duplicate_total')).toBe(offered - s1.stats.pagesSent);
      expect(value('vnstore_sessions_open')).toBe(1);
      expect(value('vnstore_commits_total')).toBe(2);
      expect(value('vnstore_commit_seconds_count{step="commit"}')).toBe(2);
      expect(value('vnstore_errors_total{code="E_AUTH"}')).toBe(1);
      expect(value('vnstore_wire_bytes_total{direction="in"}')).toBeGreaterThan(s1.stats.pagesSent * 4096);
      expect(value('vnstore_stored_bytes_total')).toBeGreaterThan(0);
      await open.abort();
    } finally {
      http.close();
      await r.stop();
    }
  });

  it('TLS on request: an agent that trusts the certificate round-trips; one that does not cannot connect', async () => {
    const root = tempDir('tls');
    const key = path.join(root, 'key.pem');
    const cert = path.join(root, 'cert.pem');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
      ],
      { stdio: 'ignore' },
    );
    const store = await Store.open(await initStore(root), { workers: 0 });
    const { VnServer } = await import('../src/server/server.js');
    const server = new VnServer(store, { token: TEST_TOKEN });
    try {
      const address = await server.listen(
        { kind: 'tcp', host: '127.0.0.1', port: 0, tls: true },
        { cert: readFileSync(cert), key: readFileSync(key) },
      );
      expect(address).toMatch(/^tls:\/\/127\.0\.0\.1:\d+$/);
      await expect(AgentClient.connect({ server: address, token: TEST_TOKEN })).rejects.toMatchObject({ code: 'E_IO' });
      const c = await AgentClient.connect({ server: address, token: TEST_TOKEN, tlsCa: readFileSync(cert) });
      await expectRoundTrip(c, 'tls', makeImage(40, 8, 100));
    } finally {
      await server.stop();
      await store.close();
    }
  });

  it('a Unix socket (mode 0600) serves agents as TCP does', async () => {
    const root = tempDir('unix');
    const store = await Store.open(await initStore(root), { workers: 0 });
    const { VnServer } = await import('../src/server/server.js');
    const server = new VnServer(store, { token: TEST_TOKEN });
    try {
      const sock = path.join(root, 'vnstore.sock');
      const address = await server.listen({ kind: 'unix', path: sock });
      expect(address).toBe(`unix:${sock}`);
      expect(statSync(sock).mode & 0o777).toBe(0o600);
      const c = await AgentClient.connect({ server: address, token: TEST_TOKEN });
      await expectRoundTrip(c, 'u', makeImage(20, 10));
    } finally {
      await server.stop();
      await store.close();
    }
  });

  it('openBackend: the same daemon code writes to a local store or through a server', async () => {
    const r = await startServer(tempDir('backend'));
    const localDir = await initStore(tempDir('backend-local'));
    const image = makeImage(30, 9);
    const daemon = async (config: BackendConfig) => {
      const backend = await openBackend(config);
      try {
        const s = await backend.beginSession({ vm: 'd', memoryBytes: image.length });
        await s.writePages(0, image.subarray(0, 10 * 4096));
        await s.writeScattered([12, 10, 11], Buffer.concat([image.subarray(12 * 4096, 13 * 4096), image.subarray(10 * 4096, 12 * 4096)]));
        await s.writePages(13, image.subarray(13 * 4096));
        const rec = await s.commit();
        expect((await backend.listSnapshots('d')).map((x) => x.id)).toEqual([rec.id]);
        return rec;
      } finally {
        await backend.close();
      }
    };
    try {
      const viaServer = await daemon({ server: r.address, token: TEST_TOKEN });
      const local = await daemon({ store: localDir, open: { workers: 0 } });
      expect(viaServer.imageDigest).toBe(local.imageDigest);
      expect((await restoreToBuffer(r.store, viaServer)).equals(image)).toBe(true);
    } finally {
      await r.stop();
    }
  });
});
