/** A `vnstore serve` child process for CLI tests: started on a free port, stopped by signal. */
import { spawn, type ChildProcess } from 'node:child_process';
import { CLI, REPO_ROOT } from './engine.js';

export interface ServeProcess {
  child: ChildProcess;
  address: string;
  stderr(): string;
  /** Sends `signal` and resolves to the exit code and signal. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `executable`: run that instead of `node dist/cli/bin.cjs` (bin/vnstore, or a link to it). */
export function startServe(
  store: string,
  args: string[] = [],
  env: Record<string, string | undefined> = {},
  executable?: string,
): Promise<ServeProcess> {
  const argv = ['serve', '--store', store, '--listen', '127.0.0.1:0', ...args];
  const child = spawn(executable ?? process.execPath, executable ? argv : [CLI, ...argv], {
    cwd: REPO_ROOT,
    env: { ...process.env, VNSTORE_DEBUG: undefined, VNSTORE_STORE: undefined, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^listening (\S+)$/m.exec(out);
      if (m) {
        resolve({
          child,
          address: m[1],
          stderr: () => err,
          stop: (signal = 'SIGTERM') => {
            child.kill(signal);
            return exited;
          },
        });
      }
    });
    void exited.then((e) => reject(new Error(`vnstore serve exited (${e.code ?? e.signal}) before listening:\n${err}`)));
  });
}
