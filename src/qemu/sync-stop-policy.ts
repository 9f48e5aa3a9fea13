/**
 * Whether `qemu snapshot --sync-stop auto` (the default) holds the migrations for a synchronised
 * stop (docs/QEMU.md, "Synchronised stop"). Pure: it judges what each VM's QEMU said over QMP.
 *
 * Under TCG, QEMU before 9.0 can lose a guest write from its migration dirty bitmap: the bitmap
 * sync's fast path (a RAM block whose size is a whole number of 64-page bitmap words) clears the
 * dirty bits without resetting the TCG TLB entries that bypass dirty tracking, so a page written
 * through such an entry after the sync is never sent again (fixed upstream for 9.0 by "physmem: Fix
 * migration dirty bitmap coherency with TCG memory access"). A snapshot then holds a stale page.
 * It was seen on QEMU 7.2 with the synchronised stop and not without it (docs/QEMU.md has the runs).
 * KVM tracks dirty pages in the kernel and is not affected, so auto holds the migrations unless a
 * VM runs under TCG on a QEMU older than 9.0.
 */

export interface QemuRuntime {
  vm: string;
  /** QMP query-kvm's `enabled`: the guest runs under KVM (else TCG, or another accelerator). */
  kvm: boolean;
  /** QMP query-version's `qemu`. */
  version: { major: number; minor: number; micro: number };
}

export interface SyncStopChoice {
  on: boolean;
  /** Why, in words for the output (docs/QEMU.md explains). */
  reason: string;
}

/** The first QEMU whose TCG dirty tracking keeps every write (the fix's release). */
export const TCG_EXACT_FROM = { major: 9, minor: 0 };

export function tcgMayLoseWrites(r: QemuRuntime): boolean {
  return !r.kvm && r.version.major < TCG_EXACT_FROM.major;
}

export function chooseSyncStop(mode: 'on' | 'off' | 'auto', runtimes: QemuRuntime[]): SyncStopChoice {
  if (mode !== 'auto') return { on: mode === 'on', reason: `--sync-stop ${mode}` };
  const exposed = runtimes.filter(tcgMayLoseWrites);
  if (exposed.length === 0) return { on: true, reason: 'every VM runs under KVM or on QEMU 9.0 or later' };
  const who = exposed.map((r) => `${r.vm} (QEMU ${r.version.major}.${r.version.minor}.${r.version.micro})`).join(', ');
  return {
    on: false,
    reason: `TCG before QEMU 9.0 can lose a guest write from a held migration (docs/QEMU.md): ${who}`,
  };
}
