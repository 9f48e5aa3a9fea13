/**
 * Server addresses: `HOST:PORT` (TCP), `tls://HOST:PORT` (TLS), `unix:PATH` or a path with a slash
 * (Unix socket). And the record a running server leaves in its store (DIR/server.json) so other
 * commands can name it.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { writeFileDurable } from '../util/durable.js';
import { VnstoreError } from '../util/errors.js';

export const DEFAULT_HOST = '127.0.0.1';
export const DEFAULT_PORT = 7420;
export const SERVER_FILE = 'server.json';

export type Address = { kind: 'tcp'; host: string; port: number; tls: boolean } | { kind: 'unix'; path: string };

export function parseAddress(text: string, what = 'server address'): Address {
  const s = text.trim();
  if (s.startsWith('unix:')) return { kind: 'unix', path: path.resolve(s.slice(5)) };
  if (s.includes('/') && !s.startsWith('tls://')) return { kind: 'unix', path: path.resolve(s) };
  const tls = s.startsWith('tls://');
  const rest = tls ? s.slice(6) : s;
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(rest) ?? /^()()(\d{1,5})$/.exec(rest);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 0 || port > 65535)
    throw new VnstoreError('E_USAGE', `${what} ${JSON.stringify(text)} is not HOST:PORT, tls://HOST:PORT or unix:PATH`);
  return { kind: 'tcp', host: m[1] || m[2] || DEFAULT_HOST, port, tls };
}

export function formatAddress(a: Address): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  const host = a.host.includes(':') ? `[${a.host}]` : a.host;
  return `${a.tls ? 'tls://' : ''}${host}:${a.port}`;
}

export interface ServerRecord {
  pid: number;
  addresses: string[];
  started: string;
}

export function serverRecordPath(storeDir: string): string {
  return path.join(storeDir, SERVER_FILE);
}

export async function writeServerRecord(storeDir: string, rec: ServerRecord): Promise<void> {
  await writeFileDurable(
    serverRecordPath(storeDir),
    Buffer.from(JSON.stringify(rec) + '\n'),
    path.join(storeDir, 'tmp', `${SERVER_FILE}.tmp`),
  );
}

/** The record of a server that is still running, if any (a record left by a killed one is ignored). */
export async function readLiveServer(storeDir: string): Promise<ServerRecord | undefined> {
  try {
    const rec = JSON.parse(await fsp.readFile(serverRecordPath(storeDir), 'utf8')) as ServerRecord;
    if (!Number.isInteger(rec.pid)) return undefined;
    process.kill(rec.pid, 0);
    return rec;
  } catch {
    return undefined;
  }
}

export async function removeServerRecord(storeDir: string): Promise<void> {
  await fsp.rm(serverRecordPath(storeDir), { force: true });
}
