/**
 * `vnstore agent serve`: an agent process (src/coordinator/agent-process.ts). A coordinator
 * (`vnstore snapshot --env FILE --agents process|env`) connects to it over the control protocol and
 * has it snapshot its host's VMs; the snapshots go through this process's own connections to
 * `vnstore serve`. Runs until SIGINT or SIGTERM.
 */
import type { Command } from 'commander';
import { action, usage } from './common.js';
import { parseEndpoint } from './switch.js';
import { addRemoteOptions, connectRemote, serverAddress, type RemoteOptions } from './remote.js';

interface AgentServeOptions extends RemoteOptions {
  listen: string;
}

export function registerAgentServe(agent: Command): void {
  addRemoteOptions(
    agent
      .command('serve')
      .description(
        "run an agent process: a coordinator ('vnstore snapshot --agents') drives its VMs' live snapshots over the control protocol",
      )
      .option('--listen <host:port>', 'where the coordinator connects (port 0: any free port)', '127.0.0.1:7430'),
    true,
  )
    .addHelpText(
      'after',
      `
Prints "listening HOST:PORT" on stdout once it accepts connections. Each VM's memory and disk go
into the store through this process's own connection to the server (--server, --token-file); the
coordinator commits the epoch's group there (docs/COORDINATION.md). The control protocol is in
docs/PROTOCOL.md ("Coordinator-agent control"); it is not authenticated: listen on loopback or on
the hosts' private network.

Example:
  vnstore agent serve --listen 127.0.0.1:7431 --server 127.0.0.1:7420 --token-file ~/.vnstore-token
`,
    )
    .action(
      action(async (opts: AgentServeOptions) => {
        const server = serverAddress(opts);
        if (!server) throw usage('no server: give --server ADDR or set $VNSTORE_SERVER (the agent stores through it)');
        const listen = parseEndpoint(opts.listen, '--listen');
        // Fail now on a bad token or an unreachable server, not at the first epoch.
        await (await connectRemote(opts, server)).close();
        const { serverTarget } = await import('../coordinator/server-target.js');
        const { serveAgents } = await import('../coordinator/agent-process.js');
        const target = serverTarget(() => connectRemote(opts, server));
        const agents = await serveAgents(listen, target);
        process.stdout.write(`listening ${agents.address.host}:${agents.address.port}\n`);
        await new Promise<void>((resolve) => {
          process.once('SIGINT', resolve);
          process.once('SIGTERM', resolve);
        });
        // Its coordinators' connections go first (their unfinished epochs' sessions are dropped), then
        // its own to the server; a server that does not answer does not keep it from exiting.
        const closed = (async () => {
          await agents.close();
          await target.close();
        })();
        await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
        process.exit(0);
      }),
    );
}
