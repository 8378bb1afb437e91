// One flash sale on the viewer page: countdown, a live "N left", and Buy: reserve (Idempotency-Key)
// then pay with a test card, with a state for every answer the API can give (docs/pages.md).
import { api, newKey } from './api.js';
import { h } from './dom.js';
import { clock, money, now, timeOf } from './fmt.js';
import * as session from './session.js';

const CARDS = [
  ['pm_card_visa', 'Visa •••• 4242 (test)'],
  ['pm_card_mastercard', 'Mastercard •••• 4444 (test)'],
  ['pm_card_chargeDeclined', 'Declined card (test)'],
];

const ORDERS_KEY = 'livesale.orders';

function savedOrders() {
  try {
    return JSON.parse(localStorage.getItem(ORDERS_KEY) || '{}');
  } catch {
    return {};
  }
}

function saveOrder(user, saleId, orderId) {
  const all = savedOrders();
  const k = `${user}:${saleId}`;
  if (orderId) all[k] = orderId;
  else delete all[k];
  localStorage.setItem(ORDERS_KEY, JSON.stringify(all));
}

export class SaleCard {
  constructor(sale, { onChange } = {}) {
    this.sale = { ...sale };
    this.phase = 'idle';
    this.order = null;
    this.key = null; // kept across retries of one reserve, so a retry never buys twice
    this.stale = false;
    this.note = '';
    this.checkingExpiry = false;
    this.onChange = onChange || (() => {});
    this.build();
    this.render();
  }

  get id() {
    return this.sale.id;
  }

  get hasOrder() {
    return ['reserved', 'declined', 'paying', 'paid'].includes(this.phase);
  }

  build() {
    this.timerEl = h('span', { class: 'timer' });
    this.titleEl = h('h3', { class: 'sale-title' });
    this.priceEl = h('strong', { class: 'price-now' });
    this.leftEl = h('span', { class: 'left', 'aria-live': 'polite' });
    this.meterEl = h('span', { class: 'meter-fill' });
    this.actionsEl = h('div', { class: 'sale-actions' });
    this.noteEl = h('p', { class: 'sale-note', role: 'status' });
    this.el = h('article', { class: 'card sale', dataset: { sale: this.sale.id } },
      h('div', { class: 'sale-top' }, h('span', { class: 'tag', text: 'Flash sale' }), this.timerEl),
      this.titleEl,
      h('div', { class: 'sale-mid' },
        h('div', { class: 'price' }, this.priceEl),
        h('div', { class: 'stock' }, this.leftEl, h('span', { class: 'meter' }, this.meterEl))),
      this.noteEl,
      this.actionsEl);
  }

  update(patch) {
    Object.assign(this.sale, patch);
    if ('available' in patch) this.stale = false;
    this.render();
  }

  setStale(stale) {
    this.stale = stale;
    this.render();
  }

  setPhase(phase, note = '') {
    this.phase = phase;
    this.note = note;
    this.render();
    this.onChange(this);
  }

  // Called every half second: countdowns and the hold's expiry.
  tick() {
    this.renderTimer();
    if (['reserved', 'declined'].includes(this.phase) && this.order) {
      const left = timeOf(this.order.expires_at) - now();
      this.noteEl.textContent = this.holdNote(left);
      if (left <= 0) this.checkExpiry();
    }
  }

  holdNote(leftMs) {
    const t = clock(leftMs);
    return this.phase === 'declined'
      ? `Card declined. Your item is still held for ${t}: try another card.`
      : `Reserved for you. Pay within ${t} or it goes back on sale.`;
  }

  renderTimer() {
    const s = this.sale;
    if (s.status === 'scheduled') {
      const start = timeOf(s.starts_at);
      this.timerEl.textContent = start ? `starts in ${clock(start - now())}` : 'starting soon';
    } else if (s.status === 'active') {
      const end = timeOf(s.ends_at);
      const left = end ? end - now() : 0;
      this.timerEl.textContent = `ends in ${clock(left)}`;
      this.timerEl.classList.toggle('urgent', left < 60000);
    } else {
      this.timerEl.textContent = 'ended';
    }
  }

  render() {
    const s = this.sale;
    this.el.dataset.phase = this.phase;
    this.el.dataset.status = s.status;
    this.titleEl.textContent = s.title || s.sku;
    this.priceEl.textContent = money(s.price_cents, s.currency);
    if (this.stale) {
      this.leftEl.textContent = 'updating stock…';
      this.leftEl.dataset.stale = '1';
      delete this.leftEl.dataset.available;
    } else {
      delete this.leftEl.dataset.stale;
      this.leftEl.dataset.available = String(s.available);
      this.leftEl.textContent = s.available > 0 ? `${s.available} left` : 'Sold out';
    }
    const frac = s.stock ? Math.max(0, Math.min(1, s.available / s.stock)) : 0;
    this.meterEl.style.width = `${(frac * 100).toFixed(1)}%`;
    this.el.classList.toggle('low', !this.stale && s.available > 0 && frac <= 0.2);
    this.el.classList.toggle('stale', this.stale);
    this.renderTimer();
    this.renderActions();
  }

  renderActions() {
    const s = this.sale;
    const price = money(s.price_cents, s.currency);
    const buy = (label, enabled = true) =>
      h('button', { class: 'btn buy', type: 'button', disabled: !enabled, text: label, onclick: () => this.buy() });
    let note = this.note;
    let actions = [];
    switch (this.phase) {
      case 'reserving':
        actions = [buy('Reserving…', false)];
        break;
      case 'reserved':
      case 'declined': {
        const left = this.order ? timeOf(this.order.expires_at) - now() : 0;
        note = this.holdNote(left);
        this.cardSelect = this.cardSelect || h('select', { class: 'card-select', 'aria-label': 'Test card' },
          CARDS.map(([v, label]) => h('option', { value: v, text: label })));
        actions = [
          h('button', { class: 'btn pay', type: 'button', text: `Pay ${money(this.order.amount_cents, s.currency)}`, onclick: () => this.pay() }),
          this.cardSelect,
          h('button', { class: 'btn ghost small', type: 'button', text: 'Cancel', onclick: () => this.cancel() }),
        ];
        break;
      }
      case 'paying':
        actions = [h('button', { class: 'btn pay', type: 'button', disabled: true, text: 'Paying…' })];
        break;
      case 'paid':
        note = note || 'Paid. It is yours: the order is confirmed.';
        actions = [h('span', { class: 'done', text: '✓ Paid' })];
        if (s.status === 'active' && s.available > 0) {
          actions.push(h('button', { class: 'btn ghost small', type: 'button', text: 'Buy another', onclick: () => this.buy() }));
        }
        break;
      default:
        if (s.status === 'scheduled') actions = [buy('Starts soon', false)];
        else if (s.status !== 'active') actions = [buy('Sale ended', false)];
        else if (!this.stale && s.available <= 0) actions = [buy('Sold out', false)];
        else if (this.phase === 'limit') actions = [buy('Limit reached', false)];
        else actions = [buy(`Buy now · ${price}`)];
    }
    this.noteEl.textContent = note;
    this.noteEl.className = `sale-note ${this.phase}`;
    // Stock events arrive up to ten times a second in a rush: the buttons are rebuilt only when what
    // they say changed, so a tap on Buy is never swallowed by a redraw.
    const sig = actions.map((el) => `${el.tagName}:${el.className}:${el.textContent}:${el.disabled}`).join('|');
    if (sig !== this.actionsSig) {
      this.actionsSig = sig;
      this.actionsEl.replaceChildren(...actions);
    }
  }

  async buy() {
    let s = session.current();
    if (!s) s = await session.signIn({ reason: 'Sign in to buy. It takes a name, nothing else.' });
    if (!s) return;
    this.key = this.key || newKey();
    this.setPhase('reserving');
    try {
      const order = await api('POST', `/api/sales/${encodeURIComponent(this.id)}/orders`, {
        token: s.token, json: { quantity: 1 }, headers: { 'Idempotency-Key': this.key },
      });
      this.key = null;
      this.order = order;
      saveOrder(s.user, this.id, order.id);
      this.setPhase('reserved');
    } catch (e) {
      this.failReserve(e);
    }
  }

  failReserve(e) {
    const s = this.sale;
    if (e.status === 0 || e.status >= 500) {
      // The request may or may not have reached the server: the same key retries safely.
      this.setPhase('error', 'Could not reach the shop. Tap Buy to try again (you will not be charged twice).');
      return;
    }
    this.key = null;
    if (e.code === 'sold_out') {
      if (typeof e.body.available === 'number') this.sale.available = e.body.available;
      this.setPhase('sold_out', 'Sold out: someone was faster this time.');
    } else if (e.code === 'limit_reached') {
      this.setPhase('limit', `Limit reached: ${s.per_user_limit} per buyer.`);
    } else if (e.code === 'sale_not_active') {
      this.sale.status = 'ended';
      this.setPhase('idle', 'This sale is not running any more.');
    } else if (e.status === 401) {
      session.signOut();
      this.setPhase('idle', 'Your sign-in expired. Sign in again to buy.');
    } else if (e.status === 403) {
      this.setPhase('idle', 'Only viewers can buy (you are signed in as a host or moderator).');
    } else {
      this.setPhase('idle', e.message);
    }
  }

  async pay() {
    const s = session.current();
    if (!s || !this.order) return;
    const method = this.cardSelect ? this.cardSelect.value : 'pm_card_visa';
    this.setPhase('paying');
    try {
      const paid = await api('POST', `/api/orders/${encodeURIComponent(this.order.id)}/pay`, {
        token: s.token, json: { payment_method: method },
      });
      this.order = paid;
      this.setPhase('paid');
    } catch (e) {
      if (e.code === 'card_declined') this.setPhase('declined');
      else if (e.code === 'order_not_pending') this.settle(e.body.status);
      else if (e.status === 0 || e.status >= 500) this.setPhase('reserved', 'Could not reach the shop. Try Pay again: it never charges twice.');
      else this.setPhase('reserved', e.message);
    }
  }

  async cancel() {
    const s = session.current();
    if (!s || !this.order) return;
    try {
      await api('POST', `/api/orders/${encodeURIComponent(this.order.id)}/cancel`, { token: s.token });
      this.forget();
      this.setPhase('idle', 'Cancelled. The item went back on sale.');
    } catch (e) {
      if (e.code === 'order_not_pending') this.settle(e.body.status);
      else this.setPhase(this.phase, e.message);
    }
  }

  // An order's status as the server has it now.
  settle(status) {
    if (status === 'paid') this.setPhase('paid');
    else if (status === 'expired') {
      this.forget();
      this.setPhase('expired', 'Your hold expired and the item went back on sale.');
    } else if (status === 'cancelled') {
      this.forget();
      this.setPhase('idle', 'This order was cancelled.');
    } else if (status === 'reserved') this.setPhase('reserved');
  }

  forget() {
    const s = session.current();
    if (s) saveOrder(s.user, this.id, null);
    this.order = null;
  }

  async checkExpiry() {
    if (this.checkingExpiry || !this.order) return;
    this.checkingExpiry = true;
    try {
      const s = session.current();
      const o = await api('GET', `/api/orders/${encodeURIComponent(this.order.id)}`, { token: s && s.token });
      if (o.status === 'reserved') {
        // The server's clock says not yet; ask again shortly.
        setTimeout(() => { this.checkingExpiry = false; }, 1000);
        return;
      }
      this.settle(o.status);
    } catch {
      setTimeout(() => { this.checkingExpiry = false; }, 2000);
      return;
    }
    this.checkingExpiry = false;
  }

  // An order of this user in this sale, from GET /api/me/orders: a hold still open or a purchase.
  adopt(order) {
    if (this.order || !['reserved', 'paid'].includes(order.status)) return;
    this.order = order;
    this.setPhase(order.status);
  }

  // After a reload: the order this user made in this sale, if any (kept in localStorage, which also
  // covers the moment before the order writer has put a fresh hold into SQL, where me/orders reads).
  async restore() {
    const s = session.current();
    if (!s) return;
    const orderId = savedOrders()[`${s.user}:${this.id}`];
    if (!orderId) return;
    try {
      this.order = await api('GET', `/api/orders/${encodeURIComponent(orderId)}`, { token: s.token });
      if (this.order.status === 'reserved') this.setPhase('reserved');
      else if (this.order.status === 'paid') this.setPhase('paid');
      else this.forget();
    } catch {
      this.forget();
    }
  }
}
