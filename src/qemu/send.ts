/**
 * Regenerates a migration stream from a stored QEMU snapshot, for `qemu-system-x86_64 -incoming
 * "exec:vnstore qemu send ID"`: the stored head (header, configuration), the RAM section START with
 * the block list, every page of every block in one PART (a page record, or a ZERO record for a zero
 * page), an empty END, then the stored device state, EOF and VM description. Every page is verified
 * against its digest by the restore that reads it.
 */
import type { SnapshotRecord } from '../store/db.js';
import type { MigrationStore } from './migration-store.js';
import { VnstoreError } from '../util/errors.js';
import { decodeStateImage, STATE_VM_SUFFIX, type StateImage } from './state-image.js';
import {
  encodeEos,
  encodeFooter,
  encodeRamSetup,
  encodeSectionEnd,
  encodeSectionPart,
  encodeSectionStart,
  pageRecordBytes,
  writePageRecord,
} from './stream-encoder.js';
import { TARGET_PAGE_SIZE } from './stream-format.js';

export interface StoredMigration {
  ram: SnapshotRecord;
  state: SnapshotRecord;
  image: StateImage;
}

async function readStateImage(store: MigrationStore, state: SnapshotRecord): Promise<StateImage> {
  const parts: Buffer[] = [];
  await store.restore(state, (chunk) => void parts.push(Buffer.from(chunk)));
  return decodeStateImage(Buffer.concat(parts), `snapshot ${state.id}`);
}

/** Finds both halves of a stored migration from either snapshot's id (or a unique prefix). */
export async function loadStoredMigration(store: MigrationStore, idOrPrefix: string): Promise<StoredMigration> {
  const record = await store.resolveSnapshot(idOrPrefix);
  let state: SnapshotRecord | undefined;
  if (record.vm.endsWith(STATE_VM_SUFFIX)) state = record;
  else {
    // The state image was committed in the RAM snapshot's group, under the VM's state name.
    const candidates = (await store.listSnapshots(record.vm + STATE_VM_SUFFIX)).filter(
      (s) => s.group !== undefined && s.group === record.group,
    );
    for (const c of candidates) {
      const image = await readStateImage(store, c);
      if (image.meta.ramSnapshot === record.id) return { ram: record, state: c, image };
    }
    throw new VnstoreError('E_NOT_FOUND', `snapshot ${record.id} (VM ${record.vm}) was not received from QEMU: it has no QEMU state image`);
  }
  const image = await readStateImage(store, state);
  const ram = await store.resolveSnapshot(image.meta.ramSnapshot).catch((err: unknown) => {
    if (err instanceof VnstoreError && err.code === 'E_NOT_FOUND') return undefined;
    throw err;
  });
  if (!ram)
    throw new VnstoreError(
      'E_NOT_FOUND',
      `QEMU state ${state.id} names RAM snapshot ${image.meta.ramSnapshot}, which is not in this store (forgotten?)`,
    );
  return { ram, state, image };
}

/** Output buffer size: records are gathered into 1 MiB writes. */
const OUT_BYTES = 1 << 20;

/**
 * Writes the stream to `write`, which may apply backpressure by returning a promise and keeps the
 * buffer it is given (each is fresh). Returns the number of bytes written.
 */
export async function sendMigration(
  store: MigrationStore,
  m: StoredMigration,
  write: (b: Buffer) => Promise<void> | void,
): Promise<number> {
  const { meta, head, tail } = m.image;
  const expectedPages = meta.blocks.reduce((s, b) => s + b.bytes / TARGET_PAGE_SIZE, 0);
  if (m.ram.pageCount !== expectedPages)
    throw new VnstoreError('E_CORRUPT', `snapshot ${m.ram.id} has ${m.ram.pageCount} pages, its QEMU blocks ${expectedPages}`);
  let total = 0;
  const emit = async (b: Buffer) => {
    total += b.length;
    const r = write(b);
    if (r) await r;
  };
  const sid = meta.ram.sectionId;
  const footer = () => (meta.footers ? [encodeFooter(sid)] : []);
  await emit(
    Buffer.concat([head, encodeSectionStart(meta.ram), encodeRamSetup(meta.blocks), encodeEos(), ...footer(), encodeSectionPart(sid)]),
  );

  let out = Buffer.allocUnsafe(OUT_BYTES);
  let at = 0;
  let page = 0; // global page index of the next page to arrive
  let block = 0;
  const zero = Buffer.alloc(TARGET_PAGE_SIZE);
  let carry: Buffer | undefined; // a page split across restore chunks
  const flush = async () => {
    if (at === 0) return;
    const b = out.subarray(0, at);
    out = Buffer.allocUnsafe(OUT_BYTES);
    at = 0;
    await emit(b);
  };
  const onPage = async (p: Buffer) => {
    while (block + 1 < meta.blocks.length && page >= meta.blocks[block + 1].firstPage) block++;
    const b = meta.blocks[block];
    const inBlock = page - b.firstPage;
    const name = inBlock === 0 ? b.name : undefined; // the first page of a block names it, the rest continue
    const isZero = p.equals(zero);
    if (at + pageRecordBytes(name, isZero) > out.length) await flush();
    at = writePageRecord(out, at, name, inBlock, isZero ? 0 : p);
    page++;
  };
  await store.restore(m.ram, async (chunk) => {
    let c = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (carry) {
      const need = TARGET_PAGE_SIZE - carry.length;
      carry = Buffer.concat([carry, c.subarray(0, need)]);
      c = c.subarray(need);
      if (carry.length < TARGET_PAGE_SIZE) return;
      await onPage(carry);
      carry = undefined;
    }
    let off = 0;
    for (; off + TARGET_PAGE_SIZE <= c.length; off += TARGET_PAGE_SIZE) await onPage(c.subarray(off, off + TARGET_PAGE_SIZE));
    if (off < c.length) carry = Buffer.from(c.subarray(off));
  });
  if (carry || page !== expectedPages)
    throw new VnstoreError('E_CORRUPT', `snapshot ${m.ram.id}: restored ${page} pages, expected ${expectedPages}`);
  await flush();
  await emit(Buffer.concat([encodeEos(), ...footer(), encodeSectionEnd(sid), encodeEos(), ...footer(), tail]));
  return total;
}
