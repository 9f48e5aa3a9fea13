/**
 * PackFile's early datasync: once EARLY_SYNC_BYTES are written, the temp file is datasynced in the
 * background while payloads still arrive; the seal waits for it, and a failed one fails the seal (a
 * pack is never renamed into packs/ on an unflushed write error).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, existsSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BatchPool, EARLY_SYNC_BYTES, PackFile } from '../src/store/pack-file.js';
import { PACK_HEADER_BYTES, packFileName } from '../src/format/pack.js';
import { makeTempDir, removeDir } from './helpers/engine.js';

const PAGE = 4096;

/** The FileHandle class, whose datasync the pack calls (node:fs/promises does not export it). */
async function fileHandlePrototype(dir: string): Promise<{ datasync: () => Promise<void> }> {
  const h = await fsp.open(path.join(dir, 'probe'), 'w');
  const proto = Object.getPrototypeOf(h) as { datasync: () => Promise<void> };
  await h.close();
  return proto;
}

/** Appends `pages` random 4 KiB chunks (codec 0: stored as is); returns their bytes back to back. */
function fill(pack: PackFile, pages: number): Buffer {
  const payload = randomBytes(pages * PAGE);
  for (let k = 0; k < pages; k++) {
    const digest = Buffer.alloc(32);
    digest.writeUInt32LE(k);
    pack.append(digest, payload.subarray(k * PAGE, (k + 1) * PAGE), 0);
  }
  return payload;
}

describe('PackFile early datasync', () => {
  let dir: string;
  afterEach(() => {
    vi.restoreAllMocks();
    removeDir(dir);
  });

  /** A temp dir with tmp/ and packs/, and the FileHandle prototype to spy on. */
  async function setup(): Promise<{ tmp: string; packs: string; proto: { datasync: () => Promise<void> } }> {
    dir = makeTempDir('vnstore-early-sync-');
    const tmp = path.join(dir, 'tmp');
    const packs = path.join(dir, 'packs');
    await fsp.mkdir(tmp);
    await fsp.mkdir(packs);
    return { tmp, packs, proto: await fileHandlePrototype(dir) };
  }

  it('datasyncs while payloads are written, and the sealed pack holds exactly the bytes', async () => {
    const { tmp, packs, proto } = await setup();
    const datasync = vi.spyOn(proto, 'datasync');
    const pack = new PackFile(7, tmp, new BatchPool());
    // The default pack target (32 MiB) holds four early-sync steps.
    const payload = fill(pack, (4 * EARLY_SYNC_BYTES) / PAGE);
    await pack.written();
    const beforeSeal = datasync.mock.calls.length;
    expect(beforeSeal).toBeGreaterThanOrEqual(1);
    await pack.seal(packs, () => undefined);
    const bytes = readFileSync(path.join(packs, packFileName(7)));
    expect(Buffer.compare(bytes.subarray(PACK_HEADER_BYTES, PACK_HEADER_BYTES + payload.length), payload)).toBe(0);
    expect(pack.record().payloadBytes).toBe(payload.length);
  });

  it('a failed early datasync fails the seal, and nothing is renamed into packs/', async () => {
    const { tmp, packs, proto } = await setup();
    vi.spyOn(proto, 'datasync').mockRejectedValue(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    const pack = new PackFile(8, tmp, new BatchPool());
    fill(pack, (2 * EARLY_SYNC_BYTES) / PAGE);
    await pack.written();
    await expect(pack.seal(packs, () => undefined)).rejects.toMatchObject({ code: 'EIO' });
    expect(existsSync(path.join(packs, packFileName(8)))).toBe(false);
    await pack.discard(packs);
    expect(existsSync(pack.tmpPath)).toBe(false);
  });
});
