/**
 * Receives one QEMU migration stream into the store, local or through a server (docs/QEMU.md): the RAM blocks, laid out one
 * after another, become the pages of one snapshot of VM `vm` (each round's pages written as they
 * arrive, the last copy of a page winning); the rest of the stream becomes a state image stored as
 * a snapshot of VM `vm.qemu`. Both commit together, in one group, only once the stream has ended
 * with QEMU's EOF and VM description; on any error both sessions are aborted and nothing is visible.
 */
import type { ByteSource } from './byte-source.js';
import { decodeStream, type RamSink } from './stream-decoder.js';
import { TARGET_PAGE_SIZE, type RamBlock } from './stream-format.js';
import { encodeStateImage, STATE_VM_SUFFIX, type QemuProcessInfo, type StateMeta } from './state-image.js';
import type { SnapshotRecord } from '../store/db.js';
import type { MigrationSession, MigrationStore } from './migration-store.js';
import { VnstoreError } from '../util/errors.js';
import { newSnapshotId } from '../store/ids.js';

/** Pages gathered before one writeScattered call (4 MiB). */
const BATCH_PAGES = 1024;

export interface ReceiveOptions {
  vm: string;
  /** Group (environment epoch) to commit into; default: a group of its own, `qemu-<new id>`. */
  group?: string;
  /**
   * QEMU's version and command line, looked up once the stream has ended (running `qemu --version`
   * during the migration would take CPU from it).
   */
  qemu?: () => Promise<QemuProcessInfo>;
}

export interface ReceiveResult {
  ram: SnapshotRecord;
  state: SnapshotRecord;
  meta: StateMeta;
}

export function stateVmName(vm: string): string {
  return vm + STATE_VM_SUFFIX;
}

/** Gathers decoded pages into batches for the RAM session; zero pages never written are skipped. */
class RamWriter implements RamSink {
  session: MigrationSession | undefined;
  firstPage: number[] = [];
  blockList: RamBlock[] = [];
  private written: Uint8Array = new Uint8Array(0);
  private readonly indices = new Uint32Array(BATCH_PAGES);
  private readonly data = Buffer.allocUnsafe(BATCH_PAGES * TARGET_PAGE_SIZE);
  private count = 0;

  constructor(private readonly begin: (memoryBytes: number) => Promise<MigrationSession>) {}

  async blocks(blocks: RamBlock[]): Promise<void> {
    let pages = 0;
    for (const b of blocks) {
      this.firstPage.push(pages);
      pages += b.bytes / TARGET_PAGE_SIZE;
    }
    this.blockList = blocks;
    this.written = new Uint8Array(pages);
    this.session = await this.begin(pages * TARGET_PAGE_SIZE);
  }

  page(block: number, pageInBlock: number, data: Buffer | undefined, fill: number): Promise<void> | undefined {
    const index = this.firstPage[block] + pageInBlock;
    // A zero page over a page never written is already zero (commit uses unwritten: 'zero'); one over
    // a written page must replace it.
    if (data === undefined && fill === 0 && this.written[index] === 0) return undefined;
    this.written[index] = 1;
    const at = this.count * TARGET_PAGE_SIZE;
    if (data) data.copy(this.data, at);
    else this.data.fill(fill, at, at + TARGET_PAGE_SIZE);
    this.indices[this.count++] = index;
    return this.count === BATCH_PAGES ? this.flush() : undefined;
  }

  async flush(): Promise<void> {
    if (this.count === 0) return;
    const n = this.count;
    this.count = 0;
    // writeScattered copies what it keeps, so the batch buffer is reused at once.
    await (this.session as MigrationSession).writeScattered(this.indices.subarray(0, n), this.data.subarray(0, n * TARGET_PAGE_SIZE));
  }
}

/**
 * A migration received and prepared (durable, invisible): its two members (RAM, then state) wait to
 * be committed, alone by `receiveMigration` or with other VMs' members as one environment group.
 */
export interface PreparedMigration {
  group: string;
  /** The RAM snapshot's id, then the state image's. */
  ids: [string, string];
  meta: StateMeta;
}

/**
 * Reads the stream to its end and prepares both snapshots without committing them. On any error
 * both sessions are aborted (and whatever was prepared) before the error is thrown.
 */
export async function prepareMigration(store: MigrationStore, source: ByteSource, options: ReceiveOptions): Promise<PreparedMigration> {
  if (options.vm.endsWith(STATE_VM_SUFFIX))
    throw new VnstoreError('E_USAGE', `VM name ${options.vm} ends with ${STATE_VM_SUFFIX}, which names state images`);
  const sessions: MigrationSession[] = [];
  const prepared: string[] = [];
  const group = options.group ?? `qemu-${newSnapshotId()}`;
  const open = async (vm: string, memoryBytes?: number) => {
    const s = await store.beginSession({ vm, group, memoryBytes });
    sessions.push(s);
    return s;
  };
  const ram = new RamWriter((memoryBytes) => open(options.vm, memoryBytes));
  try {
    const decoded = await decodeStream(source, ram);
    await ram.flush();
    // Prepared first: its id (which a server gives only now) goes into the state image.
    const ramId = await (ram.session as MigrationSession).prepare({ unwritten: 'zero' });
    prepared.push(ramId);
    const meta: StateMeta = {
      ramSnapshot: ramId,
      vm: options.vm,
      machine: decoded.config?.machine,
      qemu: (await options.qemu?.()) ?? {},
      config: decoded.config,
      ram: decoded.ram,
      footers: decoded.footers,
      blocks: decoded.blocks.map((b, k) => ({ ...b, firstPage: ram.firstPage[k] })),
      stream: {
        bytes: decoded.streamBytes,
        ramSections: decoded.ramSections,
        pageRecords: decoded.pageRecords,
        zeroRecords: decoded.zeroRecords,
      },
    };
    const image = encodeStateImage({ meta, head: decoded.head, tail: decoded.tail });
    const stateSession = await open(stateVmName(options.vm), image.length);
    await stateSession.writePages(0, image);
    const stateId = await stateSession.prepare({ byteLength: image.length, unwritten: 'zero' });
    return { group, ids: [ramId, stateId], meta };
  } catch (err) {
    // Best effort: a server that is gone aborts unprepared sessions itself and expires prepared ones.
    await store.abortPrepared(prepared).catch(() => undefined);
    for (const s of sessions) await s.abort().catch(() => undefined);
    throw err;
  }
}

/** Receives one stream and commits it as a group of its own (or into `options.group`), all or nothing. */
export async function receiveMigration(store: MigrationStore, source: ByteSource, options: ReceiveOptions): Promise<ReceiveResult> {
  const p = await prepareMigration(store, source, options);
  try {
    const [ram, state] = await store.commitGroup(p.group, p.ids);
    return { ram, state, meta: p.meta };
  } catch (err) {
    await store.abortPrepared(p.ids).catch(() => undefined);
    throw err;
  }
}
