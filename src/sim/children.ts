/** Named `node` child processes of the simulation (switches, agents) on loopback: started, SIGKILLed, stopped. */
import { spawn, type ChildProcess } from 'node:child_process';
import { VnstoreError } from '../util/errors.js';

export class ChildProcesses {
  private readonly children = new Map<string, { child: ChildProcess; exited: Promise<void> }>();

  /** Spawns `node ...args` as `name` and resolves once its `stream` output matches `ready`. */
  async start(name: string, args: string[], ready: RegExp, stream: 'stdout' | 'stderr'): Promise<void> {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    this.children.set(name, { child, exited });
    let out = '';
    let err = '';
    if (stream === 'stdout') child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    else child.stdout?.resume();
    await new Promise<void>((resolve, reject) => {
      child[stream]?.on('data', (d: Buffer) => {
        out += d.toString();
        if (stream === 'stderr') err = out;
        if (ready.test(out)) resolve();
      });
      void exited.then(() => reject(new VnstoreError('E_IO', `${name} exited before it was ready: ${err.trim()}`)));
    });
  }

  /** SIGKILLs `name` and waits for it to be gone. */
  async kill(name: string): Promise<void> {
    const c = this.children.get(name);
    if (!c) return;
    c.child.kill('SIGKILL');
    await c.exited;
    this.children.delete(name);
  }

  /** Sends `signal` to `name` (SIGSTOP and SIGCONT: a process starved of CPU, as on a loaded host). */
  signal(name: string, signal: NodeJS.Signals): void {
    this.children.get(name)?.child.kill(signal);
  }

  /** Stops every child (SIGTERM) and waits for each. */
  async stop(): Promise<void> {
    for (const [name, c] of [...this.children]) {
      c.child.kill('SIGTERM');
      await c.exited;
      this.children.delete(name);
    }
  }
}
