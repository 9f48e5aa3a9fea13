/** Server defaults (a module of constants, so the CLI can show them without loading the server). */
export const DEFAULT_IDLE_TIMEOUT_MS = 5 * 60_000;
export const DEFAULT_PREPARED_TIMEOUT_MS = 30 * 60_000;
export const DEFAULT_MEMORY_BUDGET = 64 * 2 ** 20;
