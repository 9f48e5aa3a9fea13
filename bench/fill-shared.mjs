#!/usr/bin/env node
// Zeroing the zero pages of a restore window (a quarter of its 256 pages, every fourth) by each way
// there is, on a SharedArrayBuffer (the store's slabs) and on an unshared buffer: V8 fills a shared
// typed array with relaxed atomic stores, byte by byte (src/util/shared-bytes.ts says what restore uses).
//   node bench/fill-shared.mjs
const PAGE = 4096;
const WINDOW = 256;
const shared = new Uint8Array(new SharedArrayBuffer(WINDOW * PAGE));
const unshared = new Uint8Array(WINDOW * PAGE);
const sharedBuffer = Buffer.from(shared.buffer);
const zeroPage = Buffer.alloc(PAGE);
const slots = [];
for (let i = 0; i < WINDOW; i += 4) slots.push(i);

function measure(name, fill) {
  for (let w = 0; w < 50; w++) fill();
  const rounds = 2000;
  const t0 = performance.now();
  for (let r = 0; r < rounds; r++) fill();
  const seconds = (performance.now() - t0) / 1000;
  console.log(`${name.padEnd(40)} ${((rounds * slots.length * PAGE) / 1e6 / seconds).toFixed(0)} MB/s`);
}

console.log(`load ${(await import('node:fs')).readFileSync('/proc/loadavg', 'utf8').slice(0, 14)}`);
measure('shared: TypedArray#fill(0)', () => {
  for (const s of slots) shared.fill(0, s * PAGE, (s + 1) * PAGE);
});
measure('unshared: TypedArray#fill(0)', () => {
  for (const s of slots) unshared.fill(0, s * PAGE, (s + 1) * PAGE);
});
measure('shared: TypedArray#set(zero page)', () => {
  for (const s of slots) shared.set(zeroPage, s * PAGE);
});
measure('shared: Buffer#fill(zero page) (zeroFill)', () => {
  for (const s of slots) sharedBuffer.fill(zeroPage, s * PAGE, (s + 1) * PAGE);
});
