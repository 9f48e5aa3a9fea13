/**
 * Write calls kept in flight: a daemon issues its next write (reading, then hashing its pages)
 * while the server answers the one before. `vnstore agent push` and bench/server.mjs drive a
 * session through this.
 */

/** At most `limit` write calls in flight: `add` settles once fewer are, `drain` once none is; either throws a call's error. */
export function writeWindow(limit: number): { add(call: Promise<void>): Promise<void>; drain(): Promise<void> } {
  const inFlight: Promise<void>[] = [];
  return {
    async add(call) {
      call.catch(() => undefined); // awaited in turn, below
      inFlight.push(call);
      if (inFlight.length >= limit) await inFlight.shift();
    },
    async drain() {
      while (inFlight.length > 0) await inFlight.shift();
    },
  };
}
