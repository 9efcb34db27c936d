import type { Principal } from '../../protocol/model.js';

/** Workspace member roles, most powerful first. */
export const WorkspaceRoles = ['owner', 'admin', 'editor', 'commenter', 'viewer'] as const;
export type WorkspaceRole = (typeof WorkspaceRoles)[number];

/** Things a member may be allowed to do in a workspace. Roles grant sets of them; members may get extra ones. */
export const WorkspacePermissions = ['workspace:read', 'workspace:write', 'member:manage', 'state:write', 'doc:create', 'doc:write', 'message:send'] as const;
export type WorkspacePermission = (typeof WorkspacePermissions)[number];

/**
 * Who may do what in a workspace. Implemented by the workspace service; used by every handler
 * that touches a workspace, its state, its documents, its presence or its messages. Decisions
 * reflect the latest committed membership at once (a removed member is refused on the very next
 * call).
 */
export interface WorkspaceAccess {
  /** Throws NOT_FOUND when the workspace does not exist for this principal (or it may not know of it), FORBIDDEN when it lacks the permission. */
  require(p: Principal, workspaceId: string, permission: WorkspacePermission): Promise<void>;
  /** The member's role, or null when not a member (tenant admins act as owners). */
  roleOf(p: Principal, workspaceId: string): Promise<WorkspaceRole | null>;
  /** Called when a principal loses access to a workspace (removed, role lowered): drop its subscriptions and presence. */
  onRevoked(listener: (tenant: string, workspaceId: string, principalId: string) => void): void;
}
