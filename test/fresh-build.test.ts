// Tests never exercise a stale build: the rules test/global-setup.ts rebuilds by, on a scratch
// tree with set mtimes, and the proof that this very run got a fresh dist/.
import { describe, expect, it } from 'vitest';
import { mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { emittedFile, nativeInputs, staleNativeInputs, staleSources } from './helpers/fresh-build.js';
import { REPO_ROOT, tempDirs } from './helpers/engine.js';

const tempDir = tempDirs();

function file(p: string, mtimeSeconds: number): string {
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, '//\n');
  utimesSync(p, mtimeSeconds, mtimeSeconds);
  return p;
}

describe('stale build detection', () => {
  it('maps each source to the file tsc emits', () => {
    expect(emittedFile('/r/src', '/r/dist', '/r/src/chunk/page-worker.ts')).toBe('/r/dist/chunk/page-worker.js');
    expect(emittedFile('/r/src', '/r/dist', '/r/src/cli/bin.cts')).toBe('/r/dist/cli/bin.cjs');
    expect(emittedFile('/r/src', '/r/dist', '/r/src/x.mts')).toBe('/r/dist/x.mjs');
    expect(emittedFile('/r/src', '/r/dist', '/r/src/types.d.ts')).toBeUndefined();
    expect(emittedFile('/r/src', '/r/dist', '/r/src/notes.md')).toBeUndefined();
  });

  it('reports sources with a missing or older compiled file, and configs newer than the oldest output', () => {
    const root = tempDir('fresh');
    const [src, dist] = [path.join(root, 'src'), path.join(root, 'dist')];
    const a = file(path.join(src, 'a.ts'), 1000);
    const b = file(path.join(src, 'sub', 'b.cts'), 1000);
    file(path.join(src, 'c.d.ts'), 5000);
    const config = file(path.join(root, 'tsconfig.json'), 1000);
    expect(staleSources(src, dist, [config])).toEqual([a, b, config]); // nothing built: all stale
    file(path.join(dist, 'a.js'), 2000);
    file(path.join(dist, 'sub', 'b.cjs'), 2000);
    expect(staleSources(src, dist, [config])).toEqual([]);
    utimesSync(a, 3000, 3000); // edited after the build
    expect(staleSources(src, dist, [config])).toEqual([a]);
    file(path.join(dist, 'a.js'), 4000);
    utimesSync(config, 3000, 3000); // newer than b.cjs
    expect(staleSources(src, dist, [config])).toEqual([config]);
  });

  it('reports native inputs newer than the oldest module, all of them for half a build, none without one', () => {
    const root = tempDir('fresh-native');
    const gyp = file(path.join(root, 'native', 'binding.gyp'), 1000);
    const c = file(path.join(root, 'native', 'src', 'x.c'), 1000);
    const h = file(path.join(root, 'native', 'src', 'x.h'), 1000);
    const inputs = nativeInputs(path.join(root, 'native'));
    expect(inputs.sort()).toEqual([gyp, c, h].sort());
    const mods = [path.join(root, 'm1.node'), path.join(root, 'm2.node')];
    expect(staleNativeInputs(inputs, mods)).toEqual([]); // no compiler: nothing to rebuild
    file(mods[0], 2000);
    expect(staleNativeInputs(inputs, mods)).toEqual(inputs);
    file(mods[1], 2500);
    expect(staleNativeInputs(inputs, mods)).toEqual([]);
    utimesSync(h, 2200, 2200); // a header edited after the first module was built
    expect(staleNativeInputs(inputs, mods)).toEqual([h]);
  });

  it('this run sees a dist/ built from the current src/ (the page workers and the CLI run it)', () => {
    const configs = ['tsconfig.json', 'tsconfig.build.json'].map((f) => path.join(REPO_ROOT, f));
    expect(staleSources(path.join(REPO_ROOT, 'src'), path.join(REPO_ROOT, 'dist'), configs)).toEqual([]);
    expect(
      staleNativeInputs(
        nativeInputs(path.join(REPO_ROOT, 'native')),
        ['vnstore_native.node', 'vnstore_hash.node'].map((m) => path.join(REPO_ROOT, 'native/build/Release', m)),
      ),
    ).toEqual([]);
  });
});
