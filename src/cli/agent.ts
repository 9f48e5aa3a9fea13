/** `vnstore agent push|restore`: store and restore images through a server (docs/PROTOCOL.md). */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { Command } from 'commander';
import { PAGE_SIZE } from '../format/pages.js';
import { MAX_OFFERS_PER_BATCH } from '../protocol/limits.js';
import type { AgentClient } from '../agent/client.js';
import type { RemoteSession } from '../agent/session.js';
import { writeWindow } from '../agent/write-window.js';
import { writeFully } from '../util/durable.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';
import { action, printCommitted, progressBar, usage } from './common.js';
import { checkOutputPath, writeOutputFile } from './output-file.js';
import { addRemoteOptions, serverAddress, withRemote, type RemoteOptions } from './remote.js';
import { registerAgentServe } from './agent-serve.js';

/** Pages read and sent per call: one full OFFER. */
const READ_PAGES = MAX_OFFERS_PER_BATCH;
/**
 * Write calls a push keeps in flight, each with its own buffer: the next block is read and hashed
 * while the server answers the one before (one at a time left both cores idle a quarter of a
 * consecutive snapshot; bench/RESULTS.md, issue 12, sessions 17 and 18).
 */
const WRITES_IN_FLIGHT = 2;

/** One buffer of `READ_PAGES` pages per write in flight; buffer k % WRITES_IN_FLIGHT is free again once writeWindow.add of call k - 1 has settled. */
const sendBuffers = (): Uint8Array[] => Array.from({ length: WRITES_IN_FLIGHT }, () => new Uint8Array(READ_PAGES * PAGE_SIZE));

interface PushOptions extends RemoteOptions {
  vm: string;
  group?: string;
  parent: string;
  dirtyList?: string;
  json?: boolean;
}

export function registerAgent(program: Command): void {
  const agent = program
    .command('agent')
    .description('store and restore memory images through a vnstore server (vnstore serve); run an agent process (serve)');
  addRemoteOptions(
    agent
      .command('push')
      .description('store a raw memory image through the server, sending only the pages it lacks; prints the snapshot id')
      .argument('<file>', "raw memory image, or '-' for standard input")
      .requiredOption('--vm <name>', 'VM the image belongs to')
      .option('--group <id>', 'group snapshot (environment epoch) to record this snapshot under')
      .option('--parent <auto|none|id>', "snapshot to compare against: 'auto' = the VM's latest, 'none', or an id", 'auto')
      .option('--dirty-list <file>', 'send only these pages (page indices, one per line or A-B ranges); the rest come from the parent')
      .option('--json', 'print {id, vm, group, parent, logicalBytes, newChunks, addedBytes, pagesOffered, pagesSent, zeroPages, seconds}'),
    true,
  )
    .addHelpText(
      'after',
      '\nExamples:\n  vnstore agent push --server 10.0.0.5:7420 --token-file token --vm web1 web1.mem\n  vnstore agent push --server unix:/run/vnstore.sock --vm web1 --dirty-list dirty.txt web1.mem\n',
    )
    .action(action(push));
  addRemoteOptions(
    agent
      .command('restore')
      .description('write a snapshot back through the server, verifying every page digest and the image digest here')
      .argument('<id>', 'snapshot id (or a unique prefix of at least 4 hex digits)')
      .option('-o, --output <file>', 'write to FILE (via a temp file renamed into place only when fully verified); default: stdout')
      .option('--no-sparse', 'with -o: write zero pages out instead of leaving holes (holes read back as zeros)'),
    true,
  ).action(action(restore));
  registerAgentServe(agent);
}

function requireServer(opts: RemoteOptions): string {
  const server = serverAddress(opts);
  if (!server) throw usage('no server: give --server ADDR or set $VNSTORE_SERVER');
  return server;
}

async function push(file: string, opts: PushOptions): Promise<void> {
  const started = process.hrtime.bigint();
  const server = requireServer(opts);
  if (opts.dirtyList && file === '-') throw usage('--dirty-list reads the listed pages from the image file: name a file, not -');
  if (opts.dirtyList && opts.parent === 'none') throw usage('--dirty-list needs a parent: the unlisted pages come from it');
  const dirty = opts.dirtyList ? await readDirtyList(opts.dirtyList) : undefined;
  const input = file === '-' ? undefined : await openImage(file);
  try {
    await withRemote(opts, server, async (client) => {
      const session = await client.beginSession({ vm: opts.vm, group: opts.group, parent: opts.parent, memoryBytes: input?.size });
      if (dirty && !session.parent) {
        await session.abort();
        throw new VnstoreError('E_USAGE', `--dirty-list needs a parent snapshot, and VM ${opts.vm} has none in this store`);
      }
      const bar = progressBar(`push ${opts.vm}`, dirty ? dirty.length * PAGE_SIZE : (input?.size ?? 0));
      let bytes: number;
      try {
        if (input && dirty) bytes = await sendDirty(session, input, dirty, (d) => bar.update(d));
        else if (input) bytes = await sendFile(session, input, (d) => bar.update(d));
        else bytes = await sendStream(session, (d) => bar.update(d));
      } catch (err) {
        bar.stop();
        await session.abort().catch(() => undefined);
        throw err;
      }
      bar.stop();
      if (bytes === 0) {
        await session.abort();
        throw usage('input is empty: nothing to store');
      }
      const rec = await session.commit({ byteLength: bytes, unwritten: dirty ? 'parent' : 'zero' });
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const { pagesOffered, pagesSent, zeroPages } = session.stats;
      printCommitted(rec, opts.json, seconds, { pagesOffered, pagesSent, zeroPages });
    });
  } finally {
    await input?.fh.close();
  }
}

interface Image {
  fh: FileHandle;
  size: number;
}

async function openImage(file: string): Promise<Image> {
  try {
    const st = await fsp.stat(file);
    if (!st.isFile())
      throw new VnstoreError(
        'E_INPUT',
        `${file} is not a regular file (for a pipe or a device, give '-' and redirect it to standard input)`,
      );
    return { fh: await fsp.open(file, 'r'), size: st.size };
  } catch (err) {
    if (err instanceof VnstoreError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new VnstoreError('E_INPUT', `${file}: no such file`);
    if (code === 'EACCES') throw new VnstoreError('E_INPUT', `${file}: permission denied`);
    throw new VnstoreError('E_INPUT', `${file}: cannot read: ${(err as Error).message}`);
  }
}

async function readAt(input: Image, buf: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await input.fh.read(buf, done, buf.length - done, position + done).catch((err: unknown) => {
      throw fromSystemError(err, 'reading input');
    });
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

async function sendFile(session: RemoteSession, input: Image, onProgress: (done: number) => void): Promise<number> {
  const bufs = sendBuffers();
  const writes = writeWindow(WRITES_IN_FLIGHT);
  for (let pos = 0, k = 0; pos < input.size; pos += READ_PAGES * PAGE_SIZE, k++) {
    const buf = bufs[k % WRITES_IN_FLIGHT];
    const n = await readAt(input, buf.subarray(0, Math.min(buf.length, input.size - pos)), pos);
    await writes.add(session.writePages(pos / PAGE_SIZE, buf.subarray(0, n)));
    onProgress(pos + n);
  }
  await writes.drain();
  return input.size;
}

async function sendDirty(session: RemoteSession, input: Image, pages: number[], onProgress: (done: number) => void): Promise<number> {
  const lastPage = Math.ceil(input.size / PAGE_SIZE) - 1;
  const bad = pages.find((p) => p > lastPage);
  if (bad !== undefined) throw new VnstoreError('E_INPUT', `dirty page ${bad} is past the end of the image (${lastPage + 1} pages)`);
  const bufs = sendBuffers();
  const writes = writeWindow(WRITES_IN_FLIGHT);
  for (let k = 0; k < pages.length; k += READ_PAGES) {
    const buf = bufs[(k / READ_PAGES) % WRITES_IN_FLIGHT];
    const part = pages.slice(k, k + READ_PAGES);
    buf.fill(0, 0, part.length * PAGE_SIZE);
    for (let j = 0; j < part.length; j++)
      await readAt(
        input,
        buf.subarray(j * PAGE_SIZE, Math.min((j + 1) * PAGE_SIZE, j * PAGE_SIZE + input.size - part[j] * PAGE_SIZE)),
        part[j] * PAGE_SIZE,
      );
    await writes.add(session.writeScattered(part, buf.subarray(0, part.length * PAGE_SIZE)));
    onProgress((k + part.length) * PAGE_SIZE);
  }
  await writes.drain();
  return input.size;
}

/** Standard input arrives in arbitrary pieces: regroup them into blocks of whole pages. */
async function sendStream(session: RemoteSession, onProgress: (done: number) => void): Promise<number> {
  if (process.stdin.isTTY)
    throw usage("'-' reads the image from standard input, which is a terminal here; pipe the image in or name a file");
  const blocks = sendBuffers();
  const writes = writeWindow(WRITES_IN_FLIGHT);
  let block = blocks[0];
  let fill = 0;
  let total = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    for (let pos = 0; pos < chunk.length;) {
      const n = Math.min(chunk.length - pos, block.length - fill);
      block.set(chunk.subarray(pos, pos + n), fill);
      fill += n;
      pos += n;
      if (fill === block.length) {
        await writes.add(session.writePages(total / PAGE_SIZE, block));
        total += fill;
        fill = 0;
        block = blocks[(total / block.length) % WRITES_IN_FLIGHT];
        onProgress(total);
      }
    }
  }
  if (fill > 0) await writes.add(session.writePages(total / PAGE_SIZE, block.subarray(0, fill)));
  await writes.drain();
  return total + fill;
}

/** Page indices: integers or A-B ranges, separated by whitespace or commas; sorted, without repeats. */
export async function readDirtyList(file: string): Promise<number[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new VnstoreError('E_INPUT', `cannot read dirty-page list ${file}: ${(err as Error).message}`);
  }
  const pages = new Set<number>();
  for (const tok of text.split(/[\s,]+/).filter((t) => t.length > 0)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(tok);
    const a = m ? Number(m[1]) : NaN;
    const b = m?.[2] !== undefined ? Number(m[2]) : a;
    if (!m || b < a || b > 0xfffffffe || b - a > 1 << 26)
      throw new VnstoreError('E_INPUT', `dirty-page list ${file}: ${JSON.stringify(tok)} is not a page index or an A-B range`);
    for (let p = a; p <= b; p++) pages.add(p);
  }
  return [...pages].sort((x, y) => x - y);
}

async function restore(id: string, opts: RemoteOptions & { output?: string; sparse?: boolean }): Promise<void> {
  const server = requireServer(opts);
  await withRemote(opts, server, (client) => restoreThrough(client, id, opts.output, opts.sparse !== false));
}

/**
 * Restores through a server to FILE (temp file renamed once verified) or to standard output. With
 * `sparse` (the default), runs of zero pages the server names as such are left as holes in FILE,
 * as a local `restore -o` does.
 */
export async function restoreThrough(client: AgentClient, id: string, output: string | undefined, sparse = true): Promise<void> {
  if (!output) {
    if (process.stdout.isTTY) throw usage('refusing to write a memory image to a terminal; use -o FILE or a pipe');
    await client.restore(
      id,
      (b) =>
        new Promise<void>((resolve, reject) =>
          process.stdout.write(b, (err) => (err ? reject(fromSystemError(err, 'writing standard output')) : resolve())),
        ),
    );
    return;
  }
  const out = await checkOutputPath(output);
  await writeOutputFile(out, async (fh) => {
    let position = 0;
    const record = await client.restore(id, async (b, zero) => {
      if (!(zero && sparse)) await writeFully(fh, b, position);
      position += b.length;
    });
    await fh.truncate(record.byteLength); // a trailing hole still makes the file its full length
  });
}
