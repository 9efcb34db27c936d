import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { taskMachine, type TaskData } from '../../machines/taskMachine.js';
import { A2AStates, type Task, type TaskStatus } from '../../protocol/model.js';
import { leafState } from './stateName.js';

type TaskSnapshot = SnapshotFrom<typeof taskMachine>;

/** States clients never see: not created yet, staged as part of a tree being built, deleted. */
const HIDDEN = new Set(['draft', 'staged', 'deleted']);

/** The wire form of a task actor's state. */
export function taskResource(data: TaskData, status: TaskStatus, version: number): Task {
  return { ...data, status, a2aState: A2AStates[status], version };
}

/** The wire form of a task after a turn (or a read): its state, status and version. */
export function taskFromTurn(r: { snapshot: TaskSnapshot; version: number }): Task {
  return taskResource(r.snapshot.context.task, leafState(r.snapshot.value) as TaskStatus, r.version);
}

/** How the runtime hosts tasks. */
export const taskKind: ActorKind<typeof taskMachine> = {
  kind: 'task',
  machine: taskMachine,
  status: (s: TaskSnapshot) => leafState(s.value),
  exists: (s: TaskSnapshot) => !HIDDEN.has(leafState(s.value)),
  view(s: TaskSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    const status = leafState(s.value);
    if (HIDDEN.has(status)) return null;
    const t = s.context.task;
    return {
      tenant: address.tenant,
      kind: 'task',
      id: address.id,
      version,
      status,
      owner: t.assignedTo,
      type: t.type,
      priority: t.priority,
      parentId: t.parentTaskId,
      createdBy: t.createdBy,
      createdAt: Date.parse(t.createdAt),
      updatedAt: Date.parse(t.updatedAt),
      text: `${t.title}\n${t.description}\n${t.type}`.toLowerCase(),
      archived: t.archived,
      doc: taskResource(t, status as TaskStatus, version) as unknown as Record<string, unknown>,
    };
  },
  internalEvents: ['task.activate', 'task.awaitAgent', 'task.renewLease', 'task.subtaskSettled'],
  settled: (s: TaskSnapshot) => {
    const st = leafState(s.value);
    return st === 'completed' || st === 'cancelled' || st === 'timed_out' || st === 'deleted';
  },
  topics(event, before: TaskSnapshot, after: TaskSnapshot) {
    // A task being staged, or a staged one removed, stays invisible: nobody is told about it.
    if (HIDDEN.has(leafState(before.value)) && HIDDEN.has(leafState(after.value))) return [];
    const topics = [`task:${event.actorId}`, 'tenant'];
    const was = before.context.task.assignedTo;
    const is = after.context.task.assignedTo;
    if (was) topics.push(`inbox:${was}`);
    if (is && is !== was) topics.push(`inbox:${is}`);
    return topics;
  },
};
