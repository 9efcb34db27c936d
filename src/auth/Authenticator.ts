import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { jwtVerify } from 'jose';
import type { ApiKeyRecord, Store } from '../../actors/Store.js';
import { ProtocolError } from '../../protocol/errors.js';
import { Roles, type Principal, type Role } from '../../protocol/model.js';
import { Id, TenantId } from '../../protocol/methods.js';

/** API keys look like `trp_<keyId>_<secret>`; only SHA-256 of the secret is stored. */
const KEY_PATTERN = /^trp_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{32,64})$/;

/** Options of {@link Authenticator}. */
export interface AuthenticatorOptions {
  store: Store;
  /** HS256 secret for JWT bearer tokens; JWTs are refused when unset. */
  jwtSecret?: string;
  /** Expected `iss` of JWTs, if any. */
  jwtIssuer?: string;
  /** Expected `aud` of JWTs, if any. */
  jwtAudience?: string;
}

/** What a connection was authenticated with, so it can be checked again later. */
export type Credential = { kind: 'apiKey'; keyId: string } | { kind: 'jwt'; expiresAt: number };

/** A freshly created key: `key` is shown once and never stored. */
export interface CreatedKey {
  key: string;
  record: ApiKeyRecord;
}

const DUMMY_HASH = '0'.repeat(64);

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function alnum(n: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = randomBytes(n);
  let s = '';
  for (const b of bytes) s += alphabet[b % alphabet.length];
  return s;
}

/** Checks and normalises a role list. */
export function parseRoles(roles: unknown): Role[] {
  if (!Array.isArray(roles) || roles.length === 0 || !roles.every((r) => (Roles as readonly string[]).includes(r))) {
    throw new ProtocolError('UNAUTHENTICATED', `The credential's roles must be a non-empty list of ${Roles.join(', ')}.`);
  }
  return [...new Set(roles as Role[])];
}

/**
 * Turns bearer tokens into principals: API keys (looked up by id, secret compared by hash in
 * constant time) or JWTs signed with the configured secret (`tid` or `tenant`, `sub`, `roles`).
 */
export class Authenticator {
  #store: Store;
  #secret: Uint8Array | null;
  #opts: AuthenticatorOptions;

  constructor(opts: AuthenticatorOptions) {
    this.#opts = opts;
    this.#store = opts.store;
    this.#secret = opts.jwtSecret ? new TextEncoder().encode(opts.jwtSecret) : null;
  }

  /** Creates a tenant if missing, then an API key for a principal of it. */
  async createKey(input: { tenant: string; principal: string; roles: Role[]; label?: string; now?: number }): Promise<CreatedKey> {
    const tenant = TenantId.parse(input.tenant);
    const principal = Id.parse(input.principal);
    const roles = parseRoles(input.roles);
    const now = input.now ?? Date.now();
    if (!(await this.#store.getTenant(tenant))) await this.#store.putTenant({ id: tenant, name: tenant, createdAt: now });
    const id = alnum(12);
    const secret = alnum(40);
    const record: ApiKeyRecord = {
      id,
      tenant,
      principal,
      roles,
      secretHash: sha256(secret),
      label: input.label ?? '',
      createdAt: now,
      revokedAt: null,
    };
    await this.#store.putApiKey(record);
    return { key: `trp_${id}_${secret}`, record };
  }

  /** Resolves a token to its principal, or throws UNAUTHENTICATED saying why. */
  async authenticate(token: string): Promise<Principal> {
    return (await this.verify(token)).principal;
  }

  /** Resolves a token to its principal and the credential to re-check later. */
  async verify(token: string): Promise<{ principal: Principal; credential: Credential }> {
    const m = KEY_PATTERN.exec(token);
    if (m) return { principal: await this.#apiKey(m[1]!, m[2]!), credential: { kind: 'apiKey', keyId: m[1]! } };
    if (token.split('.').length === 3) return this.#jwt(token);
    throw new ProtocolError('UNAUTHENTICATED', 'The token is neither an API key (trp_...) nor a JWT.');
  }

  /** Why a credential accepted earlier is no longer valid now, or null if it still is. */
  async revoked(credential: Credential, now: number): Promise<string | null> {
    if (credential.kind === 'jwt') return credential.expiresAt <= now ? 'The JWT expired.' : null;
    const rec = await this.#store.getApiKey(credential.keyId);
    return !rec || rec.revokedAt !== null ? 'The API key was revoked.' : null;
  }

  async #apiKey(id: string, secret: string): Promise<Principal> {
    const rec = await this.#store.getApiKey(id);
    const given = Buffer.from(sha256(secret), 'hex');
    // Compare against a dummy when the id is unknown, so timing does not reveal which ids exist.
    const ok = timingSafeEqual(given, Buffer.from(rec?.secretHash ?? DUMMY_HASH, 'hex')) && rec !== undefined;
    if (!ok || !rec) throw new ProtocolError('UNAUTHENTICATED', 'The API key is not valid.');
    if (rec.revokedAt !== null) throw new ProtocolError('UNAUTHENTICATED', 'The API key was revoked.');
    return { tenantId: rec.tenant, principalId: rec.principal, roles: rec.roles as Role[] };
  }

  async #jwt(token: string): Promise<{ principal: Principal; credential: Credential }> {
    if (!this.#secret) throw new ProtocolError('UNAUTHENTICATED', 'This server does not accept JWTs (no TROUPE_JWT_SECRET is configured).');
    let payload: Record<string, unknown>;
    try {
      ({ payload } = await jwtVerify(token, this.#secret, {
        algorithms: ['HS256', 'HS384', 'HS512'],
        issuer: this.#opts.jwtIssuer,
        audience: this.#opts.jwtAudience,
        // A token that never expires could never be taken back.
        requiredClaims: ['exp'],
      }));
    } catch (e) {
      throw new ProtocolError('UNAUTHENTICATED', `The JWT is not valid: ${(e as Error).message}`);
    }
    const tenant = TenantId.safeParse(payload.tid ?? payload.tenant);
    const sub = Id.safeParse(payload.sub);
    if (!tenant.success) throw new ProtocolError('UNAUTHENTICATED', 'The JWT needs a "tid" (or "tenant") claim naming a valid tenant id.');
    if (!sub.success) throw new ProtocolError('UNAUTHENTICATED', 'The JWT needs a "sub" claim that is a valid principal id.');
    return {
      principal: { tenantId: tenant.data, principalId: sub.data, roles: parseRoles(payload.roles) },
      credential: { kind: 'jwt', expiresAt: (payload.exp as number) * 1000 },
    };
  }
}
