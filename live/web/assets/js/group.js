// The group deep link /g/{group}: the group's join card (docs/groupbuy.md; GET /api/groups/{gid}).
import { api, newKey } from './api.js';
import { $, append, h } from './dom.js';
import { clock, money, now, timeOf } from './fmt.js';
import * as session from './session.js';

const gid = decodeURIComponent(location.pathname.split('/')[2] || '');
const ref = new URLSearchParams(location.search).get('ref');
const box = $('#group');
let group = null;
let gb = {};
let key = null;
let joined = false;

function groupLine() {
  const g = group;
  const members = Array.isArray(g.members) ? g.members.length : Number(g.members) || 0;
  const left = timeOf(g.expires_at) ? timeOf(g.expires_at) - now() : 0;
  const state = g.status === 'open' ? `closes in ${clock(left)}` : g.status;
  return `${members} of ${g.size || '?'} joined · started by ${g.leader} · ${state}`;
}

function render(note = '') {
  const g = group;
  const members = Array.isArray(g.members) ? g.members.length : Number(g.members) || 0;
  const tiers = gb.tiers || (g.next_tier ? [g.next_tier] : []);
  const currency = gb.currency || 'USD';
  box.dataset.status = g.status;
  box.dataset.members = String(members);
  box.replaceChildren();
  append(box, [
    h('span', { class: 'tag', text: 'Group buy' }),
    h('h2', { text: gb.title || gb.sku || 'Group' }),
    h('p', { class: 'price-now', text: `${money(g.price_cents, currency)} each` }),
    h('p', { class: 'muted group-line', text: groupLine() }),
    tiers.length ? h('ol', { class: 'tier-ladder' }, tiers.map((t) =>
      h('li', { class: members >= t.size ? 'reached' : '' }, h('span', { text: `${t.size} people` }), h('b', { text: money(t.price_cents, currency) })))) : null,
    note ? h('p', { class: 'sale-note reserved', role: 'status', text: note }) : null,
    g.status === 'open' && !joined
      ? h('button', { class: 'btn buy', type: 'button', text: `Join · ${money(tiers.length ? tiers[0].price_cents : g.price_cents, currency)} now`, onclick: join })
      : null,
    gb.stream_id ? h('a', { class: 'btn ghost', href: `/s/${encodeURIComponent(gb.stream_id)}`, text: 'Watch the show' }) : null,
    h('p', { class: 'muted small-print', text: 'You are charged the first tier now; when the group grows, the difference is refunded. If it does not fill in time, everything is refunded.' })]);
}

async function join() {
  let s = session.current();
  if (!s) s = await session.signIn({ reason: 'Sign in to join the group.' });
  if (!s) return;
  key = key || newKey();
  try {
    await api('POST', `/api/groups/${encodeURIComponent(gid)}/members`, {
      token: s.token, headers: { 'Idempotency-Key': key }, json: { payment_method: 'pm_card_visa', ...(ref ? { ref } : {}) },
    });
    key = null;
    joined = true;
    await load('You are in! You pay the price the group reaches.');
  } catch (e) {
    if (e.status === 0 || e.status >= 500) { render('Could not reach the shop. Try again.'); return; }
    key = null;
    if (e.code === 'already_in_group') joined = true;
    const msgs = { group_full: 'This group is full.', group_closed: 'This group has closed.', already_in_group: 'You are already in a group for this deal.', sold_out: 'Sold out.', card_declined: 'Card declined.' };
    render(msgs[e.code] || e.message);
  }
}

// Redraws only when the group changed (or with a new note): the poll below must not rebuild Join
// under a finger.
async function load(note) {
  if (note) lastNote = note;
  try {
    const before = JSON.stringify(group);
    group = await api('GET', `/api/groups/${encodeURIComponent(gid)}`);
    if (!gb.id && group.groupbuy) gb = await api('GET', `/api/groupbuys/${encodeURIComponent(group.groupbuy)}`).catch(() => ({}));
    if (note || JSON.stringify(group) !== before) render(lastNote);
  } catch (e) {
    if (group && e.status !== 404) return; // a poll that failed: keep what is shown
    box.replaceChildren(h('h2', { text: e.status === 404 ? 'No such group' : 'Could not load this group' }),
      h('p', { class: 'muted', text: e.status === 404 ? 'The link may be mistyped, or group buys are not enabled here.' : e.message }),
      h('a', { class: 'btn primary', href: '/', text: 'See what is live' }));
  }
}

let lastNote = '';
session.mountChip($('#chip'), 'viewer');
load();
// The group as others join: this page has no live socket, so it asks every few seconds while open.
setInterval(() => {
  if (group && group.status === 'open') load();
}, 4000);

// Only the line with the clock moves: rebuilding the card could swallow a tap on Join.
setInterval(() => {
  const line = box.querySelector('.group-line');
  if (line && group && group.status === 'open') line.textContent = groupLine();
}, 1000);
