import type { Principal } from '../../protocol/model.js';
import type { WorkspacePermission, WorkspaceRole } from '../../protocol/workspaces.js';

/** Workspace member roles (most powerful first) and permissions; defined with the wire contract. */
export { WorkspacePermissions, WorkspaceRoles, RolePermissions, type WorkspacePermission, type WorkspaceRole } from '../../protocol/workspaces.js';

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
  /**
   * Called when a principal loses access to a workspace (removed, role lowered, extra permissions
   * taken away, or the workspace deleted): drop its subscriptions and presence. Listeners run
   * synchronously inside the commit that took the access away, after the service's own decisions
   * already reflect it, so `require` and `roleOf` called from a listener answer with the new
   * membership. The service itself has already ended the principal's subscriptions to
   * `workspace:<id>` and `document:<id>:*` and its presence when it is no longer a member.
   */
  onRevoked(listener: (tenant: string, workspaceId: string, principalId: string) => void): void;
}
