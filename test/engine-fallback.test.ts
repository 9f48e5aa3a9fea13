// The pure-TypeScript codec path, end to end through the CLI: a store written without the native
// addon restores with it and vice versa (one on-disk format), and both give back exact bytes.
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { compressiblePage, makeTempDir, randomPage, removeDir, runCli, PAGE } from './helpers/engine.js';

const root = makeTempDir('vnstore-fallback-');
afterAll(() => removeDir(root));

function image(seed: number): Buffer {
  const pages: Buffer[] = [];
  for (let i = 0; i < 96; i++) {
    if (i % 5 === 0) pages.push(Buffer.alloc(PAGE));
    else if (i % 7 === 0) pages.push(randomPage(seed * 1000 + i));
    else pages.push(compressiblePage(seed * 1000 + (i % 40)));
  }
  return Buffer.concat([...pages, compressiblePage(seed, 1234)]); // odd length
}

describe('codec fallback (VNSTORE_NATIVE=0) in the whole store', () => {
  it('put and restore with either codec, crossing over, give back exact bytes', async () => {
    const store = path.join(root, 'store');
    expect((await runCli(['init', '--store', store])).code).toBe(0);
    const js = { VNSTORE_NATIVE: '0' };
    const files = [image(1), image(2)].map((b, i) => {
      const f = path.join(root, `img${i}`);
      writeFileSync(f, b);
      return { f, b };
    });
    const put1 = await runCli(['put', '--store', store, '--vm', 'a', files[0].f], { env: js });
    expect(put1.code, put1.stderr).toBe(0);
    const put2 = await runCli(['put', '--store', store, '--vm', 'a', files[1].f]);
    expect(put2.code, put2.stderr).toBe(0);
    const ids = [put1.stdout.toString().trim(), put2.stdout.toString().trim()];
    for (const [k, id] of ids.entries()) {
      for (const env of [js, {}]) {
        const r = await runCli(['restore', '--store', store, id], { env });
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout.equals(files[k].b)).toBe(true);
      }
    }
  });
});
