import { MethodSchemas, type MethodName } from '../../protocol/methods.js';
import { RateLimitClasses, type RateLimitClass } from '../../protocol/ratelimits.js';

/** Methods that are never limited: they run before authentication, so there is nobody to charge. */
const UNLIMITED = new Set<string>(['ping', 'session.authenticate']);

/** Verbs of methods that change nothing (besides any verb starting with `get` or `list`). */
const READ_VERBS = new Set([
  'whoami',
  'search',
  'stats',
  'status',
  'report',
  'timeline',
  'tree',
  'available',
  'performance',
  'metrics',
  'insights',
  'trace',
  'nextSteps',
  'stepStatus',
  'query',
  'read',
  'presence',
  'memberActivity',
  'stateHistory',
  'recommended',
  'collaborationMetrics',
  // A dry run: it compiles and evaluates, and stores nothing.
  'evaluate',
]);

/** The class of writes by the noun of a method (`task` in `task.cancel`). */
const WRITE_CLASS_BY_NOUN: Record<string, RateLimitClass> = {
  task: 'task:write',
  workflow: 'workflow:write',
  template: 'workflow:write',
  execution: 'workflow:write',
  rule: 'rule:write',
  policy: 'rule:write',
  agent: 'agent:write',
  ratelimit: 'limits:write',
  quota: 'limits:write',
};

/** Methods whose class does not follow from their noun and verb. */
const EXPLICIT: Record<string, RateLimitClass> = {
  'task.create': 'task:create',
  'task.createBatch': 'task:create',
  'task.createDistributed': 'task:create',
  'workflow.execute': 'workflow:execute',
  'execution.retry': 'workflow:execute',
  subscribe: 'subscribe',
  // Releasing a subscription must work also when subscribing is limited.
  unsubscribe: 'read',
};

/**
 * The rate limit class of a method, or null for methods that are never limited. Decided by the
 * method's name: explicit entries first, then read-only verbs, then the class of the noun's
 * writes (`write` for nouns without their own class), so methods added to the catalogue later
 * get a class without an edit here.
 */
export function classify(method: string): RateLimitClass | null {
  if (UNLIMITED.has(method)) return null;
  const explicit = EXPLICIT[method];
  if (explicit) return explicit;
  const dot = method.indexOf('.');
  const noun = dot < 0 ? method : method.slice(0, dot);
  const verb = dot < 0 ? '' : method.slice(dot + 1);
  if (READ_VERBS.has(verb) || verb.startsWith('get') || verb.startsWith('list')) return 'read';
  return WRITE_CLASS_BY_NOUN[noun] ?? 'write';
}

/** The class of every method of the catalogue (null: never limited), computed once. */
export const METHOD_CLASSES: Readonly<Record<MethodName, RateLimitClass | null>> = Object.freeze(
  Object.fromEntries(Object.keys(MethodSchemas).map((m) => [m, classify(m)])) as Record<MethodName, RateLimitClass | null>,
);

/** The methods of each class, for `ratelimit.get`. */
export function methodsByClass(): Record<RateLimitClass, string[]> {
  const out = Object.fromEntries(RateLimitClasses.map((c) => [c, [] as string[]])) as Record<RateLimitClass, string[]>;
  for (const [m, c] of Object.entries(METHOD_CLASSES)) if (c) out[c].push(m);
  return out;
}

/**
 * Points a call costs: one, except creations of many tasks at once, which cost one per task
 * (`task.createDistributed`: one per subtask plus one for the parent). Params are validated.
 */
export function callCost(method: MethodName, params: Record<string, unknown>): number {
  if (method === 'task.createBatch') return (params.tasks as unknown[]).length;
  if (method === 'task.createDistributed') return (params.subtasks as unknown[]).length + 1;
  return 1;
}
