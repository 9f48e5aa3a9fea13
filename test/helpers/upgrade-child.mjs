// Runs the format-3 upgrade of the store in argv[2] (compiled dist/), for crash tests that SIGKILL it.
// Not a CLI command yet: the engine does not open format-3 stores (docs/FORMAT3-STATUS.md).
import { upgradeStore } from '../../dist/maintenance/upgrade.js';

const report = await upgradeStore(process.argv[2], { packTargetBytes: Number(process.argv[3] ?? 64 * 1024) });
process.stdout.write(JSON.stringify(report) + '\n');
