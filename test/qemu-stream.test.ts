/**
 * The QEMU migration stream codec (src/qemu): any stream the encoder writes decodes back to the same
 * blocks, page records, head and tail; a stream cut anywhere, or with a structural byte changed, is
 * refused with E_INPUT; the features vnstore does not handle are refused by name.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChunkSource } from '../src/qemu/byte-source.js';
import { decodeStream, type DecodedStream, type RamSink } from '../src/qemu/stream-decoder.js';
import { encodeHeader, encodeRamSetup, encodeSectionStart } from '../src/qemu/stream-encoder.js';
import { RAM_SECTION_VERSION, RamFlag } from '../src/qemu/stream-format.js';
import { VnstoreError } from '../src/util/errors.js';
import { encodeModel, finalPages, streamModel, type StreamModel } from './qemu/stream-model.js';

interface Seen {
  blocks: { name: string; bytes: number }[];
  records: { block: number; page: number; data: Buffer }[];
}

function collector(): { sink: RamSink; seen: Seen } {
  const seen: Seen = { blocks: [], records: [] };
  return {
    seen,
    sink: {
      blocks: (b) => void seen.blocks.push(...b),
      page: (block, page, data, fill) => void seen.records.push({ block, page, data: data ? Buffer.from(data) : Buffer.alloc(4096, fill) }),
    },
  };
}

/** Splits the bytes into chunks at the given cut points, as a pipe would deliver them. */
async function decodeChunked(bytes: Buffer, cuts: number[] = []): Promise<{ decoded: DecodedStream; seen: Seen }> {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let prev = 0;
  for (const p of [...points, bytes.length]) {
    chunks.push(bytes.subarray(prev, p));
    prev = p;
  }
  const { sink, seen } = collector();
  const decoded = await decodeStream(
    new ChunkSource(
      (async function* () {
        yield* chunks;
      })(),
    ),
    sink,
  );
  return { decoded, seen };
}

async function refusal(bytes: Buffer): Promise<VnstoreError> {
  try {
    await decodeChunked(bytes);
  } catch (err) {
    if (err instanceof VnstoreError) return err;
    throw err;
  }
  throw new Error('the stream was accepted');
}

function expectedRecords(m: StreamModel): Seen['records'] {
  return m.rounds
    .flat()
    .map((r) => ({ block: r.block, page: r.page, data: typeof r.data === 'number' ? Buffer.alloc(4096, r.data) : Buffer.from(r.data) }));
}

describe('QEMU migration stream codec', () => {
  it('decodes every stream the encoder writes back to its blocks, records, head and tail, however it is chunked', async () => {
    await fc.assert(
      fc.asyncProperty(streamModel, fc.array(fc.nat(), { maxLength: 8 }), async (m, cuts) => {
        const { bytes } = encodeModel(m);
        const { decoded, seen } = await decodeChunked(bytes, cuts);
        expect(seen.blocks).toEqual(m.blocks);
        expect(decoded.blocks).toEqual(m.blocks);
        expect(seen.records).toEqual(expectedRecords(m));
        expect(decoded.head).toEqual(encodeHeader(m.config));
        expect(decoded.config).toEqual(m.config ? { ...m.config, pageBits: undefined, capabilities: [] } : undefined);
        expect(decoded.ram).toEqual(m.ram);
        expect(decoded.footers).toBe(m.footers);
        expect(decoded.ramSections).toBe(m.rounds.length);
        expect(decoded.tail).toEqual(bytes.subarray(bytes.length - decoded.tail.length));
        expect(decoded.tail.subarray(0, m.deviceSections.length)).toEqual(m.deviceSections);
        expect(decoded.vmDescription).toEqual(JSON.parse(m.vmDescription));
        expect(decoded.streamBytes).toBe(bytes.length);
        // last write wins: replaying the decoded records gives the model's final memory
        const mem = new Map<string, Buffer>();
        for (const r of seen.records) mem.set(`${r.block}:${r.page}`, r.data);
        expect(mem).toEqual(finalPages(m));
      }),
      { numRuns: 80 },
    );
  });

  it('refuses a stream cut at any offset', async () => {
    await fc.assert(
      fc.asyncProperty(streamModel, fc.nat(), async (m, cut) => {
        const { bytes } = encodeModel(m);
        const err = await refusal(bytes.subarray(0, cut % bytes.length));
        expect(err.code).toBe('E_INPUT');
        expect(err.message).toMatch(/^migration stream/);
      }),
      { numRuns: 200 },
    );
  });

  it('refuses a stream with a structural byte changed (magic, version, section type, record flags, block name, footer, VM description length)', async () => {
    await fc.assert(
      fc.asyncProperty(streamModel, fc.nat(), fc.integer({ min: 1, max: 255 }), async (m, pick, delta) => {
        const { bytes, marks } = encodeModel(m);
        const mark = marks[pick % marks.length];
        if (mark.kind === 'footer' && !m.footers) return;
        const bad = Buffer.from(bytes);
        bad[mark.at] = (bad[mark.at] + delta) & 0xff;
        const err = await refusal(bad);
        expect(err.code, `${mark.kind} at ${mark.at}`).toBe('E_INPUT');
      }),
      { numRuns: 300 },
    );
  });

  it('refuses multifd, XBZRLE, compression, RDMA, postcopy commands and other iterable sections by name', async () => {
    const blocks = [{ name: 'pc.ram', bytes: 8192 }];
    const ram = { sectionId: 2, instanceId: 0, versionId: RAM_SECTION_VERSION };
    const start = Buffer.concat([
      encodeHeader({ machine: 'pc-i440fx-7.2', capabilities: [] }),
      encodeSectionStart(ram),
      encodeRamSetup(blocks),
    ]);
    const record = (flags: number) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(BigInt(flags), 0);
      return Buffer.concat([b, Buffer.of(6), Buffer.from('pc.ram'), Buffer.alloc(64)]);
    };
    expect((await refusal(Buffer.concat([start, record(RamFlag.XBZRLE)]))).message).toMatch(/XBZRLE/);
    expect((await refusal(Buffer.concat([start, record(RamFlag.COMPRESS_PAGE)]))).message).toMatch(/compress/);
    expect((await refusal(Buffer.concat([start, record(RamFlag.HOOK)]))).message).toMatch(/RDMA/);
    expect((await refusal(Buffer.concat([start, record(RamFlag.MULTIFD_FLUSH)]))).message).toMatch(/multifd/);
    expect((await refusal(Buffer.from([0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0]))).message).toMatch(/multifd/);
    const advise = Buffer.concat([encodeHeader({ machine: 'pc-i440fx-7.2', capabilities: [] }), Buffer.of(8, 0, 3, 0, 0)]);
    expect((await refusal(advise)).message).toMatch(/POSTCOPY_ADVISE \(postcopy\)/);
    const block = Buffer.concat([encodeHeader(undefined), encodeSectionStart(ram, 'block')]);
    expect((await refusal(block)).message).toMatch(/iterable section "block"/);
    const ignoreShared = encodeHeader({ machine: 'pc-i440fx-7.2', capabilities: ['x-ignore-shared'] });
    expect((await refusal(Buffer.concat([ignoreShared, Buffer.of(1)]))).message).toMatch(/x-ignore-shared/);
    expect((await refusal(Buffer.from('not a migration stream'))).message).toMatch(/not a QEMU migration stream/);
  });
});
