import { assign, setup } from 'xstate';
import type { QuotaLimit, QuotaOverrides, QuotaResource, QuotaWarning } from '../protocol/quotas.js';
import { iso, type Effect, type Stamp } from './effects.js';

/** What a tenant's quota actor holds. */
export interface QuotaData {
  /** Limits the tenant set; resources left out follow the server's defaults. */
  overrides: QuotaOverrides;
  /** Warnings sent and not re-armed, by resource. */
  warned: Partial<Record<QuotaResource, QuotaWarning>>;
  /** Who last set limits (empty until then). */
  updatedBy: string;
  /** ISO 8601 of the last `quota.set` (empty until then). */
  updatedAt: string;
  /** ISO 8601 of the first event; kept for the read model's ordering. */
  createdAt: string;
}

/** Every event a quota machine accepts. */
export type QuotaEvent = Stamp &
  (
    | { type: 'quota.set'; limits: Partial<Record<QuotaResource, QuotaLimit | 'default'>> }
    | { type: 'quota.warning'; resource: QuotaResource; limit: number; used: number; percent: number }
    | { type: 'quota.rearmed'; resource: QuotaResource; limit: number; used: number }
  );

const empty: QuotaData = { overrides: {}, warned: {}, updatedBy: '', updatedAt: '', createdAt: '' };

/** The overrides after a `quota.set`, and the resources whose limit changed. */
function applyLimits(current: QuotaOverrides, limits: Partial<Record<QuotaResource, QuotaLimit | 'default'>>): { overrides: QuotaOverrides; changed: QuotaResource[] } {
  const overrides: QuotaOverrides = { ...current };
  const changed: QuotaResource[] = [];
  for (const [r, v] of Object.entries(limits) as [QuotaResource, QuotaLimit | 'default' | undefined][]) {
    if (v === undefined) continue;
    const before = r in overrides ? overrides[r] : 'default';
    if (v === 'default') delete overrides[r];
    else overrides[r] = v;
    if (before !== v) changed.push(r);
  }
  return { overrides, changed };
}

/**
 * A tenant's quotas (one actor per tenant, id `tenant`): the limits it set, and the 80% warnings
 * sent to its admins. `quota.set` replaces the limits it names (`default` removes one, so the
 * server's default applies); a changed limit re-arms its warning. `quota.warning` is accepted
 * once per resource until `quota.rearmed`, so a warning repeated by a race is refused rather
 * than sent twice. Pure: the server validates resources and numbers before sending.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(quotaMachine);
 * const [next] = transition(quotaMachine, s, { type: 'quota.set', limits: { tasks: 1000 }, at: 0, by: 'lead' });
 * ```
 */
export const quotaMachine = setup({
  types: {
    context: {} as QuotaData,
    events: {} as QuotaEvent,
    emitted: {} as Effect,
  },
  guards: {
    notWarned: ({ context, event }) => event.type === 'quota.warning' && context.warned[event.resource] === undefined,
    warned: ({ context, event }) => event.type === 'quota.rearmed' && context.warned[event.resource] !== undefined,
  },
  actions: {
    set: assign(({ context, event }) => {
      if (event.type !== 'quota.set') return {};
      const { overrides, changed } = applyLimits(context.overrides, event.limits);
      const warned = { ...context.warned };
      for (const r of changed) delete warned[r];
      return { overrides, warned, updatedBy: event.by, updatedAt: iso(event.at), createdAt: context.createdAt || iso(event.at) };
    }),
    warn: assign(({ context, event }) => {
      if (event.type !== 'quota.warning') return {};
      return {
        warned: { ...context.warned, [event.resource]: { limit: event.limit, used: event.used, at: iso(event.at) } },
        createdAt: context.createdAt || iso(event.at),
      };
    }),
    rearm: assign(({ context, event }) => {
      if (event.type !== 'quota.rearmed') return {};
      const { [event.resource]: _gone, ...warned } = context.warned;
      return { warned };
    }),
  },
}).createMachine({
  id: 'quota',
  initial: 'new',
  context: empty,
  states: {
    new: {
      on: {
        'quota.set': { target: 'active', actions: 'set' },
        'quota.warning': { guard: 'notWarned', target: 'active', actions: 'warn' },
      },
    },
    active: {
      on: {
        'quota.set': { actions: 'set' },
        'quota.warning': { guard: 'notWarned', actions: 'warn' },
        'quota.rearmed': { guard: 'warned', actions: 'rearm' },
      },
    },
  },
});
