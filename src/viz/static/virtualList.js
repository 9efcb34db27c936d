// A list that keeps only the rows in view in the DOM, so thousands of items stay responsive.

/**
 * Rows of a fixed height in a scrolling container. `render(item, index)` builds a row (the list
 * positions it); `onEnd()` is called when the last rows come into view (to load the next page);
 * `onPick(item, index)` when a row is clicked or chosen with Enter.
 *
 * @template T
 */
export class VirtualList {
  /** @type {T[]} */
  #items = [];
  #rowHeight;
  #render;
  #key;
  #selected = null;
  #frame = 0;
  #overscan = 6;

  /**
   * @param {HTMLElement} container scrolls; gets `role="listbox"`
   * @param {{ rowHeight: number, render: (item: T, index: number) => HTMLElement, key: (item: T) => string, onEnd?: () => void, onPick?: (item: T, index: number) => void }} options
   */
  constructor(container, options) {
    this.container = container;
    this.#rowHeight = options.rowHeight;
    this.#render = options.render;
    this.#key = options.key;
    this.onEnd = options.onEnd ?? (() => {});
    this.onPick = options.onPick ?? (() => {});
    container.classList.add('vlist');
    container.setAttribute('role', 'listbox');
    container.tabIndex = 0;
    this.spacer = document.createElement('div');
    this.spacer.className = 'vlist-spacer';
    container.append(this.spacer);
    container.addEventListener('scroll', () => this.#schedule(), { passive: true });
    new ResizeObserver(() => this.#schedule()).observe(container);
    container.addEventListener('click', (e) => {
      const row = /** @type {HTMLElement} */ (e.target).closest('.vlist-row');
      if (row) this.#pick(Number(row.dataset.index));
    });
    container.addEventListener('keydown', (e) => {
      if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp' && e.key !== 'Enter') return;
      e.preventDefault();
      const at = this.#items.findIndex((i) => this.#key(i) === this.#selected);
      if (e.key === 'Enter') {
        if (at >= 0) this.#pick(at);
        return;
      }
      const next = Math.max(0, Math.min(this.#items.length - 1, at + (e.key === 'ArrowDown' ? 1 : -1)));
      if (this.#items[next]) this.#pick(next);
    });
  }

  get items() {
    return this.#items;
  }

  /** Replaces every item. */
  setItems(items) {
    this.#items = items;
    this.#schedule();
  }

  /** Adds items at the end. */
  append(items) {
    this.#items = this.#items.concat(items);
    this.#schedule();
  }

  /** Replaces the item with this key (if listed) by `change(item)`. */
  update(key, change) {
    const i = this.#items.findIndex((item) => this.#key(item) === key);
    if (i < 0) return;
    this.#items = this.#items.slice();
    this.#items[i] = change(this.#items[i]);
    this.#schedule();
  }

  /** Marks the item with this key as selected (and scrolls it into view when asked). */
  select(key, scroll = false) {
    this.#selected = key;
    if (scroll) this.scrollTo(this.#items.findIndex((i) => this.#key(i) === key));
    this.#schedule();
  }

  scrollTo(index) {
    if (index < 0) return;
    const top = index * this.#rowHeight;
    const c = this.container;
    if (top < c.scrollTop) c.scrollTop = top;
    else if (top + this.#rowHeight > c.scrollTop + c.clientHeight) c.scrollTop = top + this.#rowHeight - c.clientHeight;
    this.#schedule();
  }

  /** Renders now (tests and callers that need the DOM at once). */
  flush() {
    cancelAnimationFrame(this.#frame);
    this.#frame = 0;
    this.#update();
  }

  #pick(index) {
    const item = this.#items[index];
    if (item === undefined) return;
    this.select(this.#key(item), true);
    this.onPick(item, index);
  }

  #schedule() {
    if (this.#frame) return;
    this.#frame = requestAnimationFrame(() => {
      this.#frame = 0;
      this.#update();
    });
  }

  #update() {
    const c = this.container;
    const h = this.#rowHeight;
    this.spacer.style.height = `${this.#items.length * h}px`;
    const first = Math.max(0, Math.floor(c.scrollTop / h) - this.#overscan);
    const last = Math.min(this.#items.length, Math.ceil((c.scrollTop + c.clientHeight) / h) + this.#overscan);
    const rows = [];
    for (let i = first; i < last; i++) {
      const item = this.#items[i];
      const row = this.#render(item, i);
      row.classList.add('vlist-row');
      row.dataset.index = String(i);
      row.setAttribute('role', 'option');
      row.setAttribute('aria-selected', String(this.#key(item) === this.#selected));
      row.style.transform = `translateY(${i * h}px)`;
      row.style.height = `${h}px`;
      rows.push(row);
    }
    this.spacer.replaceChildren(...rows);
    if (this.#items.length > 0 && last >= this.#items.length - 2) this.onEnd();
  }
}
