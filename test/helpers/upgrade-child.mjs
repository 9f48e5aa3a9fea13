// Runs the format-3 upgrade of the store in argv[2] (compiled dist/), for crash tests that SIGKILL it.
// The command is `vnstore upgrade`; this child calls the library with a small pack size.
import { upgradeStore } from '../../dist/maintenance/upgrade.js';

const report = await upgradeStore(process.argv[2], { packTargetBytes: Number(process.argv[3] ?? 64 * 1024) });
process.stdout.write(JSON.stringify(report) + '\n');
