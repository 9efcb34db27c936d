import { createActor, type AnyStateMachine, type SnapshotFrom } from 'xstate';
import { streamOf, type ActorKind } from '../../actors/ActorKind.js';
import type { StoredEvent } from '../../actors/Store.js';
import type { ExecutionContext } from '../../machines/execution.js';
import { ProtocolError } from '../../protocol/errors.js';
import { INSPECT_MAX_EVENTS, type InspectedDefinition, type Inspection, type StateValue } from '../../protocol/inspect.js';
import { actorKinds } from '../kinds/index.js';
import { requireRole, type App, type Handlers } from '../server/App.js';
import { toActorEvent } from '../server/SubscriptionHub.js';

/**
 * Kinds whose reads check nothing beyond the tenant. Any other kind, including one added later,
 * is for admins only until it is listed here.
 */
const OPEN_KINDS: ReadonlySet<string> = new Set(['task', 'agent', 'rule', 'policy', 'workflow', 'template', 'execution', 'fieldpolicy', 'ratelimit', 'quota']);

/**
 * `actor.inspect`: an actor's state at any version, rebuilt from its stored events the way the
 * runtime rebuilds it (as `actors/replay.ts` folds a stream: the machine alone, no effects run).
 * The `/viz` page steps through a timeline with it.
 *
 * Every principal of the tenant may inspect the kinds every one of them may read (`task.get`,
 * `agent.get`, `rule.get`, `quota.get`...); reads of other kinds depend on more than the tenant
 * (a workspace's visibility and members), so only admins inspect those. Results pass the field
 * permission guard like any read: the resource, the events and the definition are recognised by
 * their shape.
 */
export function inspectHandlers(app: App): Handlers {
  const { store } = app;
  const kinds = new Map<string, ActorKind>(actorKinds.map((k) => [k.kind, k]));

  return {
    'actor.inspect': async (ctx, { kind, id, version }): Promise<Inspection> => {
      const p = ctx.principal;
      requireRole(p, 'inspect actors', 'admin', 'agent', 'observer');
      const actorKind = kinds.get(kind);
      if (!actorKind) {
        const known = [...kinds.keys()];
        throw new ProtocolError('INVALID_PARAMS', `There are no actors of kind ${kind}; use one of ${known.join(', ')}.`, { field: 'kind', kinds: known });
      }
      // Checked before the actor is looked up, so a refusal says nothing about whether it exists.
      if (!OPEN_KINDS.has(kind)) requireRole(p, `inspect ${kind} actors (reading them depends on more than the tenant)`, 'admin');
      // Like reads: an actor that does not exist now (never created, deleted, another tenant's)
      // is not found, so inspecting reveals nothing a read would not.
      if (!(await store.getView(p.tenantId, kind, id))) {
        throw new ProtocolError('NOT_FOUND', `There is no ${kind} ${id}.`, { kind, id });
      }
      const stream = streamOf({ tenant: p.tenantId, kind, id });
      const { version: head } = await store.streamInfo(stream);
      if (version !== undefined && version > head) {
        throw new ProtocolError('INVALID_PARAMS', `${kind} ${id} has ${head} events; version must be at most ${head}.`, {
          field: 'version',
          headVersion: head,
        });
      }
      const at = version ?? head;
      const events = await store.readStream(stream, 0, at);
      const { before, snapshot } = fold(actorKind.machine, events);
      const exists = actorKind.exists(snapshot);
      const kept = events.slice(-INSPECT_MAX_EVENTS);
      return {
        kind,
        id,
        version: at,
        headVersion: head,
        status: actorKind.status(snapshot),
        stateValue: snapshot.value as StateValue,
        previousStateValue: before.value as StateValue,
        exists,
        resource: exists ? (actorKind.view(snapshot, { tenant: p.tenantId, kind, id }, at)?.doc ?? null) : null,
        definition: kind === 'execution' ? await definitionOf(app, p.tenantId, snapshot.context as ExecutionContext) : null,
        events: kept.map(toActorEvent),
        truncated: kept.length < events.length,
      };
    },
  };
}

/**
 * Folds events through a machine as `actors/replay.ts` does (the machine alone, no effects run),
 * keeping the state before the last event too.
 */
function fold(machine: AnyStateMachine, events: StoredEvent[]): { before: SnapshotFrom<AnyStateMachine>; snapshot: SnapshotFrom<AnyStateMachine> } {
  const actor = createActor(machine);
  actor.start();
  let before = actor.getSnapshot();
  for (const e of events) {
    before = actor.getSnapshot();
    actor.send(e.data as never);
  }
  const snapshot = actor.getSnapshot();
  actor.stop();
  return { before, snapshot };
}

/**
 * The definition an execution runs, with the tenant and creator of its workflow so that the
 * workflow's field rules (relation roles included) apply to it. A workflow deleted since has no
 * creator: then only the rules for plain roles grant reading.
 */
async function definitionOf(app: App, tenant: string, context: ExecutionContext): Promise<InspectedDefinition | null> {
  const def = context.definition;
  if (!def || def.steps.length === 0) return null;
  const workflow = await app.store.getView(tenant, 'workflow', context.execution.workflowId);
  return { ...def, tenantId: tenant, createdBy: workflow?.createdBy ?? '' };
}
