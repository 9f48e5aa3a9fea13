import type { Command } from 'commander';
import { restoreSnapshot } from '../store/restore.js';
import { writeFully } from '../util/durable.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';
import { ONE_SHOT, action, progressBar, storeOption, lockWaitOption, withStore } from './common.js';
import { checkOutputPath, writeOutputFile } from './output-file.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';
import { restoreThrough } from './agent.js';

export function registerRestore(program: Command): void {
  const cmd = program
    .command('restore')
    .description('write a snapshot back as its exact original bytes, verifying every chunk and the image digest')
    .argument('<id>', 'snapshot id (or a unique prefix of at least 4 hex digits)')
    .option('-o, --output <file>', 'write to FILE (via a temp file renamed into place only when fully verified); default: stdout')
    .option('--sync', 'with -o: also fsync the file before it appears under its name (durable against power loss)')
    .option('--no-sparse', 'with -o: write zero pages out instead of leaving holes (holes read back as zeros)')
    .addOption(storeOption())
    .addOption(lockWaitOption());
  addRemoteOptions(cmd, false)
    .addHelpText('after', '\nOn stdout a failed restore exits non-zero after partial output: check the exit status before using it.\n')
    .action(
      action(async (id: string, opts: RemoteOptions & { store?: string; lockWait?: number; output?: string; sync?: boolean; sparse?: boolean }) => {
        const server = serverAddress(opts);
        if (server) {
          // Through the server: every page and the image digest are verified here (vnstore agent restore).
          await withRemote(opts, server, (client) => restoreThrough(client, id, opts.output));
          return;
        }
        await withStore(opts, async (store) => {
          const record = await store.resolveSnapshot(id);
          const bar = progressBar(`restore ${record.id}`, opts.output ? record.byteLength : 0);
          if (!opts.output) {
            if (process.stdout.isTTY) throw new VnstoreError('E_USAGE', 'refusing to write a memory image to a terminal; use -o FILE or a pipe');
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
        }, ONE_SHOT);
      }),
    );
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
