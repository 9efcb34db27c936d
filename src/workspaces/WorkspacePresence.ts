import type { Connection } from '../server/Connection.js';
import {
  WORKSPACE_MESSAGE,
  WORKSPACE_PRESENCE,
  type MemberPresence,
  type PresenceStatus,
  type WorkspaceRole,
} from '../../protocol/workspaces.js';

/** One connection present in a workspace: through subscriptions to `workspace:<id>`, or because it set its presence. */
interface PresentConn {
  conn: Connection;
  principalId: string;
  /** Subscription ids to `workspace:<id>` that keep it present. */
  subs: Set<string>;
  /** Set by `workspace.setPresence`: present until the connection closes. */
  explicit: boolean;
}

/** One present member (all its connections together). */
interface MemberState {
  principalId: string;
  status: PresenceStatus;
  cursor: unknown;
  focus: unknown;
  joinedAt: number;
  updatedAt: number;
  conns: Set<Connection>;
}

interface Room {
  tenant: string;
  workspaceId: string;
  conns: Map<Connection, PresentConn>;
  members: Map<string, MemberState>;
}

/** A message sent in a workspace, as counted for metrics. */
export interface MessageRecord {
  at: number;
  from: string;
  kind: 'broadcast' | 'direct';
}

interface MessageLog {
  items: MessageRecord[];
  total: number;
}

/** Who receives a workspace message: one principal, or everyone (but one). */
export interface MessageTarget {
  only?: string;
  except?: string;
}

/** A member present on another node, as that node reports it. */
interface RemoteMember {
  status: PresenceStatus;
  cursor: unknown;
  focus: unknown;
  joinedAt: number;
  updatedAt: number;
  connections: number;
}

/** What nodes of a cluster tell each other about presence and messages. */
export type PresenceRelayMessage =
  | { t: 'presence'; tenant: string; workspaceId: string; principalId: string; change: 'joined' | 'updated' | 'left'; member: RemoteMember | null; at: number; notify: boolean }
  /** A message sent through a node: delivered to the matching connections here, and counted. */
  | { t: 'message'; tenant: string; workspaceId: string; frame: string; target: MessageTarget; record: MessageRecord }
  /** A node (re)started: what others remember of its members is gone; each answers with its own. */
  | { t: 'hello' }
  /** These nodes came back (after a pause, say) and should tell everyone their members again. */
  | { t: 'sync'; nodes: string[] };

/**
 * Presence across the nodes of a cluster: each node publishes its members' joins, updates,
 * leaves and the messages sent through it, and hears the others'.
 */
export interface PresenceRelay {
  publish(message: PresenceRelayMessage): void;
  /** Nodes alive now; members reported by any other node are ignored. */
  alive(): readonly string[];
  /** This node's id. */
  self: string;
}

/** Options of {@link WorkspacePresence}. */
export interface WorkspacePresenceOptions {
  now: () => number;
  /** The role of a principal in a workspace, from the service's cache (for presence entries). */
  roleOf: (tenant: string, workspaceId: string, principalId: string) => WorkspaceRole | null;
  /** Messages remembered per workspace for metrics (default 10 000; older ones are forgotten). */
  messageLog?: number;
  /** Set in a cluster: members and messages of other nodes' connections. */
  relay?: PresenceRelay;
}

/**
 * Who is in which workspace right now, on this node, and the messages they exchange. Memory
 * only: presence is not history, and connections do not survive a restart. A connection is
 * present while it has a subscription to `workspace:<id>` or after it set its presence, until
 * it unsubscribes (and did not set presence) or closes; a member is present while any of its
 * connections is. Present connections get `workspace.presence` notifications for every join,
 * update and leave, and the workspace's messages.
 */
export class WorkspacePresence {
  #rooms = new Map<string, Room>();
  #byConn = new Map<Connection, Set<string>>();
  #bySub = new Map<string, { key: string; conn: Connection }>();
  #messages = new Map<string, MessageLog>();
  #opts: WorkspacePresenceOptions;
  #maxLog: number;
  /** Members present through other nodes: room key → node → principal → state. */
  #remote = new Map<string, Map<string, Map<string, RemoteMember>>>();
  readonly since: number;

  constructor(opts: WorkspacePresenceOptions) {
    this.#opts = opts;
    this.#maxLog = opts.messageLog ?? 10_000;
    this.since = opts.now();
  }

  #key(tenant: string, workspaceId: string): string {
    return `${tenant}\n${workspaceId}`;
  }

  #room(tenant: string, workspaceId: string, create: true): Room;
  #room(tenant: string, workspaceId: string, create?: false): Room | undefined;
  #room(tenant: string, workspaceId: string, create = false): Room | undefined {
    const key = this.#key(tenant, workspaceId);
    let room = this.#rooms.get(key);
    if (!room && create) this.#rooms.set(key, (room = { tenant, workspaceId, conns: new Map(), members: new Map() }));
    return room;
  }

  /** Adds a connection (and its member, if new); notifies the room of a join. */
  #enter(room: Room, conn: Connection, principalId: string, causedBy?: string): PresentConn {
    let pc = room.conns.get(conn);
    if (pc) return pc;
    pc = { conn, principalId, subs: new Set(), explicit: false };
    room.conns.set(conn, pc);
    const key = this.#key(room.tenant, room.workspaceId);
    let keys = this.#byConn.get(conn);
    if (!keys) this.#byConn.set(conn, (keys = new Set()));
    keys.add(key);
    let m = room.members.get(principalId);
    if (!m) {
      const at = this.#opts.now();
      m = { principalId, status: 'active', cursor: null, focus: null, joinedAt: at, updatedAt: at, conns: new Set([conn]) };
      room.members.set(principalId, m);
      this.#notifyPresence(room, 'joined', m, causedBy);
    } else {
      m.conns.add(conn);
    }
    return pc;
  }

  /** Removes a connection; when it was its member's last, the member leaves and the room is told. */
  #leave(room: Room, conn: Connection, causedBy?: string): void {
    const pc = room.conns.get(conn);
    if (!pc) return;
    room.conns.delete(conn);
    for (const id of pc.subs) this.#bySub.delete(id);
    const key = this.#key(room.tenant, room.workspaceId);
    const keys = this.#byConn.get(conn);
    keys?.delete(key);
    if (keys?.size === 0) this.#byConn.delete(conn);
    const m = room.members.get(pc.principalId);
    if (m) {
      m.conns.delete(conn);
      if (m.conns.size === 0) {
        room.members.delete(pc.principalId);
        this.#notifyPresence(room, 'left', m, causedBy);
      }
    }
    if (room.conns.size === 0) this.#rooms.delete(key);
  }

  /** A connection subscribed to `workspace:<id>`: it becomes present (the join is sent after the subscribe reply). */
  subscribed(tenant: string, workspaceId: string, conn: Connection, principalId: string, subscriptionId: string, causedBy?: string): void {
    if (conn.closed) return;
    const room = this.#room(tenant, workspaceId, true);
    const pc = this.#enter(room, conn, principalId, causedBy);
    pc.subs.add(subscriptionId);
    this.#bySub.set(subscriptionId, { key: this.#key(tenant, workspaceId), conn });
  }

  /** A subscription ended: the connection leaves unless another subscription or its own presence keeps it. */
  unsubscribed(conn: Connection, subscriptionId: string, causedBy?: string): void {
    const ref = this.#bySub.get(subscriptionId);
    if (!ref || ref.conn !== conn) return;
    this.#bySub.delete(subscriptionId);
    const room = this.#rooms.get(ref.key);
    const pc = room?.conns.get(conn);
    if (!room || !pc) return;
    pc.subs.delete(subscriptionId);
    // Subscriptions the hub dropped on its own (a slow consumer) no longer count either.
    for (const id of pc.subs) {
      if (!conn.subscriptions.has(id)) {
        pc.subs.delete(id);
        this.#bySub.delete(id);
      }
    }
    if (pc.subs.size === 0 && !pc.explicit) this.#leave(room, conn, causedBy);
  }

  /** The connection closed: it leaves every workspace. */
  disconnected(conn: Connection): void {
    const keys = this.#byConn.get(conn);
    if (!keys) return;
    for (const key of [...keys]) {
      const room = this.#rooms.get(key);
      if (room) this.#leave(room, conn);
    }
    this.#byConn.delete(conn);
  }

  /** Sets a member's status, cursor and focus (joining if needed); the room is told. */
  set(
    tenant: string,
    workspaceId: string,
    conn: Connection,
    principalId: string,
    update: { status: PresenceStatus; cursor?: unknown; focus?: unknown },
    causedBy?: string,
  ): MemberPresence {
    const room = this.#room(tenant, workspaceId, true);
    const pc = this.#enter(room, conn, principalId, causedBy);
    pc.explicit = true;
    const m = room.members.get(principalId)!;
    m.status = update.status;
    if (update.cursor !== undefined) m.cursor = update.cursor;
    if (update.focus !== undefined) m.focus = update.focus;
    m.updatedAt = this.#opts.now();
    this.#notifyPresence(room, 'updated', m, causedBy);
    return this.#resource(room, m);
  }

  /**
   * Takes principals out of a workspace (access revoked, or the workspace deleted): every
   * connection whose principal `matches` leaves, and the others are told.
   */
  remove(tenant: string, workspaceId: string, matches: (principalId: string, conn: Connection) => boolean, causedBy?: string): void {
    const room = this.#room(tenant, workspaceId);
    if (!room) return;
    for (const [conn, pc] of [...room.conns]) if (matches(pc.principalId, conn)) this.#leave(room, conn, causedBy);
  }

  /** Forgets a deleted workspace's message counts. */
  forget(tenant: string, workspaceId: string): void {
    this.#messages.delete(this.#key(tenant, workspaceId));
  }

  /** Members present now (on any node of a cluster). */
  list(tenant: string, workspaceId: string): MemberPresence[] {
    const room = this.#room(tenant, workspaceId);
    const byId = new Map<string, MemberPresence>();
    if (room) for (const m of room.members.values()) byId.set(m.principalId, this.#resource(room, m));
    for (const [principalId, r] of this.#remoteMembers(tenant, workspaceId)) {
      const here = byId.get(principalId);
      if (here) here.connections += r.connections;
      else byId.set(principalId, this.#remoteResource(tenant, workspaceId, principalId, r));
    }
    return [...byId.values()].sort((a, b) => (a.principalId < b.principalId ? -1 : 1));
  }

  /** Present members and connections (on any node of a cluster). */
  counts(tenant: string, workspaceId: string): { members: number; connections: number } {
    const room = this.#room(tenant, workspaceId);
    const members = new Set(room?.members.keys() ?? []);
    let connections = room?.conns.size ?? 0;
    for (const [principalId, r] of this.#remoteMembers(tenant, workspaceId)) {
      members.add(principalId);
      connections += r.connections;
    }
    return { members: members.size, connections };
  }

  /** True when the principal has a present connection (on any node of a cluster). */
  isPresent(tenant: string, workspaceId: string, principalId: string): boolean {
    if (this.#room(tenant, workspaceId)?.members.has(principalId)) return true;
    for (const [id] of this.#remoteMembers(tenant, workspaceId)) if (id === principalId) return true;
    return false;
  }

  /** Members other live nodes report for a workspace (a principal on two nodes appears twice). */
  *#remoteMembers(tenant: string, workspaceId: string): Generator<[string, RemoteMember]> {
    const byNode = this.#remote.get(this.#key(tenant, workspaceId));
    if (!byNode || !this.#opts.relay) return;
    const alive = this.#opts.relay.alive();
    for (const [node, members] of byNode) {
      if (!alive.includes(node)) continue;
      yield* members;
    }
  }

  #remoteResource(tenant: string, workspaceId: string, principalId: string, r: RemoteMember): MemberPresence {
    return {
      principalId,
      role: this.#opts.roleOf(tenant, workspaceId, principalId),
      status: r.status,
      cursor: r.cursor,
      focus: r.focus,
      connections: r.connections,
      joinedAt: new Date(r.joinedAt).toISOString(),
      updatedAt: new Date(r.updatedAt).toISOString(),
    };
  }

  /**
   * Takes in what another node reports: its members' presence (passed on to the connections
   * present here) and the messages sent through it (delivered to the matching connections here).
   * A node that joins says hello, and every node answers with its members (without notifying).
   */
  receive(node: string, m: PresenceRelayMessage): void {
    if (m.t === 'hello') {
      // What the node had before it started again is gone with that run.
      this.#dropNode(node);
      this.#republish();
      return;
    }
    if (m.t === 'sync') {
      if (m.nodes.includes(this.#opts.relay?.self ?? '')) this.#republish();
      return;
    }
    const key = this.#key(m.tenant, m.workspaceId);
    if (m.t === 'message') {
      this.#log(key, m.record);
      const room = this.#rooms.get(key);
      if (!room) return;
      for (const pc of room.conns.values()) if (targets(m.target, pc.principalId) && !pc.conn.closed) pc.conn.notifyFrame(m.frame);
      return;
    }
    const was = this.isPresent(m.tenant, m.workspaceId, m.principalId);
    let byNode = this.#remote.get(key);
    if (!byNode) this.#remote.set(key, (byNode = new Map()));
    let members = byNode.get(node);
    if (!members) byNode.set(node, (members = new Map()));
    if (m.member) members.set(m.principalId, m.member);
    else members.delete(m.principalId);
    if (members.size === 0) byNode.delete(node);
    if (byNode.size === 0) this.#remote.delete(key);
    // A member told again without notice (a node answering a hello or back from a pause) is
    // announced only if it was not known to be present.
    const change = m.notify ? m.change : !was && m.member ? 'joined' : null;
    if (change) this.#notifyRemote(m.tenant, m.workspaceId, m.principalId, change, m.member, m.at);
  }

  /**
   * Other nodes are gone (their heartbeat expired): their members are forgotten, and those not
   * present through another node leave, as they would have had the node said goodbye.
   */
  nodesGone(nodes: readonly string[]): void {
    for (const node of nodes) this.#dropNode(node);
  }

  #dropNode(node: string): void {
    for (const [key, byNode] of [...this.#remote]) {
      const members = byNode.get(node);
      if (!members) continue;
      byNode.delete(node);
      if (byNode.size === 0) this.#remote.delete(key);
      const [tenant, workspaceId] = key.split('\n') as [string, string];
      for (const principalId of members.keys()) {
        if (!this.isPresent(tenant, workspaceId, principalId)) this.#notifyRemote(tenant, workspaceId, principalId, 'left', null, this.#opts.now());
      }
    }
  }

  /** Tells the other nodes every member present here, without notice. */
  #republish(): void {
    for (const room of this.#rooms.values()) for (const member of room.members.values()) this.#relayPresence(room, 'updated', member, false);
  }

  /** Notifies this node's present connections of a change to a member present on another node. */
  #notifyRemote(tenant: string, workspaceId: string, principalId: string, change: 'joined' | 'updated' | 'left', member: RemoteMember | null, at: number): void {
    const room = this.#rooms.get(this.#key(tenant, workspaceId));
    if (!room) return;
    const frame = JSON.stringify({
      jsonrpc: '2.0',
      method: WORKSPACE_PRESENCE,
      params: {
        workspaceId,
        change,
        principalId,
        presence: member ? this.#remoteResource(tenant, workspaceId, principalId, member) : null,
        at: new Date(at).toISOString(),
      },
    });
    for (const pc of room.conns.values()) if (!pc.conn.closed) pc.conn.notifyFrame(frame);
  }

  #relayPresence(room: Room, change: 'joined' | 'updated' | 'left', m: MemberState, notify: boolean): void {
    this.#opts.relay?.publish({
      t: 'presence',
      tenant: room.tenant,
      workspaceId: room.workspaceId,
      principalId: m.principalId,
      change,
      member:
        change === 'left'
          ? null
          : { status: m.status, cursor: m.cursor, focus: m.focus, joinedAt: m.joinedAt, updatedAt: m.updatedAt, connections: m.conns.size },
      at: this.#opts.now(),
      notify,
    });
  }

  /**
   * Sends a message to the present connections whose principal `to` accepts, counts it, and
   * returns to how many connections it went.
   */
  message(
    tenant: string,
    workspaceId: string,
    msg: { messageId: string; from: string; kind: 'broadcast' | 'direct'; to?: string; message: unknown },
    target: MessageTarget,
    causedBy?: string,
  ): number {
    const at = this.#opts.now();
    const key = this.#key(tenant, workspaceId);
    const record: MessageRecord = { at, from: msg.from, kind: msg.kind };
    this.#log(key, record);
    const frame = JSON.stringify({
      jsonrpc: '2.0',
      method: WORKSPACE_MESSAGE,
      params: { workspaceId, ...msg, at: new Date(at).toISOString() },
    });
    let n = 0;
    // Connections on other nodes get it through them; they are counted from what those nodes
    // report. Every node hears of it, so each counts the workspace's messages of all nodes.
    if (this.#opts.relay) {
      for (const [principalId, r] of this.#remoteMembers(tenant, workspaceId)) if (targets(target, principalId)) n += r.connections;
      this.#opts.relay.publish({ t: 'message', tenant, workspaceId, frame, target, record });
    }
    const room = this.#room(tenant, workspaceId);
    if (!room) return n;
    for (const pc of room.conns.values()) {
      if (!targets(target, pc.principalId) || pc.conn.closed) continue;
      pc.conn.notifyFrame(frame, causedBy);
      n++;
    }
    return n;
  }

  #log(key: string, record: MessageRecord): void {
    let log = this.#messages.get(key);
    if (!log) this.#messages.set(key, (log = { items: [], total: 0 }));
    log.items.push(record);
    log.total++;
    if (log.items.length > this.#maxLog) log.items.splice(0, log.items.length - this.#maxLog);
  }

  /**
   * Messages of a workspace since `from` (those still remembered), and the count since this node
   * started; in a cluster, those sent through any node.
   */
  messages(tenant: string, workspaceId: string, from = 0): { items: MessageRecord[]; total: number } {
    const log = this.#messages.get(this.#key(tenant, workspaceId));
    if (!log) return { items: [], total: 0 };
    return { items: log.items.filter((m) => m.at >= from), total: log.total };
  }

  #resource(room: Room, m: MemberState): MemberPresence {
    return {
      principalId: m.principalId,
      role: this.#opts.roleOf(room.tenant, room.workspaceId, m.principalId),
      status: m.status,
      cursor: m.cursor,
      focus: m.focus,
      connections: m.conns.size,
      joinedAt: new Date(m.joinedAt).toISOString(),
      updatedAt: new Date(m.updatedAt).toISOString(),
    };
  }

  #notifyPresence(room: Room, change: 'joined' | 'updated' | 'left', m: MemberState, causedBy?: string): void {
    this.#relayPresence(room, change, m, true);
    const presence = change === 'left' ? null : this.#resource(room, m);
    const frame = JSON.stringify({
      jsonrpc: '2.0',
      method: WORKSPACE_PRESENCE,
      params: { workspaceId: room.workspaceId, change, principalId: m.principalId, presence, at: new Date(this.#opts.now()).toISOString() },
    });
    for (const pc of room.conns.values()) if (!pc.conn.closed) pc.conn.notifyFrame(frame, causedBy);
  }
}

function targets(target: MessageTarget, principalId: string): boolean {
  if (target.only !== undefined) return principalId === target.only;
  return principalId !== target.except;
}
