import WebSocket from 'ws';
import { startServer } from '../test/helpers/server.js';
const s = await startServer();
const key = await s.key('acme', 'bot', ['agent']);
for (const auth of [true, false]) {
  const ws = new WebSocket(s.url, { headers: auth ? { authorization: `Bearer ${key}` } : {} });
  const got: string[] = [];
  ws.on('message', (d) => got.push(d.toString().slice(0, 60)));
  await new Promise((r) => ws.once('open', r));
  ws.send('{"jsonrpc":"2.0","id":1,"method":"ping"}');
  ws.send('not json');
  await new Promise((r) => setTimeout(r, 200));
  console.log(auth, got);
  ws.close();
}
await s.close();
