import type { ActorHost } from '../../actors/ActorHost.js';
import type { Store, StoredEvent, ViewRecord } from '../../actors/Store.js';
import type { MemberData } from '../../machines/workspaceMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import { SUBSCRIPTION_REVOKED, type MemberPresence, type PresenceStatus, type WorkspacePermission, type WorkspaceRole } from '../../protocol/workspaces.js';
import type { WorkspaceDoc } from '../kinds/workspaceKind.js';
import type { Logger } from '../logger.js';
import type { Connection } from '../server/Connection.js';
import type { SubscriptionHub } from '../server/SubscriptionHub.js';
import type { WorkspaceAccess } from './access.js';
import { isTenantAdmin, losesAccess, permissionsFor, roleFor } from './permissions.js';
import { type PresenceRelay, WorkspacePresence } from './WorkspacePresence.js';

/** One workspace as the service knows it: its read model document, or a tombstone once deleted. */
export interface WorkspaceEntry {
  id: string;
  /** The stream version this entry reflects; a late load never replaces a newer entry. */
  version: number;
  /** Null once deleted. */
  doc: WorkspaceDoc | null;
  members: Map<string, MemberData>;
  /** The latest change of the workspace or one of its documents, or message in it (ms since the epoch). */
  lastActivityAt: number;
}

/** The workspaces of one tenant, with who is a member of which. */
export class TenantWorkspaces {
  readonly byId = new Map<string, WorkspaceEntry>();
  /** Principal id → ids of the workspaces it is a member of. */
  readonly byMember = new Map<string, Set<string>>();
  loaded: Promise<void> | null = null;

  /** Live (not deleted) workspaces. */
  *live(): IterableIterator<WorkspaceEntry & { doc: WorkspaceDoc }> {
    for (const e of this.byId.values()) if (e.doc) yield e as WorkspaceEntry & { doc: WorkspaceDoc };
  }

  /** Replaces an entry if `next` is newer; returns the entry it replaced (undefined if none or not applied). */
  apply(next: WorkspaceEntry): { applied: boolean; prev: WorkspaceEntry | undefined } {
    const prev = this.byId.get(next.id);
    if (prev && prev.version >= next.version) return { applied: false, prev };
    if (prev) for (const m of prev.members.keys()) this.byMember.get(m)?.delete(next.id);
    for (const m of next.members.keys()) {
      let set = this.byMember.get(m);
      if (!set) this.byMember.set(m, (set = new Set()));
      set.add(next.id);
    }
    next.lastActivityAt = Math.max(next.lastActivityAt, prev?.lastActivityAt ?? 0);
    this.byId.set(next.id, next);
    return { applied: true, prev };
  }
}

/** Options of {@link WorkspaceService}. */
export interface WorkspaceServiceOptions {
  host: ActorHost;
  store: Store;
  hub: SubscriptionHub;
  now?: () => number;
  log?: Logger;
  /** Messages remembered per workspace for metrics (default 10 000). */
  messageLog?: number;
  /** Set in a cluster: presence and messages of members connected to other nodes. */
  presenceRelay?: PresenceRelay;
}

/** Events that change one member (`data.principalId`). */
const MEMBER_EVENTS = new Set(['workspace.removeMember', 'workspace.setMemberRole', 'workspace.setMemberPermissions']);

function entryFrom(id: string, version: number, doc: WorkspaceDoc | null, at: number): WorkspaceEntry {
  return { id, version, doc, members: new Map((doc?.members ?? []).map((m) => [m.principalId, m])), lastActivityAt: at };
}

function notFound(id: string): ProtocolError {
  return new ProtocolError('NOT_FOUND', `Workspace ${id} does not exist.`, { kind: 'workspace', id });
}

/** The error for a write to an archived workspace. */
export function archivedError(id: string): ProtocolError {
  return new ProtocolError('ILLEGAL_TRANSITION', `Workspace ${id} is archived and read-only; nothing in it can be changed any more (it can only be deleted).`, {
    kind: 'workspace',
    id,
    status: 'archived',
    allowed: ['workspace.delete'],
  });
}

/** True for the topics that carry a workspace's events: `workspace:<id>` and `document:<id>:<docId>`. */
export function isWorkspaceTopic(topic: string, workspaceId: string): boolean {
  return topic === `workspace:${workspaceId}` || topic.startsWith(`document:${workspaceId}:`);
}

/**
 * Workspace access, presence and messaging. It keeps every workspace of a tenant (with its
 * members) in memory once the tenant is first used, updated from each commit of a workspace
 * actor before the commit's reply is sent, so access decisions always reflect the latest
 * committed membership. When a commit takes access away, the principal's subscriptions to the
 * workspace's topics and its presence end at once (if it is no longer a member), and
 * {@link WorkspaceAccess.onRevoked} listeners are called.
 *
 * Memory only and per node: a cluster would need commits from other nodes fed in as well.
 *
 * @example
 * ```ts
 * const workspaces = new WorkspaceService({ host, store, hub });
 * await workspaces.require(principal, workspaceId, 'doc:write');
 * ```
 */
export class WorkspaceService implements WorkspaceAccess {
  readonly presence: WorkspacePresence;
  #host: ActorHost;
  #store: Store;
  #hub: SubscriptionHub;
  #now: () => number;
  #log: Logger | undefined;
  #tenants = new Map<string, TenantWorkspaces>();
  #revoked = new Set<(tenant: string, workspaceId: string, principalId: string) => void>();

  constructor(opts: WorkspaceServiceOptions) {
    this.#host = opts.host;
    this.#store = opts.store;
    this.#hub = opts.hub;
    this.#now = opts.now ?? Date.now;
    this.#log = opts.log;
    this.presence = new WorkspacePresence({
      now: this.#now,
      roleOf: (tenant, workspaceId, principalId) => this.#tenants.get(tenant)?.byId.get(workspaceId)?.members.get(principalId)?.role ?? null,
      messageLog: opts.messageLog,
      relay: opts.presenceRelay,
    });
    this.#host.onCommit((events, _topics, view) => {
      for (const e of events) this.#committed(e, view);
    });
  }

  /** The tenant's workspaces, loaded from the read model on first use. */
  async tenant(tenantId: string): Promise<TenantWorkspaces> {
    let t = this.#tenants.get(tenantId);
    if (!t) {
      t = new TenantWorkspaces();
      this.#tenants.set(tenantId, t);
      const loading = t;
      t.loaded = this.#load(tenantId, t).catch((e: unknown) => {
        // A failed load is retried by the next call rather than leaving a half-filled tenant.
        if (this.#tenants.get(tenantId) === loading) this.#tenants.delete(tenantId);
        throw e;
      });
    }
    await t.loaded;
    return t;
  }

  async #load(tenantId: string, t: TenantWorkspaces): Promise<void> {
    let cursor: string | undefined;
    do {
      const page = await this.#store.queryViews(tenantId, 'workspace', { archived: 'any', limit: 1000, cursor });
      // Commits that arrived meanwhile are already applied, and newer: apply() keeps them.
      for (const v of page.items) t.apply(entryFrom(v.id, v.version, v.doc as unknown as WorkspaceDoc, v.updatedAt));
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
  }

  /** The workspace if the principal may know it exists, or NOT_FOUND. */
  async visible(p: Principal, workspaceId: string): Promise<WorkspaceEntry & { doc: WorkspaceDoc }> {
    const e = (await this.tenant(p.tenantId)).byId.get(workspaceId);
    if (!e?.doc || !permissionsFor(p, e.doc.visibility, e.members.get(p.principalId))) throw notFound(workspaceId);
    return e as WorkspaceEntry & { doc: WorkspaceDoc };
  }

  /** What the principal may do in a workspace it may see. */
  permissions(p: Principal, e: WorkspaceEntry & { doc: WorkspaceDoc }): ReadonlySet<WorkspacePermission> {
    return permissionsFor(p, e.doc.visibility, e.members.get(p.principalId)) ?? new Set();
  }

  async require(p: Principal, workspaceId: string, permission: WorkspacePermission): Promise<void> {
    const e = await this.visible(p, workspaceId);
    this.check(p, e, permission);
  }

  /** The synchronous part of {@link require}, for an entry already at hand. */
  check(p: Principal, e: WorkspaceEntry & { doc: WorkspaceDoc }, permission: WorkspacePermission): void {
    if (!this.permissions(p, e).has(permission)) {
      const role = roleFor(p, e.members.get(p.principalId));
      throw new ProtocolError(
        'FORBIDDEN',
        `You (${p.principalId}, ${role ? `role ${role}` : 'not a member'}) lack ${permission} in workspace ${e.id}; ask one of its owners or admins for it.`,
        { kind: 'workspace', id: e.id, permission, role },
      );
    }
    if (permission !== 'workspace:read' && e.doc.status === 'archived') throw archivedError(e.id);
  }

  async roleOf(p: Principal, workspaceId: string): Promise<WorkspaceRole | null> {
    const e = (await this.tenant(p.tenantId)).byId.get(workspaceId);
    if (!e?.doc) return null;
    return roleFor(p, e.members.get(p.principalId));
  }

  onRevoked(listener: (tenant: string, workspaceId: string, principalId: string) => void): void {
    this.#revoked.add(listener);
  }

  /**
   * Refuses a principal that may not be present in a workspace or follow its events: only its
   * members and tenant admins may (others get NOT_FOUND for a private workspace, FORBIDDEN for
   * one they may read).
   */
  async requireMember(p: Principal, workspaceId: string): Promise<WorkspaceEntry & { doc: WorkspaceDoc }> {
    const e = await this.visible(p, workspaceId);
    if (!this.#mayJoin(p, e)) {
      throw new ProtocolError('FORBIDDEN', `Only members of workspace ${workspaceId} may join it or follow its events; you (${p.principalId}) are not a member.`, {
        kind: 'workspace',
        id: workspaceId,
      });
    }
    return e;
  }

  #mayJoin(p: Principal | null, e: WorkspaceEntry): boolean {
    return p !== null && e.doc !== null && (isTenantAdmin(p) || e.members.has(p.principalId));
  }

  /**
   * A connection subscribed to `workspace:<id>` (after {@link requireMember}): it becomes
   * present. Membership is checked again, because it may have been revoked while the
   * subscription was being set up; then the subscription is ended and the call refused.
   */
  subscribed(conn: Connection, p: Principal, workspaceId: string, subscriptionId: string, causedBy?: string): void {
    const e = this.#tenants.get(p.tenantId)?.byId.get(workspaceId);
    if (!e || !this.#mayJoin(p, e)) {
      this.#hub.unsubscribe(subscriptionId);
      throw e?.doc ? new ProtocolError('FORBIDDEN', `Your membership of workspace ${workspaceId} was revoked.`, { kind: 'workspace', id: workspaceId }) : notFound(workspaceId);
    }
    this.presence.subscribed(p.tenantId, workspaceId, conn, p.principalId, subscriptionId, causedBy);
  }

  /** A subscription ended by its client. */
  unsubscribed(conn: Connection, subscriptionId: string, causedBy?: string): void {
    this.presence.unsubscribed(conn, subscriptionId, causedBy);
  }

  /** A connection closed: it leaves every workspace. */
  disconnected(conn: Connection): void {
    this.presence.disconnected(conn);
  }

  /** Sets the caller's presence in a workspace it is a member of. */
  async setPresence(
    conn: Connection,
    p: Principal,
    workspaceId: string,
    update: { status: PresenceStatus; cursor?: unknown; focus?: unknown },
    causedBy?: string,
  ): Promise<MemberPresence> {
    await this.requireMember(p, workspaceId);
    if (conn.closed) throw new ProtocolError('UNAVAILABLE', 'The connection is closing.', { retryAfterMs: 100 });
    return this.presence.set(p.tenantId, workspaceId, conn, p.principalId, update, causedBy);
  }

  /** Notes activity in a workspace (a message), for discovery. */
  touch(tenant: string, workspaceId: string, at = this.#now()): void {
    const e = this.#tenants.get(tenant)?.byId.get(workspaceId);
    if (e && at > e.lastActivityAt) e.lastActivityAt = at;
  }

  #committed(e: StoredEvent, view: ViewRecord | null | undefined): void {
    if (e.kind === 'document') {
      const sep = e.actorId.indexOf(':');
      if (sep > 0) this.touch(e.tenant, e.actorId.slice(0, sep), e.meta.at);
      return;
    }
    if (e.kind !== 'workspace') return;
    const doc = view ? (view.doc as unknown as WorkspaceDoc) : null;
    const next = entryFrom(e.actorId, e.version, doc, e.meta.at);
    // A tenant not loaded yet reads this commit's row when it loads; what it changed is still
    // cut off below, from the event itself.
    const t = this.#tenants.get(e.tenant);
    let prev: WorkspaceEntry | undefined;
    if (t) {
      const r = t.apply(next);
      if (!r.applied) return;
      prev = r.prev;
    }
    const lost: string[] = [];
    if (prev?.doc) {
      for (const [id, m] of prev.members) if (!next.doc || losesAccess(m, next.members.get(id))) lost.push(id);
    } else if (MEMBER_EVENTS.has(e.type)) {
      lost.push(String(e.data.principalId));
    }
    if (lost.length === 0 && next.doc) return;
    this.#cutOff(e.tenant, next, lost, e.meta.correlationId);
  }

  /**
   * Ends what principals who lost access still hold: subscriptions to the workspace's topics and
   * presence (of everyone once the workspace is deleted; else of those who may no longer join),
   * then tells the listeners. Notifications wait for the reply of the request that caused the
   * change (a member removing itself hears of it after its answer).
   */
  #cutOff(tenant: string, e: WorkspaceEntry, lost: string[], causedBy: string | undefined): void {
    const id = e.id;
    const affected = new Set(lost);
    // Only those who lost access: readers of a team workspace who never were members keep theirs.
    const mustGo = (p: Principal | null) => p !== null && (e.doc === null || affected.has(p.principalId)) && !this.#mayJoin(p, e);
    const ended = this.#hub.endSubscriptions(tenant, (topic) => isWorkspaceTopic(topic, id), mustGo);
    const reason = e.doc ? `Your access to workspace ${id} was revoked.` : `Workspace ${id} was deleted.`;
    for (const s of ended) {
      this.presence.unsubscribed(s.conn, s.subscriptionId, causedBy);
      s.conn.notify({ jsonrpc: '2.0', method: SUBSCRIPTION_REVOKED, params: { subscriptionId: s.subscriptionId, topic: s.topic, reason } }, causedBy);
    }
    this.presence.remove(tenant, id, (_principalId, conn) => mustGo(conn.principal), causedBy);
    if (!e.doc) this.presence.forget(tenant, id);
    for (const principalId of lost) {
      for (const l of this.#revoked) {
        try {
          l(tenant, id, principalId);
        } catch (err) {
          this.#log?.warn({ err, workspace: id, principal: principalId }, 'workspace revocation listener failed');
        }
      }
    }
  }
}
