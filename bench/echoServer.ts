import { WebSocketServer } from 'ws';
import { send, serveControl } from './childControl.js';

/**
 * The baseline: a raw `ws` JSON-RPC echo server on 127.0.0.1, port 0, in its own process. Each
 * request is parsed and answered with a task-shaped result (about the size of what Troupe returns
 * for `task.create`), serialised per reply, so both sides do the same JSON work a Troupe call
 * needs at the edge and nothing else.
 */
const template = {
  id: '00000000-0000-4000-8000-000000000000',
  tenantId: 'bench',
  type: 'bench',
  title: 'Benchmark task',
  description: '',
  priority: 'normal',
  parameters: {},
  requiredCapabilities: [],
  createdBy: 'agent-0',
  assignedTo: 'agent-0',
  parentTaskId: null,
  progress: null,
  inputRequest: null,
  inputs: [],
  result: null,
  error: null,
  maxRetries: 0,
  retryCount: 0,
  retryBackoffMs: 1000,
  retryAt: null,
  timeoutSeconds: null,
  deadline: null,
  delegations: [{ from: null, to: 'agent-0', reason: 'assigned at creation', kind: 'manual', at: '2025-01-01T00:00:00.000Z' }],
  rejections: [],
  archived: false,
  createdAt: '2025-01-01T00:00:00.000Z',
  updatedAt: '2025-01-01T00:00:00.000Z',
  assignedAt: '2025-01-01T00:00:00.000Z',
  acceptedAt: null,
  startedAt: null,
  completedAt: null,
  status: 'assigned',
  a2aState: 'submitted',
  version: 1,
};

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data) => {
    const req = JSON.parse(data.toString()) as { id: number; params?: { title?: string } };
    const result = { ...template, title: req.params?.title ?? template.title, updatedAt: new Date().toISOString() };
    ws.send(JSON.stringify({ jsonrpc: '2.0', id: req.id, result }));
  });
});
wss.on('listening', () => {
  const addr = wss.address();
  send({ port: typeof addr === 'object' && addr ? addr.port : 0 });
});
serveControl(
  () =>
    new Promise<void>((resolve) => {
      for (const c of wss.clients) c.terminate();
      wss.close(() => resolve());
    }),
);
