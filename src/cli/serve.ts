import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { Store } from '../store/store.js';
import { RESTORE_WINDOWS_IN_FLIGHT } from '../store/job-sizes.js';
import { DEFAULT_PACK_CACHE_BYTES } from '../store/pack-cache.js';
import { lazyGcSweeper } from '../maintenance/lazy-sweeper.js';
import { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_PREPARED_TIMEOUT_MS } from '../server/defaults.js';
import { DEFAULT_HOST, DEFAULT_PORT, parseAddress, removeServerRecord, writeServerRecord, type Address } from '../server/address.js';
import { readTokenFile, tokenPath } from '../server/token.js';
import { VnstoreError } from '../util/errors.js';
import { action, storeDir, storeOption, usage } from './common.js';

interface ServeOptions {
  store?: string;
  listen?: string;
  socket?: string;
  metrics?: string;
  tlsCert?: string;
  tlsKey?: string;
  idleTimeout: string;
  preparedTimeout: string;
  packCache: string;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('serve the store to snapshot agents over the network (docs/PROTOCOL.md); owns the store while it runs')
    .option('--listen <host:port>', `TCP address to listen on (default ${DEFAULT_HOST}:${DEFAULT_PORT} when no --socket is given)`)
    .option('--socket <path>', 'Unix socket to listen on (mode 0600)')
    .option('--metrics <host:port>', 'serve Prometheus metrics over HTTP on this address')
    .option('--tls-cert <file>', 'serve TLS on --listen with this certificate (PEM); needs --tls-key')
    .option('--tls-key <file>', 'private key (PEM) of --tls-cert')
    .option('--idle-timeout <seconds>', 'abort an open session after this long without a request', String(DEFAULT_IDLE_TIMEOUT_MS / 1000))
    .option(
      '--prepared-timeout <seconds>',
      'abort a prepared snapshot not committed within this long',
      String(DEFAULT_PREPARED_TIMEOUT_MS / 1000),
    )
    .option(
      '--pack-cache <MiB>',
      "page cache kept for the newest packs written; older packs' pages are dropped once durable ('all': keep every pack cached)",
      String(DEFAULT_PACK_CACHE_BYTES / MIB),
    )
    .addOption(storeOption())
    .addHelpText(
      'after',
      `
Agents authenticate with the store's token ('vnstore token'). Logs: one JSON line per event on stderr.
Prints "listening ADDR" on stdout for each address once it accepts connections.
SIGTERM or SIGINT: stop accepting, abort open sessions, keep prepared ones, close the store, exit 0.

Examples:
  vnstore serve
  vnstore serve --listen 0.0.0.0:${DEFAULT_PORT} --tls-cert cert.pem --tls-key key.pem --metrics 127.0.0.1:9420
  vnstore serve --socket /run/vnstore.sock
`,
    )
    .action(action(serve));
}

async function serve(opts: ServeOptions): Promise<void> {
  const dir = storeDir(opts);
  const idleTimeoutMs = seconds(opts.idleTimeout, '--idle-timeout');
  const preparedTimeoutMs = seconds(opts.preparedTimeout, '--prepared-timeout');
  const packCacheBytes = cacheBytes(opts.packCache);
  if (!!opts.tlsCert !== !!opts.tlsKey) throw usage('--tls-cert and --tls-key go together');
  const addresses: Address[] = [];
  if (opts.listen || !opts.socket) {
    const a = parseAddress(opts.listen ?? `${DEFAULT_HOST}:${DEFAULT_PORT}`, '--listen');
    if (a.kind !== 'tcp') throw usage('--listen takes HOST:PORT; give a Unix socket with --socket');
    addresses.push({ ...a, tls: !!opts.tlsCert });
  }
  if (opts.socket) addresses.push({ kind: 'unix', path: path.resolve(opts.socket) });
  const metricsAddr = opts.metrics ? parseAddress(opts.metrics, '--metrics') : undefined;
  if (metricsAddr && metricsAddr.kind !== 'tcp') throw usage('--metrics takes HOST:PORT');
  const tlsFiles = opts.tlsCert ? { cert: await readPem(opts.tlsCert), key: await readPem(opts.tlsKey!) } : undefined;
  const tokenFile = tokenPath(dir);
  await readTokenFile(tokenFile); // a store without a token is refused now, not at the first agent

  // Loaded here, not with the command line: pino and prom-client would slow every other command's start.
  const [{ VnServer }, { createLogger }] = await Promise.all([import('../server/server.js'), import('../server/log.js')]);
  const log = createLogger();
  // Restore windows queue on the page workers (as many as a restore keeps in flight): the main
  // thread writes the DATA frames.
  const store = await Store.open(dir, { sweeper: lazyGcSweeper, restoreQueue: RESTORE_WINDOWS_IN_FLIGHT, packCacheBytes });
  const server = new VnServer(store, { token: () => readTokenFile(tokenFile), log, idleTimeoutMs, preparedTimeoutMs });
  await server.adoptHeld();
  const bound: string[] = [];
  let metricsHttp: ReturnType<typeof server.metrics.httpServer> | undefined;
  try {
    for (const a of addresses) bound.push(await server.listen(a, tlsFiles));
    if (metricsAddr && metricsAddr.kind === 'tcp') {
      const http = server.metrics.httpServer();
      metricsHttp = http;
      await new Promise<void>((resolve, reject) => {
        http.once('error', reject);
        http.listen(metricsAddr.port, metricsAddr.host, resolve);
      });
      const port = (http.address() as { port: number }).port;
      log.info({ event: 'metrics_listening', address: `${metricsAddr.host}:${port}` });
      process.stdout.write(`metrics http://${metricsAddr.host}:${port}/metrics\n`);
    }
    await writeServerRecord(dir, { pid: process.pid, addresses: bound, started: new Date().toISOString() });
  } catch (err) {
    await server.stop();
    metricsHttp?.close();
    await store.close();
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EADDRINUSE')
      throw new VnstoreError(
        'E_IO',
        `cannot listen: address in use (${e.message.replace(/^listen EADDRINUSE: address already in use /, '')})`,
      );
    if (e.code === 'EACCES') throw new VnstoreError('E_IO', `cannot listen: permission denied (${e.message})`);
    throw err;
  }
  for (const b of bound) process.stdout.write(`listening ${b}\n`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ event: 'shutdown', signal });
    await server.stop();
    await new Promise<void>((resolve) => (metricsHttp ? metricsHttp.close(() => resolve()) : resolve()));
    await removeServerRecord(dir);
    await store.close();
    log.info({ event: 'exit', prepared: server.prepared.size });
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

const MIB = 1024 * 1024;

function cacheBytes(text: string): number {
  if (text === 'all') return Infinity;
  if (!/^\d+$/.test(text)) throw usage("--pack-cache takes a whole number of MiB, or 'all'");
  return Number(text) * MIB;
}

function seconds(text: string, what: string): number {
  const v = Number(text);
  if (!Number.isFinite(v) || v <= 0) throw usage(`${what} takes a positive number of seconds`);
  return Math.round(v * 1000);
}

async function readPem(file: string): Promise<Buffer> {
  try {
    return await fsp.readFile(file);
  } catch (err) {
    throw new VnstoreError('E_INPUT', `cannot read ${file}: ${(err as Error).message}`);
  }
}
