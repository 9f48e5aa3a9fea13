/** The server's log: pino, one JSON line per event on stderr (synchronous, so no line is lost at exit). */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level = process.env.VNSTORE_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ fd: 2, sync: true }));
}

/** A logger that drops everything (tests and embedded servers that do not want stderr lines). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
