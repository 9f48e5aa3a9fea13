/**
 * What makes a build stale for the tests. Page workers, spawned CLIs and subprocess tests run the
 * compiled dist/ and the native addons, not the sources vitest transforms, so a `npx vitest run`
 * after an edit would test yesterday's code. test/global-setup.ts rebuilds whatever these report.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** The file tsc emits for a source (a.ts → a.js, a.cts → a.cjs, a.mts → a.mjs); undefined for .d.ts. */
export function emittedFile(srcDir: string, distDir: string, source: string): string | undefined {
  if (/\.d\.[cm]?ts$/.test(source)) return undefined;
  const m = /\.([cm]?)ts$/.exec(source);
  if (!m) return undefined;
  return path.join(distDir, path.relative(srcDir, source).slice(0, -m[0].length) + `.${m[1]}js`);
}

/**
 * Sources under srcDir whose compiled file in distDir is missing or older than they are, and
 * `extraInputs` (build configs) newer than the oldest compiled file. Empty when dist is fresh.
 */
export function staleSources(srcDir: string, distDir: string, extraInputs: string[] = []): string[] {
  const stale: string[] = [];
  let oldestOutput = Infinity;
  for (const source of filesUnder(srcDir)) {
    const out = emittedFile(srcDir, distDir, source);
    if (out === undefined) continue;
    const outTime = existsSync(out) ? statSync(out).mtimeMs : -Infinity;
    oldestOutput = Math.min(oldestOutput, outTime);
    if (outTime < statSync(source).mtimeMs) stale.push(source);
  }
  for (const input of extraInputs) if (existsSync(input) && statSync(input).mtimeMs > oldestOutput) stale.push(input);
  return stale;
}

/**
 * Native inputs (sources and binding.gyp) newer than the oldest of the built modules; empty when
 * the modules are fresh, or when none is built (no compiler: the fallback is what runs, and CI
 * refuses that separately).
 */
export function staleNativeInputs(inputs: string[], modules: string[]): string[] {
  const built = modules.filter((m) => existsSync(m));
  if (built.length === 0) return [];
  if (built.length < modules.length) return inputs; // half a build: rebuild it whole
  const oldest = Math.min(...built.map((m) => statSync(m).mtimeMs));
  return inputs.filter((i) => statSync(i).mtimeMs > oldest);
}

/** Every file under a directory (the native sources). */
export function nativeInputs(nativeDir: string): string[] {
  return [path.join(nativeDir, 'binding.gyp'), ...filesUnder(path.join(nativeDir, 'src'))];
}
