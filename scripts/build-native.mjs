#!/usr/bin/env node
// Builds the optional native addons (native/ -> native/build/Release/vnstore_native.node, the page
// codec, and vnstore_hash.node, the multi-page BLAKE3).
// Run by the package's "install" script. For users it never fails the install: without the addons,
// vnstore uses its TypeScript codec (src/chunk/codec.ts) and per-page @napi-rs hashing, so on any
// problem we print one warning line and exit 0. In CI (CI=true or CI=1) the same problem fails the
// install (exit 1): a broken addon must not pass CI by quietly falling back.
// The full node-gyp output goes to native/build/build-native.log.
//
// Env: VNSTORE_SKIP_NATIVE=1 skips the build (also in CI: an explicit choice).
// --sanitize: build with AddressSanitizer and UBSan (binding.gyp's vnstore_sanitize), for .ci/run;
// such a build loads only with libasan preloaded, so the load check below is left to that run.
import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = path.join(root, 'native');
const buildDir = path.join(nativeDir, 'build');
const addon = path.join(buildDir, 'Release', 'vnstore_native.node');
const logFile = path.join(buildDir, 'build-native.log');
const sanitizedMarker = path.join(buildDir, 'Release', 'SANITIZED');
const rel = (p) => path.relative(root, p);
const inCI = /^(1|true)$/i.test(process.env.CI ?? '');
const sanitize = process.argv.includes('--sanitize');

function warn(reason) {
  if (inCI || sanitize) {
    console.error(`vnstore: native addon build FAILED in CI (${reason}). See ${rel(logFile)}:`);
    printLogTail();
    process.exit(1);
  }
  console.warn(`vnstore: native addon not available (${reason}); using the TypeScript codec. See ${rel(logFile)}`);
  process.exit(0);
}

/**
 * In CI the log file is gone with the runner: show the compiler's first errors (the first is the
 * cause, the rest mostly its echoes) with a few lines of context each, else the log's last lines.
 */
function printLogTail() {
  let lines;
  try {
    lines = readFileSync(logFile, 'utf8').trimEnd().split('\n');
  } catch {
    return; // no log written: the reason line says it all
  }
  const errors = lines.flatMap((l, i) => (/\berror\b:/.test(l) ? [i] : [])).slice(0, 5);
  const shown = errors.length > 0 ? errors.flatMap((i) => lines.slice(i, i + 3)) : lines.slice(-40);
  console.error(shown.join('\n'));
}

function writeLog(text) {
  try {
    mkdirSync(buildDir, { recursive: true });
    writeFileSync(logFile, text);
  } catch {
    // Logging is best effort; the warning line still tells the user what happened.
  }
}

function appendLog(text) {
  try {
    appendFileSync(logFile, text);
  } catch {
    // best effort, as above
  }
}

/** node-gyp: npm exports its bundled copy to scripts; otherwise look beside npm or node. */
function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    process.env.npm_execpath && path.join(path.dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    path.join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((c) => c && existsSync(c));
}

/** Headers: prefer what npm configured, else the running node's own install prefix (no download). */
function findNodeDir() {
  if (process.env.npm_config_nodedir) return process.env.npm_config_nodedir;
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : undefined;
}

if (process.env.VNSTORE_SKIP_NATIVE === '1') {
  console.warn('vnstore: VNSTORE_SKIP_NATIVE=1, native addon not built; using the TypeScript codec');
  process.exit(0);
}

const gyp = findNodeGyp();
if (!gyp) {
  writeLog('node-gyp not found (npm_config_node_gyp unset and no bundled copy beside npm/node)\n');
  warn('node-gyp not found');
}
const nodedir = findNodeDir();
const args = [gyp, 'rebuild', '--release', `--directory=${nativeDir}`];
if (nodedir) args.push(`--nodedir=${nodedir}`);
if (sanitize) args.push('--vnstore_sanitize=1'); // node-gyp passes unknown options to gyp as variables

const res = spawnSync(process.execPath, args, { cwd: nativeDir, encoding: 'utf8', timeout: 300_000 });
writeLog(`$ ${process.execPath} ${args.join(' ')}\n\n${res.stdout ?? ''}\n${res.stderr ?? ''}\n${res.error ? String(res.error) : ''}\n`);
if (res.error) warn(`node-gyp did not run: ${res.error.message}`);
if (res.status !== 0) warn(`node-gyp exited with status ${res.status ?? res.signal}`);
if (!existsSync(addon)) warn(`build produced no ${rel(addon)}`);
if (sanitize) {
  // The marker tells test/global-setup.ts this build needs libasan preloaded (without it, loading
  // the addon aborts the process); `node-gyp rebuild` removes it with the rest of the build.
  writeFileSync(sanitizedMarker, 'built with -fsanitize=address,undefined\n');
  console.log(`vnstore: native addons built with AddressSanitizer and UBSan (${rel(buildDir)}/Release)`);
  process.exit(0);
}

// Built: check both modules also load here (the codec needs liblz4.so.1 at run time), so the
// message is accurate. The page hasher is independent: without it, hashing uses @napi-rs/blake-hash.
const hashAddon = path.join(buildDir, 'Release', 'vnstore_hash.node');
let hashNote = 'page hasher missing: per-page @napi-rs/blake-hash';
try {
  const h = createRequire(import.meta.url)(hashAddon);
  hashNote = h.simd ? `page hasher ${h.simd}` : 'no AVX2: per-page @napi-rs/blake-hash';
} catch (err) {
  appendLog(`page hasher does not load: ${err && err.stack ? err.stack : String(err)}\n`);
  if (inCI) warn(`page hasher built but does not load: ${err && err.message ? err.message : String(err)}`);
}
try {
  const b = createRequire(import.meta.url)(addon);
  const v = b.lz4Version;
  console.log(
    `vnstore: native addon built (${rel(addon)}, liblz4 ${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}; ${hashNote})`,
  );
} catch (err) {
  appendLog(`built, but loading failed: ${err && err.stack ? err.stack : String(err)}\n`);
  warn(`built but does not load: ${err && err.message ? err.message : String(err)}`);
}
