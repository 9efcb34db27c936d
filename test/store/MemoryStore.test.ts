import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { runStoreContract } from '../contracts/storeContract.js';

runStoreContract('MemoryStore', async () => {
  const store = new MemoryStore();
  return { store, teardown: () => store.close() };
});
