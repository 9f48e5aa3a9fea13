/**
 * Test helper for the qemu command tests: one multi-round synthetic QEMU 7.2 stream, the memory it
 * leaves, and a decoder of a stream back to memory (what `vnstore qemu send` must give QEMU).
 */
import { ChunkSource } from '../../src/qemu/byte-source.js';
import { decodeStream } from '../../src/qemu/stream-decoder.js';
import { encodeHeader } from '../../src/qemu/stream-encoder.js';
import { RAM_SECTION_VERSION } from '../../src/qemu/stream-format.js';
import { expect } from 'vitest';
import { makePage } from '../helpers/engine.js';
import type { PageRecord, StreamModel } from './stream-model.js';

const PAGE = 4096;

/** The fields of `vnstore qemu receive --json` the qemu command tests read. */
export interface ReceiveJson {
  id: string;
  stateId: string;
  group: string;
  machine: string;
  blocks: unknown;
  logicalBytes: number;
  streamBytes: number;
}

/** pc.ram of 96 pages and a 4-page ROM; three rounds; pages re-sent, one of them as zero. */
export function model(): StreamModel {
  const blocks = [
    { name: 'pc.ram', bytes: 96 * PAGE },
    { name: 'pc.bios', bytes: 4 * PAGE },
  ];
  const round0: PageRecord[] = [];
  for (let p = 0; p < 96; p++)
    round0.push({ block: 0, page: p, data: p % 3 === 0 ? 0 : makePage(p % 2 ? 'random' : 'compressible', p), named: p === 0 });
  for (let p = 0; p < 4; p++) round0.push({ block: 1, page: p, data: makePage('compressible', 500 + p), named: p === 0 });
  const round1: PageRecord[] = [
    { block: 0, page: 5, data: makePage('random', 1005), named: true },
    { block: 0, page: 7, data: 0, named: false }, // was data: now zero
    { block: 0, page: 9, data: makePage('random', 1009), named: false },
  ];
  const round2: PageRecord[] = [
    { block: 0, page: 5, data: makePage('random', 2005), named: true }, // sent a third time: this copy wins
    { block: 0, page: 3, data: makePage('sparse', 2003), named: false }, // was zero
  ];
  return {
    config: { machine: 'pc-i440fx-7.2', capabilities: [] },
    ram: { sectionId: 2, instanceId: 0, versionId: RAM_SECTION_VERSION },
    footers: true,
    blocks,
    rounds: [round0, round1, round2],
    deviceSections: Buffer.concat([Buffer.of(4), Buffer.from('opaque device state '.repeat(50))]),
    vmDescription: JSON.stringify({ page_size: 4096, devices: [{ name: 'cpu', instance_id: 0 }] }),
  };
}

/** The memory the model leaves: blocks one after another, last write wins, unwritten pages zero. */
export function memoryOf(m: StreamModel): Buffer {
  const first: number[] = [];
  let total = 0;
  for (const b of m.blocks) {
    first.push(total);
    total += b.bytes / PAGE;
  }
  const mem = Buffer.alloc(total * PAGE);
  for (const r of m.rounds.flat()) {
    const at = (first[r.block] + r.page) * PAGE;
    if (typeof r.data === 'number') mem.fill(r.data, at, at + PAGE);
    else mem.set(r.data, at);
  }
  return mem;
}

export async function decodeToMemory(bytes: Buffer) {
  const first: number[] = [];
  let mem = Buffer.alloc(0);
  const decoded = await decodeStream(ChunkSource.ofBuffer(bytes), {
    blocks: (blocks) => {
      let total = 0;
      for (const b of blocks) {
        first.push(total);
        total += b.bytes / PAGE;
      }
      mem = Buffer.alloc(total * PAGE);
    },
    page: (block, page, data, fill) => {
      const at = (first[block] + page) * PAGE;
      if (data) data.copy(mem, at);
      else mem.fill(fill, at, at + PAGE);
    },
  });
  return { decoded, mem };
}

/** What `vnstore qemu send` wrote for the stream `bytes` of model `m`: every page once, the exact memory, head and tail. */
export async function expectSentStream(sent: Buffer, m: StreamModel, bytes: Buffer): Promise<void> {
  const { decoded, mem } = await decodeToMemory(sent);
  expect(mem.equals(memoryOf(m))).toBe(true);
  expect(decoded.blocks).toEqual(m.blocks);
  expect(decoded.head).toEqual(encodeHeader(m.config));
  expect(decoded.ram).toEqual(m.ram);
  expect(decoded.footers).toBe(true);
  expect(decoded.tail).toEqual(bytes.subarray(bytes.length - decoded.tail.length));
  expect(decoded.pageRecords + decoded.zeroRecords).toBe(memoryOf(m).length / PAGE); // every page once
}
