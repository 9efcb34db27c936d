// Runs ELK layouts off the page's main thread, so drawing a large chart never freezes the page
// while events stream in. Messages: { id, graph } in; { id, layout } or { id, error } out.
/* global ELK */
importScripts('/viz/elk.bundled.js');

const elk = new ELK();

self.onmessage = async (e) => {
  const { id, graph } = e.data;
  try {
    self.postMessage({ id, layout: await elk.layout(graph) });
  } catch (err) {
    self.postMessage({ id, error: String(err && err.message ? err.message : err) });
  }
};
