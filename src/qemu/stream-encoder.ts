/**
 * Encodes the pieces of a QEMU 7.2 migration stream (no I/O): the header with its configuration,
 * RAM section headers and footers, the RAM block list, page records, and a device-state tail. Used
 * by `vnstore qemu send` to regenerate a stream from the store, and by the tests to build streams.
 */
import {
  CONFIG_SUBSECTION,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  RAM_SECTION_NAME,
  RamFlag,
  Section,
  TARGET_PAGE_BITS,
  TARGET_PAGE_SIZE,
  type RamBlock,
  type RamSectionId,
  type StreamConfig,
} from './stream-format.js';

function be32(v: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}

function be64(v: bigint | number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(v), 0);
  return b;
}

function str8(s: string): Buffer {
  const bytes = Buffer.from(s, 'latin1');
  if (bytes.length === 0 || bytes.length > 255) throw new RangeError(`id string of ${bytes.length} bytes`);
  return Buffer.concat([Buffer.of(bytes.length), bytes]);
}

function subsection(name: string, body: Buffer): Buffer {
  return Buffer.concat([Buffer.of(Section.SUBSECTION), str8(name), be32(1), body]);
}

/** Magic, version and (when given) the configuration section, as QEMU's qemu_savevm_state_header writes them. */
export function encodeHeader(config: StreamConfig | undefined): Buffer {
  const parts = [be32(QEMU_VM_FILE_MAGIC), be32(QEMU_VM_FILE_VERSION)];
  if (config) {
    const name = Buffer.from(config.machine, 'latin1');
    parts.push(Buffer.of(Section.CONFIGURATION), be32(name.length), name);
    if (config.pageBits !== undefined) parts.push(subsection(CONFIG_SUBSECTION.pageBits, be32(config.pageBits)));
    if (config.capabilities.length > 0) {
      parts.push(
        subsection(CONFIG_SUBSECTION.capabilities, Buffer.concat([be32(config.capabilities.length), ...config.capabilities.map(str8)])),
      );
    }
    if (config.uuid !== undefined) parts.push(subsection(CONFIG_SUBSECTION.uuid, Buffer.from(config.uuid, 'hex')));
  }
  return Buffer.concat(parts);
}

export function encodeSectionStart(id: RamSectionId, name = RAM_SECTION_NAME): Buffer {
  return Buffer.concat([Buffer.of(Section.START), be32(id.sectionId), str8(name), be32(id.instanceId), be32(id.versionId)]);
}

export function encodeSectionPart(sectionId: number): Buffer {
  return Buffer.concat([Buffer.of(Section.PART), be32(sectionId)]);
}

export function encodeSectionEnd(sectionId: number): Buffer {
  return Buffer.concat([Buffer.of(Section.END), be32(sectionId)]);
}

export function encodeFooter(sectionId: number): Buffer {
  return Buffer.concat([Buffer.of(Section.FOOTER), be32(sectionId)]);
}

export function encodeEos(): Buffer {
  return be64(RamFlag.EOS);
}

/** The RAM section's setup: MEM_SIZE with the total, then each block's name and used length. */
export function encodeRamSetup(blocks: readonly RamBlock[]): Buffer {
  const total = blocks.reduce((s, b) => s + b.bytes, 0);
  return Buffer.concat([be64(BigInt(total) | BigInt(RamFlag.MEM_SIZE)), ...blocks.flatMap((b) => [str8(b.name), be64(b.bytes)])]);
}

/** Bytes of a page record: the be64 word, the block name unless it continues the previous block, and the payload. */
export function pageRecordBytes(named: string | undefined, zero: boolean): number {
  return 8 + (named === undefined ? 0 : 1 + Buffer.byteLength(named, 'latin1')) + (zero ? 1 : TARGET_PAGE_SIZE);
}

/**
 * Writes one page record into `out` at `at` and returns the offset after it. `block` is the block
 * name, or undefined to continue the previous record's block; `page` is the 4096 bytes, or a
 * number: a page filled with that byte (a ZERO record; QEMU sends 0).
 */
export function writePageRecord(
  out: Buffer,
  at: number,
  block: string | undefined,
  pageInBlock: number,
  page: Uint8Array | number,
): number {
  const flags = (typeof page === 'number' ? RamFlag.ZERO : RamFlag.PAGE) | (block === undefined ? RamFlag.CONTINUE : 0);
  out.writeBigUInt64BE((BigInt(pageInBlock) << BigInt(TARGET_PAGE_BITS)) | BigInt(flags), at);
  at += 8;
  if (block !== undefined) {
    const n = out.write(block, at + 1, 'latin1');
    out[at] = n;
    at += 1 + n;
  }
  if (typeof page === 'number') {
    out[at] = page;
    return at + 1;
  }
  if (page.length !== TARGET_PAGE_SIZE) throw new RangeError(`page of ${page.length} bytes`);
  out.set(page, at);
  return at + TARGET_PAGE_SIZE;
}

export function encodePageRecord(block: string | undefined, pageInBlock: number, page: Uint8Array | number): Buffer {
  const out = Buffer.allocUnsafe(pageRecordBytes(block, typeof page === 'number'));
  writePageRecord(out, 0, block, pageInBlock, page);
  return out;
}

/** Device-state tail as QEMU ends a pre-copy stream: the device sections, EOF, then the VM description. */
export function encodeTail(deviceSections: Buffer, vmDescription: string): Buffer {
  const json = Buffer.from(vmDescription, 'utf8');
  return Buffer.concat([deviceSections, Buffer.of(Section.EOF, Section.VMDESCRIPTION), be32(json.length), json]);
}
