/**
 * Sessions through `vnstore serve` on loopback: exact round trips, agent-side dedup (only missing
 * pages cross the wire), and the refusals of issue 12 with their stable codes.
 */
import { describe, expect, it } from 'vitest';
import { blake3 } from '@napi-rs/blake-hash';
import { AgentConnection } from '../src/agent/connection.js';
import { restoreToBuffer, tempDirs, expectedImageDigest } from './helpers/engine.js';
import { makeImage, restoreRemote, startServer, TEST_TOKEN, PAGE, type Running } from './helpers/server.js';
import { chunkKey } from '../src/store/db.js';

const tempDir = tempDirs();

async function withServer(fn: (r: Running) => Promise<void>, options = {}): Promise<void> {
  const r = await startServer(tempDir('server'), options);
  try {
    await fn(r);
  } finally {
    await r.stop();
  }
}

describe('server sessions', () => {
  it('a pushed image restores exactly, through the server and from the store', () =>
    withServer(async (r) => {
      const c = await r.connect();
      const image = makeImage(300, 1, 1000);
      const s = await c.beginSession({ vm: 'web1', memoryBytes: image.length });
      await s.writePages(0, image);
      const rec = await s.commit();
      expect(rec.byteLength).toBe(image.length);
      expect(rec.imageDigest).toBe(expectedImageDigest(image));
      expect((await restoreRemote(c, rec.id)).equals(image)).toBe(true);
      expect((await restoreToBuffer(r.store, await r.store.resolveSnapshot(rec.id))).equals(image)).toBe(true);
      expect((await c.listSnapshots('web1')).map((x) => x.id)).toEqual([rec.id]);
    }));

  it('a consecutive snapshot sends only the pages the store lacks', () =>
    withServer(async (r) => {
      const c = await r.connect();
      const image = makeImage(512, 2);
      const s1 = await c.beginSession({ vm: 'db' });
      await s1.writePages(0, image);
      await s1.commit();
      const nonZero = s1.stats.pagesOffered;
      expect(s1.stats.pagesSent).toBe(nonZero);
      const next = Buffer.from(image);
      for (const p of [3, 100, 200]) next.set(makePageBytes(9000 + p), p * PAGE);
      const s2 = await c.beginSession({ vm: 'db' });
      expect(s2.parent).toBeDefined();
      await s2.writePages(0, next);
      const rec = await s2.commit();
      expect(s2.stats.pagesSent).toBe(3);
      expect(rec.parent).toBe(s2.parent!.id);
      expect((await restoreRemote(c, rec.id)).equals(next)).toBe(true);
    }));

  it('offers skip the exact index for pages the chunk table lacks or the parent holds at that index', () =>
    withServer(async (r) => {
      const asked: number[] = [];
      const lookupExact = r.store.lookupExact.bind(r.store);
      r.store.lookupExact = (digests) => {
        asked.push(digests.length);
        return lookupExact(digests);
      };
      const c = await r.connect();
      const image = makeImage(512, 4);
      const s1 = await c.beginSession({ vm: 'skip' });
      await s1.writePages(0, image);
      await s1.commit();
      // A first snapshot: every offered digest is new to the chunk table, so none is looked up.
      expect(s1.stats.pagesOffered).toBeGreaterThan(300);
      expect(asked.reduce((a, b) => a + b, 0)).toBe(0);
      asked.length = 0;
      const next = Buffer.from(image);
      next.set(makePageBytes(9003), 3 * PAGE); // new content where the parent has a zero page
      image.copy(next, 10 * PAGE, 1 * PAGE, 2 * PAGE); // page 1's content, now also at page 10
      const s2 = await c.beginSession({ vm: 'skip' });
      await s2.writePages(0, next);
      const rec = await s2.commit();
      // Unchanged pages equal the parent's: not looked up; the moved page is, and is found (no bytes
      // sent for it); the new page is absent from the chunk table: sent without a lookup.
      expect({ asked: asked.reduce((a, b) => a + b, 0), sent: s2.stats.pagesSent, offered: s2.stats.pagesOffered }).toEqual({
        asked: 1,
        sent: 1,
        offered: s1.stats.pagesOffered + 1,
      });
      expect(s2.stats.pagesSent).toBe(1);
      expect((await restoreRemote(c, rec.id)).equals(next)).toBe(true);
    }));

  it('pages re-sent in later rounds: the last write wins, repeats within a call too', () =>
    withServer(async (r) => {
      const c = await r.connect();
      const s = await c.beginSession({ vm: 'vm', memoryBytes: 8 * PAGE });
      await s.writePages(0, makeImage(8, 3));
      await s.writeScattered([2, 5, 2], Buffer.concat([makePageBytes(1), makePageBytes(2), makePageBytes(3)]));
      await s.writePage(5, Buffer.alloc(PAGE));
      await s.writePage(6, makePageBytes(4));
      const rec = await s.commit();
      const want = makeImage(8, 3);
      want.set(makePageBytes(3), 2 * PAGE);
      want.fill(0, 5 * PAGE, 6 * PAGE);
      want.set(makePageBytes(4), 6 * PAGE);
      expect((await restoreRemote(c, rec.id)).equals(want)).toBe(true);
    }));

  it('a wrong token gets one E_AUTH error and a closed connection; the server goes on', () =>
    withServer(async (r) => {
      await expect(r.connect('b'.repeat(64))).rejects.toMatchObject({ wire: 'E_AUTH', code: 'E_AUTH' });
      await expect(r.connect('')).rejects.toMatchObject({ wire: 'E_AUTH' });
      const c = await r.connect(TEST_TOKEN);
      expect(await c.listSnapshots()).toEqual([]);
    }));

  it('a page whose bytes do not match its digest is refused and not stored', () =>
    withServer(async (r) => {
      const conn = await AgentConnection.connect({ server: r.address, token: TEST_TOKEN });
      await conn.request({ t: 'begin', sid: 1, vm: 'evil', parent: 'none', memoryBytes: 4 * PAGE });
      const page = makePageBytes(77);
      const lie = blake3(makePageBytes(78));
      await expect(conn.request({ t: 'pages', sid: 1, indices: Uint32Array.of(0), digests: lie, data: page })).rejects.toMatchObject({
        wire: 'E_DIGEST_MISMATCH',
      });
      // The session goes on: the honest page is taken; neither the lie nor the page is stored under it.
      await conn.request({ t: 'pages', sid: 1, indices: Uint32Array.of(0), digests: blake3(page), data: page });
      await r.store.writer.flush();
      expect(await r.store.lookupExact([lie])).toEqual([undefined]);
      expect(await r.store.db.get(chunkKey(lie))).toBeUndefined();
      await conn.close();
    }));

  it('bad requests get their stable codes and the connection goes on', () =>
    withServer(async (r) => {
      const conn = await AgentConnection.connect({ server: r.address, token: TEST_TOKEN });
      const page = makePageBytes(5);
      const d = blake3(page);
      await expect(conn.request({ t: 'offer', sid: 9, indices: Uint32Array.of(0), digests: d })).rejects.toMatchObject({
        wire: 'E_UNKNOWN_SESSION',
      });
      await conn.request({ t: 'begin', sid: 1, vm: 'v', parent: 'none', memoryBytes: 2 * PAGE });
      await expect(conn.request({ t: 'begin', sid: 1, vm: 'v', parent: 'none' })).rejects.toMatchObject({ wire: 'E_SESSION_STATE' });
      await expect(conn.request({ t: 'pages', sid: 1, indices: Uint32Array.of(2), digests: d, data: page })).rejects.toMatchObject({
        wire: 'E_PAGE_RANGE',
      });
      await expect(conn.request({ t: 'zero', sid: 1, ranges: Uint32Array.of(1, 5) })).rejects.toMatchObject({ wire: 'E_PAGE_RANGE' });
      await conn.request({ t: 'pages', sid: 1, indices: Uint32Array.of(0), digests: d, data: page });
      await conn.request({ t: 'zero', sid: 1, ranges: Uint32Array.of(1, 1) });
      await conn.request({ t: 'prepare', sid: 1 });
      await expect(conn.request({ t: 'pages', sid: 1, indices: Uint32Array.of(0), digests: d, data: page })).rejects.toMatchObject({
        wire: 'E_SESSION_STATE',
      });
      await expect(conn.request({ t: 'prepare', sid: 1 })).rejects.toMatchObject({ wire: 'E_SESSION_STATE' });
      await conn.request({ t: 'commit', sid: 1 });
      await expect(conn.request({ t: 'commit', sid: 1 })).rejects.toMatchObject({ wire: 'E_SESSION_STATE' });
      await expect(conn.request({ t: 'call', method: 'nope', args: '{}' })).rejects.toMatchObject({ wire: 'E_USAGE' });
      await expect(conn.request({ t: 'restore', id: 'ffffffffffffffff' })).rejects.toMatchObject({ wire: 'E_NOT_FOUND' });
      const list = await conn.request({ t: 'call', method: 'list', args: '{}' });
      expect(list.t === 'result' && (JSON.parse(list.json) as unknown[]).length).toBe(1);
      await conn.close();
    }));

  it("a connection keeps no committed session's memory, only how it ended: its number stays refused", () =>
    withServer(async (r) => {
      const conn = await AgentConnection.connect({ server: r.address, token: TEST_TOKEN });
      const page = makeImage(1, 7);
      for (let sid = 1; sid <= 5; sid++) {
        await conn.request({ t: 'begin', sid, vm: `v${sid}`, parent: 'none', memoryBytes: PAGE });
        await conn.request({ t: 'pages', sid, indices: Uint32Array.of(0), digests: blake3(page), data: page });
        await conn.request({ t: 'prepare', sid });
        await conn.request({ t: 'commit', sid });
      }
      const [server] = [...(r.server as unknown as { connections: Set<{ sessions: Map<number, unknown> }> }).connections];
      expect(server.sessions.size).toBe(0);
      await expect(conn.request({ t: 'commit', sid: 3 })).rejects.toMatchObject({
        wire: 'E_SESSION_STATE',
        message: expect.stringContaining('committed') as unknown,
      });
      await expect(conn.request({ t: 'begin', sid: 5, vm: 'v', parent: 'none' })).rejects.toMatchObject({ wire: 'E_SESSION_STATE' });
      await expect(conn.request({ t: 'prepare', sid: 9 })).rejects.toMatchObject({ wire: 'E_UNKNOWN_SESSION' });
      expect(await r.store.listSnapshots()).toHaveLength(5);
      await conn.close();
    }));

  it('group commit across connections: all prepared members under one group id, all or none', () =>
    withServer(async (r) => {
      const agents = await Promise.all([r.connect(), r.connect(), r.connect()]);
      const images = [makeImage(40, 11), makeImage(50, 12), makeImage(30, 13)];
      const prepared = await Promise.all(
        agents.map(async (a, i) => {
          const s = await a.beginSession({ vm: `vm${i}`, group: 'epoch-1' });
          await s.writePages(0, images[i]);
          return s.prepare();
        }),
      );
      expect(await r.store.listSnapshots()).toEqual([]);
      const coordinator = await r.connect();
      // A member that is not prepared makes the whole group fail, and nothing is committed.
      await expect(coordinator.commitPrepared([...prepared.map((p) => p.id), '0000000000000000'], { id: 'epoch-1' })).rejects.toMatchObject(
        { wire: 'E_SESSION_STATE' },
      );
      expect(await r.store.listSnapshots()).toEqual([]);
      const records = await coordinator.commitPrepared(
        prepared.map((p) => p.id),
        { id: 'epoch-1' },
      );
      expect(records.map((x) => x.id)).toEqual(prepared.map((p) => p.id));
      for (let i = 0; i < 3; i++) expect((await restoreRemote(coordinator, records[i].id)).equals(images[i])).toBe(true);
      await expect(coordinator.commitPrepared([prepared[0].id], { id: 'epoch-1' })).rejects.toMatchObject({ wire: 'E_SESSION_STATE' });
    }));

  it('a dropped connection aborts its open sessions and keeps its prepared ones', () =>
    withServer(async (r) => {
      const a = await r.connect();
      const open = await a.beginSession({ vm: 'a' });
      await open.writePages(0, makeImage(20, 21));
      const b = await a.beginSession({ vm: 'b' });
      await b.writePages(0, makeImage(20, 22));
      const p = await b.prepare();
      expect(r.store.sessions.size).toBe(1);
      await a.close();
      await waitFor(() => r.store.sessions.size === 0);
      const coordinator = await r.connect();
      const [rec] = await coordinator.commitPrepared([p.id]);
      expect((await restoreRemote(coordinator, rec.id)).equals(makeImage(20, 22))).toBe(true);
      expect((await coordinator.listSnapshots()).map((x) => x.vm)).toEqual(['b']);
    }));

  it('gc runs inside the server while another agent ingests; both snapshots restore exactly', () =>
    withServer(async (r) => {
      const a = await r.connect();
      const b = await r.connect();
      const old = await a.beginSession({ vm: 'old' });
      await old.writePages(0, makeImage(200, 71));
      const oldRec = await old.commit();
      await a.forget({ ids: [oldRec.id] });
      const image = makeImage(400, 72);
      const s = await b.beginSession({ vm: 'busy' });
      const ingest = (async () => {
        for (let p = 0; p < 400; p += 50) await s.writePages(p, image.subarray(p * PAGE, (p + 50) * PAGE));
        return s.commit();
      })();
      const report = await a.gc({ maxUnused: { bytes: 0 } });
      const rec = await ingest;
      expect(report.result?.skipped ?? []).toEqual([]);
      expect((await restoreRemote(a, rec.id)).equals(image)).toBe(true);
      expect((await a.check({ readData: true })).ok).toBe(true);
    }));

  it('stop() returns while agents are still connected (their connections are closed)', async () => {
    const r = await startServer(tempDir('server'));
    const c = await r.connect();
    const s = await c.beginSession({ vm: 'left-open' });
    await s.writePages(0, makeImage(4, 61));
    const stopped = await Promise.race([r.server.stop().then(() => 'stopped'), new Promise((res) => setTimeout(() => res('hung'), 5000))]);
    expect(stopped).toBe('stopped');
    expect(r.store.sessions.size).toBe(0);
    await r.stop();
  });

  it('an idle session times out (E_TIMEOUT) and a prepared one past its deadline is aborted', () =>
    withServer(
      async (r) => {
        const c = await r.connect();
        const s = await c.beginSession({ vm: 'slow' });
        await s.writePages(0, makeImage(4, 31));
        const t = await c.beginSession({ vm: 'prep' });
        await t.writePages(0, makeImage(4, 32));
        const p = await t.prepare();
        await new Promise((res) => setTimeout(res, 600));
        await expect(s.writePages(4, makeImage(1, 33))).rejects.toMatchObject({ wire: 'E_TIMEOUT' });
        await expect(c.commitPrepared([p])).rejects.toMatchObject({ wire: 'E_SESSION_STATE' });
        expect(r.store.sessions.size).toBe(0);
      },
      { idleTimeoutMs: 200, preparedTimeoutMs: 300 },
    ));
});

function makePageBytes(seed: number): Buffer {
  return makeImage(1, seed * 4 + ((4 - ((seed * 7) % 4)) % 4));
}

async function waitFor(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((res) => setTimeout(res, 10));
  expect(cond()).toBe(true);
}
