import { createHash } from 'node:crypto';
import { uuidv7 } from '../../actors/uuidv7.js';
import type { SnapshotFrom } from 'xstate';
import { IdempotencyConflict } from '../../actors/ActorHost.js';
import type { ViewQuery, ViewRecord } from '../../actors/Store.js';
import type { TaskChanges } from '../../machines/taskMachine.js';
import { taskMachine } from '../../machines/taskMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { ParamsOf } from '../../protocol/methods.js';
import type { Principal, Task } from '../../protocol/model.js';
import { taskFromTurn } from '../kinds/taskKind.js';
import { prepareTask } from './taskPrep.js';
import { registeredAgent } from './agents.js';
import { toActorEvent } from '../server/SubscriptionHub.js';
import { applied, hasRole, queryPage, requireRole, type App, type AuthedContext, type Handlers } from '../server/App.js';

type TaskSnapshot = SnapshotFrom<typeof taskMachine>;
type TaskEventInput = { type: string } & Record<string, unknown>;

/** Who may drive a transition. */
type Actor = 'assignee' | 'manager';

/** JSON with object keys sorted, so equal requests hash equally. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

function fromView(v: ViewRecord): Task {
  return v.doc as unknown as Task;
}

const fromTurn = taskFromTurn;

function forbidden(p: Principal, who: Actor, action: string, s: TaskSnapshot): ProtocolError {
  const t = s.context.task;
  const whom = who === 'assignee' ? `the assigned agent (${t.assignedTo ?? 'nobody'})` : `its creator (${t.createdBy})`;
  return new ProtocolError('FORBIDDEN', `Only ${whom} or an admin may ${action} task ${t.id}; you are ${p.principalId}.`);
}

/** The task methods. */
export function taskHandlers(app: App): Handlers {
  const { host, store } = app;
  const address = (p: Principal, id: string) => ({ tenant: p.tenantId, kind: 'task', id });

  const agentMustExist = (p: Principal, agentId: string) => registeredAgent(app, p, agentId);

  function futureDeadline(deadline: string | null | undefined): void {
    if (deadline && Date.parse(deadline) <= app.now()) {
      throw new ProtocolError('INVALID_PARAMS', `The deadline ${deadline} is not in the future.`, { field: 'deadline' });
    }
  }

  /** Runs one transition on a task, authorised against its current state, and returns the task. */
  async function act(
    ctx: AuthedContext,
    taskId: string,
    who: Actor,
    action: string,
    event: TaskEventInput,
    expectedVersion?: number,
  ): Promise<Task> {
    const p = ctx.principal;
    requireRole(p, `${action} tasks`, 'admin', 'agent');
    const r = await host.send<typeof taskMachine>(address(p, taskId), event, {
      principal: p.principalId,
      correlationId: ctx.correlationId,
      expectedVersion,
      check: (s) => {
        if (hasRole(p, 'admin')) return;
        const t = s.context.task;
        const ok = who === 'assignee' ? t.assignedTo === p.principalId : t.createdBy === p.principalId;
        if (!ok) throw forbidden(p, who, action, s);
      },
    });
    return fromTurn(applied(r));
  }

  async function create(ctx: AuthedContext, params: ParamsOf<'task.create'>): Promise<Task> {
    const p = ctx.principal;
    requireRole(p, 'create tasks', 'admin', 'agent');
    const { idempotencyKey, ...fields } = params;
    const key = idempotencyKey === undefined ? undefined : `${p.principalId}\n${idempotencyKey}`;
    const requestHash = createHash('sha256').update(canonicalJson(fields)).digest('hex');

    const replayed = async (): Promise<Task | undefined> => {
      const rec = key ? await store.getIdempotency(p.tenantId, key) : undefined;
      if (!rec) return undefined;
      if (rec.requestHash !== requestHash) {
        throw new ProtocolError('IDEMPOTENCY_MISMATCH', `The idempotency key "${idempotencyKey}" was already used with different parameters; use a new key for a different task.`, {
          idempotencyKey,
        });
      }
      const taskId = (rec.result as { taskId: string }).taskId;
      const view = await store.getView(p.tenantId, 'task', taskId);
      if (!view) throw new ProtocolError('NOT_FOUND', `The task created with idempotency key "${idempotencyKey}" was deleted.`, { id: taskId });
      return fromView(view);
    };

    // A retried create answers with its task even when, say, its deadline has passed since.
    const earlier = await replayed();
    if (earlier) return earlier;
    futureDeadline(fields.deadline);
    if (fields.assignTo) await agentMustExist(p, fields.assignTo);
    if (fields.parentTaskId && !(await store.getView(p.tenantId, 'task', fields.parentTaskId))) {
      throw new ProtocolError('NOT_FOUND', `Parent task ${fields.parentTaskId} does not exist.`, { kind: 'task', id: fields.parentTaskId });
    }
    const prepared = await prepareTask(app, p, fields);
    const id = uuidv7(app.now());
    // Checked last, so a create refused for any other reason never holds quota.
    const quota = await app.quotas?.reserve(p.tenantId, { tasks: [id], activeTasks: [id], storage: true });
    try {
      const r = await host.send<typeof taskMachine>(
        address(p, id),
        { ...prepared, type: 'task.create', taskType: prepared.type, id, tenantId: p.tenantId },
        {
          principal: p.principalId,
          correlationId: ctx.correlationId,
          fresh: true,
          idempotency: key ? { tenant: p.tenantId, key, requestHash, createdAt: app.now(), result: { taskId: id } } : undefined,
        },
      );
      return fromTurn(applied(r));
    } catch (e) {
      quota?.release(e);
      if (e instanceof IdempotencyConflict) {
        const t = await replayed();
        if (t) return t;
      }
      throw e;
    } finally {
      quota?.release();
    }
  }

  function viewQuery(params: ParamsOf<'task.search'>): ViewQuery {
    const q: ViewQuery = {};
    if (params.query) q.text = params.query.toLowerCase();
    if (params.status) q.status = params.status;
    if (params.type) q.type = params.type;
    if (params.priority) q.priority = params.priority;
    if (params.assignedTo) q.owner = params.assignedTo;
    if (params.createdBy) q.createdBy = params.createdBy;
    if (params.parentTaskId) q.parentId = params.parentTaskId;
    if (params.archived !== undefined) q.archived = params.archived;
    if (params.createdAfter) q.createdAfter = Date.parse(params.createdAfter);
    if (params.createdBefore) q.createdBefore = Date.parse(params.createdBefore);
    if (params.limit) q.limit = params.limit;
    if (params.cursor) q.cursor = params.cursor;
    return q;
  }

  const page = (p: Principal, q: ViewQuery) => queryPage<Task>(store, p.tenantId, 'task', q);

  return {
    'task.create': create,

    'task.createBatch': async (ctx, { tasks }) => {
      requireRole(ctx.principal, 'create tasks', 'admin', 'agent');
      const items = await Promise.all(
        tasks.map(async (t) => {
          try {
            return { ok: true as const, value: await create(ctx, t) };
          } catch (e) {
            const err = e instanceof ProtocolError ? e : new ProtocolError('INTERNAL', 'The task could not be created.');
            return { ok: false as const, error: err.toJSON() };
          }
        }),
      );
      return { items };
    },

    'task.get': async (ctx, { taskId }) => {
      const v = await store.getView(ctx.principal.tenantId, 'task', taskId);
      if (!v) throw new ProtocolError('NOT_FOUND', `Task ${taskId} does not exist.`, { kind: 'task', id: taskId });
      return fromView(v);
    },

    'task.getBatch': async (ctx, { taskIds }) => {
      const views = await store.getViews(ctx.principal.tenantId, 'task', taskIds);
      const found = new Set(views.map((v) => v.id));
      return { items: views.map(fromView), missing: taskIds.filter((id) => !found.has(id)) };
    },

    'task.update': async (ctx, { taskId, expectedVersion, ...changes }) => {
      const defined = Object.fromEntries(Object.entries(changes).filter(([, v]) => v !== undefined)) as TaskChanges;
      if (Object.keys(defined).length === 0) {
        throw new ProtocolError('INVALID_PARAMS', 'task.update needs at least one field to change.', {});
      }
      futureDeadline(defined.deadline);
      return act(ctx, taskId, 'manager', 'update', { type: 'task.update', changes: defined }, expectedVersion);
    },

    'task.delete': async (ctx, { taskId, expectedVersion }) => {
      const t = await act(ctx, taskId, 'manager', 'delete', { type: 'task.delete' }, expectedVersion);
      return { id: taskId, deleted: true as const, version: t.version };
    },

    'task.assign': async (ctx, { taskId, agentId, reason, expectedVersion }) => {
      await agentMustExist(ctx.principal, agentId);
      return act(ctx, taskId, 'manager', 'assign', { type: 'task.assign', agentId, reason, kind: 'manual' }, expectedVersion);
    },
    'task.accept': (ctx, { taskId, expectedVersion }) => act(ctx, taskId, 'assignee', 'accept', { type: 'task.accept' }, expectedVersion),
    'task.reject': (ctx, { taskId, reason, expectedVersion }) =>
      act(ctx, taskId, 'assignee', 'reject', { type: 'task.reject', reason }, expectedVersion),
    'task.start': (ctx, { taskId, expectedVersion }) => act(ctx, taskId, 'assignee', 'start', { type: 'task.start' }, expectedVersion),
    'task.progress': (ctx, { taskId, percent, message }) =>
      act(ctx, taskId, 'assignee', 'report progress on', { type: 'task.progress', percent, message }),
    'task.requestInput': (ctx, { taskId, prompt, schema }) =>
      act(ctx, taskId, 'assignee', 'request input for', { type: 'task.requestInput', prompt, schema }),
    'task.provideInput': (ctx, { taskId, input }) =>
      act(ctx, taskId, 'manager', 'provide input for', { type: 'task.provideInput', input: input ?? null }),
    'task.complete': (ctx, { taskId, result, expectedVersion }) =>
      act(ctx, taskId, 'assignee', 'complete', { type: 'task.complete', result: result ?? null }, expectedVersion),
    'task.fail': (ctx, { taskId, error, retryable, expectedVersion }) =>
      act(ctx, taskId, 'assignee', 'fail', { type: 'task.fail', error, retryable }, expectedVersion),
    'task.retry': (ctx, { taskId, expectedVersion }) => act(ctx, taskId, 'manager', 'retry', { type: 'task.retry' }, expectedVersion),
    'task.cancel': (ctx, { taskId, reason, expectedVersion }) =>
      act(ctx, taskId, 'manager', 'cancel', { type: 'task.cancel', reason }, expectedVersion),

    'task.timeline': async (ctx, { taskId, afterVersion, limit }) => {
      const p = ctx.principal;
      if (!(await store.getView(p.tenantId, 'task', taskId))) {
        throw new ProtocolError('NOT_FOUND', `Task ${taskId} does not exist.`, { kind: 'task', id: taskId });
      }
      const events = await store.readStream(`${p.tenantId}/task/${taskId}`, afterVersion ?? 0, limit ?? 1000);
      return { items: events.map(toActorEvent) };
    },

    'task.listForAgent': async (ctx, { agentId, status, limit, cursor }) => {
      const p = ctx.principal;
      const agent = agentId ?? p.principalId;
      if (agent !== p.principalId && !hasRole(p, 'admin', 'observer')) {
        throw new ProtocolError('FORBIDDEN', `Only admins and observers may list another agent's tasks; you are ${p.principalId}.`);
      }
      return page(p, { owner: agent, status, limit, cursor });
    },

    'task.search': async (ctx, params) => page(ctx.principal, viewQuery(params)),

    'task.stats': async (ctx, params) => store.statsViews(ctx.principal.tenantId, 'task', viewQuery(params)),

    'task.report': async (ctx, { format, limit, ...filters }) => {
      const p = ctx.principal;
      const max = limit ?? 1000;
      const rows: Task[] = [];
      let cursor: string | undefined;
      do {
        const res = await page(p, { ...viewQuery(filters), limit: Math.min(1000, max - rows.length), cursor });
        rows.push(...res.items);
        cursor = res.nextCursor ?? undefined;
      } while (cursor && rows.length < max);
      if (format === 'json') return { format, contentType: 'application/json', rows: rows.length, content: JSON.stringify(rows) };
      return { format, contentType: 'text/csv', rows: rows.length, content: toCsv(rows) };
    },

    'task.archive': async (ctx, { before, status }) => {
      const p = ctx.principal;
      requireRole(p, 'archive tasks', 'admin');
      const q: ViewQuery = {
        status: status ?? ['completed', 'failed', 'cancelled', 'timed_out'],
        updatedBefore: Date.parse(before),
        archived: false,
        limit: 500,
      };
      let archived = 0;
      for (;;) {
        const res = await store.queryViews(p.tenantId, 'task', q);
        for (const v of res.items) {
          try {
            await host.send(address(p, v.id), { type: 'task.archive' }, { principal: p.principalId, correlationId: ctx.correlationId });
            archived++;
          } catch (e) {
            // A failed task with a retry pending is not finished: skip it.
            if (!(e instanceof ProtocolError && e.reason === 'ILLEGAL_TRANSITION')) throw e;
          }
        }
        if (!res.nextCursor) break;
        q.cursor = res.nextCursor;
      }
      return { archived };
    },
  };
}

const CSV_COLUMNS = ['id', 'type', 'title', 'status', 'priority', 'assignedTo', 'createdBy', 'retryCount', 'createdAt', 'updatedAt', 'completedAt'] as const;

function csvCell(v: unknown): string {
  const s = v === null || v === undefined ? '' : String(v);
  // Quote fields with separators, quotes or line breaks; neutralise spreadsheet formulas.
  const safe = /^[=+\-@\t\r]/.test(s) ? `'${s}` : s;
  return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

/** RFC 4180 CSV of tasks. */
export function toCsv(tasks: Task[]): string {
  const lines = [CSV_COLUMNS.join(',')];
  for (const t of tasks) lines.push(CSV_COLUMNS.map((c) => csvCell(t[c])).join(','));
  return lines.join('\r\n') + '\r\n';
}
