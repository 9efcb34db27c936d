/**
 * Effects are what a machine asks the outside world to do. Machines `emit` them; the runtime
 * stores them with the event in one commit and carries them out after the commit, at least once.
 */

/** Schedule (or replace) the actor's durable timer `name` to fire at `fireAt` (ms since epoch). */
export interface ScheduleTimer {
  type: 'fx.timer.schedule';
  name: string;
  fireAt: number;
}

/** Cancel the actor's durable timers with these names, if they exist. */
export interface CancelTimer {
  type: 'fx.timer.cancel';
  names: string[];
}

/** Send an event to another actor of the same tenant, after commit, at least once. */
export interface SendToActor {
  type: 'fx.send';
  kind: string;
  id: string;
  event: { type: string } & Record<string, unknown>;
}

/** Any effect a machine may emit. */
export type Effect = ScheduleTimer | CancelTimer | SendToActor;

/** The event a durable timer delivers to its actor. */
export interface TimerFired {
  type: 'timer.fired';
  name: string;
  /** The `fireAt` the timer was scheduled with; machines drop fires they no longer expect. */
  fireAt: number;
  at: number;
  by: string;
}

/** Fields the runtime stamps on every event it delivers to a machine. */
export interface Stamp {
  /** Milliseconds since the epoch. */
  at: number;
  /** The principal id that caused the event (`system` for timers). */
  by: string;
}

/** ISO 8601 form of a stamped time; pure. */
export function iso(at: number): string {
  return new Date(at).toISOString();
}
