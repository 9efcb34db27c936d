import { pino, type Logger as PinoLogger } from 'pino';

/** The structured logger (pino). */
export type Logger = PinoLogger;

/** Creates the server's logger; `silent` in tests unless TROUPE_LOG_LEVEL says otherwise. */
export function createLogger(level: string): Logger {
  return pino({ level, base: { service: 'troupe' } });
}
