import { randomUUID } from 'node:crypto';
import type { Store, StoredEvent, ViewRecord } from '../../actors/Store.js';
import { SUBSCRIPTION_EVENT, SUBSCRIPTION_OVERFLOW } from '../../protocol/jsonrpc.js';
import type { ActorEvent, Principal } from '../../protocol/model.js';
import type { Connection } from './Connection.js';

/** Options of {@link SubscriptionHub}. */
export interface SubscriptionHubOptions {
  store: Store;
  /** A subscriber whose socket holds more than this many unsent bytes is dropped (default 8 MiB). */
  maxBufferedBytes?: number;
  /** Events read from the store per page while catching up (default 500). */
  replayPage?: number;
  /** Called when a subscription is dropped for being too slow. */
  onOverflow?: () => void;
  /** Rewrites events per subscriber (field permissions); see {@link SubscriptionHub.setRedactor}. */
  redactor?: EventRedactor;
  /**
   * Deliver in position order by reading each topic back from the store when it has news,
   * instead of sending events in the order they are published. A cluster needs it: events of
   * one tenant are committed on several nodes and reach each node in no particular order.
   */
  ordered?: boolean;
}

/**
 * The JSON of one event as a subscriber's principal may see it; undefined when it may see the
 * event as it is (then the encoding shared by all such subscribers is sent).
 */
export type EventView = (principal: Principal | null) => string | undefined;

/**
 * A per-subscriber rewrite of events (field permissions). `prepare` is called at most once per
 * published event, and only when it has subscribers; returning null keeps the fast path: the
 * event is encoded once for every subscriber.
 */
export interface EventRedactor {
  /** For a live event, with the read model row of its actor after it (null or undefined when there is none). */
  prepare(e: StoredEvent, view: ViewRecord | null | undefined): EventView | null;
  /** For events read back from the store while a subscription catches up. */
  prepareStored(tenant: string, events: StoredEvent[]): Promise<(e: StoredEvent) => EventView | null>;
}

interface Subscription {
  id: string;
  conn: Connection;
  key: string;
  tenant: string;
  topic: string;
  /** Ordered mode: news came while this subscription was still catching up. */
  dirty: boolean;
  /** Highest position delivered. */
  last: number;
  /** Live events that arrived while catching up from the store, with their redaction. */
  backlog: { e: StoredEvent; view: EventView | null }[] | null;
  /** While subscribing: the subscribe request, whose reply must precede the catch-up events. */
  heldBy: string | undefined;
}

/** The wire form of a stored event. */
export function toActorEvent(e: StoredEvent): ActorEvent {
  return {
    id: e.id,
    position: e.position,
    kind: e.kind,
    actorId: e.actorId,
    version: e.version,
    type: e.type,
    at: new Date(e.meta.at).toISOString(),
    principal: e.meta.principal,
    status: e.meta.status ?? null,
    data: stripStamp(e.data),
    correlationId: e.meta.correlationId ?? null,
  };
}

function stripStamp(data: Record<string, unknown>): Record<string, unknown> {
  const { type: _t, at: _a, by: _b, ...rest } = data;
  return rest;
}

/**
 * Fans committed events out to subscribers by topic. A subscription that gives `fromPosition`
 * first catches up from the store, while live events queue behind; then it switches to live
 * delivery, skipping what it already sent, so no event is missed or repeated.
 */
export class SubscriptionHub {
  #store: Store;
  #byKey = new Map<string, Set<Subscription>>();
  #byId = new Map<string, Subscription>();
  #maxBuffered: number;
  #page: number;
  #opts: SubscriptionHubOptions;
  #redactor: EventRedactor | null;
  /** Ordered mode: topics being read back now, and those with news since their read began. */
  #pulling = new Set<string>();
  #dirty = new Set<string>();

  constructor(opts: SubscriptionHubOptions) {
    this.#opts = opts;
    this.#redactor = opts.redactor ?? null;
    this.#store = opts.store;
    this.#maxBuffered = opts.maxBufferedBytes ?? 8 * 1024 * 1024;
    this.#page = opts.replayPage ?? 500;
  }

  /** Installs the per-subscriber rewrite of events (one at a time; null removes it). */
  setRedactor(redactor: EventRedactor | null): void {
    this.#redactor = redactor;
  }

  /** How many subscriptions are open. */
  get size(): number {
    return this.#byId.size;
  }

  /**
   * Subscribes a connection to a tenant's topic. Resolves with the subscription id and the
   * position it starts after, once any catch-up has been sent.
   */
  async subscribe(
    conn: Connection,
    tenant: string,
    topic: string,
    fromPosition?: number,
    correlationId?: string,
  ): Promise<{ subscriptionId: string; position: number }> {
    const key = `${tenant}\n${topic}`;
    const sub: Subscription = { id: randomUUID(), conn, key, tenant, topic, dirty: false, last: 0, backlog: [], heldBy: correlationId };
    let set = this.#byKey.get(key);
    if (!set) this.#byKey.set(key, (set = new Set()));
    set.add(sub);
    this.#byId.set(sub.id, sub);
    conn.subscriptions.add(sub.id);
    try {
      if (fromPosition === undefined) {
        sub.last = await this.#store.headPosition(tenant);
      } else {
        sub.last = fromPosition;
        await this.#catchUp([sub]);
      }
      // News that came while catching up is read now, still ahead of the subscribe reply.
      while (this.#opts.ordered && sub.dirty && this.#byId.has(sub.id)) {
        sub.dirty = false;
        await this.#catchUp([sub]);
      }
    } catch (e) {
      this.unsubscribe(sub.id);
      throw e;
    }
    const backlog = sub.backlog ?? [];
    sub.backlog = null;
    if (sub.dirty) void this.#pull(key);
    for (const { e, view } of backlog) if (e.position > sub.last) this.#send(sub, e, view?.(sub.conn.principal));
    const position = sub.last;
    sub.heldBy = undefined;
    return { subscriptionId: sub.id, position };
  }

  /**
   * Reads every subscription's topic again from its position (ordered mode): news may have been
   * lost on the way (the cluster's Redis restarted), but never from the store.
   */
  refresh(): void {
    if (!this.#opts.ordered) return;
    for (const key of this.#byKey.keys()) void this.#pull(key);
  }

  /** Removes a subscription; false if it did not exist. */
  unsubscribe(id: string, conn?: Connection): boolean {
    const sub = this.#byId.get(id);
    if (!sub || (conn && sub.conn !== conn)) return false;
    this.#byId.delete(id);
    sub.conn.subscriptions.delete(id);
    const set = this.#byKey.get(sub.key);
    set?.delete(sub);
    if (set?.size === 0) this.#byKey.delete(sub.key);
    return true;
  }

  /** Removes every subscription of a connection. */
  drop(conn: Connection): void {
    for (const id of [...conn.subscriptions]) this.unsubscribe(id);
  }

  /**
   * Ends at once the subscriptions of a tenant whose topic and principal match (access was
   * revoked), and returns them so the caller can tell their connections. Scans the tenant's
   * topics: revocations are rare.
   */
  endSubscriptions(
    tenant: string,
    topic: (topic: string) => boolean,
    principal: (p: Principal | null) => boolean,
  ): { subscriptionId: string; topic: string; conn: Connection }[] {
    const prefix = `${tenant}\n`;
    const ended: { subscriptionId: string; topic: string; conn: Connection }[] = [];
    for (const [key, set] of [...this.#byKey]) {
      if (!key.startsWith(prefix) || !topic(key.slice(prefix.length))) continue;
      for (const sub of [...set]) {
        if (!principal(sub.conn.principal)) continue;
        this.unsubscribe(sub.id);
        ended.push({ subscriptionId: sub.id, topic: sub.topic, conn: sub.conn });
      }
    }
    return ended;
  }

  /**
   * Delivers committed events (wired to the actor host's commit listener), with the read model
   * row of their actor after them, which the redactor may need.
   */
  publish(events: StoredEvent[], topics: string[][], view?: ViewRecord | null): void {
    if (this.#opts.ordered) return this.#news(events, topics);
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      // Encoded once however many subscribers receive it, unless one may see less of it.
      let json: string | undefined;
      let redacted: EventView | null | undefined;
      for (const topic of topics[i] ?? []) {
        const set = this.#byKey.get(`${e.tenant}\n${topic}`);
        if (!set) continue;
        if (redacted === undefined) redacted = this.#redactor ? this.#redactor.prepare(e, view) : null;
        for (const sub of set) {
          if (sub.backlog) sub.backlog.push({ e, view: redacted });
          else if (e.position > sub.last) this.#send(sub, e, redacted?.(sub.conn.principal) ?? (json ??= JSON.stringify(toActorEvent(e))));
        }
      }
    }
  }

  /** Ordered mode: marks the events' topics as having news, and reads it. */
  #news(events: StoredEvent[], topics: string[][]): void {
    const keys = new Set<string>();
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      for (const topic of topics[i] ?? []) {
        const key = `${e.tenant}\n${topic}`;
        const set = this.#byKey.get(key);
        if (!set) continue;
        for (const sub of set) if (sub.backlog) sub.dirty = true;
        keys.add(key);
      }
    }
    for (const key of keys) void this.#pull(key);
  }

  /**
   * Reads a topic's news from the store once for all its subscriptions (from the lowest position
   * any of them has), and sends each what it has not had; news that arrives meanwhile is read after.
   */
  async #pull(key: string): Promise<void> {
    if (this.#pulling.has(key)) {
      this.#dirty.add(key);
      return;
    }
    this.#pulling.add(key);
    try {
      do {
        this.#dirty.delete(key);
        await this.#catchUpTopic(key);
      } while (this.#dirty.has(key));
    } catch {
      // The store is unavailable: look again shortly rather than lose the news.
      setTimeout(() => void this.#pull(key), 500).unref();
    } finally {
      this.#pulling.delete(key);
    }
  }

  async #catchUpTopic(key: string): Promise<void> {
    // Subscriptions still catching up on their own are left to it.
    const subs = [...(this.#byKey.get(key) ?? [])].filter((sub) => !sub.backlog);
    if (subs.length > 0) await this.#catchUp(subs);
  }

  /**
   * Sends subscriptions of one topic the stored events after their positions, reading the store
   * once for all of them (from the lowest position), page by page.
   */
  async #catchUp(subs: Subscription[]): Promise<void> {
    const { tenant, topic } = subs[0]!;
    let from = Math.min(...subs.map((sub) => sub.last));
    for (;;) {
      const page = await this.#store.readTopic(tenant, topic, from, this.#page);
      const views = this.#redactor ? await this.#redactor.prepareStored(tenant, page) : null;
      for (const e of page) {
        let json: string | undefined;
        const view = views?.(e);
        for (const sub of subs) {
          if (e.position > sub.last) this.#send(sub, e, view?.(sub.conn.principal) ?? (json ??= JSON.stringify(toActorEvent(e))));
        }
      }
      if (page.length < this.#page || subs.every((sub) => !this.#byId.has(sub.id))) return;
      from = page[page.length - 1]!.position;
    }
  }

  #send(sub: Subscription, e: StoredEvent, eventJson = JSON.stringify(toActorEvent(e))): void {
    // A subscription dropped for overflow (possibly half way through a catch-up page) sends nothing more.
    if (sub.conn.closed || !this.#byId.has(sub.id)) return;
    if (sub.conn.bufferedAmount > this.#maxBuffered) {
      this.unsubscribe(sub.id);
      this.#opts.onOverflow?.();
      sub.conn.notify({
        jsonrpc: '2.0',
        method: SUBSCRIPTION_OVERFLOW,
        params: {
          subscriptionId: sub.id,
          topic: sub.topic,
          lastPosition: sub.last,
          message: 'The connection could not keep up; subscribe again with fromPosition = lastPosition to resume.',
        },
      }, sub.heldBy);
      return;
    }
    sub.last = e.position;
    // The same shape as a notification object, with the event's JSON spliced in.
    const frame =
      `{"jsonrpc":"2.0","method":"${SUBSCRIPTION_EVENT}","params":{"subscriptionId":${JSON.stringify(sub.id)},` +
      `"topic":${JSON.stringify(sub.topic)},"position":${e.position},"event":${eventJson}}}`;
    sub.conn.notifyFrame(frame, sub.heldBy ?? e.meta.correlationId);
  }
}
