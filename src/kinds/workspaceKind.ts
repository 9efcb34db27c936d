import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { workspaceMachine, type MemberData, type WorkspaceContext } from '../../machines/workspaceMachine.js';
import type { Workspace, WorkspaceMember } from '../../protocol/workspaces.js';
import { memberPermissions } from '../workspaces/permissions.js';

type WorkspaceSnapshot = SnapshotFrom<typeof workspaceMachine>;

/** The read model document of a workspace: the resource with its members. */
export interface WorkspaceDoc extends Workspace {
  members: MemberData[];
}

/** The wire form of a workspace actor's state. */
export function workspaceResource(ctx: WorkspaceContext, version: number): Workspace {
  return { ...ctx.workspace, memberCount: ctx.members.length, version };
}

/** The wire form of a member. */
export function memberResource(m: MemberData): WorkspaceMember {
  return { ...m, effectivePermissions: [...memberPermissions(m)] };
}

/** The resource part of a read model document (without its members). */
export function docResource(doc: WorkspaceDoc): Workspace {
  const { members: _m, ...w } = doc;
  return w;
}

/**
 * How the runtime hosts workspaces. The read model row's `status` is `active` or `archived`, its
 * `type` the workspace type, its text the name, description and tags, and its `doc` a
 * {@link WorkspaceDoc}: the workspace with its members, which the workspace service keeps in
 * memory to decide access. Events go to `workspace:<id>` (its members' subscriptions) and
 * `tenant` (admins and observers, the tenant's auditors).
 */
export const workspaceKind: ActorKind<typeof workspaceMachine> = {
  kind: 'workspace',
  machine: workspaceMachine,
  status: (s: WorkspaceSnapshot) => String(s.value),
  exists: (s: WorkspaceSnapshot) => s.value === 'active' || s.value === 'archived',
  view(s: WorkspaceSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value !== 'active' && s.value !== 'archived') return null;
    const w = s.context.workspace;
    const doc: WorkspaceDoc = { ...workspaceResource(s.context, version), members: s.context.members };
    return {
      tenant: address.tenant,
      kind: 'workspace',
      id: address.id,
      version,
      status: w.status,
      owner: null,
      type: w.type,
      priority: null,
      parentId: null,
      createdBy: w.createdBy,
      createdAt: Date.parse(w.createdAt),
      updatedAt: Date.parse(w.updatedAt),
      text: `${w.name}\n${w.description}\n${w.tags.join('\n')}`.toLowerCase(),
      archived: false,
      doc: doc as unknown as Record<string, unknown>,
    };
  },
  topics: (event) => [`workspace:${event.actorId}`, 'tenant'],
  snapshotEvery: 50,
};
