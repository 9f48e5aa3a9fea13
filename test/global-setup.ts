/**
 * Runs once before the test files (vitest globalSetup). Tests must never exercise a stale build:
 * page workers load dist/chunk/page-worker.js and CLI tests spawn dist/cli/bin.cjs, so dist/ is
 * rebuilt here when any source is newer than its compiled file; the native addons are rebuilt when
 * native/ changed since they were built, or when they are an AddressSanitizer build and this run
 * does not preload libasan (loading one then aborts the process), or the other way round.
 *
 * In watch mode the same checks run again before every rerun.
 *
 * In CI (CI=true or 1, or VNSTORE_REQUIRE_NATIVE=1) the run stops here unless both addons load and
 * pass their self-tests: otherwise every native test would quietly run the fallback and pass.
 * VNSTORE_NATIVE=0 (a deliberate fallback run) is exempt.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { nativeInputs, staleNativeInputs, staleSources } from './helpers/fresh-build.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const release = path.join(root, 'native', 'build', 'Release');
const modules = ['vnstore_native.node', 'vnstore_hash.node'].map((m) => path.join(release, m));
const rel = (p: string) => path.relative(root, p);

function run(what: string, args: string[]): void {
  process.stderr.write(`test set-up: ${what}\n`);
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`test set-up: ${what} failed (exit ${String(r.status ?? r.signal)})`);
}

function freshNative(): void {
  const wantSanitized = /libasan/.test(process.env.LD_PRELOAD ?? '');
  const isSanitized = existsSync(path.join(release, 'SANITIZED'));
  const stale = staleNativeInputs(nativeInputs(path.join(root, 'native')), modules);
  const built = modules.some((m) => existsSync(m));
  if (!built || (stale.length === 0 && isSanitized === wantSanitized)) return;
  const why =
    stale.length > 0
      ? `${rel(stale[0])} is newer than the built addons`
      : isSanitized
        ? 'the addons are a sanitizer build and libasan is not preloaded'
        : 'libasan is preloaded but the addons are a normal build';
  run(`rebuilding the native addons (${why})`, ['scripts/build-native.mjs', ...(wantSanitized ? ['--sanitize'] : [])]);
}

function freshDist(): void {
  const stale = staleSources(
    path.join(root, 'src'),
    path.join(root, 'dist'),
    ['tsconfig.json', 'tsconfig.build.json'].map((f) => path.join(root, f)),
  );
  if (stale.length === 0) return;
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  run(`rebuilding dist/ (${rel(stale[0])}${stale.length > 1 ? ` and ${stale.length - 1} more` : ''} newer than its build)`, [
    tsc,
    '-p',
    'tsconfig.build.json',
  ]);
}

async function requireNativeInCI(): Promise<void> {
  const required = /^(1|true)$/i.test(process.env.CI ?? '') || process.env.VNSTORE_REQUIRE_NATIVE === '1';
  if (!required || process.env.VNSTORE_NATIVE === '0') return;
  const { activePaths } = await import('../src/chunk/active-paths.js');
  const p = activePaths();
  const problems: string[] = [];
  if (p.codec.addon !== 'loaded') problems.push(`the page codec addon did not load: ${p.codec.reason ?? 'unknown'}`);
  if (p.hashing.addon !== 'loaded') problems.push(`the page hasher addon did not load: ${p.hashing.reason ?? 'unknown'}`);
  if (problems.length > 0)
    throw new Error(`CI needs the native addons (set VNSTORE_NATIVE=0 to test the fallback on purpose): ${problems.join('; ')}`);
  process.stderr.write(
    `test set-up: native addons loaded (codec ${p.codec.path}, liblz4 ${p.codec.liblz4 ?? '?'}; hashing ${p.hashing.path} ${p.hashing.kernel ?? ''})\n`,
  );
}

export default async function setup(project: TestProject): Promise<void> {
  freshNative();
  freshDist();
  await requireNativeInCI();
  // Watch mode (`npx vitest`): an edit reruns tests without this set-up; rebuild before each rerun.
  project.onTestsRerun(() => {
    freshNative();
    freshDist();
  });
}
