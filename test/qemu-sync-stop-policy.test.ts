/**
 * `qemu snapshot --sync-stop auto` (src/qemu/sync-stop-policy.ts): the migrations are held for a
 * synchronised stop unless a VM runs under TCG on a QEMU older than 9.0, whose dirty tracking can
 * lose a guest write (docs/QEMU.md, "Synchronised stop").
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { chooseSyncStop, tcgMayLoseWrites, type QemuRuntime } from '../src/qemu/sync-stop-policy.js';

const vm = (name: string, kvm: boolean, major: number, minor = 2, micro = 22): QemuRuntime => ({
  vm: name,
  kvm,
  version: { major, minor, micro },
});

describe('the synchronised stop policy', () => {
  it('holds KVM guests and TCG guests on QEMU 9.0 or later, not TCG guests on older QEMU', () => {
    expect(chooseSyncStop('auto', [vm('a', true, 7), vm('b', true, 8)])).toEqual({
      on: true,
      reason: 'every VM runs under KVM or on QEMU 9.0 or later',
    });
    expect(chooseSyncStop('auto', [vm('a', false, 9, 0, 0), vm('b', true, 7)]).on).toBe(true);
    expect(chooseSyncStop('auto', [vm('a', true, 9), vm('db1', false, 7, 2, 22)])).toEqual({
      on: false,
      reason: 'TCG before QEMU 9.0 can lose a guest write from a held migration (docs/QEMU.md): db1 (QEMU 7.2.22)',
    });
    expect(chooseSyncStop('auto', [vm('a', false, 8, 2, 9)]).on).toBe(false);
  });

  it('obeys an explicit on or off whatever the VMs run on', () => {
    expect(chooseSyncStop('on', [vm('a', false, 7)])).toEqual({ on: true, reason: '--sync-stop on' });
    expect(chooseSyncStop('off', [vm('a', true, 9)])).toEqual({ on: false, reason: '--sync-stop off' });
  });

  it('is off under auto exactly when some VM is TCG before 9.0 (fast-check)', () => {
    const runtime = fc.record({
      vm: fc.string({ minLength: 1, maxLength: 8 }),
      kvm: fc.boolean(),
      version: fc.record({
        major: fc.integer({ min: 2, max: 11 }),
        minor: fc.integer({ min: 0, max: 2 }),
        micro: fc.integer({ min: 0, max: 30 }),
      }),
    });
    fc.assert(
      fc.property(fc.array(runtime, { maxLength: 6 }), (rs) => {
        const exposed = rs.some((r) => !r.kvm && r.version.major < 9);
        expect(chooseSyncStop('auto', rs).on).toBe(!exposed);
        for (const r of rs) expect(tcgMayLoseWrites(r)).toBe(!r.kvm && r.version.major < 9);
      }),
    );
  });
});
