import { assign, setup } from 'xstate';
import type { Workflow, WorkflowDefinition, WorkflowVersion } from '../protocol/workflows.js';
import { iso, type Effect, type Stamp } from './effects.js';

/**
 * What a workflow actor holds: the workflow as clients see it (its current definition, with
 * `version` the current definition version) and every version ever made, oldest first.
 * `workflow.version === versions.length` always: each version is kept for good, so executions
 * started on an older one can still be read and retried.
 */
export interface WorkflowContext {
  workflow: Workflow;
  versions: WorkflowVersion[];
}

/** Fields of `workflow.create` (the definition already validated and normalised by the caller). */
export interface WorkflowCreation {
  id: string;
  tenantId: string;
  definition: WorkflowDefinition;
  /** The note of version 1 (default `Created.`). */
  changes?: string;
}

/** Every event a workflow machine accepts. */
export type WorkflowEvent = Stamp &
  (
    | ({ type: 'workflow.create' } & WorkflowCreation)
    /** A new version: the given definition, or a copy of the current one when left out. */
    | { type: 'workflow.newVersion'; definition?: WorkflowDefinition; changes: string }
    | { type: 'workflow.delete' }
  );

type E<T extends WorkflowEvent['type']> = Extract<WorkflowEvent, { type: T }>;

const emptyWorkflow: Workflow = {
  id: '',
  tenantId: '',
  name: '',
  type: 'sequential',
  steps: [],
  version: 0,
  createdBy: '',
  createdAt: '',
  updatedAt: '',
};

/** The workflow record with a definition as its current one. */
function withDefinition(w: Pick<Workflow, 'id' | 'tenantId' | 'createdBy' | 'createdAt'>, def: WorkflowDefinition, version: number, at: string): Workflow {
  return { ...def, id: w.id, tenantId: w.tenantId, version, createdBy: w.createdBy, createdAt: w.createdAt, updatedAt: at };
}

/**
 * A workflow definition with its versions: created at version 1, each `workflow.newVersion`
 * adds the next version and makes it current, and a deletion is final (executions already
 * running keep their version; they are separate actors).
 *
 * @example
 * ```ts
 * const [s] = initialTransition(workflowMachine);
 * const [next] = transition(workflowMachine, s, {
 *   type: 'workflow.create', id: 'wf1', tenantId: 'acme', at: 0, by: 'lead',
 *   definition: { name: 'ci', type: 'sequential', steps: [{ id: 'build', action: 'build' }] },
 * });
 * ```
 */
export const workflowMachine = setup({
  types: {
    context: {} as WorkflowContext,
    events: {} as WorkflowEvent,
    emitted: {} as Effect,
  },
  actions: {
    create: assign(({ event }) => {
      const e = event as E<'workflow.create'>;
      const at = iso(e.at);
      return {
        workflow: withDefinition({ id: e.id, tenantId: e.tenantId, createdBy: e.by, createdAt: at }, e.definition, 1, at),
        versions: [{ workflowId: e.id, version: 1, definition: e.definition, changes: e.changes ?? 'Created.', createdBy: e.by, createdAt: at }],
      };
    }),
    newVersion: assign(({ context, event }) => {
      const e = event as E<'workflow.newVersion'>;
      const at = iso(e.at);
      const current = context.versions[context.versions.length - 1]!;
      const definition = e.definition ?? current.definition;
      const version = current.version + 1;
      return {
        workflow: withDefinition(context.workflow, definition, version, at),
        versions: [...context.versions, { workflowId: context.workflow.id, version, definition, changes: e.changes, createdBy: e.by, createdAt: at }],
      };
    }),
    stampDeleted: assign(({ context, event }) => ({ workflow: { ...context.workflow, updatedAt: iso(event.at) } })),
  },
}).createMachine({
  id: 'workflow',
  initial: 'unregistered',
  context: { workflow: emptyWorkflow, versions: [] },
  states: {
    unregistered: {
      on: { 'workflow.create': { target: 'active', actions: 'create' } },
    },
    active: {
      on: {
        'workflow.newVersion': { actions: 'newVersion' },
        'workflow.delete': { target: 'deleted', actions: 'stampDeleted' },
      },
    },
    deleted: { type: 'final' },
  },
});
