/** A clock tests move by hand; pass `clock.now` wherever the code takes a `now` option. */
export interface FakeClock {
  now: () => number;
  /** Moves the clock forward by `ms` and returns the new time. */
  advance(ms: number): number;
  /** Sets the clock (never backwards). */
  set(at: number): void;
}

/** 2025-01-01T00:00:00Z, a round start time that reads well in ISO strings. */
export const T0 = Date.UTC(2025, 0, 1);

export function fakeClock(start = T0): FakeClock {
  let t = start;
  return {
    now: () => t,
    advance(ms) {
      t += ms;
      return t;
    },
    set(at) {
      if (at < t) throw new Error(`the clock cannot go back from ${t} to ${at}`);
      t = at;
    },
  };
}
