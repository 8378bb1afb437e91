// The landing page /: live and scheduled streams from GET /api/streams (docs/api.md, "Discovery").
import { api } from './api.js';
import { $, h, toast } from './dom.js';
import { count } from './fmt.js';
import * as session from './session.js';

const lists = { live: $('#live'), scheduled: $('#scheduled') };
let next = null;

function card(st) {
  const labels = { live: 'LIVE', scheduled: 'Soon', ended: 'Ended' };
  return h('li', {},
    h('a', { class: 'card stream-card', href: `/s/${encodeURIComponent(st.id)}`, dataset: { stream: st.id } },
      h('div', { class: 'stream-thumb', 'aria-hidden': 'true', text: st.status === 'live' ? '▶' : '⏰' }),
      h('div', { class: 'stream-meta' },
        h('h3', { text: st.title }),
        h('div', { class: 'line' },
          h('span', { class: `badge ${st.status}`, text: labels[st.status] || st.status }),
          st.status === 'live' ? h('span', { text: `${count(st.viewers || 0)} watching` }) : null,
          h('span', { text: `by ${st.host}` })),
        st.pinned ? h('div', { class: 'line', text: `Pinned: ${st.pinned.title}` }) : null)));
}

function emptyState(list, text) {
  if (!list.children.length) list.append(h('li', { class: 'empty-state card', text }));
}

async function load(cursor) {
  const q = new URLSearchParams({ limit: '24' });
  if (cursor) q.set('cursor', cursor);
  try {
    const r = await api('GET', `/api/streams?${q}`);
    for (const st of r.streams) {
      const list = lists[st.status];
      if (list) list.append(card(st));
    }
    next = r.next;
    $('#more-wrap').hidden = !next;
  } catch (e) {
    const msg = e.status === 404 || e.status === 405 ? 'The stream directory is not available on this server.' : `Could not load streams: ${e.message}`;
    toast(msg, 'error');
  }
  emptyState(lists.live, 'Nobody is live right now.');
  emptyState(lists.scheduled, 'No shows scheduled.');
}

$('#more').addEventListener('click', () => {
  for (const l of Object.values(lists)) for (const e of l.querySelectorAll('.empty-state')) e.parentElement === l && e.remove();
  load(next);
});

$('#new-stream').addEventListener('submit', async (e) => {
  e.preventDefault();
  let s = session.current('host');
  if (!s) s = await session.signIn({ role: 'host', sc: 'host', reason: 'Hosts sign in to create a stream.' });
  if (!s) return;
  try {
    const st = await api('POST', '/api/streams', { token: s.token, json: { title: $('#new-title').value.trim() } });
    location.href = `/host/${encodeURIComponent(st.id)}`;
  } catch (ex) {
    toast(ex.message, 'error');
  }
});

session.mountChip($('#chip'), 'viewer');
load(null);
