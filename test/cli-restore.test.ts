/**
 * Restore across many windows (WINDOW_PAGES each) through every output path: stdout, `-o` (sparse,
 * written by whoever runs the window), `--no-sparse`, and the library sink. Windows reuse their
 * memory (lent slabs, reused buffers), so stale bytes from an earlier window must never show, in
 * particular where a window has zero pages or is entirely zero.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WINDOW_PAGES } from '../src/store/job-sizes.js';
import { Store } from '../src/store/store.js';
import { makePage, makeTempDir, PAGE, removeDir, restoreToBuffer, runCli } from './helpers/engine.js';

const WINDOW = WINDOW_PAGES;
let dir: string;
let store: string;
let image: Buffer;
let id: string;

/** Five windows and a short tail: mixed, all zero, random, compressible with zero holes, mixed again. */
function buildImage(): Buffer {
  const pages: Buffer[] = [];
  for (let w = 0; w < 5; w++) {
    for (let i = 0; i < WINDOW; i++) {
      const n = w * WINDOW + i;
      if (w === 1) pages.push(Buffer.alloc(PAGE));
      else if (w === 2) pages.push(makePage('random', n));
      else if (w === 3) pages.push(i % 3 === 0 ? Buffer.alloc(PAGE) : makePage('compressible', n % 50));
      // Windows 0 and 4 have their zero pages in different places: a window that takes over the
      // memory of an earlier one must not show that window's bytes where it has zeros.
      else if (w === 0) pages.push(i % 4 === 1 ? Buffer.alloc(PAGE) : makePage(i % 2 ? 'sparse' : 'random', n));
      else pages.push(i % 5 === 0 ? Buffer.alloc(PAGE) : makePage(i % 2 ? 'sparse' : 'random', n));
    }
  }
  pages.push(makePage('random', 999_999).subarray(0, 1000)); // the image need not end on a page
  return Buffer.concat(pages);
}

beforeAll(async () => {
  dir = makeTempDir('cli-restore');
  store = path.join(dir, 'store');
  image = buildImage();
  const file = path.join(dir, 'image.img');
  writeFileSync(file, image);
  expect((await runCli(['init', '--store', store])).code).toBe(0);
  const put = await runCli(['put', '--store', store, '--vm', 'big', file]);
  expect(put.stderr).toBe('');
  id = put.stdout.toString().trim();
}, 120_000);

afterAll(() => removeDir(dir));

describe('restore of a multi-window image', () => {
  for (const workers of ['0', '1', '2']) {
    it(`is exact on stdout, with -o, and with --no-sparse (VNSTORE_WORKERS=${workers})`, async () => {
      const env = { VNSTORE_WORKERS: workers };
      const viaStdout = await runCli(['restore', '--store', store, id], { env });
      expect(viaStdout.stderr).toBe('');
      expect(viaStdout.stdout.equals(image)).toBe(true);
      for (const extra of [[], ['--no-sparse']]) {
        const out = path.join(dir, `out-${workers}-${extra.length}.img`);
        const r = await runCli(['restore', '--store', store, id, '-o', out, ...extra], { env });
        expect(r.stderr).toBe('');
        expect(readFileSync(out).equals(image)).toBe(true);
      }
    });
  }

  it('is exact through the library sink, with workers started and on demand', async () => {
    for (const startWorkers of ['open', 'on-demand'] as const) {
      const s = await Store.open(store, { workers: 1, startWorkers });
      try {
        const rec = await s.resolveSnapshot(id);
        expect((await restoreToBuffer(s, rec)).equals(image)).toBe(true);
        expect((await restoreToBuffer(s, rec)).equals(image)).toBe(true); // again, on reused slabs
      } finally {
        await s.close();
      }
    }
  });
});
