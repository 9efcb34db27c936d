import { z } from 'zod';
import type { ActorEvent } from './model.js';
import type { WorkflowDefinition } from './workflows.js';

/**
 * `actor.inspect`: one actor's state at any version of its stream, rebuilt by replaying the
 * stored events through its machine (what the `/viz` page shows). Merged into the catalogue by
 * `methods.ts`.
 */

/** The most events `actor.inspect` returns: the last ones up to the version inspected. */
export const INSPECT_MAX_EVENTS = 1000;

/**
 * An XState state value: the name of the active child of the root, or for a compound state an
 * object from its name to its own active child (`{ live: 'assigned' }`).
 */
export type StateValue = string | { [state: string]: StateValue };

/**
 * The workflow definition an execution runs, shaped as a workflow (`tenantId`, `createdBy`) so
 * that the tenant's field policy for workflows applies to it as to the workflow itself.
 */
export type InspectedDefinition = WorkflowDefinition & { tenantId: string; createdBy: string };

/** The result of `actor.inspect`. */
export interface Inspection {
  kind: string;
  id: string;
  /** The version inspected: the state after this many events. */
  version: number;
  /** The stream's current version. */
  headVersion: number;
  /** The status name at `version`, as reads and timelines name it. */
  status: string;
  /** The machine's state value at `version` (nested for compound states). */
  stateValue: StateValue;
  /** The state value before the event at `version`: with it, the transition that event took. */
  previousStateValue: StateValue;
  /** False before the actor was created, and after it was deleted. */
  exists: boolean;
  /** The resource as reads would have shown it at `version` (null when it did not exist). */
  resource: Record<string, unknown> | null;
  /** For an execution: the definition it runs (its steps and dependencies); null for other kinds. */
  definition: InspectedDefinition | null;
  /** The events up to `version`, oldest first: the last {@link INSPECT_MAX_EVENTS} of them. */
  events: ActorEvent[];
  /** True when earlier events were left out of `events` (they were still replayed). */
  truncated: boolean;
}

/** Actor kinds are lower-case names such as `task` or `agent`. */
const Kind = z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/, 'must be an actor kind such as task, agent or execution');

/**
 * Actor ids as streams name them: wider than `Id` because some actors are named by what they
 * stand for (a policy by its task type, which may be `*`). Never `/` or control characters.
 */
const ActorId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[^/\u0000-\u001f]+$/, 'must be 1-128 characters without / or control characters');

/** Params schema of the inspection methods. */
export const InspectMethodSchemas = {
  'actor.inspect': z.strictObject({
    kind: Kind,
    id: ActorId,
    version: z.number().int().min(1).optional(),
  }),
} as const;

/** Result types of the inspection methods. */
export interface InspectMethodResults {
  'actor.inspect': Inspection;
}

/** Descriptions of the inspection methods. */
export const InspectMethodDescriptions: Record<keyof typeof InspectMethodSchemas, string> = {
  'actor.inspect':
    "An actor's state at a version (default: now), rebuilt by replaying its stored events through its machine: status, state value, resource, and the last 1000 events up to that version. Any principal of the tenant.",
};
