import { assign, emit, setup } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { Lease, Ownership } from '../../actors/Ownership.js';
import type { Effect, Stamp } from '../../machines/effects.js';
import type { TaskCreateFields } from '../../machines/taskMachine.js';

/** The address of a task of tenant `acme`. */
export function taskAt(id: string, tenant = 'acme'): ActorAddress {
  return { tenant, kind: 'task', id };
}

/** A `task.create` event body (the host stamps `at` and `by`). */
export function createTask(id: string, fields: Partial<Omit<TaskCreateFields, 'id'>> = {}) {
  return { type: 'task.create', id, tenantId: 'acme', taskType: 'review', title: `Task ${id}`, ...fields } as const;
}

/** Resolves with what `promise` rejects with; fails the test if it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection, but the promise resolved');
}

/**
 * Ownership with a fixed fencing epoch that records what it was asked; lets a test play two
 * nodes, one of them stale.
 */
export class FixedEpochOwnership implements Ownership {
  readonly acquired: string[] = [];
  readonly released: string[] = [];

  constructor(readonly epoch: number) {}

  async acquire(stream: string): Promise<Lease> {
    this.acquired.push(stream);
    return { stream, epoch: this.epoch };
  }

  async release(stream: string): Promise<void> {
    this.released.push(stream);
  }

  async close(): Promise<void> {}
}

type Ping = Stamp & { type: 'ping.send'; to: string };
type Inc = Stamp & { type: 'counter.inc'; from?: string };

/** A test machine that sends `counter.inc` to the counter named in each `ping.send`, through the outbox. */
export const pingerMachine = setup({
  types: { context: {} as { sent: number }, events: {} as Ping, emitted: {} as Effect },
}).createMachine({
  id: 'pinger',
  context: { sent: 0 },
  on: {
    'ping.send': {
      actions: [
        assign({ sent: ({ context }) => context.sent + 1 }),
        emit(({ event }) => ({ type: 'fx.send' as const, kind: 'counter', id: event.to, event: { type: 'counter.inc', from: 'pinger' } })),
      ],
    },
  },
});

/** A test machine that counts the `counter.inc` events it receives. */
export const counterMachine = setup({
  types: { context: {} as { count: number }, events: {} as Inc },
}).createMachine({
  id: 'counter',
  context: { count: 0 },
  on: { 'counter.inc': { actions: assign({ count: ({ context }) => context.count + 1 }) } },
});

function simpleKind<M extends typeof pingerMachine | typeof counterMachine>(kind: string, machine: M): ActorKind<M> {
  return { kind, machine, status: () => 'active', exists: () => true, view: () => null, topics: (e) => [`${kind}:${e.actorId}`] };
}

export const pingerKind = simpleKind('pinger', pingerMachine);
export const counterKind = simpleKind('counter', counterMachine);
