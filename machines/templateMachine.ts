import { assign, setup } from 'xstate';
import type { WorkflowDefinition, WorkflowTemplate } from '../protocol/workflows.js';
import { iso, type Effect, type Stamp } from './effects.js';

/** The template record a template actor holds (its `version` is the actor's stream version). */
export type TemplateData = Omit<WorkflowTemplate, 'version'>;

/** Fields of `template.create` (checked by the caller). */
export interface TemplateCreation {
  id: string;
  tenantId: string;
  name: string;
  category: string;
  description?: string;
  parameters?: WorkflowTemplate['parameters'];
  definition: WorkflowDefinition;
}

/** Every event a template machine accepts. */
export type TemplateEvent = Stamp & ({ type: 'template.create' } & TemplateCreation);

const emptyTemplate: TemplateData = {
  id: '',
  tenantId: '',
  name: '',
  category: '',
  description: '',
  parameters: [],
  definition: { name: '', type: 'sequential', steps: [] },
  createdBy: '',
  createdAt: '',
};

/**
 * A workflow template: created once and then only read; workflows made from it are separate
 * actors that keep no link to it.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(templateMachine);
 * const [next] = transition(templateMachine, s, {
 *   type: 'template.create', id: 't1', tenantId: 'acme', name: 'deploy', category: 'ops',
 *   definition: { name: 'deploy {{service}}', type: 'sequential', steps: [{ id: 'go', action: 'deploy' }] },
 *   at: 0, by: 'lead',
 * });
 * ```
 */
export const templateMachine = setup({
  types: {
    context: {} as { template: TemplateData },
    events: {} as TemplateEvent,
    emitted: {} as Effect,
  },
  actions: {
    create: assign(({ event }) => ({
      template: {
        id: event.id,
        tenantId: event.tenantId,
        name: event.name,
        category: event.category,
        description: event.description ?? '',
        parameters: event.parameters ?? [],
        definition: event.definition,
        createdBy: event.by,
        createdAt: iso(event.at),
      },
    })),
  },
}).createMachine({
  id: 'template',
  initial: 'unregistered',
  context: { template: emptyTemplate },
  states: {
    unregistered: {
      on: { 'template.create': { target: 'active', actions: 'create' } },
    },
    active: {},
  },
});
