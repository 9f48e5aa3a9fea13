/**
 * The synchronised stop of a QEMU environment (docs/QEMU.md): every VM's agent arrives here when its
 * migration's remaining dirty RAM is small, and all are released together to `stop` their guests
 * inside one short window, so that their colours flip together. An agent whose migration ended
 * without arriving (it failed, or QEMU converged on its own) leaves instead, so no agent waits for
 * one that never comes. Pure: no I/O, no clock.
 */
export class StopBarrier {
  private open!: () => void;
  private readonly released: Promise<void>;
  private outstanding: number;

  constructor(members: number) {
    this.outstanding = members;
    this.released = new Promise<void>((resolve) => (this.open = resolve));
    if (members <= 0) this.open();
  }

  /** Resolves once every member has arrived or left. Each member arrives or leaves once. */
  arrive(): Promise<void> {
    this.count();
    return this.released;
  }

  leave(): void {
    this.count();
  }

  private count(): void {
    if (--this.outstanding === 0) this.open();
  }
}
