// Lays out ELK graphs in a worker (layoutWorker.js); one worker serves every layout, in order.

let worker = null;
let nextId = 1;
/** @type {Map<number, { resolve: (layout: any) => void, reject: (e: Error) => void }>} */
const pending = new Map();

function start() {
  worker = new Worker('/viz/layoutWorker.js');
  worker.onmessage = (e) => {
    const p = pending.get(e.data.id);
    if (!p) return;
    pending.delete(e.data.id);
    if (e.data.error) p.reject(new Error(`Layout failed: ${e.data.error}`));
    else p.resolve(e.data.layout);
  };
  worker.onerror = (e) => {
    e.preventDefault();
    for (const p of pending.values()) p.reject(new Error(`The layout worker failed: ${e.message || 'could not load /viz/layoutWorker.js'}`));
    pending.clear();
    worker = null;
  };
  return worker;
}

/** Starts the worker (and its download of the layout engine) before the first layout is needed. */
export function warmUp() {
  if (!worker) start();
}

/**
 * The ELK layout of a graph.
 *
 * @param {object} graph an ELK JSON graph
 * @returns {Promise<any>} the graph with positions
 */
export function layout(graph) {
  const w = worker ?? start();
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    w.postMessage({ id, graph });
  });
}
