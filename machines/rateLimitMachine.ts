import { assign, setup } from 'xstate';
import type { OverridableRateLimitClass, RateLimitOverrides, RateLimitScope } from '../protocol/ratelimits.js';
import { iso, type Effect, type Stamp } from './effects.js';

/** What a tenant's rate limit actor holds. */
export interface RateLimitData {
  overrides: RateLimitOverrides;
  updatedBy: string;
  /** ISO 8601. */
  updatedAt: string;
  /** ISO 8601; kept for the read model's ordering. */
  createdAt: string;
}

/** Every event a rate limit machine accepts. */
export type RateLimitEvent = Stamp &
  (
    | { type: 'ratelimit.set'; class: OverridableRateLimitClass; scope: RateLimitScope; points: number; durationSeconds: number }
    | { type: 'ratelimit.unset'; class: OverridableRateLimitClass; scope: RateLimitScope }
  );

/** The overrides without one class and scope; a class left with no scope is dropped. */
function without(overrides: RateLimitOverrides, cls: OverridableRateLimitClass, scope: RateLimitScope): RateLimitOverrides {
  const { [scope]: _gone, ...rest } = overrides[cls] ?? {};
  const { [cls]: _cls, ...others } = overrides;
  return Object.keys(rest).length > 0 ? { ...others, [cls]: rest } : others;
}

/**
 * A tenant's rate limit overrides (one actor per tenant, id `tenant`). `ratelimit.set` replaces
 * the budget of one class at one scope; `ratelimit.unset` removes it, so the server's default
 * applies again. Pure: the server validates classes, scopes and numbers before sending.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(rateLimitMachine);
 * const [next] = transition(rateLimitMachine, s, {
 *   type: 'ratelimit.set', class: 'task:create', scope: 'principal', points: 100, durationSeconds: 60, at: 0, by: 'lead',
 * });
 * ```
 */
export const rateLimitMachine = setup({
  types: {
    context: {} as RateLimitData,
    events: {} as RateLimitEvent,
    emitted: {} as Effect,
  },
  actions: {
    set: assign(({ context, event }) => {
      if (event.type !== 'ratelimit.set') return {};
      return {
        createdAt: context.createdAt || iso(event.at),
        overrides: {
          ...context.overrides,
          [event.class]: { ...context.overrides[event.class], [event.scope]: { points: event.points, durationSeconds: event.durationSeconds } },
        },
        updatedBy: event.by,
        updatedAt: iso(event.at),
      };
    }),
    unset: assign(({ context, event }) => ({
      overrides: without(context.overrides, event.class, event.scope),
      updatedBy: event.by,
      updatedAt: iso(event.at),
    })),
  },
}).createMachine({
  id: 'ratelimit',
  initial: 'unset',
  context: { overrides: {}, updatedBy: '', updatedAt: '', createdAt: '' },
  states: {
    unset: {
      on: { 'ratelimit.set': { target: 'set', actions: 'set' } },
    },
    set: {
      on: {
        'ratelimit.set': { actions: 'set' },
        'ratelimit.unset': { actions: 'unset' },
      },
    },
  },
});
