// The group deep link /g/{group}: the group's join card (DESIGN "Group-buy"; GET /api/groups/{gid}).
import { api, newKey } from './api.js';
import { $, h } from './dom.js';
import { clock, money, now, timeOf } from './fmt.js';
import * as session from './session.js';

const gid = decodeURIComponent(location.pathname.split('/')[2] || '');
const ref = new URLSearchParams(location.search).get('ref');
const box = $('#group');
let group = null;
let key = null;

function render(note = '') {
  const g = group;
  const members = Array.isArray(g.members) ? g.members.length : Number(g.members) || 0;
  const tiers = g.tiers || (g.next_tier ? [g.next_tier] : []);
  const left = timeOf(g.expires_at) ? timeOf(g.expires_at) - now() : 0;
  box.replaceChildren(
    h('span', { class: 'tag', text: 'Group buy' }),
    h('h2', { text: g.title || g.sku || 'Group' }),
    h('p', { class: 'price-now', text: money(g.price_cents, g.currency) }),
    h('p', { class: 'muted', text: `${members} joined · led by ${g.leader} · ${g.status === 'open' ? `closes in ${clock(left)}` : g.status}` }),
    tiers.length ? h('ul', { class: 'tiers' }, tiers.map((t) =>
      h('li', { class: members >= t.size ? 'reached' : '' }, h('span', { text: `${t.size} people` }), h('b', { text: money(t.price_cents, g.currency) })))) : null,
    note ? h('p', { class: 'sale-note', text: note }) : null,
    g.status === 'open' ? h('button', { class: 'btn buy', type: 'button', text: 'Join this group', onclick: join }) : null,
    h('p', { class: 'muted', text: `Share: ${location.origin}${g.share_path || location.pathname}` }));
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
    await load('You are in! You pay the price the group reaches.');
  } catch (e) {
    if (e.status === 0 || e.status >= 500) { render('Could not reach the shop. Try again.'); return; }
    key = null;
    const msgs = { group_full: 'This group is full.', group_closed: 'This group has closed.', already_in_group: 'You are already in a group for this deal.', sold_out: 'Sold out.', card_declined: 'Card declined.' };
    render(msgs[e.code] || e.message);
  }
}

async function load(note) {
  try {
    group = await api('GET', `/api/groups/${encodeURIComponent(gid)}`);
    render(note);
  } catch (e) {
    box.replaceChildren(h('h2', { text: e.status === 404 ? 'No such group' : 'Could not load this group' }),
      h('p', { class: 'muted', text: e.status === 404 ? 'The link may be mistyped, or group buys are not enabled here.' : e.message }),
      h('a', { class: 'btn primary', href: '/', text: 'See what is live' }));
  }
}

session.mountChip($('#chip'), 'viewer');
load();
setInterval(() => { if (group && group.status === 'open') render(); }, 1000);
