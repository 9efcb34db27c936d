import { isDeepStrictEqual } from 'node:util';
import { createActor, type AnyStateMachine } from 'xstate';
import { streamOf, type ActorAddress, type ActorKind } from '../../actors/ActorKind.js';
import type { AuditItem, EventPage, StoredEvent } from '../../actors/Store.js';
import type { AuditEntry, ReplayStep } from '../../protocol/audit.js';
import { ErrorCodes, ProtocolError, type ErrorReason } from '../../protocol/errors.js';
import { actorKinds } from '../kinds/index.js';
import { requireRole, type App, type Handlers } from '../server/App.js';
import { toActorEvent } from '../server/SubscriptionHub.js';

/**
 * The audit methods. `audit.query` (admins and observers) lists the tenant's accepted commands
 * (its stored events) and refused attempts (recorded by `AuditRecorder`); `events.read` and
 * `events.replay` (admins) show one actor's stream and how its state followed from it.
 */
export function auditHandlers(app: App): Handlers {
  const { store } = app;
  const kinds = new Map<string, ActorKind>(actorKinds.map((k) => [k.kind, k]));

  /** The stream of an actor of the caller's tenant and its version; NOT_FOUND when it has no events. */
  const streamOfActor = async (address: ActorAddress): Promise<{ stream: string; head: number }> => {
    const stream = streamOf(address);
    const { version } = await store.streamInfo(stream);
    if (version === 0) {
      throw new ProtocolError('NOT_FOUND', `There is no ${address.kind} ${address.id} with stored events.`, { kind: address.kind, id: address.id });
    }
    return { stream, head: version };
  };

  return {
    'audit.query': async (ctx, params) => {
      const p = ctx.principal;
      requireRole(p, 'read the audit trail', 'admin', 'observer');
      const from = params.from === undefined ? undefined : Date.parse(params.from);
      const to = params.to === undefined ? undefined : Date.parse(params.to);
      if (from !== undefined && to !== undefined && from >= to) {
        throw new ProtocolError('INVALID_PARAMS', 'from must be before to: the range includes from and excludes to.', { field: 'from' });
      }
      let page: EventPage;
      try {
        page = await store.queryEvents(p.tenantId, {
          outcome: params.outcome,
          kind: params.actorKind,
          actorId: params.actorId,
          principal: params.principal,
          type: params.method,
          from,
          to,
          limit: params.limit,
          cursor: params.cursor,
        });
      } catch (e) {
        if ((e as Error).message.startsWith('invalid cursor')) {
          throw new ProtocolError('INVALID_PARAMS', 'The cursor is not one this server issued; start again without it.', { field: 'cursor' });
        }
        throw e;
      }
      return { items: page.items.map(toAuditEntry), nextCursor: page.nextCursor };
    },

    'events.read': async (ctx, { kind, actorId, afterVersion, limit }) => {
      const p = ctx.principal;
      requireRole(p, 'read event streams', 'admin');
      const { stream, head } = await streamOfActor({ tenant: p.tenantId, kind, id: actorId });
      const events = await store.readStream(stream, afterVersion ?? 0, limit ?? 100);
      return { items: events.map(toActorEvent), headVersion: head };
    },

    'events.replay': async (ctx, { kind, actorId, toVersion, limit }) => {
      const p = ctx.principal;
      requireRole(p, 'replay event streams', 'admin');
      const actorKind = kinds.get(kind);
      if (!actorKind) {
        const known = [...kinds.keys()];
        throw new ProtocolError('INVALID_PARAMS', `Actors of kind ${kind} cannot be replayed; use one of ${known.join(', ')}.`, { field: 'kind', kinds: known });
      }
      const address = { tenant: p.tenantId, kind, id: actorId };
      const { stream, head } = await streamOfActor(address);
      if (toVersion !== undefined && toVersion > head) {
        throw new ProtocolError('INVALID_PARAMS', `${kind} ${actorId} has ${head} events; toVersion must be at most ${head}.`, {
          field: 'toVersion',
          headVersion: head,
        });
      }
      const version = toVersion ?? head;
      const events = await store.readStream(stream, 0, version);
      const keep = limit ?? 100;
      const steps: ReplayStep[] = [];
      // Stepwise, as actors/replay.ts folds a stream: the machine alone, no effects run.
      const actor = createActor(actorKind.machine as AnyStateMachine);
      actor.start();
      try {
        events.forEach((e, i) => {
          actor.send(e.data as never);
          if (i >= events.length - keep) steps.push({ ...stateOf(actorKind, actor.getSnapshot(), address, e.version), ...stepOf(e) });
        });
        const last = stateOf(actorKind, actor.getSnapshot(), address, version);
        let matchesCurrent: boolean | null = null;
        if (version === head) {
          const current = await store.getView(p.tenantId, kind, actorId);
          // The actor may have moved on since the stream was read: then there is nothing to compare.
          if ((current?.version ?? version) === version) {
            matchesCurrent = isDeepStrictEqual(JSON.parse(JSON.stringify(last.resource)), current?.doc ?? null);
          }
        }
        return { kind, actorId, version, headVersion: head, ...last, steps, truncated: events.length > steps.length, matchesCurrent };
      } finally {
        actor.stop();
      }
    },
  };
}

/** The status, existence and resource of a replayed snapshot, as reads show them. */
function stateOf(
  kind: ActorKind,
  snapshot: unknown,
  address: ActorAddress,
  version: number,
): { status: string; exists: boolean; resource: Record<string, unknown> | null } {
  const s = snapshot as Parameters<ActorKind['status']>[0];
  const exists = kind.exists(s);
  return { status: kind.status(s), exists, resource: exists ? (kind.view(s, address, version)?.doc ?? null) : null };
}

function stepOf(e: StoredEvent): Pick<ReplayStep, 'version' | 'eventId' | 'type' | 'at' | 'principal'> {
  return { version: e.version, eventId: e.id, type: e.type, at: iso(e.meta.at), principal: e.meta.principal };
}

/** The wire form of an audit trail entry. Accepted events leave their data out (see `AcceptedAuditEntry`). */
export function toAuditEntry(item: AuditItem): AuditEntry {
  if (item.outcome === 'accepted') {
    const e = item.event;
    return {
      outcome: 'accepted',
      id: e.id,
      at: iso(e.meta.at),
      principal: e.meta.principal,
      method: e.type,
      actorKind: e.kind,
      actorId: e.actorId,
      correlationId: e.meta.correlationId ?? null,
      version: e.version,
      position: e.position,
      status: e.meta.status ?? null,
    };
  }
  const r = item.refusal;
  const code = r.code as ErrorReason;
  return {
    outcome: 'refused',
    id: r.id,
    at: iso(r.at),
    principal: r.principal,
    method: r.method,
    actorKind: r.actorKind,
    actorId: r.actorId,
    correlationId: r.correlationId,
    code,
    errorCode: ErrorCodes[code] ?? null,
    reason: r.reason,
    count: r.count,
    lastAt: iso(r.lastAt),
  };
}

/** ISO 8601 of a stored time; a time no Date can hold shows as the epoch rather than failing the read. */
function iso(ms: number): string {
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? new Date(0).toISOString() : d.toISOString();
}
