/**
 * The QEMU state image (docs/FORMAT.md, "QEMU state image"): any meta, head and tail round-trip
 * exactly; a changed byte anywhere, a cut, or another version is refused with E_CORRUPT.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeStateImage, encodeStateImage, type StateImage } from '../src/qemu/state-image.js';
import { VnstoreError } from '../src/util/errors.js';

const image: fc.Arbitrary<StateImage> = fc.record({
  meta: fc.record({
    ramSnapshot: fc.stringMatching(/^[0-9a-f]{16}$/),
    vm: fc.constantFrom('web1', 'db-é'),
    machine: fc.constantFrom('pc-i440fx-7.2', 'pc-q35-7.2'),
    qemu: fc.record({ version: fc.string(), commandLine: fc.array(fc.string(), { maxLength: 5 }) }),
    ram: fc.record({ sectionId: fc.nat(), instanceId: fc.nat(), versionId: fc.constant(4) }),
    footers: fc.boolean(),
    blocks: fc.array(fc.record({ name: fc.string({ minLength: 1 }), bytes: fc.nat().map((n) => n * 4096), firstPage: fc.nat() }), {
      maxLength: 4,
    }),
    stream: fc.record({ bytes: fc.nat(), ramSections: fc.nat(), pageRecords: fc.nat(), zeroRecords: fc.nat() }),
  }),
  head: fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
  tail: fc.uint8Array({ maxLength: 256 }).map((b) => Buffer.from(b)),
});

function refused(bytes: Buffer): VnstoreError {
  try {
    decodeStateImage(bytes, 'test');
  } catch (err) {
    if (err instanceof VnstoreError) return err;
    throw err;
  }
  throw new Error('accepted');
}

describe('QEMU state image', () => {
  it('round-trips any meta, head and tail', () => {
    fc.assert(
      fc.property(image, (s) => {
        expect(decodeStateImage(encodeStateImage(s), 'test')).toEqual(s);
      }),
    );
  });

  it('refuses a changed byte, a cut, or an unknown version', () => {
    fc.assert(
      fc.property(image, fc.nat(), fc.integer({ min: 1, max: 255 }), (s, pick, delta) => {
        const bytes = encodeStateImage(s);
        const bad = Buffer.from(bytes);
        bad[pick % bad.length] = (bad[pick % bad.length] + delta) & 0xff;
        expect(refused(bad).code).toBe('E_CORRUPT');
        expect(refused(bytes.subarray(0, pick % bytes.length)).code).toBe('E_CORRUPT');
      }),
    );
    const v2 = encodeStateImage({
      meta: {
        ramSnapshot: '0',
        vm: 'x',
        qemu: {},
        ram: { sectionId: 0, instanceId: 0, versionId: 4 },
        footers: true,
        blocks: [],
        stream: { bytes: 0, ramSections: 0, pageRecords: 0, zeroRecords: 0 },
      },
      head: Buffer.alloc(0),
      tail: Buffer.alloc(0),
    });
    v2.writeUInt16LE(2, 8);
    expect(refused(v2).message).toMatch(/version 2/);
  });
});
