/**
 * One process owns a store: an exclusive lock file holding the owner's PID. A lock whose process is
 * gone (crash, kill -9) is stale and taken over; a live owner is named in the error.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { VnstoreError } from '../util/errors.js';
import { FILE_MODE } from '../util/durable.js';

/** E_LOCKED because a live process holds the lock: carries its PID, so a caller can wait and say whom for. */
export class StoreLockedError extends VnstoreError {
  constructor(readonly pid: number) {
    super(
      'E_LOCKED',
      `store is in use by another vnstore process (PID ${pid}); wait for it with --lock-wait SECONDS, or serve the store ('vnstore serve') so that read commands (--server ADDR) get in while it writes`,
    );
    this.name = 'StoreLockedError';
  }
}

export class StoreLock {
  private constructor(private readonly file: string) {}

  static async acquire(file: string): Promise<StoreLock> {
    for (let attempt = 0; attempt < 3; attempt++) {
      // Write the PID to a private temp file, then link() it into place: the lock appears atomically
      // with its content, so no reader ever sees an empty lock file.
      const tmp = `${file}.${process.pid}.tmp`;
      try {
        // Inside the try: a write that fails (a full disk) must not leave the temp file behind.
        await fsp.writeFile(tmp, `${process.pid}\n`, { mode: FILE_MODE });
        await fsp.link(tmp, file);
        await removeDeadTemps(file);
        return new StoreLock(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      } finally {
        await fsp.rm(tmp, { force: true });
      }
      const text = await fsp.readFile(file, 'utf8').catch(() => '');
      const pid = Number.parseInt(text, 10);
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
        throw new StoreLockedError(pid);
      }
      if (pid === process.pid) {
        throw new VnstoreError('E_LOCKED', `store is already open in this process (PID ${pid})`);
      }
      // Stale: the owner is gone. Remove and retry.
      await fsp.rm(file, { force: true });
    }
    throw new VnstoreError('E_LOCKED', `could not take the store lock ${file}`);
  }

  async release(): Promise<void> {
    await fsp.rm(this.file, { force: true });
  }
}

/** Temp files `lock.PID.tmp` of processes killed while taking the lock (we hold it now). */
async function removeDeadTemps(file: string): Promise<void> {
  const dir = path.dirname(file);
  const base = path.basename(file);
  for (const name of await fsp.readdir(dir)) {
    const m = name.startsWith(`${base}.`) ? /\.(\d+)\.tmp$/.exec(name) : null;
    if (m && Number(m[1]) !== process.pid && !isAlive(Number(m[1]))) await fsp.rm(path.join(dir, name), { force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
