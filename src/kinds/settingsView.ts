import type { ActorAddress } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';

/**
 * The read model row of a tenant's settings actor (rate limits, quotas, field policy): one per
 * tenant, not searched or listed, so only its document and times matter.
 */
export function settingsView(address: ActorAddress, version: number, status: string, createdAt: number, updatedAt: number, doc: object): ViewRecord {
  return {
    tenant: address.tenant,
    kind: address.kind,
    id: address.id,
    version,
    status,
    owner: null,
    type: null,
    priority: null,
    parentId: null,
    createdBy: null,
    createdAt,
    updatedAt,
    text: '',
    archived: false,
    doc: doc as Record<string, unknown>,
  };
}
