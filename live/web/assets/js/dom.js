// DOM helpers. User text only ever goes in through textContent (docs/pages.md, "Safety").

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (typeof v === 'boolean') el.toggleAttribute(k, v);
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : String(c));
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

export function clear(el) {
  el.replaceChildren();
  return el;
}

// A short message at the bottom of the screen (errors a person must read, not only the console).
let toastTimer = 0;
export function toast(message, kind = 'info') {
  let el = $('#toast');
  if (!el) {
    el = h('div', { id: 'toast', role: 'status', 'aria-live': 'polite' });
    document.body.append(el);
  }
  el.textContent = message;
  el.className = `toast show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = 'toast'; }, 3500);
}

// Only http(s) images from product data; anything else is left out.
export function safeImageUrl(url) {
  if (typeof url !== 'string') return null;
  try {
    const u = new URL(url, location.href);
    return u.protocol === 'https:' || u.protocol === 'http:' ? u.href : null;
  } catch {
    return null;
  }
}

// Keeps `list`'s rows in step with `items` without rebuilding rows whose shape did not change, so a
// button being tapped is never replaced under the finger because a clock ticked.
export function syncList(list, items, { key, shape, build, update }) {
  const existing = new Map(Array.from(list.children, (el) => [el.dataset.key, el]));
  const rows = items.map((item) => {
    const k = key(item);
    let el = existing.get(k);
    if (!el || el.dataset.shape !== shape(item)) {
      const fresh = build(item);
      fresh.dataset.key = k;
      fresh.dataset.shape = shape(item);
      if (el) el.replaceWith(fresh);
      el = fresh;
    }
    update(el, item);
    return el;
  });
  const inOrder = rows.length === list.children.length && rows.every((el, i) => list.children[i] === el);
  if (!inOrder) list.replaceChildren(...rows);
}
