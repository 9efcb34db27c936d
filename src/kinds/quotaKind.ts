import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { settingsView } from './settingsView.js';
import { quotaMachine, type QuotaData } from '../../machines/quotaMachine.js';

type QuotaSnapshot = SnapshotFrom<typeof quotaMachine>;

/** The actor id of a tenant's quotas: there is one per tenant. */
export const QUOTA_ACTOR_ID = 'tenant';

/** The read model document of a tenant's quotas. */
export interface QuotaDoc extends QuotaData {
  version: number;
}

/**
 * How the runtime hosts quotas: one actor per tenant (id `tenant`). Its read model row carries
 * the limits and the warnings sent, which the quota service reads and caches. Its events go to
 * the `tenant` topic, so admins subscribed to the tenant feed see the 80% warnings.
 */
export const quotaKind: ActorKind<typeof quotaMachine> = {
  kind: 'quota',
  machine: quotaMachine,
  status: (s: QuotaSnapshot) => String(s.value),
  exists: (s: QuotaSnapshot) => s.value !== 'new',
  view(s: QuotaSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value === 'new') return null;
    const doc: QuotaDoc = { ...s.context, version };
    const created = Date.parse(s.context.createdAt);
    return settingsView(address, version, String(s.value), created, s.context.updatedAt ? Date.parse(s.context.updatedAt) : created, doc);
  },
  topics: () => ['tenant'],
  internalEvents: ['quota.warning', 'quota.rearmed'],
  snapshotEvery: 100,
};
