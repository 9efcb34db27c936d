import type { SnapshotFrom } from 'xstate';
import type { AgentEvent } from '../../machines/agentMachine.js';
import { iso } from '../../machines/effects.js';
import type { TaskEvent, taskMachine } from '../../machines/taskMachine.js';
import type { agentMachine } from '../../machines/agentMachine.js';
import type { Rng } from './prng.js';

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** A task event as a client sends it: the runtime (or the test) stamps `at` and `by`. */
export type TaskEventBody = DistributiveOmit<TaskEvent, 'at' | 'by'>;
/** An agent event as a client sends it. */
export type AgentEventBody = DistributiveOmit<AgentEvent, 'at' | 'by'>;

export const AGENT_IDS = ['ann', 'bob', 'cy'] as const;

/** Relative odds of each accepted event (default 1): mostly forward through the lifecycle. */
const WEIGHTS: Partial<Record<TaskEventBody['type'], number>> = {
  'task.accept': 2,
  'task.start': 2,
  'task.complete': 1.5,
  'task.fail': 1,
  'task.reject': 0.4,
  'task.update': 0.4,
  'task.archive': 0.3,
  'task.cancel': 0.15,
  'task.delete': 0.03,
  'timer.fired': 0.5,
};

/**
 * Every kind of event a task could receive now, with random but plausible payloads. Most are
 * not accepted in the task's state; filter with `snapshot.can`. `at` is the time the event will
 * be stamped with (deadlines are set relative to it). With `timers`, includes a `timer.fired`
 * for each durable timer the task expects, with its `fireAt`.
 */
export function taskEventCandidates(
  rng: Rng,
  snapshot: SnapshotFrom<typeof taskMachine>,
  opts: { id: string; tenantId: string; at: number; timers: boolean },
): TaskEventBody[] {
  const { id, tenantId, at } = opts;
  const create: TaskEventBody = {
    type: 'task.create',
    id,
    tenantId,
    taskType: rng.pick(['review', 'build', 'test']),
    title: `Task ${id}`,
    maxRetries: rng.int(4),
    retryBackoffMs: rng.pick([10, 20, 1000]),
  };
  if (rng.chance(0.3)) create.description = `about ${id}`;
  if (rng.chance(0.5)) create.priority = rng.pick(['low', 'normal', 'high', 'critical'] as const);
  if (rng.chance(0.5)) create.assignTo = rng.pick(AGENT_IDS);
  if (rng.chance(0.4)) create.timeoutSeconds = rng.pick([1, 5, 60]);
  if (rng.chance(0.4)) create.deadline = iso(at + rng.between(1_000, 120_000));

  const changes: Extract<TaskEventBody, { type: 'task.update' }>['changes'] = {};
  if (rng.chance(0.5)) changes.title = `Task ${id} v${rng.int(100)}`;
  if (rng.chance(0.3)) changes.priority = rng.pick(['low', 'normal', 'high', 'critical'] as const);
  if (rng.chance(0.3)) changes.deadline = rng.chance(0.3) ? null : iso(at + rng.between(1_000, 120_000));
  if (rng.chance(0.2)) changes.maxRetries = rng.int(4);
  if (rng.chance(0.2)) changes.timeoutSeconds = rng.pick([1, 5, 60]);

  const fail: Extract<TaskEventBody, { type: 'task.fail' }> = { type: 'task.fail', error: `boom ${rng.int(10)}` };
  if (rng.chance(0.15)) fail.retryable = false;

  const list: TaskEventBody[] = [
    create,
    { type: 'task.update', changes },
    { type: 'task.assign', agentId: rng.pick(AGENT_IDS), reason: 'load', kind: rng.pick(['manual', 'automatic'] as const) },
    { type: 'task.accept' },
    { type: 'task.reject', reason: 'busy' },
    { type: 'task.start' },
    { type: 'task.progress', percent: rng.int(101), message: `step ${rng.int(9)}` },
    { type: 'task.requestInput', prompt: 'which branch?' },
    { type: 'task.provideInput', input: { branch: `b${rng.int(5)}` } },
    { type: 'task.complete', result: { ok: true, n: rng.int(1000) } },
    fail,
    { type: 'task.retry' },
    { type: 'task.cancel', reason: 'no longer needed' },
    { type: 'task.archive' },
    { type: 'task.delete' },
  ];
  if (opts.timers) {
    for (const [name, fireAt] of Object.entries(snapshot.context.timers)) list.push({ type: 'timer.fired', name, fireAt });
  }
  return list;
}

/**
 * Picks one accepted event for the task (weighted towards its lifecycle), or `undefined` when it
 * accepts nothing. `stamp` gives the `at` an event would carry (timer events need `at >= fireAt`).
 */
export function pickTaskEvent(
  rng: Rng,
  snapshot: SnapshotFrom<typeof taskMachine>,
  opts: { id: string; tenantId: string; at: number; by: string; timers: boolean },
): { body: TaskEventBody; at: number } | undefined {
  const options = taskEventCandidates(rng, snapshot, opts)
    .map((body) => ({ body, at: body.type === 'timer.fired' ? Math.max(opts.at, body.fireAt) : opts.at }))
    .filter(({ body, at }) => snapshot.can({ ...body, at, by: opts.by } as TaskEvent));
  if (options.length === 0) return undefined;
  const total = options.reduce((sum, o) => sum + (WEIGHTS[o.body.type] ?? 1), 0);
  let r = rng.next() * total;
  for (const o of options) {
    r -= WEIGHTS[o.body.type] ?? 1;
    if (r < 0) return o;
  }
  return options[options.length - 1];
}

/** Every kind of event an agent could receive, with random payloads; filter with `snapshot.can`. */
export function agentEventCandidates(rng: Rng, opts: { id: string; tenantId: string }): AgentEventBody[] {
  const register: AgentEventBody = { type: 'agent.register', id: opts.id, tenantId: opts.tenantId };
  if (rng.chance(0.7)) register.capabilities = rng.pick([['go'], ['go', 'review'], ['ts']]);
  if (rng.chance(0.5)) register.name = `Agent ${opts.id}`;
  if (rng.chance(0.3)) register.maxConcurrentTasks = rng.between(1, 8);
  return [
    register,
    { type: 'agent.heartbeat' },
    { type: 'agent.setStatus', status: rng.pick(['online', 'busy', 'draining', 'offline'] as const) },
    { type: 'agent.connected' },
    { type: 'agent.disconnected' },
    { type: 'agent.connectionsReset' },
  ];
}

/** Picks one event the agent accepts now. */
export function pickAgentEvent(
  rng: Rng,
  snapshot: SnapshotFrom<typeof agentMachine>,
  opts: { id: string; tenantId: string; at: number; by: string },
): AgentEventBody | undefined {
  const options = agentEventCandidates(rng, opts).filter((body) =>
    snapshot.can({ ...body, at: opts.at, by: opts.by } as AgentEvent),
  );
  return options.length === 0 ? undefined : rng.pick(options);
}
