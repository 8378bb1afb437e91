// One group-buy on the viewer page (docs/groupbuy.md): the tier ladder, units left, "Start a group"
// (charged the first tier now, the difference refunded when the group grows), then your group's
// members, the price reached, the next tier and the share link /g/{gid}?ref=you.
import { api, newKey } from './api.js';
import { h, toast } from './dom.js';
import { clock, money, now, timeOf } from './fmt.js';
import * as session from './session.js';

const MINE_KEY = 'livesale.groups';

function myGroups() {
  try {
    return JSON.parse(localStorage.getItem(MINE_KEY) || '{}');
  } catch {
    return {};
  }
}

export function shareUrl(gid, user) {
  const u = new URL(`/g/${encodeURIComponent(gid)}`, location.href);
  if (user) u.searchParams.set('ref', user);
  return u.href;
}

export class GroupBuyCard {
  constructor(gb) {
    this.gb = { ...gb };
    this.group = null;
    this.key = null;
    this.busy = false;
    this.note = '';
    this.build();
    this.render();
    this.restore();
  }

  get id() {
    return this.gb.id;
  }

  build() {
    this.titleEl = h('h3', { class: 'sale-title' });
    this.leftEl = h('span', { class: 'left' });
    this.tiersEl = h('ol', { class: 'tier-ladder' });
    this.groupEl = h('div', { class: 'my-group' });
    this.noteEl = h('p', { class: 'sale-note', role: 'status' });
    this.actionsEl = h('div', { class: 'sale-actions' });
    this.el = h('article', { class: 'card sale groupbuy', dataset: { groupbuy: this.gb.id } },
      h('div', { class: 'sale-top' }, h('span', { class: 'tag', text: 'Group buy' }), this.leftEl),
      this.titleEl, this.tiersEl, this.groupEl, this.noteEl, this.actionsEl);
  }

  update(patch) {
    Object.assign(this.gb, patch);
    if ('available' in patch) this.stale = false;
    this.render();
  }

  // While the live connection is down the units left are not shown as a number (docs/pages.md).
  setStale(stale) {
    this.stale = stale;
    this.render();
  }

  // A `group` event: if it is this user's group, its members, price and status moved.
  onGroup(ev) {
    if (!this.group || this.group.id !== ev.group) return;
    Object.assign(this.group, { members: ev.members, price_cents: ev.price_cents, status: ev.status,
      next_tier: ev.next_tier, expires_at: ev.expires_at });
    this.render();
  }

  // Only the group's line moves with the clock: rebuilding the buttons could swallow a tap.
  tick() {
    const line = this.groupEl.querySelector('.group-status');
    if (line && this.group && this.group.status === 'open') line.textContent = this.groupText();
  }

  groupText() {
    const g = this.group;
    const gb = this.gb;
    const left = timeOf(g.expires_at) - now();
    const status = {
      open: `${g.members} of ${g.size || gb.tiers[gb.tiers.length - 1].size} joined · ${money(g.price_cents, gb.currency)} each so far · closes in ${clock(left)}`,
      succeeded: `Your group made it: ${g.members} people at ${money(g.price_cents, gb.currency)} each. Any difference is refunded.`,
      failed: 'Your group did not fill in time: you were refunded in full.',
    }[g.status] || g.status;
    const next = g.status === 'open' && g.next_tier ? ` ${g.next_tier.size - g.members} more for ${money(g.next_tier.price_cents, gb.currency)}.` : '';
    return status + next;
  }

  render() {
    const gb = this.gb;
    this.el.dataset.status = gb.status;
    this.titleEl.textContent = gb.title || gb.sku;
    this.leftEl.textContent = this.stale ? 'updating…' : gb.status === 'active' ? `${gb.available} left` : 'ended';
    this.leftEl.dataset.available = String(gb.available);
    const reached = this.group ? this.group.members : 0;
    this.tiersEl.replaceChildren(...(gb.tiers || []).map((t) =>
      h('li', { class: reached >= t.size ? 'reached' : '' },
        h('span', { text: `${t.size} people` }), h('b', { text: money(t.price_cents, gb.currency) }))));
    const g = this.group;
    const me = (session.current() || {}).user;
    let actions = [];
    if (g) {
      this.groupEl.replaceChildren(h('p', { class: 'group-status', text: this.groupText() }));
      this.groupEl.dataset.members = String(g.members);
      this.groupEl.dataset.status = g.status;
      if (g.status === 'open') {
        const url = shareUrl(g.id, me);
        actions = [
          h('input', { class: 'share-link', readonly: true, value: url, 'aria-label': 'Share link' }),
          h('button', { class: 'btn small', type: 'button', text: 'Copy link', onclick: () => this.copy(url) }),
        ];
      }
    } else {
      this.groupEl.replaceChildren();
      if (gb.status === 'active' && gb.available > 0 && gb.tiers && gb.tiers.length) {
        actions = [h('button', { class: 'btn buy', type: 'button', disabled: this.busy,
          text: this.busy ? 'Starting…' : `Start a group · ${money(gb.tiers[0].price_cents, gb.currency)}`, onclick: () => this.start() })];
      } else {
        actions = [h('button', { class: 'btn buy', type: 'button', disabled: true, text: gb.status === 'active' ? 'Sold out' : 'Ended' })];
      }
    }
    this.noteEl.textContent = this.note;
    this.actionsEl.replaceChildren(...actions);
  }

  async copy(url) {
    try {
      await navigator.clipboard.writeText(url);
      toast('Link copied: share it to fill your group.');
    } catch {
      toast('Copy failed: select the link instead.', 'error');
    }
  }

  async start() {
    let s = session.current();
    if (!s) s = await session.signIn({ reason: 'Sign in to start a group.' });
    if (!s) return;
    this.key = this.key || newKey();
    this.busy = true;
    this.note = '';
    this.render();
    try {
      const r = await api('POST', `/api/groupbuys/${encodeURIComponent(this.id)}/groups`, {
        token: s.token, headers: { 'Idempotency-Key': this.key }, json: { payment_method: 'pm_card_visa' },
      });
      this.key = null;
      const all = myGroups();
      all[`${s.user}:${this.id}`] = r.group;
      localStorage.setItem(MINE_KEY, JSON.stringify(all));
      this.group = await api('GET', `/api/groups/${encodeURIComponent(r.group)}`);
      this.note = `Charged ${money(r.charged_cents, this.gb.currency)}. Share the link: the more join, the less everyone pays.`;
    } catch (e) {
      if (!(e.status === 0 || e.status >= 500)) this.key = null;
      const msgs = { already_in_group: 'You are already in a group for this deal.', sold_out: 'Sold out.',
        card_declined: 'Card declined: nothing was held.' };
      this.note = msgs[e.code] || e.message;
    } finally {
      this.busy = false;
      this.render();
    }
  }

  async restore() {
    const s = session.current();
    const gid = s && myGroups()[`${s.user}:${this.id}`];
    if (!gid) return;
    try {
      this.group = await api('GET', `/api/groups/${encodeURIComponent(gid)}`);
      this.render();
    } catch {
      // gone: show the deal without it
    }
  }
}
