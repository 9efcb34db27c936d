import type { MemberData } from '../../machines/workspaceMachine.js';
import type { Principal } from '../../protocol/model.js';
import { RolePermissions, WorkspacePermissions, WorkspaceRoles, type WorkspacePermission, type WorkspaceRole, type WorkspaceVisibility } from '../../protocol/workspaces.js';

const ALL: ReadonlySet<WorkspacePermission> = new Set(WorkspacePermissions);
const READ: ReadonlySet<WorkspacePermission> = new Set(['workspace:read']);
const NONE: ReadonlySet<WorkspacePermission> = new Set();

/** 0 for owner, 4 for viewer: a larger rank is a weaker role. */
export function roleRank(role: WorkspaceRole): number {
  return WorkspaceRoles.indexOf(role);
}

/** True for tenant admins, who act as owners of every workspace of their tenant. */
export function isTenantAdmin(p: Principal): boolean {
  return p.roles.includes('admin');
}

/** The role's permissions and the member's extra ones. */
export function memberPermissions(m: Pick<MemberData, 'role' | 'permissions'>): Set<WorkspacePermission> {
  return new Set([...RolePermissions[m.role], ...m.permissions]);
}

/**
 * What a principal may do in a workspace, or null when it may not even know the workspace
 * exists. Tenant admins may do everything; members what their role and extra permissions grant;
 * other principals of the tenant may read `team` and `public` workspaces. A principal that is
 * neither a tenant admin nor an agent (an observer) only ever reads, whatever its workspace role.
 */
export function permissionsFor(p: Principal, visibility: WorkspaceVisibility, member: MemberData | undefined): ReadonlySet<WorkspacePermission> | null {
  if (isTenantAdmin(p)) return ALL;
  let perms: ReadonlySet<WorkspacePermission>;
  if (member) perms = memberPermissions(member);
  else if (visibility !== 'private') perms = READ;
  else return null;
  if (!p.roles.includes('agent')) return perms.has('workspace:read') ? READ : NONE;
  return perms;
}

/** The principal's role: its member role, `owner` for tenant admins, else null. */
export function roleFor(p: Principal, member: MemberData | undefined): WorkspaceRole | null {
  if (isTenantAdmin(p)) return 'owner';
  return member?.role ?? null;
}

/** True when the change from `before` to `after` takes anything away (null: no longer a member). */
export function losesAccess(before: MemberData, after: MemberData | undefined): boolean {
  if (!after) return true;
  const had = memberPermissions(before);
  const has = memberPermissions(after);
  for (const x of had) if (!has.has(x)) return true;
  return roleRank(after.role) > roleRank(before.role);
}
