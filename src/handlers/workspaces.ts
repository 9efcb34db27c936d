import { createHash } from 'node:crypto';
import type { SnapshotFrom } from 'xstate';
import { IdempotencyConflict } from '../../actors/ActorHost.js';
import { uuidv7 } from '../../actors/uuidv7.js';
import { findMember, removesLastOwner, workspaceMachine, type MemberData, type WorkspaceChanges } from '../../machines/workspaceMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import {
  DEFAULT_MAX_MEMBERS,
  WorkspaceRoles,
  type Workspace,
  type WorkspaceMember,
  type WorkspacePermission,
  type WorkspaceRole,
} from '../../protocol/workspaces.js';
import { docResource, memberResource, workspaceResource } from '../kinds/workspaceKind.js';
import { applied, hasRole, requireRole, type App, type AuthedContext, type Handlers } from '../server/App.js';
import { activityByMember, scanChanges } from '../workspaces/activity.js';
import { matchesSearch, pageOf, RECOMMENDATION_SCORING, recommend } from '../workspaces/discovery.js';
import { permissionsFor, roleFor } from '../workspaces/permissions.js';
import { archivedError, type WorkspaceService } from '../workspaces/WorkspaceService.js';
import { canonicalJson } from './tasks.js';

type WorkspaceSnapshot = SnapshotFrom<typeof workspaceMachine>;

/** The default period of `workspace.memberActivity` and `workspace.collaborationMetrics`: seven days. */
export const DEFAULT_ACTIVITY_PERIOD_SECONDS = 7 * 86_400;

function notFound(id: string): ProtocolError {
  return new ProtocolError('NOT_FOUND', `Workspace ${id} does not exist.`, { kind: 'workspace', id });
}

function notMember(workspaceId: string, principalId: string): ProtocolError {
  return new ProtocolError('NOT_FOUND', `${principalId} is not a member of workspace ${workspaceId}.`, { kind: 'workspace', id: workspaceId, principalId });
}

function ownersOnly(workspaceId: string, action: string): ProtocolError {
  return new ProtocolError('FORBIDDEN', `Only owners of workspace ${workspaceId} (and tenant admins) may ${action}.`, { kind: 'workspace', id: workspaceId });
}

function lastOwner(workspaceId: string, principalId: string): ProtocolError {
  return new ProtocolError('FORBIDDEN', `${principalId} is the last owner of workspace ${workspaceId}; make another member owner first.`, {
    kind: 'workspace',
    id: workspaceId,
    principalId,
  });
}

/**
 * Decides a change inside the workspace's mailbox, against its committed state: NOT_FOUND for a
 * principal that may not know the workspace, FORBIDDEN without the permission, a clear refusal
 * for an archived workspace.
 */
function authorize(p: Principal, s: WorkspaceSnapshot, permission: WorkspacePermission | 'owner'): MemberData | undefined {
  const { workspace: w, members } = s.context;
  const me = findMember(members, p.principalId);
  const perms = permissionsFor(p, w.visibility, me);
  if (!perms) throw notFound(w.id);
  if (permission === 'owner') {
    if (roleFor(p, me) !== 'owner' || !perms.has('workspace:write')) throw ownersOnly(w.id, 'delete it');
    return me;
  }
  if (!perms.has(permission)) {
    const role = roleFor(p, me);
    throw new ProtocolError('FORBIDDEN', `You (${p.principalId}, ${role ? `role ${role}` : 'not a member'}) lack ${permission} in workspace ${w.id}; ask one of its owners or admins for it.`, {
      kind: 'workspace',
      id: w.id,
      permission,
      role,
    });
  }
  if (s.value === 'archived') throw archivedError(w.id);
  return me;
}

/** True when the principal is an owner of the workspace (tenant admins are). */
function isOwner(p: Principal, me: MemberData | undefined): boolean {
  return roleFor(p, me) === 'owner';
}

/**
 * The workspace methods: the workspace actor (create, get, update, archive, delete), its members
 * and permissions, presence and messages, and discovery.
 *
 * Tenant admins and agents create workspaces; the creator becomes the owner. Access follows the
 * workspace's visibility and the caller's membership ({@link permissionsFor}); changes are
 * decided inside the workspace's mailbox against its committed state, reads against the
 * service's copy, which every commit updates before its reply is sent.
 */
export function workspaceHandlers(app: App): Handlers {
  const { host, store } = app;
  /** Per tenant, the tail of its serialised workspace creates. */
  const queues = new Map<string, Promise<unknown>>();
  function creating<T>(tenant: string, serialise: boolean, fn: () => Promise<T>): Promise<T> {
    if (!serialise) return fn();
    const run = (queues.get(tenant) ?? Promise.resolve()).then(fn, fn);
    const tail = run.catch(() => undefined);
    queues.set(tenant, tail);
    void tail.then(() => {
      if (queues.get(tenant) === tail) queues.delete(tenant);
    });
    return run;
  }

  const service = (): WorkspaceService => {
    if (!app.workspaces) throw new ProtocolError('METHOD_NOT_FOUND', 'Workspaces are not available on this server.');
    return app.workspaces;
  };
  const address = (p: Principal, id: string) => ({ tenant: p.tenantId, kind: 'workspace', id });

  /** Sends a change to a workspace, decided by `check` in its mailbox. */
  async function change(
    ctx: AuthedContext,
    workspaceId: string,
    event: { type: string } & Record<string, unknown>,
    check: (s: WorkspaceSnapshot) => void,
    expectedVersion?: number,
  ) {
    const p = ctx.principal;
    const r = await host.send<typeof workspaceMachine>(address(p, workspaceId), event, {
      principal: p.principalId,
      correlationId: ctx.correlationId,
      expectedVersion,
      check,
    });
    return applied(r);
  }

  function memberResult(workspaceId: string, r: { snapshot: WorkspaceSnapshot; version: number }, principalId: string): WorkspaceMember & { workspaceId: string; version: number } {
    return { workspaceId, ...memberResource(findMember(r.snapshot.context.members, principalId)!), version: r.version };
  }

  /** The period ending now (inclusive) of activity reports. */
  function period(periodSeconds: number | undefined): { from: number; to: number } {
    const to = app.now();
    return { from: to - (periodSeconds ?? DEFAULT_ACTIVITY_PERIOD_SECONDS) * 1000, to: to + 1 };
  }

  async function create(ctx: AuthedContext, fields: Omit<Parameters<NonNullable<Handlers['workspace.create']>>[1], 'idempotencyKey'>, idempotency?: { key: string; requestHash: string }) {
    const p = ctx.principal;
    const id = uuidv7(app.now());
    const r = await host.send<typeof workspaceMachine>(
      address(p, id),
      {
        type: 'workspace.create',
        id,
        tenantId: p.tenantId,
        name: fields.name,
        workspaceType: fields.type ?? 'general',
        description: fields.description ?? '',
        visibility: fields.visibility,
        maxMembers: fields.maxMembers ?? DEFAULT_MAX_MEMBERS,
        settings: fields.settings ?? {},
        tags: fields.tags ?? [],
      },
      {
        principal: p.principalId,
        correlationId: ctx.correlationId,
        fresh: true,
        idempotency: idempotency ? { tenant: p.tenantId, ...idempotency, createdAt: app.now(), result: { workspaceId: id } } : undefined,
      },
    );
    const { snapshot, version } = applied(r);
    return workspaceResource(snapshot.context, version);
  }

  return {
    'workspace.create': async (ctx, params) => {
      const p = ctx.principal;
      requireRole(p, 'create workspaces', 'admin', 'agent');
      const { idempotencyKey, ...fields } = params;
      const key = idempotencyKey === undefined ? undefined : `${p.principalId}\nworkspace\n${idempotencyKey}`;
      const requestHash = createHash('sha256').update(canonicalJson(fields)).digest('hex');
      const replayed = async (): Promise<Workspace | undefined> => {
        const rec = key ? await store.getIdempotency(p.tenantId, key) : undefined;
        if (!rec) return undefined;
        if (rec.requestHash !== requestHash) {
          throw new ProtocolError('IDEMPOTENCY_MISMATCH', `The idempotency key "${idempotencyKey}" was already used with different params; use a new key for a different workspace.`, {
            idempotencyKey,
          });
        }
        const workspaceId = (rec.result as { workspaceId: string }).workspaceId;
        const e = (await service().tenant(p.tenantId)).byId.get(workspaceId);
        if (!e?.doc) throw new ProtocolError('NOT_FOUND', `The workspace created with idempotency key "${idempotencyKey}" was deleted.`, { kind: 'workspace', id: workspaceId });
        return docResource(e.doc);
      };
      const earlier = await replayed();
      if (earlier) return earlier;
      const limit = (await app.quotas?.limits(p.tenantId))?.limits.workspaces ?? null;
      // With a limit, a tenant's creates go one at a time: counting and creating cannot
      // interleave, so concurrent creates at the limit end exactly at it.
      return creating(p.tenantId, limit !== null, async () => {
        if (limit !== null) {
          const used = [...(await service().tenant(p.tenantId)).live()].length;
          if (used + 1 > limit) {
            throw new ProtocolError('QUOTA_EXCEEDED', `Quota exceeded: the tenant may have at most ${limit} workspaces, has ${used}; delete one or ask an admin to raise the limit with quota.set.`, {
              resource: 'workspaces',
              limit,
              used,
              requested: 1,
            });
          }
        }
        try {
          return await create(ctx, fields, key ? { key, requestHash } : undefined);
        } catch (e) {
          if (e instanceof IdempotencyConflict) {
            const w = await replayed();
            if (w) return w;
          }
          throw e;
        }
      });
    },

    'workspace.get': async (ctx, { workspaceId }) => {
      const e = await service().visible(ctx.principal, workspaceId);
      return { ...docResource(e.doc), role: roleFor(ctx.principal, e.members.get(ctx.principal.principalId)) };
    },

    'workspace.update': async (ctx, { workspaceId, expectedVersion, ...fields }) => {
      const changes = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as WorkspaceChanges;
      if (Object.keys(changes).length === 0) {
        throw new ProtocolError('INVALID_PARAMS', 'workspace.update needs at least one field to change: name, type, description, visibility, maxMembers, settings or tags.', {});
      }
      const r = await change(
        ctx,
        workspaceId,
        { type: 'workspace.update', changes },
        (s) => {
          authorize(ctx.principal, s, 'workspace:write');
          const n = s.context.members.length;
          if (changes.maxMembers !== undefined && changes.maxMembers < n) {
            throw new ProtocolError('INVALID_PARAMS', `Workspace ${workspaceId} has ${n} members, more than maxMembers ${changes.maxMembers}; remove members first.`, {
              field: 'maxMembers',
              members: n,
            });
          }
        },
        expectedVersion,
      );
      return workspaceResource(r.snapshot.context, r.version);
    },

    'workspace.archive': async (ctx, { workspaceId, expectedVersion }) => {
      const r = await change(ctx, workspaceId, { type: 'workspace.archive' }, (s) => void authorize(ctx.principal, s, 'workspace:write'), expectedVersion);
      return workspaceResource(r.snapshot.context, r.version);
    },

    'workspace.delete': async (ctx, { workspaceId, expectedVersion }) => {
      const r = await change(
        ctx,
        workspaceId,
        { type: 'workspace.delete' },
        (s) => void authorize(ctx.principal, s, 'owner'),
        expectedVersion,
      );
      return { id: workspaceId, deleted: true as const, version: r.version };
    },

    'workspace.addMember': async (ctx, { workspaceId, principalId, role, permissions }) => {
      const p = ctx.principal;
      const memberLimit = (await app.quotas?.limits(p.tenantId))?.limits.members_per_workspace ?? null;
      const r = await change(ctx, workspaceId, { type: 'workspace.addMember', principalId, role, permissions: [...new Set(permissions ?? [])] }, (s) => {
        const me = authorize(p, s, 'member:manage');
        const { workspace: w, members } = s.context;
        const existing = findMember(members, principalId);
        if (existing) {
          throw new ProtocolError('ALREADY_EXISTS', `${principalId} is already a member of workspace ${workspaceId} (role ${existing.role}); change it with workspace.setMemberRole.`, {
            kind: 'workspace',
            id: workspaceId,
            principalId,
            role: existing.role,
          });
        }
        if (role === 'owner' && !isOwner(p, me)) throw ownersOnly(workspaceId, 'add owners');
        // Checked in the workspace's mailbox, so concurrent additions cannot pass it together.
        if (memberLimit !== null && members.length >= memberLimit) {
          throw new ProtocolError('QUOTA_EXCEEDED', `Quota exceeded: a workspace of this tenant may have at most ${memberLimit} members, and ${workspaceId} has ${members.length}; ask an admin to raise the limit with quota.set.`, {
            resource: 'members_per_workspace',
            limit: memberLimit,
            used: members.length,
            requested: 1,
          });
        }
        if (members.length >= w.maxMembers) {
          throw new ProtocolError('QUOTA_EXCEEDED', `Workspace ${workspaceId} has ${members.length} members, its maxMembers; remove a member or raise maxMembers with workspace.update.`, {
            resource: 'workspace_members',
            limit: w.maxMembers,
            used: members.length,
            requested: 1,
          });
        }
      });
      return memberResult(workspaceId, r, principalId);
    },

    'workspace.removeMember': async (ctx, { workspaceId, principalId }) => {
      const p = ctx.principal;
      const r = await change(ctx, workspaceId, { type: 'workspace.removeMember', principalId }, (s) => {
        const self = principalId === p.principalId;
        // Any member may leave; removing others needs member:manage.
        const me = authorize(p, s, self && findMember(s.context.members, principalId) ? 'workspace:read' : 'member:manage');
        if (s.value === 'archived') throw archivedError(workspaceId);
        const target = findMember(s.context.members, principalId);
        if (!target) throw notMember(workspaceId, principalId);
        if (target.role === 'owner' && !self && !isOwner(p, me)) throw ownersOnly(workspaceId, 'remove owners');
        if (removesLastOwner(s.context.members, principalId)) throw lastOwner(workspaceId, principalId);
      });
      return { workspaceId, principalId, removed: true as const, version: r.version };
    },

    'workspace.setMemberRole': async (ctx, { workspaceId, principalId, role }) => {
      const p = ctx.principal;
      const r = await change(ctx, workspaceId, { type: 'workspace.setMemberRole', principalId, role }, (s) => {
        const me = authorize(p, s, 'member:manage');
        const target = findMember(s.context.members, principalId);
        if (!target) throw notMember(workspaceId, principalId);
        if ((target.role === 'owner' || role === 'owner') && !isOwner(p, me)) throw ownersOnly(workspaceId, 'make or change owners');
        if (removesLastOwner(s.context.members, principalId, role)) throw lastOwner(workspaceId, principalId);
      });
      return memberResult(workspaceId, r, principalId);
    },

    'workspace.setMemberPermissions': async (ctx, { workspaceId, principalId, permissions }) => {
      const p = ctx.principal;
      const r = await change(ctx, workspaceId, { type: 'workspace.setMemberPermissions', principalId, permissions: [...new Set(permissions)] }, (s) => {
        const me = authorize(p, s, 'member:manage');
        const target = findMember(s.context.members, principalId);
        if (!target) throw notMember(workspaceId, principalId);
        if (target.role === 'owner' && !isOwner(p, me)) throw ownersOnly(workspaceId, "change owners' permissions");
      });
      return memberResult(workspaceId, r, principalId);
    },

    'workspace.listMembers': async (ctx, { workspaceId, role, limit, cursor }) => {
      const e = await service().visible(ctx.principal, workspaceId);
      let after = '';
      if (cursor !== undefined) {
        after = Buffer.from(cursor, 'base64url').toString('utf8');
        if (!after || Buffer.from(after, 'utf8').toString('base64url') !== cursor) {
          throw new ProtocolError('INVALID_PARAMS', 'The cursor is not one this server issued; start again without it.', { field: 'cursor' });
        }
      }
      const all = [...e.members.values()].filter((m) => (role === undefined || m.role === role) && m.principalId > after).sort((a, b) => (a.principalId < b.principalId ? -1 : 1));
      const n = limit ?? 100;
      const items = all.slice(0, n).map(memberResource);
      const last = items[items.length - 1];
      return { items, nextCursor: all.length > n && last ? Buffer.from(last.principalId, 'utf8').toString('base64url') : null };
    },

    'workspace.memberActivity': async (ctx, { workspaceId, principalId, periodSeconds }) => {
      const e = await service().visible(ctx.principal, workspaceId);
      const { from, to } = period(periodSeconds);
      const scan = await scanChanges(store, ctx.principal.tenantId, e.id, { from, to, principal: principalId });
      return {
        workspaceId,
        from: new Date(from).toISOString(),
        to: new Date(to - 1).toISOString(),
        members: activityByMember(scan.changes),
        eventsScanned: scan.scanned,
        truncated: scan.truncated,
      };
    },

    'workspace.presence': async (ctx, { workspaceId }) => {
      const ws = service();
      await ws.visible(ctx.principal, workspaceId);
      return { workspaceId, items: ws.presence.list(ctx.principal.tenantId, workspaceId) };
    },

    'workspace.setPresence': async (ctx, { workspaceId, status, cursor, focus }) => {
      const presence = await service().setPresence(ctx.conn, ctx.principal, workspaceId, { status, cursor, focus }, ctx.correlationId);
      return { workspaceId, ...presence };
    },

    'workspace.broadcast': async (ctx, { workspaceId, message, excludeSelf }) => {
      const ws = service();
      const p = ctx.principal;
      await ws.require(p, workspaceId, 'message:send');
      const messageId = uuidv7(app.now());
      const delivered = ws.presence.message(
        p.tenantId,
        workspaceId,
        { messageId, from: p.principalId, kind: 'broadcast', message },
        excludeSelf ? { except: p.principalId } : {},
        ctx.correlationId,
      );
      ws.touch(p.tenantId, workspaceId);
      return { workspaceId, messageId, delivered };
    },

    'workspace.sendToMember': async (ctx, { workspaceId, principalId, message }) => {
      const ws = service();
      const p = ctx.principal;
      const e = await ws.visible(p, workspaceId);
      ws.check(p, e, 'message:send');
      if (!e.members.has(principalId)) throw notMember(workspaceId, principalId);
      const messageId = uuidv7(app.now());
      const delivered = ws.presence.message(
        p.tenantId,
        workspaceId,
        { messageId, from: p.principalId, kind: 'direct', to: principalId, message },
        { only: principalId },
        ctx.correlationId,
      );
      ws.touch(p.tenantId, workspaceId);
      return { workspaceId, messageId, principalId, delivered, present: ws.presence.isPresent(p.tenantId, workspaceId, principalId) };
    },

    'workspace.listForAgent': async (ctx, { agentId, role, limit, cursor }) => {
      const p = ctx.principal;
      const who = agentId ?? p.principalId;
      const t = await service().tenant(p.tenantId);
      const entries = [...(t.byMember.get(who) ?? [])]
        .map((id) => t.byId.get(id))
        .filter((e): e is NonNullable<typeof e> & { doc: NonNullable<NonNullable<typeof e>['doc']> } => e?.doc != null)
        // Only workspaces the caller may see: another agent's private ones stay hidden.
        .filter((e) => permissionsFor(p, e.doc.visibility, e.members.get(p.principalId)) !== null)
        .filter((e) => role === undefined || e.members.get(who)?.role === role);
      return pageOf(entries, limit, cursor, (e) => ({ ...docResource(e.doc), role: e.members.get(who)!.role }));
    },

    'workspace.search': async (ctx, { query, type, visibility, status, tag, limit, cursor }) => {
      const p = ctx.principal;
      const t = await service().tenant(p.tenantId);
      const entries = [...t.live()].filter(
        (e) => permissionsFor(p, e.doc.visibility, e.members.get(p.principalId)) !== null && matchesSearch(e.doc, { query, type, visibility, status, tag }),
      );
      return pageOf(entries, limit, cursor, (e) => docResource(e.doc));
    },

    'workspace.recommended': async (ctx, { agentId, limit }) => {
      const p = ctx.principal;
      const who = agentId ?? p.principalId;
      // Shared members reveal whom the agent works with, also in private workspaces.
      if (who !== p.principalId && !hasRole(p, 'admin')) {
        throw new ProtocolError('FORBIDDEN', `Only admins may ask for another agent's recommendations; you are ${p.principalId}.`);
      }
      const t = await service().tenant(p.tenantId);
      const agent = await store.getView(p.tenantId, 'agent', who);
      const caps = Array.isArray(agent?.doc.capabilities) ? (agent.doc.capabilities as unknown[]).filter((c): c is string => typeof c === 'string') : [];
      return { agentId: who, items: recommend(t, who, caps, app.now(), limit ?? 10), scoring: RECOMMENDATION_SCORING };
    },

    'workspace.stats': async (ctx, { workspaceId }) => {
      const ws = service();
      const p = ctx.principal;
      const e = await ws.visible(p, workspaceId);
      const membersByRole = Object.fromEntries(WorkspaceRoles.map((r) => [r, 0])) as Record<WorkspaceRole, number>;
      for (const m of e.members.values()) membersByRole[m.role]++;
      const prefix = `${p.tenantId}/document/${workspaceId}:`;
      const documents = (await store.listStreams('document')).filter((s) => s.startsWith(prefix)).length;
      const present = ws.presence.counts(p.tenantId, workspaceId);
      return {
        workspaceId,
        status: e.doc.status,
        members: e.members.size,
        membersByRole,
        present: present.members,
        connections: present.connections,
        documents,
        messages: ws.presence.messages(p.tenantId, workspaceId).total,
        version: e.doc.version,
        createdAt: e.doc.createdAt,
        lastActivityAt: new Date(Math.max(e.lastActivityAt, Date.parse(e.doc.updatedAt))).toISOString(),
      };
    },

    'workspace.collaborationMetrics': async (ctx, { workspaceId, periodSeconds }) => {
      const ws = service();
      const p = ctx.principal;
      const e = await ws.visible(p, workspaceId);
      const { from, to } = period(periodSeconds);
      const scan = await scanChanges(store, p.tenantId, workspaceId, { from, to });
      const changesPerMember: Record<string, number> = {};
      for (const c of scan.changes) changesPerMember[c.principal] = (changesPerMember[c.principal] ?? 0) + 1;
      const messagesPerMember: Record<string, number> = {};
      const msgs = ws.presence.messages(p.tenantId, workspaceId, from).items;
      for (const m of msgs) messagesPerMember[m.from] = (messagesPerMember[m.from] ?? 0) + 1;
      const active = new Set([...Object.keys(changesPerMember), ...Object.keys(messagesPerMember)]);
      return {
        workspaceId,
        from: new Date(from).toISOString(),
        to: new Date(to - 1).toISOString(),
        members: e.members.size,
        membersActive: active.size,
        changes: scan.changes.length,
        messages: msgs.length,
        changesPerMember,
        messagesPerMember,
        eventsScanned: scan.scanned,
        truncated: scan.truncated,
        messagesSince: new Date(ws.presence.since).toISOString(),
      };
    },
  };
}

