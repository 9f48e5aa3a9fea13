import path from 'node:path';
import type { Command } from 'commander';
import { restoreSnapshot } from '../store/restore.js';
import { writeFully } from '../util/durable.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';
import { ONE_SHOT, action, progressBar, storeOption, lockWaitOption, usage, withStore } from './common.js';
import { checkOutputPath, writeOutputFile } from './output-file.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';
import { restoreThrough } from './agent.js';

export function registerRestore(program: Command): void {
  const cmd = program
    .command('restore')
    .description('write a snapshot (or a whole group) back as its exact original bytes, verifying every chunk and the image digest')
    .argument('[id]', 'snapshot id (or a unique prefix of at least 4 hex digits)')
    .option(
      '--group <id>',
      "restore every member of this group (each VM's memory and disk, the channel state) into the directory -o as <member>.img",
    )
    .option(
      '-o, --output <file>',
      'write to FILE (via a temp file renamed into place only when fully verified); default: stdout. With --group: a directory (default: the current one)',
    )
    .option('--json', 'with --group: print {group, dir, members: [{vm, id, file, bytes, imageDigest}]}')
    .option('--sync', 'with -o: also fsync the file before it appears under its name (durable against power loss)')
    .option('--no-sparse', 'with -o: write zero pages out instead of leaving holes (holes read back as zeros)')
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(cmd, false)
    .addHelpText(
      'after',
      `
On stdout a failed restore exits non-zero after partial output: check the exit status before using it.
With --group every member is verified before any file appears under its name: a damaged member
refuses the whole group (exit 7) and leaves the directory as it was; an unknown group exits 6.

Examples:
  vnstore restore 3fa2 -o vm0.img
  vnstore restore --group env7-e3 -o restored/ --json
`,
    )
    .action(
      action(
        async (
          id: string | undefined,
          opts: RemoteOptions & {
            store?: string;
            lockWait?: number;
            output?: string;
            sync?: boolean;
            sparse?: boolean;
            group?: string;
            json?: boolean;
          },
        ) => {
          const server = serverAddress(opts);
          if (opts.group !== undefined) {
            if (id !== undefined) throw usage('give a snapshot id or --group, not both');
            await restoreGroup(opts.group, opts, server);
            return;
          }
          if (id === undefined) throw usage('name the snapshot to restore (an id or a unique prefix), or give --group ID');
          if (opts.json) throw usage('--json goes with --group');
          if (server) {
            // Through the server: every page and the image digest are verified here (vnstore agent restore).
            await withRemote(opts, server, (client) => restoreThrough(client, id, opts.output, opts.sparse !== false));
            return;
          }
          await withStore(
            opts,
            async (store) => {
              const record = await store.resolveSnapshot(id);
              const bar = progressBar(`restore ${record.id}`, opts.output ? record.byteLength : 0);
              if (!opts.output) {
                if (process.stdout.isTTY)
                  throw new VnstoreError('E_USAGE', 'refusing to write a memory image to a terminal; use -o FILE or a pipe');
                // A reader that goes away early (`| head`) is not an internal error: say what happened.
                process.stdout.on('error', (e) => (stdoutError ??= e));
                try {
                  await restoreSnapshot(store, record, { write: (b) => writeStdout(b) });
                } catch (err) {
                  const code = (err as NodeJS.ErrnoException).code;
                  if (code === 'EPIPE') throw new VnstoreError('E_IO', 'standard output was closed before the whole image was written');
                  // A system error writing stdout (a full disk behind a redirect) is not an internal one.
                  if (typeof code === 'string' && !(err instanceof VnstoreError)) throw fromSystemError(err, 'writing standard output');
                  throw err;
                }
                return;
              }
              const out = await checkOutputPath(opts.output);
              try {
                await writeOutputFile(
                  out,
                  async (handle, tmp) => {
                    const sink = opts.sparse
                      ? {
                          write: (b: Uint8Array) => writeFully(handle, b),
                          writeAt: (b: Uint8Array, pos: number) => writeFully(handle, b, pos),
                          setLength: (n: number) => handle.truncate(n),
                          filePath: tmp, // the page workers write verified windows into it directly
                          name: out,
                        }
                      : { write: (b: Uint8Array) => writeFully(handle, b) };
                    await restoreSnapshot(store, record, sink, (done) => bar.update(done));
                  },
                  opts.sync,
                );
              } finally {
                bar.stop();
              }
            },
            ONE_SHOT,
          );
        },
      ),
    );
}

/** --group: every member into the -o directory, through the server or from the local store. */
async function restoreGroup(
  group: string,
  opts: RemoteOptions & { store?: string; lockWait?: number; output?: string; sync?: boolean; json?: boolean },
  server: string | undefined,
): Promise<void> {
  const { restoreGroupToDir } = await import('./restore-group.js');
  const { serverGroupSource, storeGroupSource } = await import('../coordinator/group-source.js');
  const dir = opts.output ?? '.';
  const written = server
    ? await withRemote(opts, server, (client) => restoreGroupToDir(serverGroupSource(client), group, dir, opts))
    : await withStore(opts, (store) => restoreGroupToDir(storeGroupSource(store), group, dir, opts), ONE_SHOT);
  if (opts.json) process.stdout.write(JSON.stringify({ group, dir: path.resolve(dir), members: written }, null, 2) + '\n');
  else for (const m of written) process.stdout.write(`${m.file}  ${m.vm} (${m.id}, ${m.bytes} bytes)\n`);
}

let stdoutError: Error | undefined;

/**
 * Writes to stdout and settles once the stream is done with the bytes (restore lends its window
 * buffers: see RestoreSink.write). A closed pipe (EPIPE) surfaces as an error, never a hang.
 */
function writeStdout(b: Uint8Array): Promise<void> {
  if (stdoutError) throw stdoutError;
  return new Promise((resolve, reject) => {
    const done = (err?: Error | null) => {
      process.stdout.off('error', onErr);
      process.stdout.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onErr = (e: Error) => done(e);
    const onClose = () => done(stdoutError ?? Object.assign(new Error('stdout closed'), { code: 'EPIPE' }));
    process.stdout.on('error', onErr);
    process.stdout.on('close', onClose);
    process.stdout.write(b, (err) => done(err));
  });
}
