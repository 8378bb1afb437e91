// One auction on the viewer page (docs/auctions.md): current price, leader, the anti-snipe timer, a
// bid button with the next minimum (or a maximum of your own), and the winner's Pay.
import { api, newKey } from './api.js';
import { h } from './dom.js';
import { clock, money, now, timeOf } from './fmt.js';
import * as session from './session.js';

// The increment at current price p (cents), as the server applies it.
export function increment(p) {
  if (p < 3000) return 100;
  if (p < 5000) return 200;
  if (p < 10000) return 300;
  if (p < 30000) return 500;
  if (p < 100000) return 1000;
  if (p < 200000) return 2000;
  return 5000;
}

export class AuctionCard {
  constructor(auction) {
    this.a = { ...auction };
    this.note = '';
    this.noteKind = '';
    this.busy = false;
    this.key = null;
    this.order = null;
    this.build();
    this.render();
  }

  get id() {
    return this.a.id;
  }

  get hasOrder() {
    return !!this.order;
  }

  minBid() {
    const a = this.a;
    return a.leader ? a.price_cents + increment(a.price_cents) : a.starting_bid_cents;
  }

  build() {
    this.timerEl = h('span', { class: 'timer' });
    this.titleEl = h('h3', { class: 'sale-title' });
    this.priceEl = h('strong', { class: 'price-now' });
    this.leaderEl = h('span', { class: 'leader' });
    this.noteEl = h('p', { class: 'sale-note', role: 'status' });
    this.maxInput = h('input', { class: 'max-bid', type: 'number', min: '1', step: '0.01', inputmode: 'decimal', placeholder: 'Your max ($)', 'aria-label': 'Your maximum bid in dollars' });
    this.actionsEl = h('div', { class: 'sale-actions' });
    this.bidBtn = h('button', { class: 'btn buy', type: 'button', onclick: () => this.bid(this.minBid()) });
    this.maxBtn = h('button', { class: 'btn ghost small', type: 'button', text: 'Set max', onclick: () => this.bidMax() });
    this.payBtn = h('button', { class: 'btn pay', type: 'button', onclick: () => this.pay() });
    this.paidEl = h('span', { class: 'done', text: '✓ Paid' });
    this.el = h('article', { class: 'card sale auction', dataset: { auction: this.a.id } },
      h('div', { class: 'sale-top' }, h('span', { class: 'tag', text: 'Auction' }), this.timerEl),
      this.titleEl,
      h('div', { class: 'sale-mid' }, h('div', { class: 'price' }, this.priceEl), this.leaderEl),
      this.noteEl,
      this.actionsEl);
  }

  update(patch) {
    Object.assign(this.a, patch);
    this.render();
  }

  // A `bid` event: the price, the leader and (anti-snipe) the end moved.
  onBid(ev) {
    const me = (session.current() || {}).user;
    const wasMine = this.a.leader === me;
    const extended = timeOf(ev.ends_at) > timeOf(this.a.ends_at) + 500;
    this.update({ price_cents: ev.price_cents, leader: ev.leader, ends_at: ev.ends_at, bids: ev.bids ?? this.a.bids });
    if (wasMine && ev.leader !== me) this.say('You were outbid. Bid again?', 'declined');
    else if (extended) this.say('Late bid: the clock was extended.', '');
  }

  say(text, kind) {
    this.note = text;
    this.noteKind = kind;
    this.render();
  }

  tick() {
    this.renderTimer();
    if (this.order && this.order.status === 'reserved') {
      this.noteEl.textContent = `You won! Pay within ${clock(timeOf(this.order.expires_at) - now())}.`;
    }
  }

  renderTimer() {
    const a = this.a;
    if (a.status === 'active') {
      const left = timeOf(a.ends_at) - now();
      this.timerEl.textContent = left > 0 ? `ends in ${clock(left)}` : 'closing…';
      this.timerEl.classList.toggle('urgent', left < 15000);
    } else if (a.status === 'scheduled') {
      this.timerEl.textContent = 'starting soon';
    } else if (a.status === 'closing') {
      this.timerEl.textContent = 'closing…';
    } else {
      this.timerEl.textContent = a.status === 'sold' ? 'sold' : 'ended';
    }
  }

  render() {
    const a = this.a;
    const me = (session.current() || {}).user;
    this.el.dataset.status = a.status;
    this.titleEl.textContent = a.title || a.sku;
    this.priceEl.textContent = money(a.leader ? a.price_cents : a.starting_bid_cents, a.currency);
    const bids = `${a.bids || 0} bid${a.bids === 1 ? '' : 's'}`;
    if (a.status === 'sold') this.leaderEl.textContent = a.winner === me ? 'You won' : `Sold to ${a.winner}`;
    else if (a.leader) this.leaderEl.textContent = a.leader === me ? `You're winning · ${bids}` : `${a.leader} leads · ${bids}`;
    else this.leaderEl.textContent = a.status === 'active' ? 'No bids yet · starting bid' : '';
    this.leaderEl.dataset.leader = a.leader || '';
    this.renderTimer();
    let actions = [];
    let note = this.note;
    let kind = this.noteKind;
    // The same button elements stay in place while the price moves (only their text changes), so a
    // tap or the caret in the max field survives a stream of bids.
    if (a.status === 'active') {
      this.bidBtn.textContent = this.busy ? 'Bidding…' : `Bid ${money(this.minBid(), a.currency)}`;
      this.bidBtn.disabled = this.busy;
      this.maxBtn.disabled = this.busy;
      actions = [this.bidBtn, this.maxInput, this.maxBtn];
    } else if (a.status === 'sold' && a.winner === me) {
      if (this.order && this.order.status === 'paid') {
        actions = [this.paidEl];
        note = 'Paid. It is yours.';
        kind = 'paid';
      } else if (this.order && this.order.status === 'reserved') {
        this.payBtn.textContent = `Pay ${money(this.order.amount_cents, a.currency)}`;
        this.payBtn.disabled = this.busy;
        actions = [this.payBtn];
        note = `You won! Pay within ${clock(timeOf(this.order.expires_at) - now())}.`;
        kind = 'reserved';
      } else if (!this.order) {
        this.loadOrder();
      }
    } else if (a.status === 'sold') {
      note = `Sold for ${money(a.price_cents, a.currency)}.`;
      kind = '';
    } else if (a.status === 'unsold') {
      note = 'Ended without a sale.';
      kind = '';
    } else if (a.status === 'scheduled') {
      actions = [h('button', { class: 'btn buy', type: 'button', disabled: true, text: 'Bidding opens soon' })];
    }
    this.noteEl.textContent = note;
    this.noteEl.className = `sale-note ${kind}`;
    const same = actions.length === this.actionsEl.children.length && actions.every((el, i) => this.actionsEl.children[i] === el);
    if (!same) this.actionsEl.replaceChildren(...actions);
  }

  async bidMax() {
    const cents = Math.round(Number(this.maxInput.value) * 100);
    if (!(cents > 0)) {
      this.say('Enter your maximum in dollars.', 'error');
      return;
    }
    await this.bid(cents);
  }

  async bid(maxCents) {
    let s = session.current();
    if (!s) s = await session.signIn({ reason: 'Sign in to bid.' });
    if (!s) return;
    this.key = this.key || newKey();
    this.busy = true;
    this.render();
    try {
      const r = await api('POST', `/api/auctions/${encodeURIComponent(this.id)}/bids`, {
        token: s.token, json: { max_cents: maxCents }, headers: { 'Idempotency-Key': this.key },
      });
      this.key = null;
      this.maxInput.value = '';
      if (r.status === 'leading') {
        this.a.price_cents = Math.max(this.a.price_cents, r.price_cents);
        this.a.leader = s.user;
        this.note = maxCents > r.price_cents ? `You're winning. Your max is ${money(maxCents, this.a.currency)}.` : 'You\'re winning.';
        this.noteKind = 'reserved';
      } else {
        this.a.price_cents = Math.max(this.a.price_cents, r.price_cents);
        this.note = 'Someone has a higher maximum: you were outbid at once.';
        this.noteKind = 'declined';
      }
      this.a.ends_at = r.ends_at || this.a.ends_at;
    } catch (e) {
      if (e.status === 0 || e.status >= 500) {
        this.note = 'Could not reach the auction. Try again (the same bid is never placed twice).';
        this.noteKind = 'error';
      } else {
        this.key = null;
        const msgs = {
          bid_too_low: () => `Too low: the next bid is at least ${money(e.body.min_bid_cents, this.a.currency)}.`,
          already_leading: () => 'You are already winning with that maximum.',
          auction_not_active: () => 'Bidding has closed.',
        };
        this.note = msgs[e.code] ? msgs[e.code]() : e.status === 403 ? 'Hosts cannot bid on their own auctions.' : e.message;
        this.noteKind = e.code === 'already_leading' ? 'reserved' : 'declined';
      }
    } finally {
      this.busy = false;
      this.render();
    }
  }

  async loadOrder() {
    if (this.loadingOrder) return;
    this.loadingOrder = true;
    try {
      const s = session.current();
      let orderId = this.a.order;
      if (!orderId) orderId = (await api('GET', `/api/auctions/${encodeURIComponent(this.id)}`)).order;
      if (s && orderId) {
        this.order = await api('GET', `/api/orders/${encodeURIComponent(orderId)}`, { token: s.token });
        this.render();
      }
    } catch {
      // asked again on the next render
    } finally {
      this.loadingOrder = false;
    }
  }

  async pay() {
    const s = session.current();
    if (!s || !this.order) return;
    this.busy = true;
    this.render();
    try {
      this.order = await api('POST', `/api/orders/${encodeURIComponent(this.order.id)}/pay`, { token: s.token, json: { payment_method: 'pm_card_visa' } });
      this.note = '';
    } catch (e) {
      if (e.code === 'order_not_pending') this.order = { ...this.order, status: e.body.status };
      this.note = e.code === 'card_declined' ? 'Card declined.' : e.message;
      this.noteKind = 'declined';
    } finally {
      this.busy = false;
      this.render();
    }
  }
}
