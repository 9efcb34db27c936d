import { createActor, type AnyStateMachine, type SnapshotFrom } from 'xstate';
import type { StoredEvent } from './Store.js';

/**
 * Folds a stream's events through its machine from the initial state, without running effects.
 * Replaying a stream reproduces the live state exactly (DESIGN §1.3); tests hold the runtime to it.
 *
 * @example
 * ```ts
 * const snapshot = replay(taskMachine, await store.readStream('acme/task/t1'));
 * ```
 */
export function replay<M extends AnyStateMachine>(machine: M, events: Pick<StoredEvent, 'data'>[]): SnapshotFrom<M> {
  const actor = createActor(machine);
  actor.start();
  for (const e of events) actor.send(e.data as never);
  const snapshot = actor.getSnapshot() as SnapshotFrom<M>;
  actor.stop();
  return snapshot;
}

/** The persisted (JSON) form of a replayed stream, comparable with stored snapshots. */
export function replayPersisted(machine: AnyStateMachine, events: Pick<StoredEvent, 'data'>[]): unknown {
  const actor = createActor(machine);
  actor.start();
  for (const e of events) actor.send(e.data as never);
  const persisted = actor.getPersistedSnapshot();
  actor.stop();
  return persisted;
}
