import { createHash } from 'node:crypto';
import type { SnapshotFrom } from 'xstate';
import { IdempotencyConflict } from '../../actors/ActorHost.js';
import type { ViewQuery, ViewRecord } from '../../actors/Store.js';
import { uuidv7 } from '../../actors/uuidv7.js';
import type { templateMachine } from '../../machines/templateMachine.js';
import { workflowMachine } from '../../machines/workflowMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Page, Principal } from '../../protocol/model.js';
import type { Execution, Workflow, WorkflowDefinition, WorkflowTemplate, WorkflowVersion } from '../../protocol/workflows.js';
import { templateResource } from '../kinds/templateKind.js';
import { applied, hasRole, queryPage, requireRole, type App, type AuthedContext, type Handlers } from '../server/App.js';
import { encodeCursor } from '../storage/cursor.js';
import { computeInsights, computeMetrics } from '../workflows/metrics.js';
import { instantiateTemplate, normalizeDefinition, validateDefinition, validateTemplate } from '../workflows/validate.js';
import { canonicalJson } from './tasks.js';

type WorkflowSnapshot = SnapshotFrom<typeof workflowMachine>;

/** The default period of `workflow.metrics` and `workflow.insights`: seven days. */
export const DEFAULT_METRICS_PERIOD_SECONDS = 7 * 86_400;

function notFound(id: string): ProtocolError {
  return new ProtocolError('NOT_FOUND', `Workflow ${id} does not exist.`, { kind: 'workflow', id });
}

/** The workflow as it was at one of its versions. */
function atVersion(w: Workflow, v: WorkflowVersion): Workflow {
  return { ...v.definition, id: w.id, tenantId: w.tenantId, version: v.version, createdBy: w.createdBy, createdAt: w.createdAt, updatedAt: v.createdAt };
}

/**
 * The workflow and template methods (executions live in `executions.ts`).
 *
 * Admins and agents create workflows and templates; a workflow is changed or deleted only by
 * its creator or an admin; observers read. Every workflow has a definition version (1 when
 * created, one more per new version), and `expectedVersion` on `workflow.update`,
 * `workflow.createVersion` and `workflow.delete` refers to it: the change is refused with
 * VERSION_MISMATCH unless the workflow's current version is the one given. `workflow.delete`
 * answers with the last version the workflow had.
 */
export function workflowHandlers(app: App): Handlers {
  const { host, store } = app;
  const address = (p: Principal, id: string) => ({ tenant: p.tenantId, kind: 'workflow', id });

  /** Refuses principals that may not change the workflow, and stale expected versions. */
  function guard(p: Principal, action: string, expectedVersion: number | undefined) {
    return (s: WorkflowSnapshot) => {
      const w = s.context.workflow;
      if (!hasRole(p, 'admin') && w.createdBy !== p.principalId) {
        throw new ProtocolError('FORBIDDEN', `Only its creator (${w.createdBy}) or an admin may ${action} workflow ${w.id}; you are ${p.principalId}.`, {
          kind: 'workflow',
          id: w.id,
        });
      }
      if (expectedVersion !== undefined && expectedVersion !== w.version) {
        throw new ProtocolError('VERSION_MISMATCH', `Expected version ${expectedVersion} but workflow ${w.id} is at version ${w.version}; read it again and retry.`, {
          expectedVersion,
          actualVersion: w.version,
        });
      }
    };
  }

  /** A new version of a workflow (the current definition copied when `definition` is left out). */
  async function newVersion(
    ctx: AuthedContext,
    workflowId: string,
    definition: WorkflowDefinition | undefined,
    changes: string,
    expectedVersion: number | undefined,
  ): Promise<Workflow> {
    const p = ctx.principal;
    requireRole(p, 'change workflows', 'admin', 'agent');
    let def: WorkflowDefinition | undefined;
    if (definition) {
      // Refused before anything is stored.
      def = normalizeDefinition(definition);
      validateDefinition(def, { field: 'definition' });
    }
    const r = await host.send<typeof workflowMachine>(
      address(p, workflowId),
      { type: 'workflow.newVersion', changes, ...(def ? { definition: def } : {}) },
      { principal: p.principalId, correlationId: ctx.correlationId, check: guard(p, 'change', expectedVersion) },
    );
    return applied(r).snapshot.context.workflow;
  }

  /** Stores a new workflow with a checked, normalised definition. */
  async function createWorkflow(
    ctx: AuthedContext,
    definition: WorkflowDefinition,
    changes: string,
    idempotency?: { key: string; requestHash: string },
  ): Promise<Workflow> {
    const p = ctx.principal;
    const id = uuidv7(app.now());
    const r = await host.send<typeof workflowMachine>(
      address(p, id),
      { type: 'workflow.create', id, tenantId: p.tenantId, definition, changes },
      {
        principal: p.principalId,
        correlationId: ctx.correlationId,
        fresh: true,
        idempotency: idempotency ? { tenant: p.tenantId, ...idempotency, createdAt: app.now(), result: { workflowId: id } } : undefined,
      },
    );
    return applied(r).snapshot.context.workflow;
  }

  /** The workflow's view, or NOT_FOUND. */
  async function view(p: Principal, workflowId: string): Promise<ViewRecord> {
    const v = await store.getView(p.tenantId, 'workflow', workflowId);
    if (!v) throw notFound(workflowId);
    return v;
  }

  /** Every version of an existing workflow (read in its mailbox). */
  async function versions(p: Principal, workflowId: string): Promise<{ workflow: Workflow; versions: WorkflowVersion[] }> {
    await view(p, workflowId);
    const { snapshot } = await host.read<typeof workflowMachine>(address(p, workflowId));
    if (snapshot.value !== 'active') throw notFound(workflowId);
    return snapshot.context;
  }

  function version(w: { workflow: Workflow; versions: WorkflowVersion[] }, n: number): WorkflowVersion {
    const v = w.versions[n - 1];
    if (!v) {
      throw new ProtocolError('NOT_FOUND', `Workflow ${w.workflow.id} has no version ${n}; its versions are 1 to ${w.workflow.version}.`, {
        kind: 'workflow',
        id: w.workflow.id,
        version: n,
        latestVersion: w.workflow.version,
      });
    }
    return v;
  }

  /** The executions of a workflow created in the last `periodSeconds`, and the period. */
  async function executions(p: Principal, workflowId: string, periodSeconds: number): Promise<{ items: Execution[]; from: number; to: number }> {
    const to = app.now();
    const from = to - periodSeconds * 1000;
    const items: Execution[] = [];
    let cursor: string | undefined;
    do {
      const page = await store.queryViews(p.tenantId, 'execution', {
        type: workflowId,
        createdAfter: from - 1,
        createdBefore: to + 1,
        archived: 'any',
        limit: 1000,
        cursor,
      });
      for (const v of page.items) items.push(v.doc as unknown as Execution);
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    return { items, from, to };
  }

  return {
    'workflow.create': async (ctx, params) => {
      const p = ctx.principal;
      requireRole(p, 'create workflows', 'admin', 'agent');
      const { idempotencyKey, ...fields } = params;
      const key = idempotencyKey === undefined ? undefined : `${p.principalId}\nworkflow\n${idempotencyKey}`;
      const requestHash = createHash('sha256').update(canonicalJson(fields)).digest('hex');

      const replayed = async (): Promise<Workflow | undefined> => {
        const rec = key ? await store.getIdempotency(p.tenantId, key) : undefined;
        if (!rec) return undefined;
        if (rec.requestHash !== requestHash) {
          throw new ProtocolError(
            'IDEMPOTENCY_MISMATCH',
            `The idempotency key "${idempotencyKey}" was already used with a different definition; use a new key for a different workflow.`,
            { idempotencyKey },
          );
        }
        const workflowId = (rec.result as { workflowId: string }).workflowId;
        const v = await store.getView(p.tenantId, 'workflow', workflowId);
        if (!v) throw new ProtocolError('NOT_FOUND', `The workflow created with idempotency key "${idempotencyKey}" was deleted.`, { kind: 'workflow', id: workflowId });
        return v.doc as unknown as Workflow;
      };

      const earlier = await replayed();
      if (earlier) return earlier;
      const def = normalizeDefinition(fields);
      validateDefinition(def);
      try {
        return await createWorkflow(ctx, def, 'Created.', key ? { key, requestHash } : undefined);
      } catch (e) {
        if (e instanceof IdempotencyConflict) {
          const w = await replayed();
          if (w) return w;
        }
        throw e;
      }
    },

    'workflow.get': async (ctx, { workflowId, version: n }) => {
      const v = await view(ctx.principal, workflowId);
      const current = v.doc as unknown as Workflow;
      if (n === undefined || n === current.version) return current;
      const w = await versions(ctx.principal, workflowId);
      return atVersion(w.workflow, version(w, n));
    },

    'workflow.update': async (ctx, { workflowId, expectedVersion, definition, changes }) =>
      newVersion(ctx, workflowId, definition, changes ?? 'Updated.', expectedVersion),

    'workflow.createVersion': async (ctx, { workflowId, expectedVersion, definition, changes }) =>
      newVersion(ctx, workflowId, definition, changes, expectedVersion),

    'workflow.delete': async (ctx, { workflowId, expectedVersion }) => {
      const p = ctx.principal;
      requireRole(p, 'delete workflows', 'admin', 'agent');
      const r = await host.send<typeof workflowMachine>(address(p, workflowId), { type: 'workflow.delete' }, {
        principal: p.principalId,
        correlationId: ctx.correlationId,
        check: guard(p, 'delete', expectedVersion),
      });
      return { id: workflowId, deleted: true as const, version: applied(r).snapshot.context.workflow.version };
    },

    'workflow.list': async (ctx, { type, tag, active, query, limit = 50, cursor }) => {
      const q: ViewQuery = {};
      if (type) q.type = type;
      if (active !== undefined) q.status = [active ? 'active' : 'inactive'];
      if (query) q.text = query.toLowerCase();
      if (tag === undefined) return queryPage<Workflow>(store, ctx.principal.tenantId, 'workflow', { ...q, limit, cursor });
      // Tags are matched exactly, which the read model cannot do: scan pages and keep the
      // matches, answering with a cursor after the last one returned.
      const items: { doc: Workflow; createdAt: number; id: string }[] = [];
      let next: string | undefined = cursor;
      do {
        const page = await queryPage<Workflow>(store, ctx.principal.tenantId, 'workflow', { ...q, limit: 1000, cursor: next });
        for (const w of page.items) if ((w.tags ?? []).includes(tag)) items.push({ doc: w, createdAt: Date.parse(w.createdAt), id: w.id });
        next = page.nextCursor ?? undefined;
      } while (next && items.length <= limit);
      const more = items.length > limit;
      const shown = items.slice(0, limit);
      const last = shown[shown.length - 1];
      const result: Page<Workflow> = { items: shown.map((i) => i.doc), nextCursor: more && last ? encodeCursor(last.createdAt, last.id) : null };
      return result;
    },

    'workflow.getVersion': async (ctx, { workflowId, version: n }) => version(await versions(ctx.principal, workflowId), n),

    'workflow.listVersions': async (ctx, { workflowId }) => {
      const w = await versions(ctx.principal, workflowId);
      return { items: w.versions.map(({ definition: _d, ...rest }) => rest) };
    },

    'workflow.metrics': async (ctx, { workflowId, periodSeconds = DEFAULT_METRICS_PERIOD_SECONDS }) => {
      await view(ctx.principal, workflowId);
      const { items, from, to } = await executions(ctx.principal, workflowId, periodSeconds);
      return computeMetrics(items, from, to, workflowId);
    },

    'workflow.insights': async (ctx, { workflowId, periodSeconds = DEFAULT_METRICS_PERIOD_SECONDS }) => {
      const w = (await view(ctx.principal, workflowId)).doc as unknown as Workflow;
      const { items, from, to } = await executions(ctx.principal, workflowId, periodSeconds);
      const approvalSteps = w.steps.filter((s) => s.approval !== undefined).map((s) => s.id);
      return computeInsights(items, from, to, workflowId, { approvalSteps });
    },

    'template.create': async (ctx, params) => {
      const p = ctx.principal;
      requireRole(p, 'create templates', 'admin', 'agent');
      const definition = normalizeDefinition(params.definition);
      validateTemplate(params.parameters ?? [], definition);
      const id = uuidv7(app.now());
      const r = await host.send<typeof templateMachine>(
        { tenant: p.tenantId, kind: 'template', id },
        { ...params, definition, type: 'template.create', id, tenantId: p.tenantId },
        { principal: p.principalId, correlationId: ctx.correlationId, fresh: true },
      );
      const { snapshot, version: v } = applied(r);
      return templateResource(snapshot.context.template, v);
    },

    'template.get': async (ctx, { templateId }) => {
      const v = await store.getView(ctx.principal.tenantId, 'template', templateId);
      if (!v) throw new ProtocolError('NOT_FOUND', `Template ${templateId} does not exist.`, { kind: 'template', id: templateId });
      return v.doc as unknown as WorkflowTemplate;
    },

    'template.list': async (ctx, { category, limit, cursor }) => {
      const q: ViewQuery = { limit, cursor };
      if (category) q.type = category;
      return queryPage<WorkflowTemplate>(store, ctx.principal.tenantId, 'template', q);
    },

    'workflow.createFromTemplate': async (ctx, { templateId, parameters, name }) => {
      const p = ctx.principal;
      requireRole(p, 'create workflows', 'admin', 'agent');
      const v = await store.getView(p.tenantId, 'template', templateId);
      if (!v) throw new ProtocolError('NOT_FOUND', `Template ${templateId} does not exist.`, { kind: 'template', id: templateId });
      const t = v.doc as unknown as WorkflowTemplate;
      const def = instantiateTemplate(t, parameters, name);
      return createWorkflow(ctx, def, `Created from template ${t.name} (${t.id}).`);
    },
  };
}
