/**
 * Server-wide memory budget for frames received and not yet handled. A connection that would take
 * past the limit stops reading its socket (TCP flow control pushes back on its agent) until bytes
 * are given back: a slow or stalled agent never grows the server's memory.
 */
export class MemoryBudget {
  private used = 0;
  private readonly waiting = new Set<() => void>();

  constructor(readonly limit: number) {}

  get inUse(): number {
    return this.used;
  }

  get exhausted(): boolean {
    return this.used >= this.limit;
  }

  take(bytes: number): void {
    this.used += bytes;
  }

  give(bytes: number): void {
    this.used -= bytes;
    if (this.exhausted) return;
    const ready = [...this.waiting];
    this.waiting.clear();
    for (const wake of ready) wake();
  }

  /** Calls `wake` once the budget is no longer exhausted. */
  whenFree(wake: () => void): void {
    if (!this.exhausted) wake();
    else this.waiting.add(wake);
  }

  forget(wake: () => void): void {
    this.waiting.delete(wake);
  }
}
