// scripts/build-native.mjs: a failed native build is a warning for users (they get the fallback)
// and an error in CI. Run on a scratch copy of native/ with a deliberate syntax error.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT, tempDirs } from './helpers/engine.js';

const tempDir = tempDirs();

/** A scratch root holding scripts/build-native.mjs and native/ (sources only), codec source broken. */
function brokenCopy(): string {
  const root = tempDir('build-native');
  mkdirSync(path.join(root, 'scripts'));
  cpSync(path.join(REPO_ROOT, 'scripts', 'build-native.mjs'), path.join(root, 'scripts', 'build-native.mjs'));
  mkdirSync(path.join(root, 'native'));
  cpSync(path.join(REPO_ROOT, 'native', 'binding.gyp'), path.join(root, 'native', 'binding.gyp'));
  cpSync(path.join(REPO_ROOT, 'native', 'src'), path.join(root, 'native', 'src'), { recursive: true });
  const c = path.join(root, 'native', 'src', 'vnstore_native.c');
  writeFileSync(c, readFileSync(c, 'utf8') + '\nthis is not C;\n');
  return root;
}

function build(root: string, ci: string | undefined) {
  const env = { ...process.env, CI: ci, VNSTORE_SKIP_NATIVE: undefined };
  return spawnSync(process.execPath, [path.join(root, 'scripts', 'build-native.mjs')], {
    cwd: root,
    env,
    encoding: 'utf8',
    timeout: 120_000,
  });
}

// Needs a compiler, as the real build does: where the addon was built there is one (in CI there
// always is: test/global-setup.ts refuses to run without the addons).
const compiler = existsSync(path.join(REPO_ROOT, 'native', 'build', 'Release', 'vnstore_native.node'));

describe.runIf(compiler)('scripts/build-native.mjs on a broken native source', () => {
  it('without CI: warns in one line, exits 0 (the install goes on with the fallback)', () => {
    const root = brokenCopy();
    const r = build(root, undefined);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr.trim()).toBe(
      'vnstore: native addon not available (node-gyp exited with status 1); using the TypeScript codec. See native/build/build-native.log',
    );
    expect(existsSync(path.join(root, 'native', 'build', 'Release', 'vnstore_native.node'))).toBe(false);
  });

  it.each(['true', '1'])('with CI=%s: exits 1 and shows the compiler error itself', (ci) => {
    const root = brokenCopy();
    const r = build(root, ci);
    expect(r.status).toBe(1);
    const lines = r.stderr.split('\n');
    expect(lines[0]).toBe('vnstore: native addon build FAILED in CI (node-gyp exited with status 1). See native/build/build-native.log:');
    expect(lines[1]).toMatch(/vnstore_native\.c:\d+:\d+: error: /);
    expect(r.stderr).toContain('this is not C;');
  });
});
