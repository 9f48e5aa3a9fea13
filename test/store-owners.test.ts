/**
 * The owners of Store's mutable internals (issue 11): the live set of sessions, the chunk-table
 * generation and the gc fence each change only through their narrow interface, by its rules.
 */
import { describe, expect, it } from 'vitest';
import { ChunkGeneration } from '../src/store/chunk-generation.js';
import { SessionRegistry } from '../src/store/session-registry.js';
import type { Session } from '../src/store/session.js';
import { Store, type LookupFence } from '../src/store/store.js';
import { initStore, tempDirs } from './helpers/engine.js';

const fakeSession = (name: string) => ({ name }) as unknown as Session;

describe('SessionRegistry', () => {
  it('admits a session once begun, never one that failed to begin, and lets it leave', async () => {
    const reg = new SessionRegistry();
    const a = fakeSession('a');
    let finish!: (s: Session) => void;
    const pending = reg.admit(new Promise<Session>((resolve) => (finish = resolve)));
    let settled = false;
    const waiting = reg.beginningSettled().then(() => (settled = true));
    await Promise.resolve();
    expect(reg.size).toBe(0); // being begun: not yet live
    expect(settled).toBe(false);
    finish(a);
    expect(await pending).toBe(a);
    await waiting;
    expect([...reg]).toEqual([a]);
    await expect(reg.admit(Promise.reject(new Error('no parent')))).rejects.toThrow('no parent');
    expect(reg.size).toBe(1);
    reg.unregister(a);
    reg.unregister(a);
    expect(reg.size).toBe(0);
  });
});

describe('ChunkGeneration', () => {
  it('is stale after each index batch until saved for that very batch', () => {
    const t1 = Buffer.from('one');
    const t2 = Buffer.from('two');
    const gen = new ChunkGeneration(undefined, true);
    expect(gen.saved).toBe(true);
    gen.advance(t1);
    expect(gen.token).toBe(t1);
    expect(gen.saved).toBe(false);
    gen.advance(t2); // a batch landed while the table for t1 was being written
    gen.markSaved(t1);
    expect(gen.saved).toBe(false);
    gen.markSaved(t2);
    expect(gen.saved).toBe(true);
  });
});

describe('Store gc fence', () => {
  const tmp = tempDirs();
  it('is up for one gc at a time, and only the gc that raised it lowers it', async () => {
    const dir = await initStore(tmp('fence'));
    const store = await Store.open(dir, { workers: 0 });
    try {
      const fence: LookupFence = { lookupStart: 0, afterLookup: async () => undefined };
      const other: LookupFence = { lookupStart: 0, afterLookup: async () => undefined };
      store.raiseGcFence(fence);
      expect(store.gcFence).toBe(fence);
      expect(() => store.raiseGcFence(other)).toThrow(expect.objectContaining({ code: 'E_SESSION' }));
      store.lowerGcFence(other);
      expect(store.gcFence).toBe(fence);
      store.lowerGcFence(fence);
      expect(store.gcFence).toBeUndefined();
    } finally {
      await store.close();
    }
  });
});
