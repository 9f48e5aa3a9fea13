/**
 * Test helper: a QEMU migration stream as data (blocks, rounds of page records, device tail), its
 * encoding with src/qemu/stream-encoder.ts, the offsets of its structural bytes, the memory it
 * describes (last write wins), and a fast-check generator of such streams.
 */
import fc from 'fast-check';
import {
  encodeEos,
  encodeFooter,
  encodeHeader,
  encodePageRecord,
  encodeRamSetup,
  encodeSectionEnd,
  encodeSectionPart,
  encodeSectionStart,
  encodeTail,
} from '../../src/qemu/stream-encoder.js';
import { RAM_SECTION_VERSION, type RamBlock, type RamSectionId, type StreamConfig } from '../../src/qemu/stream-format.js';

export interface PageRecord {
  block: number;
  page: number;
  /** Page bytes, or a fill byte (ZERO record). */
  data: Uint8Array | number;
  /** Whether the record names its block (else it continues the previous record's block). */
  named: boolean;
}

export interface StreamModel {
  config?: StreamConfig;
  ram: RamSectionId;
  footers: boolean;
  blocks: RamBlock[];
  /** rounds[0] is sent in START, the last in END, the others in PARTs. At least two rounds. */
  rounds: PageRecord[][];
  deviceSections: Buffer;
  vmDescription: string;
}

export type MarkKind = 'magic' | 'version' | 'section-type' | 'record-flags' | 'footer' | 'vmdesc-length' | 'block-name';

export interface EncodedModel {
  bytes: Buffer;
  marks: { kind: MarkKind; at: number }[];
}

export function encodeModel(m: StreamModel): EncodedModel {
  const parts: Buffer[] = [];
  const marks: EncodedModel['marks'] = [];
  let at = 0;
  const push = (b: Buffer, kind?: MarkKind, rel = 0) => {
    if (kind) marks.push({ kind, at: at + rel });
    parts.push(b);
    at += b.length;
  };
  const head = encodeHeader(m.config);
  marks.push({ kind: 'magic', at: 0 }, { kind: 'version', at: 7 });
  push(head);
  m.rounds.forEach((round, i) => {
    const last = i === m.rounds.length - 1;
    if (i === 0) push(encodeSectionStart(m.ram), 'section-type');
    else push(last ? encodeSectionEnd(m.ram.sectionId) : encodeSectionPart(m.ram.sectionId), 'section-type');
    if (i === 0) push(encodeRamSetup(m.blocks));
    for (const r of round) {
      const rec = encodePageRecord(r.named ? m.blocks[r.block].name : undefined, r.page, r.data);
      marks.push({ kind: 'record-flags', at: at + 7 });
      if (r.named) marks.push({ kind: 'block-name', at: at + 9 });
      push(rec);
    }
    push(encodeEos(), 'record-flags', 7);
    if (m.footers) push(encodeFooter(m.ram.sectionId), 'footer');
  });
  const tail = encodeTail(m.deviceSections, m.vmDescription);
  marks.push({ kind: 'vmdesc-length', at: at + m.deviceSections.length + 2 + 3 });
  push(tail);
  return { bytes: Buffer.concat(parts), marks };
}

/** The final content of each page that any record wrote (key "block:page"): the last write wins. */
export function finalPages(m: StreamModel): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const round of m.rounds) {
    for (const r of round) out.set(`${r.block}:${r.page}`, typeof r.data === 'number' ? Buffer.alloc(4096, r.data) : Buffer.from(r.data));
  }
  return out;
}

const blockNames = ['pc.ram', 'vga.vram', 'pc.bios', '/rom@etc/acpi/tables', 'pc.rom'];

/** Pages are a few distinct patterns, so generating them is cheap and rounds rewrite with new content. */
const pageData = fc.oneof(
  fc.constant<number>(0),
  fc.integer({ min: 1, max: 250 }).map((seed) => {
    const p = new Uint8Array(4096);
    for (let i = 0; i < p.length; i += 64) p[i] = (seed + i) & 0xff;
    return p;
  }),
);

export const streamModel: fc.Arbitrary<StreamModel> = fc
  .record({
    blockPages: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 3 }),
    footers: fc.boolean(),
    withConfig: fc.boolean(),
    sectionId: fc.integer({ min: 0, max: 1000 }),
    roundCount: fc.integer({ min: 2, max: 4 }),
    seed: fc.array(fc.tuple(fc.nat(), fc.nat(), fc.boolean(), pageData), { maxLength: 40 }),
    device: fc.uint8Array({ maxLength: 64 }),
  })
  .map(({ blockPages, footers, withConfig, sectionId, roundCount, seed, device }) => {
    const blocks = blockPages.map((pages, i) => ({ name: blockNames[i], bytes: pages * 4096 }));
    const rounds: PageRecord[][] = Array.from({ length: roundCount }, () => []);
    let last: number | undefined;
    seed.forEach(([b, p, cont, data], k) => {
      const round = rounds[Math.floor((k * roundCount) / seed.length)];
      const continues = cont && last !== undefined && round.length > 0;
      const block = continues ? (last as number) : b % blocks.length;
      round.push({ block, page: p % (blocks[block].bytes / 4096), data, named: !continues });
      last = block;
    });
    // A round's first record names its block, as QEMU does after each section header.
    for (const round of rounds) if (round.length > 0) round[0].named = true;
    const config: StreamConfig | undefined = withConfig
      ? { machine: 'pc-i440fx-7.2', capabilities: [], uuid: sectionId % 2 ? '00112233445566778899aabbccddeeff' : undefined }
      : undefined;
    return {
      config,
      ram: { sectionId, instanceId: 0, versionId: RAM_SECTION_VERSION },
      footers,
      blocks,
      rounds,
      deviceSections: Buffer.concat([Buffer.of(4), Buffer.from(device)]),
      vmDescription: JSON.stringify({ page_size: 4096, devices: [{ name: 'timer', instance_id: 0 }] }),
    };
  });
