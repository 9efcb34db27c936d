/**
 * Polls `check` until it returns a truthy value (or stops throwing), then resolves with it.
 * Rejects with the last error after `timeoutMs`. Tests wait for conditions, never for time.
 */
export async function waitFor<T>(check: () => T | Promise<T>, { timeoutMs = 5000, intervalMs = 10 } = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = new Error('condition never held');
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
      last = new Error(`condition still false after ${timeoutMs} ms`);
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
