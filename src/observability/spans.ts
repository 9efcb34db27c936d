import { ProxyTracerProvider, SpanStatusCode, trace, type Tracer } from '@opentelemetry/api';
import { STORE_POLLS, STORE_READS, type Store } from '../../actors/Store.js';

/**
 * Store methods that read, each traced as a `store.<method>` span by {@link traceStoreReads}.
 * Commits have their own `store.commit` span in the actor host, and actor activations a
 * `store.read` span around their snapshot and event reads. Polls that run on their own schedule
 * (due timers, the outbox) are left out: they would make a root span every few milliseconds.
 */
export const TRACED_STORE_READS = STORE_READS.filter((m) => !STORE_POLLS.includes(m));

/**
 * Whether an OpenTelemetry tracer provider is registered now (`trace.setGlobalTracerProvider`,
 * which SDKs call when they start). Without one every span is a no-op.
 */
export function tracingRegistered(): boolean {
  const provider = trace.getTracerProvider();
  if (!(provider instanceof ProxyTracerProvider)) return true;
  // Without a delegate the proxy answers with the API's shared no-op provider.
  return provider.getDelegate() !== new ProxyTracerProvider().getDelegate();
}

/** Attributes of a read: which tenant, kind and stream it names, when its arguments say. */
function attributesOf(method: string, args: unknown[]): Record<string, string | number> {
  const [a, b] = args;
  switch (method) {
    case 'readStream':
    case 'streamInfo':
    case 'loadSnapshot':
      return { method, stream: String(a) };
    case 'getView':
    case 'getViews':
    case 'queryViews':
    case 'statsViews':
      return { method, tenant: String(a), kind: String(b) };
    case 'readTopic':
    case 'queryEvents':
    case 'getIdempotency':
      return { method, tenant: String(a) };
    default:
      return { method };
  }
}

/**
 * The store with a span around each read ({@link TRACED_STORE_READS}), named `store.<method>`
 * with attributes `method` and, where the call names them, `tenant`, `kind` or `stream`; a failed
 * read records its error. When no tracer provider is registered (see {@link tracingRegistered})
 * it returns `store` itself, so reads cost nothing extra: register the SDK before the server is
 * created, as the README's tracing example does.
 *
 * @example
 * ```ts
 * const store = traceStoreReads(new SqliteStore({ path }));
 * await store.queryViews('acme', 'task', { status: ['pending'] }); // inside a `store.queryViews` span
 * ```
 */
export function traceStoreReads<S extends Store>(store: S, tracer: Tracer = trace.getTracer('troupe')): S {
  if (!tracingRegistered()) return store;
  const traced = new Map<PropertyKey, unknown>();
  for (const method of TRACED_STORE_READS) {
    const read = (store[method] as (...args: unknown[]) => Promise<unknown>).bind(store);
    traced.set(method, (...args: unknown[]) =>
      tracer.startActiveSpan(`store.${method}`, { attributes: attributesOf(method, args) }, async (span) => {
        try {
          return await read(...args);
        } catch (e) {
          span.recordException(e as Error);
          span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
          throw e;
        } finally {
          span.end();
        }
      }),
    );
  }
  return new Proxy(store, {
    get: (target, prop) => {
      if (traced.has(prop)) return traced.get(prop);
      // The target as receiver: getters of classes with private fields fail on the proxy.
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}
