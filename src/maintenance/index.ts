/** Maintenance API: forget, gc, compact, check, stats (docs/OPERATIONS.md). */
export {
  forget,
  decideForget,
  parseDuration,
  formatDuration,
  type ForgetSelection,
  type ForgetDecision,
  type ForgetReport,
} from './forget.js';
export { runGc, type GcOptions, type GcReport, type GcResult } from './gc.js';
export { gcSweeper } from './sweeper.js';
export {
  planGc,
  DEFAULT_MAX_UNUSED,
  parseMaxUnused,
  type MaxUnused,
  type GcPlan,
  type GcPlanOptions,
  type PackLiveness,
  type PackDecision,
} from './gc-plan.js';
export { runCompact, type CompactOptions, type CompactReport } from './compact.js';
export { planCompact, DEFAULT_MIN_AGE_MS, type CompactPlan, type CompactPlanOptions, type CompactPackFacts } from './compact-plan.js';
export { checkStore, type CheckOptions, type CheckReport, type CheckProblem, type RepairReport } from './check.js';
export { storeStats, recount, type StatsOptions, type StatsReport, type StatsSummary, type VmStats, type SnapshotStats } from './stats.js';
export { readCounters, type StoreCounters } from '../store/counters.js';
