import fs from 'node:fs';
import path from 'node:path';
import type { Store } from '../actors/Store.js';
import type { Authenticator } from './auth/Authenticator.js';

/** What the first start created, if anything. */
export interface BootstrapResult {
  /** The new admin key (shown once), or null if keys already existed or another node creates it. */
  key: string | null;
  /** Where the key was written (mode 0600). */
  file: string;
  tenant: string;
  /** True when the store had no key but another node of the cluster claimed the first start. */
  elsewhere?: boolean;
}

/**
 * On a store without any API key, creates tenant `default` with an admin key for principal
 * `admin`, and writes the key to `<dataDir>/admin.key` so a newcomer has a credential at once.
 * In a cluster, `claim` makes sure one node of those starting together on an empty store does it.
 */
export async function bootstrap(store: Store, auth: Authenticator, dataDir: string, claim?: () => Promise<boolean>): Promise<BootstrapResult> {
  const file = path.join(dataDir, 'admin.key');
  if ((await store.listApiKeys()).length > 0) return { key: null, file, tenant: 'default' };
  if (claim && !(await claim())) return { key: null, file, tenant: 'default', elsewhere: true };
  // Claimed just after another node finished: its key is there now.
  if (claim && (await store.listApiKeys()).length > 0) return { key: null, file, tenant: 'default' };
  const { key } = await auth.createKey({ tenant: 'default', principal: 'admin', roles: ['admin'], label: 'bootstrap' });
  fs.mkdirSync(dataDir, { recursive: true });
  fs.writeFileSync(file, key + '\n', { mode: 0o600 });
  return { key, file, tenant: 'default' };
}
