/**
 * A group's channel state (hold mode) as the image of one more group member, `<env>.channels`, so
 * it is stored, deduplicated and committed atomically with the VMs' memory (docs/COORDINATION.md):
 *
 *   'VNCH' | version u8 (1) | count u32 | count × (srcLen u8, src, dstLen u8, dst, frameLen u32, frame)
 *
 * big-endian; the image's byte length is exactly the encoding's.
 */
import type { ChannelFrame } from '../switch/core.js';
import { VnstoreError } from '../util/errors.js';

const MAGIC = 'VNCH';
const VERSION = 1;

export function channelMemberName(env: string): string {
  return `${env}.channels`;
}

export function encodeChannelState(frames: ChannelFrame[]): Buffer {
  const parts: Buffer[] = [Buffer.from(MAGIC, 'latin1'), Buffer.of(VERSION), u32(frames.length)];
  for (const f of frames) {
    const src = Buffer.from(f.src, 'utf8');
    const dst = Buffer.from(f.dst, 'utf8');
    parts.push(Buffer.of(src.length), src, Buffer.of(dst.length), dst, u32(f.frame.length), Buffer.from(f.frame));
  }
  return Buffer.concat(parts);
}

export function decodeChannelState(image: Uint8Array, epoch: number): ChannelFrame[] {
  const b = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  const bad = (why: string) => new VnstoreError('E_CORRUPT', `channel state: ${why}`);
  if (b.length < 9 || b.toString('latin1', 0, 4) !== MAGIC) throw bad('not a channel state image');
  if (b[4] !== VERSION)
    throw new VnstoreError('E_FORMAT_VERSION', `channel state version ${b[4]} is not supported (this vnstore reads ${VERSION})`);
  const n = b.readUInt32BE(5);
  const out: ChannelFrame[] = [];
  let at = 9;
  const need = (k: number) => {
    if (at + k > b.length) throw bad('truncated');
  };
  for (let i = 0; i < n; i++) {
    need(1);
    const sl = b[at++];
    need(sl + 1);
    const src = b.toString('utf8', at, at + sl);
    at += sl;
    const dl = b[at++];
    need(dl + 4);
    const dst = b.toString('utf8', at, at + dl);
    at += dl;
    const fl = b.readUInt32BE(at);
    at += 4;
    need(fl);
    out.push({ epoch, src, dst, frame: Uint8Array.from(b.subarray(at, at + fl)) });
    at += fl;
  }
  if (at !== b.length) throw bad('trailing bytes');
  return out;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}
