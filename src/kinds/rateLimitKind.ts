import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { settingsView } from './settingsView.js';
import { rateLimitMachine, type RateLimitData } from '../../machines/rateLimitMachine.js';

type RateLimitSnapshot = SnapshotFrom<typeof rateLimitMachine>;

/** The actor id of a tenant's rate limit overrides: there is one per tenant. */
export const RATE_LIMIT_ACTOR_ID = 'tenant';

/** The read model document of a tenant's overrides. */
export interface RateLimitDoc extends RateLimitData {
  version: number;
}

/**
 * How the runtime hosts rate limit overrides: one actor per tenant (id `tenant`). Its read model
 * row carries the overrides, which the rate limiter reads and caches.
 */
export const rateLimitKind: ActorKind<typeof rateLimitMachine> = {
  kind: 'ratelimit',
  machine: rateLimitMachine,
  status: (s: RateLimitSnapshot) => String(s.value),
  exists: (s: RateLimitSnapshot) => s.value === 'set',
  view(s: RateLimitSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value !== 'set') return null;
    const doc: RateLimitDoc = { ...s.context, version };
    return settingsView(address, version, 'set', Date.parse(s.context.createdAt), Date.parse(s.context.updatedAt), doc);
  },
  topics: () => ['tenant'],
  snapshotEvery: 100,
};
