import type { AnyStateMachine, SnapshotFrom } from 'xstate';
import type { StoredEvent, ViewRecord } from './Store.js';

/** Where an actor lives: its tenant, its kind and its id within both. */
export interface ActorAddress {
  tenant: string;
  kind: string;
  id: string;
}

/** The stream name of an actor: `tenant/kind/id` (ids never contain `/`). */
export function streamOf(a: ActorAddress): string {
  return `${a.tenant}/${a.kind}/${a.id}`;
}

/** The inverse of {@link streamOf}. */
export function addressOf(stream: string): ActorAddress {
  const [tenant, kind, ...rest] = stream.split('/');
  return { tenant: tenant!, kind: kind!, id: rest.join('/') };
}

/**
 * How the runtime hosts one kind of actor: its machine, how its state appears in the read model,
 * and which subscription topics each of its events belongs to.
 */
export interface ActorKind<M extends AnyStateMachine = AnyStateMachine> {
  kind: string;
  machine: M;
  /** The status name of a snapshot (for conflicts, timelines and notifications). */
  status(snapshot: SnapshotFrom<M>): string;
  /** False while the actor has not been created, or after it was deleted. */
  exists(snapshot: SnapshotFrom<M>): boolean;
  /** The read model row after an event; `null` removes it. */
  view(snapshot: SnapshotFrom<M>, address: ActorAddress, version: number): ViewRecord | null;
  /** Topics (within the tenant) an event is published on, given the states before and after. */
  topics(event: Pick<StoredEvent, 'type' | 'data' | 'actorId'>, before: SnapshotFrom<M>, after: SnapshotFrom<M>): string[];
  /** Events only the server sends (never named to clients among the events allowed now). */
  internalEvents?: readonly string[];
  /** Write a snapshot every this many events (default 50). */
  snapshotEvery?: number;
  /**
   * True when an actor in this state is unlikely to get more messages soon (a finished task):
   * the host unloads it right after the turn instead of keeping it until it is idle.
   */
  settled?(snapshot: SnapshotFrom<M>): boolean;
}
