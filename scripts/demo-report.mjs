// The demo's closing figures, from `vnstore stats --json` taken before and after the run, so that
// they are the store's own figures (the same "overall reduction" as `vnstore stats` prints) and stay
// meaningful when the demo runs again on the same store.
const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;
const ratio = (r) => (r === null || r === undefined ? '-' : `${r.toFixed(2)}x`);

/**
 * before/after: the `summary` of `vnstore stats --json` (before: undefined for a new store).
 * rows: what each `put --json` of this run printed.
 */
export function runSummary(before, after, rows) {
  const logical = rows.reduce((s, r) => s + r.logicalBytes, 0);
  const newChunks = rows.reduce((s, r) => s + r.newChunks, 0);
  const grew = after.onDiskBytes - (before?.onDiskBytes ?? 0);
  const share = logical > 0 ? ((grew / logical) * 100).toFixed(1) : '0.0';
  const lines = [
    `this run: ${rows.length} snapshots, ${mib(logical)} of VM memory; the store grew by ${mib(grew)} on disk (${share}% of it)`,
  ];
  if (newChunks === 0 && rows.length > 0) {
    lines.push(
      '  every page was already in the store (the demo generates the same images each run): only manifests and catalog entries were added',
    );
  }
  lines.push(
    `whole store: ${after.snapshots} snapshots, ${mib(after.logicalBytes)} of VM memory in ${mib(after.onDiskBytes)} on disk: overall reduction ${ratio(after.reduction)}`,
  );
  return lines;
}
