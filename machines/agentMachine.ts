import { assign, setup } from 'xstate';
import type { Agent, AgentStatus } from '../protocol/model.js';
import { iso, type Effect, type Stamp } from './effects.js';

/** The agent record an agent actor holds. */
export type AgentData = Omit<Agent, 'status' | 'version'> & {
  /** The status the agent asked for; `offline` is reported whenever it has no connection. */
  requestedStatus: Exclude<AgentStatus, 'offline'>;
};

/** Registration fields (validated and defaulted by the caller). */
export interface AgentRegistration {
  id: string;
  tenantId: string;
  name?: string;
  kind?: string;
  capabilities?: string[];
  maxConcurrentTasks?: number;
  costPerTask?: number;
  metadata?: Record<string, unknown>;
  /** Connections the agent has open at registration time (the gateway knows, the stream does not). */
  connections?: number;
}

/** Every event an agent machine accepts. */
export type AgentEvent = Stamp &
  (
    | ({ type: 'agent.register' } & AgentRegistration)
    | { type: 'agent.heartbeat' }
    | { type: 'agent.setStatus'; status: AgentStatus }
    | { type: 'agent.connected' }
    | { type: 'agent.disconnected' }
    | { type: 'agent.connectionsReset' }
    | { type: 'agent.setCapabilities'; capabilities: string[] }
    | { type: 'agent.deregister'; reason?: string }
  );

type E<T extends AgentEvent['type']> = Extract<AgentEvent, { type: T }>;

const emptyAgent: AgentData = {
  id: '',
  tenantId: '',
  name: '',
  kind: 'agent',
  capabilities: [],
  maxConcurrentTasks: 1,
  costPerTask: 0,
  metadata: {},
  requestedStatus: 'online',
  connections: 0,
  lastSeenAt: null,
  registeredAt: '',
};

/** The status an agent reports: `offline` without a connection, else what it asked for. */
export function agentStatus(agent: AgentData): AgentStatus {
  return agent.connections > 0 ? agent.requestedStatus : 'offline';
}

/**
 * An agent: registered once (re-registration updates its profile), online while it has a
 * connection, and `busy` or `draining` when it says so; deregistered agents get no work. Connections are counted from the
 * gateway's connect and disconnect events; after a restart the server resets the counts.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(agentMachine);
 * const [next] = transition(agentMachine, s, { type: 'agent.register', id: 'w1', tenantId: 'acme', at: 0, by: 'w1' });
 * ```
 */
export const agentMachine = setup({
  types: {
    context: {} as { agent: AgentData },
    events: {} as AgentEvent,
    emitted: {} as Effect,
  },
  actions: {
    register: assign(({ context, event }) => {
      const e = event as E<'agent.register'>;
      const prev = context.agent.id ? context.agent : { ...emptyAgent, registeredAt: iso(e.at) };
      return {
        agent: {
          ...prev,
          id: e.id,
          tenantId: e.tenantId,
          name: e.name ?? (prev.name || e.id),
          kind: e.kind ?? prev.kind,
          capabilities: e.capabilities ?? prev.capabilities,
          maxConcurrentTasks: e.maxConcurrentTasks ?? prev.maxConcurrentTasks,
          costPerTask: e.costPerTask ?? prev.costPerTask,
          metadata: e.metadata ?? prev.metadata,
          connections: e.connections ?? prev.connections,
          lastSeenAt: iso(e.at),
        },
      };
    }),
    seen: assign(({ context, event }) => ({ agent: { ...context.agent, lastSeenAt: iso(event.at) } })),
    setStatus: assign(({ context, event }) => {
      const e = event as E<'agent.setStatus'>;
      // Asking to be offline while connected is honoured by dropping to zero counted connections.
      if (e.status === 'offline') return { agent: { ...context.agent, connections: 0, lastSeenAt: iso(e.at) } };
      return { agent: { ...context.agent, requestedStatus: e.status, lastSeenAt: iso(e.at) } };
    }),
    connect: assign(({ context, event }) => ({
      agent: { ...context.agent, connections: context.agent.connections + 1, lastSeenAt: iso(event.at) },
    })),
    disconnect: assign(({ context, event }) => ({
      agent: { ...context.agent, connections: Math.max(0, context.agent.connections - 1), lastSeenAt: iso(event.at) },
    })),
    resetConnections: assign(({ context }) => ({ agent: { ...context.agent, connections: 0 } })),
    setCapabilities: assign(({ context, event }) => ({
      agent: { ...context.agent, capabilities: (event as E<'agent.setCapabilities'>).capabilities, lastSeenAt: iso(event.at) },
    })),
  },
}).createMachine({
  id: 'agent',
  initial: 'unregistered',
  context: { agent: emptyAgent },
  states: {
    unregistered: {
      on: { 'agent.register': { target: 'registered', actions: 'register' } },
    },
    registered: {
      on: {
        'agent.register': { actions: 'register' },
        'agent.heartbeat': { actions: 'seen' },
        'agent.setStatus': { actions: 'setStatus' },
        'agent.connected': { actions: 'connect' },
        'agent.disconnected': { actions: 'disconnect' },
        'agent.connectionsReset': { actions: 'resetConnections' },
        'agent.setCapabilities': { actions: 'setCapabilities' },
        'agent.deregister': 'deregistered',
      },
    },
    /** Gone from the directory; registering again brings it back with its history. */
    deregistered: {
      on: {
        'agent.register': { target: 'registered', actions: 'register' },
        'agent.connected': { actions: 'connect' },
        'agent.disconnected': { actions: 'disconnect' },
        'agent.connectionsReset': { actions: 'resetConnections' },
      },
    },
  },
});
