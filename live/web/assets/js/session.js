// Who is signed in: a token kept in localStorage. Sign-in uses the demo's POST /dev/token
// (only `livesale demo` has it); elsewhere a token from `livesale token` can be pasted.
import { api } from './api.js';
import { h, $ } from './dom.js';

// Viewer and host sessions are kept apart, so one browser can watch in one tab and host in another.
let scope = 'viewer';
const key = (sc) => `livesale.session.${sc || scope}`;
const listeners = new Set();

export function setScope(sc) {
  scope = sc;
}

function decode(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent(Array.from(atob(part), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''));
    const claims = JSON.parse(json);
    return { token, user: String(claims.sub), role: String(claims.role), exp: Number(claims.exp) * 1000 };
  } catch {
    return null;
  }
}

export function current(sc) {
  let s = null;
  try {
    s = JSON.parse(localStorage.getItem(key(sc)) || 'null');
  } catch {
    s = null;
  }
  if (!s || !s.token || !(s.exp > Date.now() + 5000)) return null;
  return s;
}

export function setToken(token, sc) {
  const s = decode(token);
  if (!s) throw new Error('that is not a livesale token');
  localStorage.setItem(key(sc), JSON.stringify(s));
  if (!sc || sc === scope) listeners.forEach((f) => f(s));
  return s;
}

export function signOut() {
  localStorage.removeItem(key());
  listeners.forEach((f) => f(null));
}

export function onChange(f) {
  listeners.add(f);
  window.addEventListener('storage', (e) => { if (e.key === key()) f(current()); });
}

// Opens the sign-in sheet; resolves with the session, or null when closed.
export function signIn({ role = 'viewer', user = '', reason = '', sc } = {}) {
  return new Promise((resolve) => {
    const name = h('input', { name: 'user', autocomplete: 'nickname', maxlength: '64', required: true, placeholder: 'Your name', value: user });
    const tokenBox = h('textarea', { name: 'token', rows: '3', placeholder: 'Paste a token from `livesale token --role ' + role + '`' });
    const err = h('p', { class: 'form-error', role: 'alert' });
    const pasteRow = h('div', { class: 'paste', hidden: true }, h('label', { text: 'Token' }), tokenBox);
    const submit = h('button', { type: 'submit', class: 'btn primary', text: 'Sign in' });
    const form = h('form', { method: 'dialog', class: 'signin' },
      h('h2', { text: role === 'host' ? 'Sign in to host' : 'Sign in to comment and buy' }),
      reason ? h('p', { class: 'muted', text: reason }) : null,
      h('label', { text: 'Name' }), name, pasteRow, err,
      h('div', { class: 'row end' },
        h('button', { type: 'button', class: 'btn ghost', text: 'Cancel', onclick: () => close(null) }), submit));
    const dlg = h('dialog', { class: 'sheet', 'aria-label': 'Sign in' }, form);
    document.body.append(dlg);
    let done = false;
    function close(s) {
      if (done) return;
      done = true;
      dlg.close();
      dlg.remove();
      resolve(s);
    }
    dlg.addEventListener('cancel', () => close(null));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      err.textContent = '';
      submit.disabled = true;
      try {
        if (!pasteRow.hidden && tokenBox.value.trim()) {
          close(setToken(tokenBox.value.trim(), sc));
          return;
        }
        const r = await api('POST', '/dev/token', { json: { user: name.value.trim(), role } });
        close(setToken(r.token, sc));
      } catch (ex) {
        if (ex.status === 404) {
          pasteRow.hidden = false;
          err.textContent = 'This server has no demo sign-in (it runs `livesale serve`). Paste a token instead.';
        } else {
          err.textContent = ex.message || String(ex);
        }
      } finally {
        submit.disabled = false;
      }
    });
    dlg.showModal();
    name.focus();
  });
}

// The user chip in a page header: "Sign in" or the name, which signs out.
export function mountChip(el, role, prefill = () => '') {
  function render(s) {
    el.replaceChildren(s
      ? h('button', { class: 'chip', title: 'Sign out', text: s.user, onclick: () => signOut() })
      : h('button', { class: 'chip accent', text: 'Sign in', onclick: () => signIn({ role, user: prefill() }) }));
  }
  render(current());
  onChange(render);
}

export const sessionToken = () => (current() || {}).token;
export { $ };
