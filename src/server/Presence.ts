/**
 * Live connections per principal, on this node. Agent status (online/offline) follows it; it is
 * memory only, because connections do not survive a restart.
 */
export class Presence {
  #counts = new Map<string, number>();

  #key(tenant: string, principal: string): string {
    return `${tenant}/${principal}`;
  }

  /** Counts one more connection; returns the new count. */
  add(tenant: string, principal: string): number {
    const k = this.#key(tenant, principal);
    const n = (this.#counts.get(k) ?? 0) + 1;
    this.#counts.set(k, n);
    return n;
  }

  /** Counts one less connection; returns the new count. */
  remove(tenant: string, principal: string): number {
    const k = this.#key(tenant, principal);
    const n = Math.max(0, (this.#counts.get(k) ?? 0) - 1);
    if (n === 0) this.#counts.delete(k);
    else this.#counts.set(k, n);
    return n;
  }

  /** Open connections of a principal. */
  count(tenant: string, principal: string): number {
    return this.#counts.get(this.#key(tenant, principal)) ?? 0;
  }
}
