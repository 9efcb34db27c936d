import { assign, setup } from 'xstate';
import type { WorkspacePermission, WorkspaceRole, WorkspaceStatus, WorkspaceVisibility } from '../protocol/workspaces.js';
import { iso, type Effect, type Stamp } from './effects.js';

/** The workspace record a workspace actor holds (its members are kept beside it). */
export interface WorkspaceData {
  id: string;
  tenantId: string;
  name: string;
  type: string;
  description: string;
  visibility: WorkspaceVisibility;
  status: WorkspaceStatus;
  maxMembers: number;
  settings: Record<string, unknown>;
  tags: string[];
  createdBy: string;
  createdAt: string;
  updatedAt: string;
  archivedAt: string | null;
}

/** One member as stored. */
export interface MemberData {
  principalId: string;
  role: WorkspaceRole;
  /** Extra permissions on top of the role's. */
  permissions: WorkspacePermission[];
  addedBy: string;
  joinedAt: string;
  updatedAt: string;
}

/**
 * What a workspace actor holds. Members are an array, not a map keyed by principal id: ids such
 * as `constructor` would collide with inherited properties of a plain object.
 */
export interface WorkspaceContext {
  workspace: WorkspaceData;
  members: MemberData[];
}

/** Fields of `workspace.create` (validated and defaulted by the caller). */
export interface WorkspaceCreation {
  id: string;
  tenantId: string;
  name: string;
  /** The workspace's `type` (named apart from the event's own `type`). */
  workspaceType: string;
  description: string;
  visibility: WorkspaceVisibility;
  maxMembers: number;
  settings: Record<string, unknown>;
  tags: string[];
}

/** Fields `workspace.update` may change. */
export type WorkspaceChanges = Partial<Pick<WorkspaceData, 'name' | 'type' | 'description' | 'visibility' | 'maxMembers' | 'settings' | 'tags'>>;

/** Every event a workspace machine accepts. The creator (`by` of the creation) becomes its owner. */
export type WorkspaceEvent = Stamp &
  (
    | ({ type: 'workspace.create' } & WorkspaceCreation)
    | { type: 'workspace.update'; changes: WorkspaceChanges }
    | { type: 'workspace.archive' }
    | { type: 'workspace.delete' }
    | { type: 'workspace.addMember'; principalId: string; role: WorkspaceRole; permissions: WorkspacePermission[] }
    | { type: 'workspace.removeMember'; principalId: string }
    | { type: 'workspace.setMemberRole'; principalId: string; role: WorkspaceRole }
    | { type: 'workspace.setMemberPermissions'; principalId: string; permissions: WorkspacePermission[] }
  );

type E<T extends WorkspaceEvent['type']> = Extract<WorkspaceEvent, { type: T }>;

const emptyWorkspace: WorkspaceData = {
  id: '',
  tenantId: '',
  name: '',
  type: 'general',
  description: '',
  visibility: 'private',
  status: 'active',
  maxMembers: 1,
  settings: {},
  tags: [],
  createdBy: '',
  createdAt: '',
  updatedAt: '',
  archivedAt: null,
};

/** The member with this principal id, if any. */
export function findMember(members: readonly MemberData[], principalId: string): MemberData | undefined {
  return members.find((m) => m.principalId === principalId);
}

/** How many members are owners. */
export function ownerCount(members: readonly MemberData[]): number {
  return members.filter((m) => m.role === 'owner').length;
}

/** True if the change would leave the workspace without an owner. */
export function removesLastOwner(members: readonly MemberData[], principalId: string, newRole?: WorkspaceRole): boolean {
  const m = findMember(members, principalId);
  return m?.role === 'owner' && newRole !== 'owner' && ownerCount(members) === 1;
}

function touch(ctx: WorkspaceContext, at: number): WorkspaceData {
  return { ...ctx.workspace, updatedAt: iso(at) };
}

/**
 * A workspace: created active with its creator as owner; members are added, changed and
 * removed while it is active; archiving makes it read-only (only deletion is accepted then);
 * deletion is final. Guards keep it consistent on their own: at most `maxMembers` members, no
 * principal twice, never without an owner.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(workspaceMachine);
 * const [next] = transition(workspaceMachine, s, {
 *   type: 'workspace.create', id: 'w1', tenantId: 'acme', name: 'Release 7', workspaceType: 'general',
 *   description: '', visibility: 'team', maxMembers: 10, settings: {}, tags: [], at: 0, by: 'lead',
 * });
 * ```
 */
export const workspaceMachine = setup({
  types: {
    context: {} as WorkspaceContext,
    events: {} as WorkspaceEvent,
    emitted: {} as Effect,
  },
  guards: {
    canAdd: ({ context, event }) => {
      const e = event as E<'workspace.addMember'>;
      return !findMember(context.members, e.principalId) && context.members.length < context.workspace.maxMembers;
    },
    canRemove: ({ context, event }) => {
      const e = event as E<'workspace.removeMember'>;
      return findMember(context.members, e.principalId) !== undefined && !removesLastOwner(context.members, e.principalId);
    },
    canSetRole: ({ context, event }) => {
      const e = event as E<'workspace.setMemberRole'>;
      return findMember(context.members, e.principalId) !== undefined && !removesLastOwner(context.members, e.principalId, e.role);
    },
    isMember: ({ context, event }) => findMember(context.members, (event as E<'workspace.setMemberPermissions'>).principalId) !== undefined,
    fitsMembers: ({ context, event }) => {
      const max = (event as E<'workspace.update'>).changes.maxMembers;
      return max === undefined || max >= context.members.length;
    },
  },
  actions: {
    create: assign(({ event }) => {
      const e = event as E<'workspace.create'>;
      const at = iso(e.at);
      return {
        workspace: {
          id: e.id,
          tenantId: e.tenantId,
          name: e.name,
          type: e.workspaceType,
          description: e.description,
          visibility: e.visibility,
          status: 'active' as const,
          maxMembers: e.maxMembers,
          settings: e.settings,
          tags: e.tags,
          createdBy: e.by,
          createdAt: at,
          updatedAt: at,
          archivedAt: null,
        },
        members: [{ principalId: e.by, role: 'owner' as const, permissions: [], addedBy: e.by, joinedAt: at, updatedAt: at }],
      };
    }),
    update: assign(({ context, event }) => {
      const c = (event as E<'workspace.update'>).changes;
      const w = context.workspace;
      return {
        workspace: {
          ...w,
          name: c.name ?? w.name,
          type: c.type ?? w.type,
          description: c.description ?? w.description,
          visibility: c.visibility ?? w.visibility,
          maxMembers: c.maxMembers ?? w.maxMembers,
          settings: c.settings ?? w.settings,
          tags: c.tags ?? w.tags,
          updatedAt: iso(event.at),
        },
      };
    }),
    archive: assign(({ context, event }) => ({
      workspace: { ...context.workspace, status: 'archived' as const, archivedAt: iso(event.at), updatedAt: iso(event.at) },
    })),
    stamp: assign(({ context, event }) => ({ workspace: touch(context, event.at) })),
    addMember: assign(({ context, event }) => {
      const e = event as E<'workspace.addMember'>;
      const at = iso(e.at);
      return {
        workspace: touch(context, e.at),
        members: [...context.members, { principalId: e.principalId, role: e.role, permissions: e.permissions, addedBy: e.by, joinedAt: at, updatedAt: at }],
      };
    }),
    removeMember: assign(({ context, event }) => {
      const e = event as E<'workspace.removeMember'>;
      return { workspace: touch(context, e.at), members: context.members.filter((m) => m.principalId !== e.principalId) };
    }),
    setRole: assign(({ context, event }) => {
      const e = event as E<'workspace.setMemberRole'>;
      return {
        workspace: touch(context, e.at),
        members: context.members.map((m) => (m.principalId === e.principalId ? { ...m, role: e.role, updatedAt: iso(e.at) } : m)),
      };
    }),
    setPermissions: assign(({ context, event }) => {
      const e = event as E<'workspace.setMemberPermissions'>;
      return {
        workspace: touch(context, e.at),
        members: context.members.map((m) => (m.principalId === e.principalId ? { ...m, permissions: e.permissions, updatedAt: iso(e.at) } : m)),
      };
    }),
  },
}).createMachine({
  id: 'workspace',
  initial: 'none',
  context: { workspace: emptyWorkspace, members: [] },
  states: {
    none: {
      on: { 'workspace.create': { target: 'active', actions: 'create' } },
    },
    active: {
      on: {
        'workspace.update': { guard: 'fitsMembers', actions: 'update' },
        'workspace.addMember': { guard: 'canAdd', actions: 'addMember' },
        'workspace.removeMember': { guard: 'canRemove', actions: 'removeMember' },
        'workspace.setMemberRole': { guard: 'canSetRole', actions: 'setRole' },
        'workspace.setMemberPermissions': { guard: 'isMember', actions: 'setPermissions' },
        'workspace.archive': { target: 'archived', actions: 'archive' },
        'workspace.delete': { target: 'deleted', actions: 'stamp' },
      },
    },
    archived: {
      on: { 'workspace.delete': { target: 'deleted', actions: 'stamp' } },
    },
    deleted: { type: 'final' },
  },
});
