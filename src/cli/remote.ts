/**
 * Shared plumbing of the commands that talk to a server: where it is (--server, $VNSTORE_SERVER),
 * the token (--token-file, $VNSTORE_TOKEN) and TLS trust (--tls-ca).
 */
import { promises as fsp } from 'node:fs';
import { Option, type Command } from 'commander';
import type { AgentClient } from '../agent/client.js';
import { readTokenFile } from '../server/token.js';
import { VnstoreError } from '../util/errors.js';

export interface RemoteOptions {
  server?: string;
  tokenFile?: string;
  tlsCa?: string;
}

export function addRemoteOptions(cmd: Command, serverRequired: boolean): Command {
  return cmd
    .addOption(
      new Option(
        '--server <addr>',
        `server address: HOST:PORT, tls://HOST:PORT or unix:PATH (default: $VNSTORE_SERVER${serverRequired ? '' : '; without either, the local store'})`,
      ),
    )
    .addOption(
      new Option('--token-file <file>', "file holding the store's access token (default: $VNSTORE_TOKEN; 'vnstore token' prints it)"),
    )
    .addOption(new Option('--tls-ca <file>', "for tls:// servers: CA certificate to trust (e.g. the server's self-signed certificate)"));
}

/** The server to use: --server, else $VNSTORE_SERVER, else undefined (a local command). */
export function serverAddress(opts: RemoteOptions): string | undefined {
  return opts.server ?? (process.env.VNSTORE_SERVER || undefined);
}

export async function connectRemote(opts: RemoteOptions, server: string): Promise<AgentClient> {
  let token: string;
  if (opts.tokenFile) token = await readTokenFile(opts.tokenFile);
  else if (process.env.VNSTORE_TOKEN) token = process.env.VNSTORE_TOKEN.trim();
  else
    throw new VnstoreError(
      'E_USAGE',
      "no access token: give --token-file FILE or set $VNSTORE_TOKEN (on the server's host, 'vnstore token' prints it)",
    );
  const tlsCa = opts.tlsCa ? await fsp.readFile(opts.tlsCa).catch(() => undefined) : undefined;
  if (opts.tlsCa && !tlsCa) throw new VnstoreError('E_INPUT', `cannot read CA certificate ${opts.tlsCa}`);
  // Loaded only when a command goes through a server.
  const { AgentClient: Client } = await import('../agent/client.js');
  return Client.connect({ server, token, tlsCa });
}

/** Runs `fn` with a connected client, closing it after. */
export async function withRemote<T>(opts: RemoteOptions, server: string, fn: (client: AgentClient) => Promise<T>): Promise<T> {
  const client = await connectRemote(opts, server);
  try {
    return await fn(client);
  } finally {
    await client.close();
  }
}
