import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

/** One file the visualiser serves, loaded once and kept in memory (with its gzip form). */
interface Asset {
  body: Buffer;
  gzip: Buffer | null;
  type: string;
  etag: string;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

const STATIC_DIR = fileURLToPath(new URL('./static/', import.meta.url));

/**
 * The page may load only its own scripts and styles and talk only to this server; the key in
 * `?key=` never leaves it in a Referer.
 */
const HEADERS = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'content-security-policy':
    "default-src 'none'; script-src 'self'; worker-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
} as const;

let assets: Map<string, Asset> | null = null;

function asset(file: string, type: string): Asset {
  const body = fs.readFileSync(file);
  return {
    body,
    // Only worth it for the large files (the layout engine is 1.6 MB, about 400 KB gzipped).
    gzip: body.length > 1024 ? gzipSync(body) : null,
    type,
    etag: `"${createHash('sha1').update(body).digest('base64url')}"`,
  };
}

/**
 * Every file served, by URL path: the flat `static/` folder (plain ES modules, CSS, the page,
 * the layout worker) and the layout engine from `elkjs` (the worker loads it). A fixed list, so
 * no request can name another file.
 */
function load(): Map<string, Asset> {
  const out = new Map<string, Asset>();
  for (const name of fs.readdirSync(STATIC_DIR)) {
    const type = TYPES[path.extname(name)];
    if (type) out.set(`/viz/${name}`, asset(path.join(STATIC_DIR, name), type));
  }
  const elk = createRequire(import.meta.url).resolve('elkjs/lib/elk.bundled.js');
  out.set('/viz/elk.bundled.js', asset(elk, TYPES['.js']!));
  const index = out.get('/viz/index.html');
  if (index) {
    out.set('/viz', index);
    out.set('/viz/', index);
  }
  return out;
}

/**
 * Serves the state machine visualiser (`GET /viz`) and its assets (`GET /viz/*`). Nothing here
 * needs authentication: the page asks for a key and authenticates its own WebSocket with it.
 *
 * @example
 * ```ts
 * if (url.pathname === '/viz' || url.pathname.startsWith('/viz/')) return serveViz(req, res, url.pathname);
 * ```
 */
export function serveViz(req: http.IncomingMessage, res: http.ServerResponse, pathname: string): void {
  assets ??= load();
  const a = assets.get(pathname);
  if (!a) {
    res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', ...HEADERS });
    res.end(`No such file: ${pathname}. The visualiser is at /viz.`);
    return;
  }
  const common = { 'content-type': a.type, 'cache-control': 'no-cache', etag: a.etag, vary: 'accept-encoding', ...HEADERS };
  if (req.headers['if-none-match'] === a.etag) {
    res.writeHead(304, common);
    res.end();
    return;
  }
  const gzip = a.gzip !== null && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
  const body = gzip ? a.gzip! : a.body;
  res.writeHead(200, { ...common, 'content-length': body.length, ...(gzip ? { 'content-encoding': 'gzip' } : {}) });
  res.end(req.method === 'HEAD' ? undefined : body);
}
