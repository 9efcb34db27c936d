import { z } from 'zod';
import { Id } from './ids.js';
import type { Page } from './model.js';

/**
 * Workspaces: rooms where agents collaborate live, with members, roles, presence and messages.
 * Their wire shapes and method schemas; merged into the catalogue by `methods.ts`. (Workspace
 * state and shared documents have their own part of the catalogue.)
 */

/** Workspace member roles, most powerful first. */
export const WorkspaceRoles = ['owner', 'admin', 'editor', 'commenter', 'viewer'] as const;
export type WorkspaceRole = (typeof WorkspaceRoles)[number];

/** Things a member may be allowed to do in a workspace. Roles grant sets of them; members may get extra ones. */
export const WorkspacePermissions = ['workspace:read', 'workspace:write', 'member:manage', 'state:write', 'doc:create', 'doc:write', 'message:send'] as const;
export type WorkspacePermission = (typeof WorkspacePermissions)[number];

/**
 * What each role grants. `owner` and `admin` grant everything; only owners (and tenant admins)
 * may delete a workspace or add, change or remove owners.
 */
export const RolePermissions: Readonly<Record<WorkspaceRole, readonly WorkspacePermission[]>> = {
  owner: WorkspacePermissions,
  admin: WorkspacePermissions,
  editor: ['workspace:read', 'state:write', 'doc:create', 'doc:write', 'message:send'],
  commenter: ['workspace:read', 'message:send'],
  viewer: ['workspace:read'],
};

/**
 * Who can see a workspace: `private` only its members (anyone else is told it does not exist),
 * `team` every principal of the tenant, `public` the same as `team` today (reserved for
 * discovery beyond the tenant).
 */
export const WorkspaceVisibilities = ['private', 'team', 'public'] as const;
export type WorkspaceVisibility = (typeof WorkspaceVisibilities)[number];

/** `archived` workspaces are read-only. */
export const WorkspaceStatuses = ['active', 'archived'] as const;
export type WorkspaceStatus = (typeof WorkspaceStatuses)[number];

/** What a member says it is doing. */
export const PresenceStatuses = ['active', 'idle', 'busy', 'away'] as const;
export type PresenceStatus = (typeof PresenceStatuses)[number];

/** Members a workspace may have unless it says otherwise. */
export const DEFAULT_MAX_MEMBERS = 100;
/** The most members any workspace may have. */
export const MAX_MAX_MEMBERS = 10_000;
/** Largest `settings` object, in bytes of JSON. */
export const MAX_SETTINGS_BYTES = 16_384;
/** Largest `cursor` and `focus` of a presence, each, in bytes of JSON. */
export const MAX_PRESENCE_PAYLOAD_BYTES = 2_048;
/** Largest message of `workspace.broadcast` and `workspace.sendToMember`, in bytes of JSON. */
export const MAX_MESSAGE_BYTES = 65_536;

/** Notification sent to a workspace's present connections when someone joins, updates its presence or leaves. */
export const WORKSPACE_PRESENCE = 'workspace.presence';
/** Notification carrying a broadcast or a direct message. */
export const WORKSPACE_MESSAGE = 'workspace.message';
/** Notification sent when the server ends a subscription because its principal lost access to it. */
export const SUBSCRIPTION_REVOKED = 'subscription.revoked';

/** A workspace as returned to clients. Times are ISO 8601 strings. */
export interface Workspace {
  id: string;
  tenantId: string;
  name: string;
  /** Free-form kind of workspace (`general` by default). */
  type: string;
  description: string;
  visibility: WorkspaceVisibility;
  status: WorkspaceStatus;
  maxMembers: number;
  memberCount: number;
  /** Free-form settings; `settings.capabilities` (strings) is matched by `workspace.recommended`. */
  settings: Record<string, unknown>;
  /** Matched by `workspace.search` and `workspace.recommended`. */
  tags: string[];
  createdBy: string;
  createdAt: string;
  updatedAt: string;
  archivedAt: string | null;
  /** Every change (members included) adds one; `expectedVersion` refers to it. */
  version: number;
}

/** A member of a workspace. */
export interface WorkspaceMember {
  principalId: string;
  role: WorkspaceRole;
  /** Extra permissions on top of the role's. */
  permissions: WorkspacePermission[];
  /** The role's and the extra permissions together. */
  effectivePermissions: WorkspacePermission[];
  addedBy: string;
  joinedAt: string;
  updatedAt: string;
}

/** A member present in a workspace now (memory only: presence is not stored). */
export interface MemberPresence {
  principalId: string;
  role: WorkspaceRole | null;
  status: PresenceStatus;
  cursor: unknown;
  focus: unknown;
  /** Connections of the member that are present (subscribed to `workspace:<id>` or that set presence). */
  connections: number;
  joinedAt: string;
  updatedAt: string;
}

/** `workspace.get`: the workspace and the caller's role in it. */
export type WorkspaceView = Workspace & { role: WorkspaceRole | null };

/** One member's changes over a period. */
export interface MemberActivityItem {
  principalId: string;
  /** Accepted changes (workspace and document events) by the member. */
  changes: number;
  workspaceChanges: number;
  documentChanges: number;
  /** Changes per path (at most 100 paths, most changed first): `/workspace/<field>`, `/workspace/members/<id>`, `/documents/<docId><path>`. */
  paths: { path: string; changes: number }[];
  lastActiveAt: string | null;
}

/** The result of `workspace.memberActivity`. */
export interface MemberActivity {
  workspaceId: string;
  from: string;
  to: string;
  members: MemberActivityItem[];
  /** Events read; `truncated` when the scan stopped at its limit. */
  eventsScanned: number;
  truncated: boolean;
}

/** One recommendation, with why. */
export interface WorkspaceRecommendation {
  workspace: Workspace;
  score: number;
  reasons: {
    /** Members of the workspace who share another workspace with the agent. */
    sharedMembers: string[];
    /** The agent's capabilities found among the workspace's tags and `settings.capabilities`. */
    matchedCapabilities: string[];
    /** 1 for activity now, falling linearly to 0 at a week without activity. */
    recentActivity: number;
  };
}

/** The result of `workspace.stats`. */
export interface WorkspaceStats {
  workspaceId: string;
  status: WorkspaceStatus;
  members: number;
  membersByRole: Record<WorkspaceRole, number>;
  /** Members present now, and their connections (this node). */
  present: number;
  connections: number;
  /** Documents created in the workspace. */
  documents: number;
  /** Messages sent since this node started. */
  messages: number;
  version: number;
  createdAt: string;
  lastActivityAt: string;
}

/** The result of `workspace.collaborationMetrics`. */
export interface CollaborationMetrics {
  workspaceId: string;
  from: string;
  to: string;
  members: number;
  /** Members who changed something or sent a message in the period. */
  membersActive: number;
  changes: number;
  messages: number;
  changesPerMember: Record<string, number>;
  messagesPerMember: Record<string, number>;
  eventsScanned: number;
  truncated: boolean;
  /** Messages are counted in memory since this node started (they are not stored). */
  messagesSince: string;
}

/** UTF-8 bytes of a value's JSON (undefined counts 0). */
export function jsonBytes(v: unknown): number {
  if (v === undefined) return 0;
  return new TextEncoder().encode(JSON.stringify(v) ?? '').length;
}

/** An optional JSON value of at most `max` bytes. */
const Bounded = (max: number) =>
  z.unknown().superRefine((v, ctx) => {
    const n = jsonBytes(v);
    if (n > max) ctx.addIssue({ code: 'custom', message: `must be at most ${max} bytes of JSON; it has ${n}` });
  });

/** A required JSON value of at most `max` bytes. */
const BoundedRequired = (max: number) => Bounded(max).refine((v) => v !== undefined, { message: 'is required' });

const Name = z.string().min(1).max(256);
const Type = z.string().min(1).max(64);
const Description = z.string().max(4096);
const Visibility = z.enum(WorkspaceVisibilities);
const Role = z.enum(WorkspaceRoles);
const Permissions = z.array(z.enum(WorkspacePermissions)).max(WorkspacePermissions.length);
const MaxMembers = z.number().int().min(1).max(MAX_MAX_MEMBERS);
const Settings = z.record(z.string(), z.unknown()).superRefine((v, ctx) => {
  const n = jsonBytes(v);
  if (n > MAX_SETTINGS_BYTES) ctx.addIssue({ code: 'custom', message: `must be at most ${MAX_SETTINGS_BYTES} bytes of JSON; it has ${n}` });
});
const Tags = z.array(z.string().min(1).max(64)).max(32);
const Limit = z.number().int().min(1).max(1000).optional();
const Cursor = z.string().max(512).optional();
const Period = z.number().int().min(1).max(7_776_000).optional();
const ws = { workspaceId: Id };
const expected = { expectedVersion: z.number().int().min(0).optional() };

/** Params schema of the workspace methods. */
export const WorkspaceMethodSchemas = {
  'workspace.create': z.strictObject({
    name: Name,
    type: Type.optional(),
    description: Description.optional(),
    visibility: Visibility,
    maxMembers: MaxMembers.optional(),
    settings: Settings.optional(),
    tags: Tags.optional(),
    idempotencyKey: z.string().min(1).max(256).optional(),
  }),
  'workspace.get': z.strictObject(ws),
  'workspace.update': z.strictObject({
    ...ws,
    ...expected,
    name: Name.optional(),
    type: Type.optional(),
    description: Description.optional(),
    visibility: Visibility.optional(),
    maxMembers: MaxMembers.optional(),
    settings: Settings.optional(),
    tags: Tags.optional(),
  }),
  'workspace.delete': z.strictObject({ ...ws, ...expected }),
  'workspace.archive': z.strictObject({ ...ws, ...expected }),
  'workspace.addMember': z.strictObject({ ...ws, principalId: Id, role: Role, permissions: Permissions.optional() }),
  'workspace.removeMember': z.strictObject({ ...ws, principalId: Id }),
  'workspace.setMemberRole': z.strictObject({ ...ws, principalId: Id, role: Role }),
  'workspace.setMemberPermissions': z.strictObject({ ...ws, principalId: Id, permissions: Permissions }),
  'workspace.listMembers': z.strictObject({ ...ws, role: Role.optional(), limit: Limit, cursor: Cursor }),
  'workspace.memberActivity': z.strictObject({ ...ws, principalId: Id.optional(), periodSeconds: Period }),
  'workspace.presence': z.strictObject(ws),
  'workspace.setPresence': z.strictObject({
    ...ws,
    status: z.enum(PresenceStatuses),
    cursor: Bounded(MAX_PRESENCE_PAYLOAD_BYTES).optional(),
    focus: Bounded(MAX_PRESENCE_PAYLOAD_BYTES).optional(),
  }),
  'workspace.broadcast': z.strictObject({ ...ws, message: BoundedRequired(MAX_MESSAGE_BYTES), excludeSelf: z.boolean().optional() }),
  'workspace.sendToMember': z.strictObject({ ...ws, principalId: Id, message: BoundedRequired(MAX_MESSAGE_BYTES) }),
  'workspace.listForAgent': z.strictObject({ agentId: Id.optional(), role: Role.optional(), limit: Limit, cursor: Cursor }),
  'workspace.search': z.strictObject({
    query: z.string().max(256).optional(),
    type: Type.optional(),
    visibility: Visibility.optional(),
    status: z.enum(WorkspaceStatuses).optional(),
    tag: z.string().min(1).max(64).optional(),
    limit: Limit,
    cursor: Cursor,
  }),
  'workspace.recommended': z.strictObject({ agentId: Id.optional(), limit: z.number().int().min(1).max(100).optional() }),
  'workspace.stats': z.strictObject(ws),
  'workspace.collaborationMetrics': z.strictObject({ ...ws, periodSeconds: Period }),
} as const;

/** Result types of the workspace methods. */
export interface WorkspaceMethodResults {
  'workspace.create': Workspace;
  'workspace.get': WorkspaceView;
  'workspace.update': Workspace;
  'workspace.delete': { id: string; deleted: true; version: number };
  'workspace.archive': Workspace;
  'workspace.addMember': WorkspaceMember & { workspaceId: string; version: number };
  'workspace.removeMember': { workspaceId: string; principalId: string; removed: true; version: number };
  'workspace.setMemberRole': WorkspaceMember & { workspaceId: string; version: number };
  'workspace.setMemberPermissions': WorkspaceMember & { workspaceId: string; version: number };
  'workspace.listMembers': Page<WorkspaceMember>;
  'workspace.memberActivity': MemberActivity;
  'workspace.presence': { workspaceId: string; items: MemberPresence[] };
  'workspace.setPresence': MemberPresence & { workspaceId: string };
  'workspace.broadcast': { workspaceId: string; messageId: string; delivered: number };
  'workspace.sendToMember': { workspaceId: string; messageId: string; principalId: string; delivered: number; present: boolean };
  'workspace.listForAgent': Page<Workspace & { role: WorkspaceRole }>;
  'workspace.search': Page<Workspace>;
  'workspace.recommended': { agentId: string; items: WorkspaceRecommendation[]; scoring: string };
  'workspace.stats': WorkspaceStats;
  'workspace.collaborationMetrics': CollaborationMetrics;
}

/** Descriptions of the workspace methods. */
export const WorkspaceMethodDescriptions: Record<keyof typeof WorkspaceMethodSchemas, string> = {
  'workspace.create': 'Create a workspace (admins and agents); the creator becomes its owner. Idempotent with idempotencyKey.',
  'workspace.get': 'One workspace and your role in it (private workspaces exist only for their members and tenant admins).',
  'workspace.update': 'Change name, type, description, visibility, maxMembers, settings or tags (workspace:write); guard with expectedVersion.',
  'workspace.delete': 'Delete a workspace for good (owners and tenant admins); every member loses access at once.',
  'workspace.archive': 'Make a workspace read-only (workspace:write); writes are then refused.',
  'workspace.addMember': 'Add a member with a role and extra permissions (member:manage; only owners add owners); refused beyond maxMembers.',
  'workspace.removeMember': 'Remove a member (member:manage, or the member itself); its open subscriptions and presence end at once.',
  'workspace.setMemberRole': 'Change a member\'s role (member:manage; only owners change owners); takes effect on open connections at once.',
  'workspace.setMemberPermissions': 'Replace a member\'s extra permissions (member:manage).',
  'workspace.listMembers': 'Members of a workspace, by principal id, optionally of one role.',
  'workspace.memberActivity': 'Changes per member and per path over a period, from the workspace\'s and its documents\' events.',
  'workspace.presence': 'Members present now, with status, cursor and focus.',
  'workspace.setPresence': 'Join the workspace\'s presence (members) or update status, cursor and focus; present connections are notified.',
  'workspace.broadcast': 'Send a message to every present member (message:send), optionally not to yourself.',
  'workspace.sendToMember': 'Send a message to one member\'s present connections (message:send).',
  'workspace.listForAgent': 'Workspaces the caller (or another agent) is a member of, that the caller may see.',
  'workspace.search': 'Search visible workspaces by text, type, visibility, status and tag, newest first.',
  'workspace.recommended': 'Workspaces an agent is not in yet, scored by shared members, matching capabilities and recent activity.',
  'workspace.stats': 'Members by role, presence, documents, messages and last activity of a workspace.',
  'workspace.collaborationMetrics': 'Members active, messages and changes per member over a period.',
};
