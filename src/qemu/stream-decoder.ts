/**
 * Decodes a QEMU 7.2 pre-copy migration stream (no I/O: bytes come from a ByteSource, pages go to a
 * sink). Layout: header and configuration section, the RAM section's START (its block list), RAM
 * PART sections (one per round) and END (the final round), then the device sections, EOF and the VM
 * description, which are kept verbatim as the "tail". Anything this decoder does not understand is
 * refused with a message naming the feature: multifd, XBZRLE, compression, postcopy, RDMA,
 * iterable sections other than RAM (block migration, dirty bitmaps), x-ignore-shared.
 */
import { truncated, type ByteSource } from './byte-source.js';
import {
  COMMAND_NAMES,
  CONFIG_SUBSECTION,
  MULTIFD_MAGIC,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  RAM_FLAG_MASK,
  RAM_SECTION_NAME,
  RAM_SECTION_VERSION,
  RamFlag,
  Section,
  TARGET_PAGE_BITS,
  TARGET_PAGE_SIZE,
  type RamBlock,
  type RamSectionId,
  type StreamConfig,
} from './stream-format.js';
import { VnstoreError } from '../util/errors.js';

/** Receives the RAM content as it is decoded; a returned promise is awaited (backpressure). */
export interface RamSink {
  /** The block list, once, before any page. */
  blocks(blocks: RamBlock[]): void | Promise<void>;
  /** One page of block `block` at page `pageInBlock`: its 4096 bytes, or `undefined` for a page of `fill` bytes (QEMU sends 0). */
  page(block: number, pageInBlock: number, data: Buffer | undefined, fill: number): void | Promise<void>;
}

export interface DecodedStream {
  /** Bytes from the magic to the end of the configuration section, verbatim. */
  head: Buffer;
  config?: StreamConfig;
  ram: RamSectionId;
  /** Whether sections end with footers (QEMU's default since 2.5). */
  footers: boolean;
  blocks: RamBlock[];
  /** Device sections, EOF and VM description, verbatim. */
  tail: Buffer;
  /** The VM description (JSON) QEMU appends after EOF. */
  vmDescription: { devices?: unknown[] } & Record<string, unknown>;
  /** RAM sections seen: START, each PART (a round) and END. */
  ramSections: number;
  pageRecords: number;
  zeroRecords: number;
  streamBytes: number;
}

export interface DecodeLimits {
  /** Largest tail (device state) accepted. */
  maxTailBytes: number;
  /** Largest total RAM accepted. */
  maxRamBytes: number;
}

export const DEFAULT_LIMITS: DecodeLimits = { maxTailBytes: 256 * 2 ** 20, maxRamBytes: 2 ** 40 };

export function malformed(offset: number, message: string): VnstoreError {
  return new VnstoreError('E_INPUT', `migration stream: ${message} (at byte ${offset})`);
}

export function unsupported(message: string): VnstoreError {
  return new VnstoreError(
    'E_INPUT',
    `migration stream uses ${message}, which vnstore does not support (plain pre-copy only; see docs/QEMU.md)`,
  );
}

/** Big-endian field reads with one byte of push-back (a section type read ahead). */
class FieldReader {
  private pushedBack: number | undefined;
  constructor(private readonly src: ByteSource) {}
  /** Offset of the next byte to be returned. */
  get offset(): number {
    return this.src.offset - (this.pushedBack === undefined ? 0 : 1);
  }
  unread(b: number): void {
    this.pushedBack = b;
  }
  bytes(n: number, what: string): Promise<Buffer> {
    return this.src.read(n, what);
  }
  async u8(what: string): Promise<number> {
    const p = this.pushedBack;
    if (p !== undefined) {
      this.pushedBack = undefined;
      return p;
    }
    return (await this.bytes(1, what))[0];
  }
  async be16(what: string): Promise<number> {
    return (await this.bytes(2, what)).readUInt16BE(0);
  }
  async be32(what: string): Promise<number> {
    return (await this.bytes(4, what)).readUInt32BE(0);
  }
  async be64(what: string): Promise<bigint> {
    return (await this.bytes(8, what)).readBigUInt64BE(0);
  }
  /** A string with a one-byte length (idstr, block names). */
  async str8(what: string): Promise<string> {
    const n = await this.u8(what);
    return (await this.bytes(n, what)).toString('latin1');
  }
}

/** Keeps a copy of the bytes read while parsing the head, to store them verbatim. */
class RecordingSource implements ByteSource {
  readonly pieces: Buffer[] = [];
  recording = true;
  constructor(private readonly inner: ByteSource) {}
  get offset(): number {
    return this.inner.offset;
  }
  async read(n: number, what?: string): Promise<Buffer> {
    const b = await this.inner.read(n, what);
    if (this.recording) this.pieces.push(Buffer.from(b));
    return b;
  }
  readRest(maxBytes: number): Promise<Buffer> {
    return this.inner.readRest(maxBytes);
  }
}

export async function decodeStream(source: ByteSource, sink: RamSink, limits: DecodeLimits = DEFAULT_LIMITS): Promise<DecodedStream> {
  const rec = new RecordingSource(source);
  const r = new FieldReader(rec);
  const start = source.offset;

  const magic = await r.be32('the stream header');
  if (magic === MULTIFD_MAGIC) throw unsupported('multifd (this is a multifd channel)');
  if (magic !== QEMU_VM_FILE_MAGIC)
    throw malformed(
      r.offset - 4,
      `not a QEMU migration stream (magic 0x${magic.toString(16).padStart(8, '0')}, expected 0x5145564d "QEVM")`,
    );
  const version = await r.be32('the stream header');
  if (version !== QEMU_VM_FILE_VERSION)
    throw malformed(r.offset - 4, `stream version ${version} is not supported (QEMU 7.2 writes version ${QEMU_VM_FILE_VERSION})`);

  let type = await r.u8('a section header');
  let config: StreamConfig | undefined;
  if (type === Section.CONFIGURATION) {
    config = await readConfiguration(r);
    type = await r.u8('a section header');
  }
  rec.recording = false;
  // The head ends before the first section's type byte (already read).
  const headBytes = Buffer.concat(rec.pieces).subarray(0, r.offset - 1 - start);

  let ram: RamSectionId | undefined;
  let footers: boolean | undefined;
  let blocks: RamBlock[] = [];
  let ramSections = 0;
  const counts = { pages: 0, zeros: 0 };
  const ramState: RamState = { blocks, byName: new Map(), last: undefined };

  for (;;) {
    const at = r.offset - 1;
    switch (type) {
      case Section.START: {
        const sectionId = await r.be32('a section header');
        const name = await r.str8('a section header');
        const instanceId = await r.be32('a section header');
        const versionId = await r.be32('a section header');
        if (name !== RAM_SECTION_NAME) throw unsupported(`the iterable section ${JSON.stringify(name)} (block migration or dirty bitmaps)`);
        if (ram) throw malformed(at, 'a second RAM section START');
        if (versionId !== RAM_SECTION_VERSION)
          throw malformed(at, `RAM section version ${versionId} (QEMU 7.2 writes ${RAM_SECTION_VERSION})`);
        ram = { sectionId, instanceId, versionId };
        blocks = await readRamSetup(r, limits);
        ramState.blocks = blocks;
        blocks.forEach((b, i) => ramState.byName.set(b.name, i));
        const s = sink.blocks(blocks);
        if (s) await s;
        await readRamRecords(r, ramState, sink, counts);
        footers = await readFooter(r, sectionId, footers);
        ramSections++;
        break;
      }
      case Section.PART:
      case Section.END: {
        const sectionId = await r.be32('a section header');
        if (!ram) throw malformed(at, `section ${type === Section.PART ? 'PART' : 'END'} before the RAM section START`);
        if (sectionId !== ram.sectionId) throw malformed(at, `section id ${sectionId} is not the RAM section (${ram.sectionId})`);
        await readRamRecords(r, ramState, sink, counts);
        footers = await readFooter(r, sectionId, footers);
        ramSections++;
        if (type === Section.END) {
          const tailStart = r.offset;
          const tail = await source.readRest(limits.maxTailBytes);
          const vmDescription = checkTail(tail, tailStart);
          return {
            head: headBytes,
            config,
            ram,
            footers: footers === true,
            blocks,
            tail,
            vmDescription,
            ramSections,
            pageRecords: counts.pages,
            zeroRecords: counts.zeros,
            streamBytes: source.offset - start,
          };
        }
        break;
      }
      case Section.COMMAND: {
        const cmd = await r.be16('a command');
        throw unsupported(`command ${COMMAND_NAMES[cmd] ?? cmd}`);
      }
      case Section.FULL:
        throw malformed(at, 'a device section before the final RAM section (not a pre-copy stream)');
      case Section.EOF:
        throw malformed(
          at,
          ram ? 'EOF before the final RAM section (the migration was cancelled or failed)' : 'EOF before any RAM section',
        );
      case Section.CONFIGURATION:
        throw malformed(at, 'a configuration section after the first section');
      default:
        throw malformed(at, `unknown section type 0x${type.toString(16)}`);
    }
    type = await r.u8('a section header');
  }
}

async function readConfiguration(r: FieldReader): Promise<StreamConfig> {
  const at = r.offset;
  const len = await r.be32('the configuration section');
  if (len === 0 || len > 256) throw malformed(at, `machine type name of ${len} bytes`);
  const machine = (await r.bytes(len, 'the configuration section')).toString('latin1');
  const config: StreamConfig = { machine, capabilities: [] };
  // Subsections follow, each introduced by QEMU_VM_SUBSECTION; the next section's type byte is never 5.
  for (;;) {
    const peek = await r.u8('the configuration section');
    if (peek !== Section.SUBSECTION) {
      // Not a subsection: that byte was the next section's type.
      r.unread(peek);
      break;
    }
    const sat = r.offset - 1;
    const name = await r.str8('a configuration subsection');
    const ver = await r.be32('a configuration subsection');
    if (ver !== 1) throw malformed(sat, `configuration subsection ${name} version ${ver}`);
    if (name === CONFIG_SUBSECTION.pageBits) {
      config.pageBits = await r.be32('the target page bits');
      if (config.pageBits !== TARGET_PAGE_BITS) throw unsupported(`a target page size of 2^${config.pageBits} bytes`);
    } else if (name === CONFIG_SUBSECTION.capabilities) {
      const count = await r.be32('the capability list');
      if (count > 64) throw malformed(sat, `${count} capabilities`);
      for (let i = 0; i < count; i++) config.capabilities.push(await r.str8('the capability list'));
      if (config.capabilities.length > 0)
        throw unsupported(`the capabilities ${config.capabilities.join(', ')} (x-ignore-shared leaves shared RAM out of the stream)`);
    } else if (name === CONFIG_SUBSECTION.uuid) {
      config.uuid = (await r.bytes(16, 'the VM uuid')).toString('hex');
    } else {
      throw malformed(sat, `unknown configuration subsection ${JSON.stringify(name)}`);
    }
  }
  return config;
}

interface RamState {
  blocks: RamBlock[];
  byName: Map<string, number>;
  /** The block of the previous page record (RAM_SAVE_FLAG_CONTINUE refers to it, across sections). */
  last: number | undefined;
}

async function readRamSetup(r: FieldReader, limits: DecodeLimits): Promise<RamBlock[]> {
  const at = r.offset;
  const word = await r.be64('the RAM block list');
  const flags = Number(word & BigInt(RAM_FLAG_MASK));
  if (flags !== RamFlag.MEM_SIZE) throw malformed(at, `RAM section START without its block list (flags 0x${flags.toString(16)})`);
  const total = word & ~BigInt(RAM_FLAG_MASK);
  if (total > BigInt(limits.maxRamBytes)) throw malformed(at, `${total} bytes of RAM (limit ${limits.maxRamBytes})`);
  let remaining = Number(total);
  const blocks: RamBlock[] = [];
  const seen = new Set<string>();
  while (remaining > 0) {
    const bat = r.offset;
    const name = await r.str8('the RAM block list');
    const bytes = Number(await r.be64('the RAM block list'));
    if (name.length === 0) throw malformed(bat, 'a RAM block without a name');
    if (seen.has(name)) throw malformed(bat, `RAM block ${name} listed twice`);
    if (bytes === 0 || bytes % TARGET_PAGE_SIZE !== 0)
      throw malformed(bat, `RAM block ${name} of ${bytes} bytes (not a positive multiple of ${TARGET_PAGE_SIZE})`);
    if (bytes > remaining) throw malformed(bat, `RAM block ${name} (${bytes} bytes) exceeds the announced RAM size`);
    seen.add(name);
    blocks.push({ name, bytes });
    remaining -= bytes;
  }
  return blocks;
}

/** Page records up to and including EOS. */
async function readRamRecords(r: FieldReader, st: RamState, sink: RamSink, counts: { pages: number; zeros: number }): Promise<void> {
  for (;;) {
    const at = r.offset;
    const word = await r.be64('a RAM record');
    const flags = Number(word & BigInt(RAM_FLAG_MASK));
    const offset = Number(word >> BigInt(TARGET_PAGE_BITS));
    const kind = flags & ~RamFlag.CONTINUE;
    if (kind === RamFlag.EOS && flags === RamFlag.EOS) {
      if (offset !== 0) throw malformed(at, 'an end-of-section record with an offset');
      return;
    }
    if (kind === RamFlag.XBZRLE) throw unsupported('XBZRLE compression (disable the xbzrle capability)');
    if (kind === RamFlag.COMPRESS_PAGE) throw unsupported('compressed pages (disable the compress capability)');
    if (kind === RamFlag.HOOK) throw unsupported('RDMA');
    if (kind === RamFlag.MULTIFD_FLUSH) throw unsupported('multifd');
    if (kind !== RamFlag.ZERO && kind !== RamFlag.PAGE) throw malformed(at, `RAM record with flags 0x${flags.toString(16)}`);
    let block: number;
    if (flags & RamFlag.CONTINUE) {
      if (st.last === undefined) throw malformed(at, 'a page record continues a block, but no block was named before');
      block = st.last;
    } else {
      const name = await r.str8('a RAM record');
      const b = st.byName.get(name);
      if (b === undefined) throw malformed(at, `a page of RAM block ${JSON.stringify(name)}, which the block list does not have`);
      block = b;
      st.last = b;
    }
    const pages = st.blocks[block].bytes / TARGET_PAGE_SIZE;
    if (offset >= pages) throw malformed(at, `page ${offset} of RAM block ${st.blocks[block].name}, which has ${pages} pages`);
    let result: void | Promise<void>;
    if (kind === RamFlag.ZERO) {
      const fill = await r.u8('a zero page record');
      counts.zeros++;
      result = sink.page(block, offset, undefined, fill);
    } else {
      const data = await r.bytes(TARGET_PAGE_SIZE, 'a page');
      counts.pages++;
      result = sink.page(block, offset, data, 0);
    }
    if (result) await result;
  }
}

/** A footer after a section when the stream uses them (decided by the first section). */
async function readFooter(r: FieldReader, sectionId: number, footers: boolean | undefined): Promise<boolean> {
  if (footers === false) return false;
  const at = r.offset;
  const b = await r.u8('a section footer');
  if (b !== Section.FOOTER) {
    if (footers === true) throw malformed(at, `missing section footer (byte 0x${b.toString(16)})`);
    r.unread(b);
    return false;
  }
  const id = await r.be32('a section footer');
  if (id !== sectionId) throw malformed(at, `section footer for section ${id} ends section ${sectionId}`);
  return true;
}

/**
 * The tail must be device sections, then EOF, then the VM description (QEMU_VM_VMDESCRIPTION, be32
 * length, JSON) ending exactly at the end of the stream: a cut or padded stream fails here.
 */
export function checkTail(tail: Buffer, tailStart: number): DecodedStream['vmDescription'] {
  if (tail.length === 0) throw truncated(tailStart, 'the device state after the final RAM section');
  if (tail[0] !== Section.FULL && tail[0] !== Section.EOF)
    throw malformed(tailStart, `section type 0x${tail[0].toString(16)} after the final RAM section (expected device state)`);
  // The JSON holds no control bytes, so the last "EOF, VMDESCRIPTION, length" whose length reaches
  // exactly to the end is the real one.
  for (let p = tail.length - 7; p >= 0; p--) {
    if (tail[p] !== Section.EOF || tail[p + 1] !== Section.VMDESCRIPTION) continue;
    if (tail.readUInt32BE(p + 2) !== tail.length - p - 6 || tail[p + 6] !== 0x7b /* { */) continue;
    try {
      const desc = JSON.parse(tail.subarray(p + 6).toString('utf8')) as DecodedStream['vmDescription'];
      if (desc && typeof desc === 'object' && !Array.isArray(desc)) return desc;
    } catch {
      // not the description: keep looking
    }
    break;
  }
  throw malformed(
    tailStart + tail.length,
    'the stream does not end with EOF and the VM description (cut short, or QEMU runs with suppress-vmdesc=on)',
  );
}
