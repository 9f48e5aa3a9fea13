import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { PAGE_SIZE } from '../format/pages.js';
import { BLOCK_PAGES } from '../store/job-sizes.js';
import type { Session } from '../store/session.js';
import { VnstoreError, fromSystemError } from '../util/errors.js';
import { ONE_SHOT, action, printCommitted, progressBar, usage, withStore, storeOption, lockWaitOption } from './common.js';

const READ_BYTES = BLOCK_PAGES * PAGE_SIZE;

interface PutOptions {
  store?: string;
  vm: string;
  parent: string;
  group?: string;
  json?: boolean;
}

export function registerPut(program: Command): void {
  program
    .command('put')
    .description('store a raw memory image as a new snapshot of a VM; prints the snapshot id')
    .argument('<file>', "raw memory image, or '-' for standard input")
    .requiredOption('--vm <name>', 'VM the image belongs to')
    .option('--parent <auto|none|id>', "snapshot to compare against: 'auto' = the VM's latest, 'none', or an id", 'auto')
    .option('--group <id>', 'group snapshot (environment epoch) to record this snapshot under')
    .option('--json', 'print {id, vm, group, parent, logicalBytes, newChunks, addedBytes, seconds} as JSON')
    .addOption(storeOption())
    .addOption(lockWaitOption())
    .addHelpText('after', '\nExamples:\n  vnstore put --vm web1 web1.mem\n  cat web1.mem | vnstore put --vm web1 --json -\n')
    .action(
      action(async (file: string, opts: PutOptions) => {
        const started = process.hrtime.bigint();
        const input = await openInput(file);
        await withStore(
          opts,
          async (store) => {
            // A file's size is the memory size: the page table is sized once, not grown as pages arrive.
            const memoryBytes = input.kind === 'file' ? input.size : undefined;
            const session = await store.beginSession({ vm: opts.vm, parent: opts.parent, group: opts.group, memoryBytes });
            // A first snapshot stores up to a chunk per page: size the chunk table once rather than
            // doubling it as we go. A consecutive one adds few; growing for it would only rehash.
            if (input.size && !session.parent) store.reserveChunkTable(Math.min(Math.ceil(input.size / PAGE_SIZE / 2), 1 << 22));
            const bar = progressBar(`put ${opts.vm}`, input.size ?? 0);
            let bytes: number;
            try {
              bytes = await feed(session, input, (done) => bar.update(done));
            } catch (err) {
              bar.stop();
              await session.abort();
              throw err;
            }
            bar.stop();
            const rec = await session.commit({ byteLength: bytes, unwritten: 'zero' });
            const seconds = Number(process.hrtime.bigint() - started) / 1e9;
            printCommitted(rec, opts.json, seconds);
          },
          ONE_SHOT,
        );
      }),
    );
}

type Input = { kind: 'file'; path: string; size: number } | { kind: 'stream'; stream: NodeJS.ReadableStream; size?: number };

async function openInput(file: string): Promise<Input> {
  if (file === '-') {
    if (process.stdin.isTTY)
      throw new VnstoreError(
        'E_USAGE',
        "'-' reads the image from standard input, which is a terminal here; pipe the image in or name a file",
      );
    return { kind: 'stream', stream: process.stdin };
  }
  try {
    // stat before open: opening a FIFO with no writer would block for ever.
    const st = await fsp.stat(file);
    if (!st.isFile())
      throw new VnstoreError(
        'E_INPUT',
        `${file} is not a regular file (for a pipe or a device, give '-' and redirect it to standard input)`,
      );
    await (await fsp.open(file, 'r')).close(); // proves it is readable now; the page workers read it
    return { kind: 'file', path: path.resolve(file), size: st.size };
  } catch (err) {
    if (err instanceof VnstoreError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new VnstoreError('E_INPUT', `${file}: no such file`);
    if (code === 'EACCES') throw new VnstoreError('E_INPUT', `${file}: permission denied`);
    if (code === 'EISDIR') throw new VnstoreError('E_INPUT', `${file} is a directory, not a memory image`);
    throw new VnstoreError('E_INPUT', `${file}: cannot read: ${(err as Error).message}`);
  }
}

/** Feeds the whole input into the session; returns the exact byte count. */
async function feed(session: Session, input: Input, onProgress: (done: number) => void): Promise<number> {
  try {
    const total =
      input.kind === 'file'
        ? await feedFile(session, input.path, input.size, onProgress)
        : await feedStream(session, input.stream, onProgress);
    if (total === 0) throw usage('input is empty: nothing to store');
    return total;
  } catch (err) {
    if (err instanceof VnstoreError) throw err;
    throw fromSystemError(err, 'reading input');
  }
}

/** A regular file: the page workers read its ranges themselves (no copy through the main thread). */
async function feedFile(session: Session, file: string, size: number, onProgress: (done: number) => void): Promise<number> {
  for (let pos = 0; pos < size; pos += READ_BYTES) {
    const len = Math.min(READ_BYTES, size - pos);
    await session.writeFileRange(pos / PAGE_SIZE, file, pos, len);
    onProgress(pos + len);
  }
  return size;
}

/**
 * Streams (stdin) arrive in arbitrary pieces: regroup them into page-aligned blocks. One block buffer
 * serves the whole stream (the session copies each block into reused memory): a fresh 4 MiB buffer
 * per block cost more in page faults than the hashing of it (0.7 s on a 448 MiB image).
 */
async function feedStream(session: Session, stream: NodeJS.ReadableStream, onProgress: (done: number) => void): Promise<number> {
  const block = new Uint8Array(READ_BYTES);
  let fill = 0;
  let total = 0;
  let page = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    let pos = 0;
    while (pos < chunk.length) {
      const n = Math.min(chunk.length - pos, READ_BYTES - fill);
      block.set(chunk.subarray(pos, pos + n), fill);
      fill += n;
      pos += n;
      if (fill === READ_BYTES) {
        await session.writePages(page, block); // copied: `block` is ours again once this resolves
        page += READ_BYTES / PAGE_SIZE;
        total += fill;
        fill = 0;
        onProgress(total);
      }
    }
  }
  if (fill > 0) {
    await session.writePages(page, block.subarray(0, fill));
    total += fill;
  }
  onProgress(total);
  return total;
}
