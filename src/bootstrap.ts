import fs from 'node:fs';
import path from 'node:path';
import type { Store } from '../actors/Store.js';
import type { Authenticator } from './auth/Authenticator.js';

/** What the first start created, if anything. */
export interface BootstrapResult {
  /** The new admin key (shown once), or null if keys already existed. */
  key: string | null;
  /** Where the key was written (mode 0600). */
  file: string;
  tenant: string;
}

/**
 * On a store without any API key, creates tenant `default` with an admin key for principal
 * `admin`, and writes the key to `<dataDir>/admin.key` so a newcomer has a credential at once.
 */
export async function bootstrap(store: Store, auth: Authenticator, dataDir: string): Promise<BootstrapResult> {
  const file = path.join(dataDir, 'admin.key');
  if ((await store.listApiKeys()).length > 0) return { key: null, file, tenant: 'default' };
  const { key } = await auth.createKey({ tenant: 'default', principal: 'admin', roles: ['admin'], label: 'bootstrap' });
  fs.mkdirSync(dataDir, { recursive: true });
  fs.writeFileSync(file, key + '\n', { mode: 0o600 });
  return { key, file, tenant: 'default' };
}
