import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  decodeMessage,
  encodeMessage,
  encodeMessageParts,
  FrameDecoder,
  FRAME_HEADER_BYTES,
  DATA_DIGEST_PREFIX_BYTES,
  MAX_DATA_PAGES,
  MAX_FRAME_BYTES,
  MAX_OFFERS_PER_BATCH,
  MAX_PAGES_PER_BATCH,
  MSG,
  negotiateVersion,
  ProtocolError,
  PROTOCOL_VERSION,
  type Message,
} from '../src/protocol/index.js';

const PAGE = 4096;
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const name = fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,20}$/);
const safe = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const digestsFor = (n: number) => fc.uint8Array({ minLength: n * 32, maxLength: n * 32 });

const message: fc.Arbitrary<Message> = fc.oneof(
  fc.record({
    t: fc.constant('hello' as const),
    minVersion: fc.integer({ min: 0, max: 65535 }),
    maxVersion: fc.integer({ min: 0, max: 65535 }),
    token: fc.string({ maxLength: 64 }),
  }),
  fc.record({
    t: fc.constant('begin' as const),
    req: u32,
    sid: u32,
    vm: name,
    group: fc.option(name, { nil: undefined }),
    parent: fc.constantFrom('auto', 'none', '0123456789abcdef'),
    memoryBytes: fc.option(safe, { nil: undefined }),
  }),
  fc.integer({ min: 0, max: 40 }).chain((n) =>
    fc.record({
      t: fc.constant('offer' as const),
      req: u32,
      sid: u32,
      indices: fc.array(u32, { minLength: n, maxLength: n }).map((a) => Uint32Array.from(a)),
      digests: digestsFor(n),
    }),
  ),
  fc.integer({ min: 0, max: 3 }).chain((n) =>
    fc.record({
      t: fc.constant('pages' as const),
      req: u32,
      sid: u32,
      indices: fc.array(u32, { minLength: n, maxLength: n }).map((a) => Uint32Array.from(a)),
      digests: digestsFor(n),
      data: fc.uint8Array({ minLength: n * PAGE, maxLength: n * PAGE }),
    }),
  ),
  fc
    .array(u32, { maxLength: 20 })
    .map((a): Message => ({ t: 'zero', req: 7, sid: 9, ranges: Uint32Array.from(a.length % 2 ? a.slice(1) : a) })),
  fc.record({
    t: fc.constant('prepare' as const),
    req: u32,
    sid: u32,
    byteLength: fc.option(safe, { nil: undefined }),
    unwritten: fc.constantFrom(undefined, 'parent' as const, 'zero' as const, 'error' as const),
  }),
  fc.record({ t: fc.constantFrom('commit' as const, 'abort' as const), req: u32, sid: u32 }),
  fc.record({
    t: fc.constant('group-commit' as const),
    req: u32,
    group: name,
    ids: fc.array(fc.stringMatching(/^[0-9a-f]{16}$/), { maxLength: 10 }),
  }),
  fc.record({ t: fc.constant('call' as const), req: u32, method: name, args: fc.json() }),
  fc.record({ t: fc.constant('restore' as const), req: u32, id: fc.stringMatching(/^[0-9a-f]{4,16}$/) }),
  fc.record({
    t: fc.constant('welcome' as const),
    version: fc.integer({ min: 0, max: 65535 }),
    window: fc.integer({ min: 0, max: 65535 }),
    maxFrameBytes: u32,
    maxPagesPerBatch: u32,
    serverId: fc.string(),
  }),
  fc.record({ t: fc.constantFrom('result' as const, 'end' as const), req: u32, json: fc.json() }),
  fc.record({ t: fc.constant('missing' as const), req: u32, positions: fc.array(u32, { maxLength: 50 }).map((a) => Uint32Array.from(a)) }),
  fc.record({
    t: fc.constant('error' as const),
    req: u32,
    code: fc.constantFrom('E_MALFORMED', 'E_AUTH', 'E_NOT_FOUND'),
    message: fc.string({ maxLength: 100 }),
  }),
  fc.integer({ min: 0, max: 3 }).chain((n) =>
    fc.record({
      t: fc.constant('data' as const),
      req: u32,
      firstPage: u32,
      digests: digestsFor(n),
      data: fc.uint8Array({ minLength: Math.max(0, n * PAGE - 4095), maxLength: n * PAGE }),
    }),
  ),
  fc.array(fc.boolean(), { maxLength: 5 }).chain((isZero) => {
    const k = isZero.filter((z) => !z).length;
    return fc.record({
      t: fc.constant('sparse-data' as const),
      req: u32,
      firstPage: u32,
      zero: fc.constant(Uint8Array.from(isZero, Number)),
      prefixes: fc.uint8Array({ minLength: k * DATA_DIGEST_PREFIX_BYTES, maxLength: k * DATA_DIGEST_PREFIX_BYTES }),
      runs: fc.uint8Array({ minLength: Math.max(0, k * PAGE - 4095), maxLength: k * PAGE }).map((b) => [b]), // decoded: one run
    });
  }),
);

/** Plain values for comparison: typed arrays and Buffers as arrays of numbers. */
function plain(m: Message): unknown {
  return JSON.parse(
    JSON.stringify(m, (_k, v: unknown) =>
      v instanceof Uint8Array || v instanceof Uint32Array
        ? Array.from(v)
        : (v as { type?: string; data?: number[] })?.type === 'Buffer'
          ? (v as { data: number[] }).data
          : v,
    ),
  );
}

function decodeAll(chunks: Uint8Array[]): Message[] {
  const d = new FrameDecoder();
  const out: Message[] = [];
  for (const c of chunks) for (const f of d.push(c)) out.push(decodeMessage(f));
  expect(d.idle).toBe(true);
  return out;
}

/** Splits `b` at the given cut points (fractions of its length). */
function split(b: Buffer, cuts: number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => Math.floor(c * b.length)))].sort((x, y) => x - y);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const a of at) {
    out.push(b.subarray(prev, a));
    prev = a;
  }
  out.push(b.subarray(prev));
  return out;
}

describe('protocol round trip', () => {
  it('copyAll: frames stay exact when every read lands in the same reused buffer (a socket with onread)', () => {
    fc.assert(
      fc.property(
        fc.array(message, { minLength: 1, maxLength: 6 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 8 }),
        (msgs, cuts) => {
          const wire = Buffer.concat(msgs.map(encodeMessage));
          const readBuffer = Buffer.alloc(wire.length);
          const d = new FrameDecoder(MAX_FRAME_BYTES, true);
          const frames = [];
          for (const c of split(wire, cuts)) {
            readBuffer.fill(0xa5); // the next read overwrites what the last one left
            readBuffer.set(c);
            frames.push(...d.push(readBuffer.subarray(0, c.length)));
          }
          readBuffer.fill(0x5a);
          expect(d.idle).toBe(true);
          // Decoded only now, after every read: no frame may be a view of the read buffer.
          expect(frames.map((f) => plain(decodeMessage(f)))).toEqual(msgs.map(plain));
        },
      ),
      { numRuns: 500 },
    );
  });

  it('every message decodes to itself, however the stream is cut', () => {
    fc.assert(
      fc.property(
        fc.array(message, { minLength: 1, maxLength: 6 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 8 }),
        (msgs, cuts) => {
          const wire = Buffer.concat(msgs.map(encodeMessage));
          expect(decodeAll(split(wire, cuts)).map(plain)).toEqual(msgs.map(plain));
        },
      ),
      { numRuns: 500 },
    );
  });

  it('frames carry exact bytes: a PAGES frame is header, entries, then the pages', () => {
    const data = Buffer.alloc(PAGE, 0xab);
    const f = encodeMessage({ t: 'pages', req: 1, sid: 2, indices: Uint32Array.of(5), digests: new Uint8Array(32).fill(7), data });
    expect(f.length).toBe(FRAME_HEADER_BYTES + 12 + 36 + PAGE);
    expect([...f.subarray(0, 21)]).toEqual([0, 0, 0x10, 0x31, MSG.PAGES, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 5]);
    expect(f.subarray(21, 53).every((x) => x === 7)).toBe(true);
    expect(f.subarray(53).equals(data)).toBe(true);
  });

  it('encoders refuse batches past the limits', () => {
    const n = MAX_PAGES_PER_BATCH + 1;
    expect(() =>
      encodeMessage({
        t: 'pages',
        req: 1,
        sid: 1,
        indices: new Uint32Array(n),
        digests: new Uint8Array(n * 32),
        data: new Uint8Array(n * PAGE),
      }),
    ).toThrow(ProtocolError);
    const d = MAX_DATA_PAGES + 1;
    expect(() =>
      encodeMessage({ t: 'data', req: 1, firstPage: 0, digests: new Uint8Array(d * 32), data: new Uint8Array(d * PAGE) }),
    ).toThrow(/limit/);
    const o = MAX_OFFERS_PER_BATCH + 1;
    expect(() => encodeMessage({ t: 'offer', req: 1, sid: 1, indices: new Uint32Array(o), digests: new Uint8Array(o * 32) })).toThrow(
      /limit/,
    );
  });

  it('SPARSE_DATA: runs go out as views however small, and join to one run; a bad zero map or count is refused', () => {
    const zero = Uint8Array.of(0, 1, 0, 0, 1);
    const pages = Buffer.alloc(3 * PAGE);
    for (let i = 0; i < pages.length; i++) pages[i] = (i * 7 + (i >> 12)) & 0xff;
    const runs = [pages.subarray(0, PAGE), pages.subarray(PAGE, 3 * PAGE - 100)]; // the image's short last page
    const m: Message = {
      t: 'sparse-data',
      req: 9,
      firstPage: 40,
      zero,
      prefixes: new Uint8Array(3 * DATA_DIGEST_PREFIX_BYTES).fill(3),
      runs,
    };
    const parts = encodeMessageParts(m);
    for (const run of runs)
      expect(parts.some((p) => p.buffer === run.buffer && p.byteOffset === run.byteOffset && p.length === run.length)).toBe(true);
    const [back] = decodeAll([Buffer.concat(parts)]);
    expect(plain(back)).toEqual(plain({ ...m, runs: [pages.subarray(0, 3 * PAGE - 100)] }));
    // Encoders and decoders agree on what is malformed: a zero-map byte past 1, digests or bytes
    // that do not match the map's data pages, more pages than a frame holds.
    const bad: Message[] = [
      { ...m, zero: Uint8Array.of(0, 2, 0, 0, 1) },
      { ...m, prefixes: new Uint8Array(2 * DATA_DIGEST_PREFIX_BYTES) },
      { ...m, runs: [pages], zero: Uint8Array.of(0, 1, 0, 1, 1) },
      { ...m, zero: new Uint8Array(MAX_DATA_PAGES + 1).fill(1), prefixes: new Uint8Array(0), runs: [] },
    ];
    for (const b of bad) expect(() => encodeMessage(b)).toThrow(ProtocolError);
    // The same frames built by hand reach the decoder, which refuses them too.
    const frame = (body: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, 0, MSG.SPARSE_DATA]), body]);
    const head = (n: number) => {
      const h = Buffer.alloc(12);
      h.writeUInt32BE(1, 0);
      h.writeUInt32BE(0, 4);
      h.writeUInt32BE(n, 8);
      return h;
    };
    const frames = [
      frame(Buffer.concat([head(2), Buffer.of(0, 7), Buffer.alloc(DATA_DIGEST_PREFIX_BYTES)])), // map byte 7
      frame(Buffer.concat([head(1), Buffer.of(0), Buffer.alloc(DATA_DIGEST_PREFIX_BYTES), Buffer.alloc(PAGE + 1)])), // a byte past its page
      frame(Buffer.concat([head(1), Buffer.of(1), Buffer.alloc(1)])), // bytes for a zero page
      frame(head(MAX_DATA_PAGES + 1)),
    ];
    for (const f of frames) {
      f.writeUInt32BE(f.length - 4, 0);
      expect(() => decodeAll([f])).toThrow(ProtocolError);
    }
  });

  it('PAGES from runs: each run goes out as a view, the frame is the one `data` makes, and runs of the wrong length are refused', () => {
    const pages = Buffer.alloc(5 * PAGE);
    for (let i = 0; i < pages.length; i++) pages[i] = (i * 13 + (i >> 12)) & 0xff;
    const whole: Message = {
      t: 'pages',
      req: 3,
      sid: 4,
      indices: Uint32Array.of(9, 2, 7, 8, 1),
      digests: new Uint8Array(5 * 32).fill(5),
      data: pages,
    };
    // Runs of one page and of several, some shorter than a frame's copied fields.
    const runs = [pages.subarray(0, PAGE), pages.subarray(PAGE, 4 * PAGE), pages.subarray(4 * PAGE)];
    const m: Message = { ...whole, data: new Uint8Array(0), runs };
    const parts = encodeMessageParts(m);
    for (const run of runs)
      expect(parts.some((p) => p.buffer === run.buffer && p.byteOffset === run.byteOffset && p.length === run.length)).toBe(true);
    expect(Buffer.concat(parts).equals(encodeMessage(whole))).toBe(true);
    expect(plain(decodeAll([Buffer.concat(parts)])[0])).toEqual(plain(whole));
    expect(() => encodeMessage({ ...m, runs: runs.slice(1) })).toThrow(ProtocolError);
    expect(() => encodeMessage({ ...m, runs: [...runs, pages.subarray(0, 1)] })).toThrow(ProtocolError);
  });

  it('version negotiation picks the highest common version or refuses with E_VERSION', () => {
    expect(negotiateVersion(1, 9)).toBe(PROTOCOL_VERSION);
    expect(() => negotiateVersion(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3)).toThrow(expect.objectContaining({ wire: 'E_VERSION' }));
    expect(() => negotiateVersion(0, 0)).toThrow(expect.objectContaining({ wire: 'E_VERSION' }));
  });
});

describe('large frames: zero-copy encoding and pooled decoding', () => {
  /** A DATA frame carries at most a restore window. */
  const dataPages = (n: number) => Math.min(n, MAX_DATA_PAGES);
  /** A PAGES or DATA frame of `n` pages whose bytes say which frame and page they are. */
  function bigMessage(k: number, n: number): Message {
    const data = Buffer.alloc(n * PAGE);
    for (let p = 0; p < n; p++) data.fill((k * 31 + p) & 0xff, p * PAGE, (p + 1) * PAGE);
    const digests = new Uint8Array(n * 32).fill(k & 0xff);
    return k % 2 === 0
      ? { t: 'pages', req: k, sid: 1, indices: Uint32Array.from({ length: n }, (_, p) => p), digests, data }
      : {
          t: 'data',
          req: k,
          firstPage: k * 1000,
          digests: digests.subarray(0, dataPages(n) * 32),
          data: data.subarray(0, dataPages(n) * PAGE),
        };
  }

  it('a frame is written from the page bytes themselves, not a copy, and joins to the same bytes as encodeMessage', () => {
    const m = bigMessage(0, MAX_PAGES_PER_BATCH) as Extract<Message, { t: 'pages' }>;
    const parts = encodeMessageParts(m);
    expect(parts.some((p) => p.buffer === m.data.buffer && p.byteOffset === m.data.byteOffset && p.length === m.data.length)).toBe(true);
    expect(Buffer.concat(parts).equals(encodeMessage(m))).toBe(true);
  });

  it('split large frames decode exactly, whether released (buffer reused) or held while later ones arrive', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ n: fc.integer({ min: 1, max: MAX_PAGES_PER_BATCH }), hold: fc.boolean() }), { minLength: 1, maxLength: 8 }),
        fc.integer({ min: 1000, max: 200_000 }),
        (specs, chunkBytes) => {
          const msgs = specs.map((s, k) => bigMessage(k, s.n));
          const wire = Buffer.concat(msgs.map(encodeMessage));
          const d = new FrameDecoder();
          /** The exact bytes of a decoded PAGES or DATA message (plain() is far too slow for MiBs). */
          const bytesOf = (m: Message) => {
            if (m.t !== 'pages' && m.t !== 'data') throw new Error(`unexpected ${m.t}`);
            return Buffer.concat([
              Buffer.from(
                JSON.stringify({ ...m, digests: undefined, data: undefined, indices: m.t === 'pages' ? Array.from(m.indices) : undefined }),
              ),
              m.digests,
              m.data,
            ]);
          };
          const held: { m: Message; want: Buffer }[] = [];
          let k = 0;
          for (let at = 0; at < wire.length; at += chunkBytes) {
            // A fresh copy of each read, as a socket gives: the decoder must not keep views of it across reads.
            for (const f of d.push(Buffer.from(wire.subarray(at, at + chunkBytes)))) {
              const m = decodeMessage(f);
              const want = bytesOf(msgs[k]);
              expect(bytesOf(m).equals(want)).toBe(true);
              if (specs[k].hold) held.push({ m, want });
              else f.release?.();
              k++;
            }
          }
          expect(k).toBe(msgs.length);
          expect(d.idle).toBe(true);
          // Frames not released were never handed out again: their bytes are intact.
          for (const h of held) expect(bytesOf(h.m).equals(h.want)).toBe(true);
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('protocol fuzz', () => {
  const validFrames = fc.array(message, { minLength: 1, maxLength: 4 }).map((ms) => ms.map(encodeMessage));

  /** Feeds `chunks`; returns the frames decoded and the error that stopped it, which must be a ProtocolError. */
  function feed(chunks: Uint8Array[]): { decoded: number; error?: ProtocolError; maxBuffered: number } {
    const d = new FrameDecoder();
    let decoded = 0;
    let maxBuffered = 0;
    try {
      for (const c of chunks) {
        for (const f of d.push(c)) {
          try {
            decodeMessage(f);
          } catch (err) {
            if (!(err instanceof ProtocolError)) throw err;
          }
          decoded++;
        }
        maxBuffered = Math.max(maxBuffered, d.bufferedBytes);
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      return { decoded, error: err, maxBuffered };
    }
    return { decoded, maxBuffered };
  }

  it('random bytes: only ProtocolError, never more than one frame buffered (5,000 streams)', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 8 }), (chunks) => {
        const r = feed(chunks);
        expect(r.maxBuffered).toBeLessThanOrEqual(MAX_FRAME_BYTES + 4);
      }),
      { numRuns: 5000 },
    );
  });

  it('valid frames with bytes flipped, cut, truncated, duplicated or reordered: only ProtocolError (5,000 streams)', () => {
    fc.assert(
      fc.property(
        validFrames,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        fc.nat(),
        fc.constantFrom('flip', 'truncate', 'reorder', 'retype', 'body'),
        (frames, flips, cut, mode) => {
          let wire: Buffer;
          if (mode === 'reorder') wire = Buffer.concat([...frames].reverse().flatMap((f) => [f, f]));
          else if (mode === 'retype')
            wire = Buffer.concat(frames.map((f) => Buffer.concat([f.subarray(0, 4), Buffer.of((f[4] * 31 + cut) & 0xff), f.subarray(5)])));
          else if (mode === 'body') {
            // Keeps the framing, shortens or lengthens each body: the message decoder must refuse it.
            wire = Buffer.concat(
              frames.map((f) => {
                const body =
                  cut % 2
                    ? f.subarray(5, Math.max(5, f.length - 1 - (cut % 7)))
                    : Buffer.concat([f.subarray(5), Buffer.alloc(1 + (cut % 5))]);
                const h = Buffer.alloc(5);
                h.writeUInt32BE(body.length + 1);
                h[4] = f[4];
                return Buffer.concat([h, body]);
              }),
            );
          } else wire = Buffer.concat(frames);
          if (mode === 'flip') for (const [at, v] of flips) wire[at % wire.length] = v;
          if (mode === 'truncate') wire = wire.subarray(0, cut % wire.length);
          const r = feed([wire]);
          expect(r.maxBuffered).toBeLessThanOrEqual(MAX_FRAME_BYTES + 4);
        },
      ),
      { numRuns: 5000 },
    );
  });

  it('an oversized length is refused from the header alone, and the stream stays refused', () => {
    const d = new FrameDecoder();
    const h = Buffer.alloc(5);
    h.writeUInt32BE(MAX_FRAME_BYTES + 1);
    expect(() => d.push(h)).toThrow(expect.objectContaining({ wire: 'E_FRAME_TOO_LARGE' }));
    expect(d.bufferedBytes).toBe(0);
    expect(() => d.push(Buffer.alloc(10))).toThrow(expect.objectContaining({ wire: 'E_FRAME_TOO_LARGE' }));
    expect(() => new FrameDecoder().push(Buffer.alloc(4))).toThrow(expect.objectContaining({ wire: 'E_MALFORMED' }));
  });

  it('counts are checked against the bytes present before any allocation', () => {
    // An OFFER claiming 4096 entries with none present: E_MALFORMED, not a 147 KB allocation.
    const body = Buffer.alloc(12);
    body.writeUInt32BE(MAX_OFFERS_PER_BATCH, 8);
    expect(() => decodeMessage({ type: MSG.OFFER, body })).toThrow(expect.objectContaining({ wire: 'E_MALFORMED' }));
    body.writeUInt32BE(MAX_OFFERS_PER_BATCH + 1, 8);
    expect(() => decodeMessage({ type: MSG.OFFER, body })).toThrow(expect.objectContaining({ wire: 'E_LIMIT' }));
    expect(() => decodeMessage({ type: 200, body })).toThrow(expect.objectContaining({ wire: 'E_UNKNOWN_TYPE' }));
  });
});
