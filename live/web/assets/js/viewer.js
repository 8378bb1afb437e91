// The viewer page /s/{stream} (docs/pages.md): video, comments, likes, viewers, the pinned product
// and each flash sale with Buy. Everything live comes over one WebSocket (docs/realtime.md).
import { api } from './api.js';
import { $, h, toast, safeImageUrl } from './dom.js';
import { count, money, now, syncClock } from './fmt.js';
import { LiveSocket } from './live.js';
import { play } from './media.js';
import { AuctionCard } from './auctioncard.js';
import { GroupBuyCard } from './groupcard.js';
import { SaleCard } from './salecard.js';
import * as session from './session.js';

const streamId = decodeURIComponent(location.pathname.split('/')[2] || '');
const MAX_COMMENTS = 200;
const LIKE_FLUSH_MS = 250;
const LIKES_PER_FRAME = 50;

const state = { status: null, likes: 0, pendingLikes: 0, video: null };
const cards = new Map();

const auctions = new Map();
const groupbuys = new Map();

// Auction and group-buy cards, by event type, beside the flash-sale handlers below.
const extraHandlers = {
  async auction(ev) {
    const card = auctions.get(ev.auction) || await addAuction(ev.auction);
    if (!card) return;
    const { auction: _id, type: _t, seq: _s, ts: _ts, ...rest } = ev;
    card.update(rest);
    if (['sold', 'unsold'].includes(ev.status)) retireAuctionLater(card);
  },
  async bid(ev) {
    const card = auctions.get(ev.auction) || await addAuction(ev.auction);
    if (card) card.onBid(ev);
  },
  async group(ev) {
    let card = groupbuys.get(ev.groupbuy);
    if (card) {
      // A group moved units (joined, closed, released): the group-buy's own counts changed too.
      api('GET', `/api/groupbuys/${encodeURIComponent(ev.groupbuy)}`).then((gb) => card.update(gb)).catch(() => {});
    } else {
      card = await addGroupBuy(ev.groupbuy);
    }
    if (card) card.onGroup(ev);
  },
};

async function addGroupBuy(id, view) {
  if (groupbuys.has(id)) return groupbuys.get(id);
  try {
    view = view || await api('GET', `/api/groupbuys/${encodeURIComponent(id)}`);
  } catch {
    return null;
  }
  if (groupbuys.has(id)) return groupbuys.get(id);
  const card = new GroupBuyCard(view);
  groupbuys.set(id, card);
  els.sales.append(card.el);
  return card;
}

async function addAuction(id, view) {
  if (auctions.has(id)) return auctions.get(id);
  try {
    view = view || await api('GET', `/api/auctions/${encodeURIComponent(id)}`);
  } catch {
    return null;
  }
  if (auctions.has(id)) return auctions.get(id);
  const card = new AuctionCard(view);
  auctions.set(id, card);
  els.sales.prepend(card.el);
  return card;
}

function retireAuctionLater(card) {
  setTimeout(() => {
    const me = (session.current() || {}).user;
    if (card.a.winner && card.a.winner === me) return; // the winner keeps Pay on screen
    card.el.remove();
    auctions.delete(card.id);
  }, 20000);
}

// Auctions and group-buys are not in the snapshot: GET /api/streams/{id}/sales lists them under
// `auctions` and `groupbuys`.
async function loadAuctionsAndGroupBuys() {
  try {
    const r = await api('GET', `/api/streams/${encodeURIComponent(streamId)}/sales`);
    const me = (session.current() || {}).user;
    for (const a of r.auctions || []) {
      const open = ['scheduled', 'active', 'closing'].includes(a.status);
      if (auctions.has(a.id)) auctions.get(a.id).update(a);
      else if (open || (a.status === 'sold' && a.winner === me)) addAuction(a.id, a);
    }
    for (const gb of r.groupbuys || []) {
      if (groupbuys.has(gb.id)) groupbuys.get(gb.id).update(gb);
      else if (gb.status === 'active') addGroupBuy(gb.id, gb);
    }
  } catch {
    // a server without the listing: auction events still bring cards in
  }
}

const els = {
  title: $('#title'), status: $('#status'), viewers: $('#viewers'), conn: $('#conn'),
  pinned: $('#pinned'), sales: $('#sales'), comments: $('#comments'), likes: $('#likes'),
  video: $('#video'), poster: $('#poster'), posterText: $('#poster-text'), unmute: $('#unmute'),
  hearts: $('#hearts'), form: $('#composer'), input: $('#comment'), likeBtn: $('#like'),
};

// ---- header ----------------------------------------------------------------------------------

function setStatus(status) {
  state.status = status;
  const labels = { live: 'LIVE', scheduled: 'Starting soon', ended: 'Ended' };
  els.status.textContent = labels[status] || status;
  els.status.className = `badge ${status}`;
  document.body.dataset.stream = status;
  if (status === 'ended') {
    showBanner('The stream has ended. Thanks for watching!', 'ended');
    showPoster('This stream has ended');
  }
}

function setViewers(n) {
  els.viewers.textContent = `${count(n)} watching`;
  els.viewers.dataset.count = String(n);
}

let bannerTimer = 0;
function showBanner(text, kind, ms = 0) {
  clearTimeout(bannerTimer);
  els.conn.textContent = text;
  els.conn.className = `conn ${kind}`;
  els.conn.hidden = false;
  if (ms) bannerTimer = setTimeout(() => { els.conn.hidden = true; }, ms);
}

// ---- pinned product and sales ----------------------------------------------------------------

function renderPinned(product) {
  if (!product) {
    els.pinned.replaceChildren();
    els.pinned.hidden = true;
    return;
  }
  const img = safeImageUrl(product.image_url);
  els.pinned.hidden = false;
  els.pinned.replaceChildren(h('article', { class: 'card pinned', dataset: { sku: product.sku } },
    img ? h('img', { class: 'thumb', src: img, alt: '' }) : h('div', { class: 'thumb', 'aria-hidden': 'true', text: (product.title || '?').trim().charAt(0).toUpperCase() }),
    h('div', { class: 'pinned-body' },
      h('span', { class: 'tag subtle', text: 'Pinned' }),
      h('h3', { class: 'pinned-title', text: product.title }),
      h('span', { class: 'pinned-price', text: money(product.price_cents, product.currency) }))));
}

function upsertSale(sale) {
  let card = cards.get(sale.id);
  if (!card) {
    card = new SaleCard(sale);
    cards.set(sale.id, card);
    els.sales.prepend(card.el);
    card.restore();
  } else {
    card.update(sale);
  }
  if (card.sale.status === 'ended') retireLater(card);
  return card;
}

// An ended sale stays on screen a little while ("Sale ended"), longer if this viewer has an order in it.
function retireLater(card) {
  if (card.retireTimer) return;
  card.retireTimer = setTimeout(() => {
    if (card.hasOrder || card.sale.status !== 'ended') {
      card.retireTimer = 0;
      return;
    }
    card.el.remove();
    cards.delete(card.id);
  }, 15000);
}

function markStockStale(stale) {
  for (const card of cards.values()) card.setStale(stale);
  for (const card of groupbuys.values()) card.setStale(stale);
}

// After a resume, any sale whose stock did not come in the resume frame is read over HTTP.
async function refreshStaleSales() {
  for (const card of cards.values()) {
    if (!card.stale) continue;
    try {
      card.update(await api('GET', `/api/sales/${encodeURIComponent(card.id)}`));
    } catch {
      // stays marked stale: never shown as current
    }
  }
}

// This user's orders on this stream (GET /api/me/orders, newest first): a reload or another device
// shows the open hold or the purchase on its sale's card.
async function adoptMyOrders() {
  const s = session.current();
  if (!s) return;
  try {
    const r = await api('GET', '/api/me/orders?limit=50', { token: s.token });
    for (const o of r.orders) {
      const card = o.stream_id === streamId && cards.get(o.sale);
      if (card) card.adopt(o);
    }
  } catch {
    // an older server without me/orders: localStorage (SaleCard.restore) still covers this browser
  }
}

// ---- comments --------------------------------------------------------------------------------

function commentEl(c) {
  return h('li', { class: 'comment', dataset: { id: c.id } },
    h('span', { class: 'who', text: c.user }), ' ', h('span', { class: 'text', text: c.text }));
}

function addComments(list, replace = false) {
  const box = els.comments;
  const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  if (replace) box.replaceChildren();
  for (const c of list) box.append(commentEl(c));
  while (box.children.length > MAX_COMMENTS) box.firstElementChild.remove();
  if (stick || replace) box.scrollTop = box.scrollHeight;
  box.classList.toggle('empty', box.children.length === 0);
}

// Older comments than the snapshot's last 50: GET /api/streams/{id}/comments?before=<oldest seq>.
const RECENT_IN_SNAPSHOT = 50;
let oldestSeq = null;

function showEarlierButton(recent) {
  oldestSeq = recent.length ? Math.min(...recent.map((c) => c.seq)) : null;
  $('#earlier').hidden = !(recent.length >= RECENT_IN_SNAPSHOT && oldestSeq > 1);
}

$('#earlier').addEventListener('click', async () => {
  const btn = $('#earlier');
  btn.disabled = true;
  try {
    const r = await api('GET', `/api/streams/${encodeURIComponent(streamId)}/comments?before=${oldestSeq}&limit=50`);
    const older = r.comments.slice().reverse(); // newest first on the wire
    const box = els.comments;
    const height = box.scrollHeight;
    box.prepend(...older.map(commentEl));
    box.scrollTop += box.scrollHeight - height; // keep the reader where they were
    box.classList.toggle('empty', box.children.length === 0);
    if (older.length) oldestSeq = older[0].seq;
    btn.hidden = older.length < 50 || oldestSeq <= 1;
  } catch (e) {
    toast(e.status === 404 ? 'Earlier comments are not available here.' : e.message, 'error');
  } finally {
    btn.disabled = false;
  }
});

function deleteComment(id) {
  for (const li of els.comments.querySelectorAll('li.comment')) if (li.dataset.id === id) li.remove();
}

els.form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = els.input.value.trim();
  if (!text) return;
  let s = session.current();
  if (!s) s = await session.signIn({ reason: 'Sign in to join the chat.' });
  if (!s) return;
  if (!live.send({ type: 'comment', text })) {
    toast('Not connected: your comment was not sent.', 'error');
    return;
  }
  els.input.value = '';
});

// ---- likes -----------------------------------------------------------------------------------

function renderLikes() {
  els.likes.textContent = count(state.likes + state.pendingLikes);
  els.likes.dataset.count = String(state.likes + state.pendingLikes);
}

function heart() {
  const x = Math.round(Math.random() * 36 - 18);
  const el = h('span', { class: 'floating-heart', text: '♥' });
  el.style.setProperty('--dx', `${x}px`);
  el.style.setProperty('--hue', `${330 + Math.round(Math.random() * 40)}`);
  el.addEventListener('animationend', () => el.remove());
  els.hearts.append(el);
}

els.likeBtn.addEventListener('click', async () => {
  if (!session.current()) {
    const s = await session.signIn({ reason: 'Sign in to send likes.' });
    if (!s) return;
  }
  state.pendingLikes += 1;
  heart();
  renderLikes();
});

// Taps are batched: one frame per tick with up to 50 of them (the server counts up to 50 a second).
setInterval(() => {
  if (!state.pendingLikes || !live.open) return;
  const n = Math.min(state.pendingLikes, LIKES_PER_FRAME);
  if (live.send({ type: 'like', count: n })) {
    state.pendingLikes -= n;
    state.likes += n; // until the next total from the server says otherwise
    renderLikes();
  }
}, LIKE_FLUSH_MS);

// ---- video -----------------------------------------------------------------------------------

let player = null;
let playTimer = 0;
let videoUnavailable = false;

function showPoster(text) {
  els.posterText.textContent = text;
  els.poster.hidden = false;
  els.unmute.hidden = true;
}

let starting = false;

async function startVideo() {
  clearTimeout(playTimer);
  if (player || starting || videoUnavailable || state.status === 'ended') return;
  starting = true;
  try {
    const sess = await play(streamId, els.video, { onEnded: () => lost(sess) });
    player = sess;
    els.video.play().catch(() => {});
  } catch (e) {
    player = null;
    if (e.code === 'no_publisher') {
      showPoster(idlePosterText());
      // With the stream's `video` field known, the `video` event says when to try again.
      if (state.video == null) playTimer = setTimeout(startVideo, Math.max(2, e.retryAfter || 5) * 1000);
    } else if (e.status === 404 || e.status === 405) {
      videoUnavailable = true; // this server has no media plane
      showPoster('Video is not available on this server');
    } else {
      showPoster('Video will be back in a moment');
      playTimer = setTimeout(startVideo, 5000);
    }
  } finally {
    starting = false;
  }
}

// The peer connection of `sess` ended or failed: while the host still publishes, play again.
function lost(sess) {
  if (player !== sess) return;
  stopVideo(state.video === 'live' ? 'Reconnecting the video…' : 'The host\'s camera is off');
  if (state.video === 'live') playTimer = setTimeout(startVideo, 2000);
}

function stopVideo(text) {
  if (player) player.stop();
  player = null;
  els.video.srcObject = null;
  showPoster(text);
}

els.video.addEventListener('playing', () => {
  els.poster.hidden = true;
  els.unmute.hidden = !els.video.muted;
});
els.unmute.addEventListener('click', () => {
  els.video.muted = false;
  els.video.play().catch(() => {});
  els.unmute.hidden = true;
});
els.video.addEventListener('click', () => {
  if (!els.video.srcObject) return;
  els.video.muted = !els.video.muted;
  els.unmute.hidden = !els.video.muted;
});

function onVideo(status) {
  state.video = status;
  if (status === 'live') startVideo();
  else if (player) stopVideo(state.status === 'ended' ? 'This stream has ended' : 'The host\'s camera is off');
  else showPoster(idlePosterText());
}

function idlePosterText() {
  if (state.status === 'ended') return 'This stream has ended';
  return state.status === 'scheduled' ? 'The show starts soon' : 'Waiting for the host\'s camera';
}

// ---- the live socket -------------------------------------------------------------------------

const handlers = {
  snapshot(ev) {
    syncClock(ev.ts);
    els.title.textContent = ev.stream.title;
    document.title = `${ev.stream.title} · livesale`;
    setStatus(ev.stream.status);
    renderPinned(ev.pinned);
    const present = new Set();
    for (const sale of ev.sales || []) {
      present.add(sale.id);
      if (sale.status !== 'ended' || cards.has(sale.id)) upsertSale(sale);
    }
    for (const [id, card] of cards) {
      if (!present.has(id) && !card.hasOrder) {
        card.el.remove();
        cards.delete(id);
      }
    }
    for (const card of cards.values()) card.setStale(false); // group-buys: when their listing is read
    adoptMyOrders();
    loadAuctionsAndGroupBuys();
    state.likes = ev.likes || 0;
    renderLikes();
    setViewers(ev.viewers || 0);
    addComments(ev.recent || [], true);
    showEarlierButton(ev.recent || []);
    if (ev.stream.video) onVideo(ev.stream.video);
    else if (!player) startVideo(); // a server that does not say: ask WHEP (404: no media plane)
  },
  comment(ev) { addComments([ev]); },
  comment_deleted(ev) { deleteComment(ev.id); },
  likes(ev) {
    state.likes = Math.max(ev.total, 0);
    renderLikes();
  },
  viewers(ev) { setViewers(ev.count); },
  stock(ev) {
    const card = cards.get(ev.sale);
    if (card) card.update({ available: ev.available });
  },
  sale(ev) {
    const { sale: id, type: _t, seq: _s, ts: _ts, ...rest } = ev;
    upsertSale({ id, ...rest });
  },
  pin(ev) { renderPinned(ev.product); },
  stream(ev) {
    setStatus(ev.status);
    if (ev.status === 'ended') stopVideo('This stream has ended');
    else if (!player && !videoUnavailable) showPoster(idlePosterText());
  },
  video(ev) { onVideo(ev.status); },
  error(ev) {
    const messages = {
      rate_limited: 'Slow down: one comment a second.',
      muted: 'You are muted on this stream.',
      unauthenticated: 'Sign in to comment and like.',
      invalid_comment: 'That comment cannot be posted (1-280 characters, no blocked words).',
      unavailable: 'The chat is having trouble: try again in a moment.',
    };
    toast(messages[ev.code] || ev.message || ev.code, 'error');
    if (ev.code === 'unauthenticated') session.signOut();
  },
};

function onEvent(ev) {
  const f = handlers[ev.type] || extraHandlers[ev.type];
  if (f) f(ev);
}

function onStatus(status, info = {}) {
  document.body.dataset.conn = status;
  if (status === 'reconnecting') {
    markStockStale(true);
    showBanner('Connection lost. Reconnecting…', 'warn');
  } else if (status === 'live') {
    if (info.resumed) {
      showBanner('Reconnected. Everything is up to date.', 'ok', 2500);
      refreshStaleSales();
      loadAuctionsAndGroupBuys();
    } else if (els.conn.classList.contains('warn')) {
      els.conn.hidden = true;
    }
  } else if (status === 'closed') {
    markStockStale(true);
    const why = {
      4501: 'Your sign-in is no longer valid. Sign in again.',
      4503: 'You cannot watch this stream.',
      4504: 'This stream does not exist any more.',
    };
    showBanner(why[info.code] || 'Disconnected.', 'error');
    if (info.code === 4501) {
      session.signOut();
    }
  }
}

const live = new LiveSocket(streamId, { token: session.sessionToken(), onEvent, onStatus });
session.mountChip($('#chip'), 'viewer');
session.onChange((s) => {
  live.setToken(s && s.token);
  for (const card of cards.values()) card.restore();
  for (const card of auctions.values()) card.render();
  for (const card of groupbuys.values()) card.restore();
  adoptMyOrders();
});
if (document.body.dataset.conn !== 'closed') live.connect();

setInterval(() => {
  for (const card of cards.values()) card.tick();
  for (const card of auctions.values()) card.tick();
  for (const card of groupbuys.values()) card.tick();
}, 500);

// For tests and debugging: the page's own view of its state, read only.
window.livesale = Object.freeze({
  get seq() { return live.seq; },
  get connected() { return live.open; },
  get peer() { return player && player.pc; },
  now,
});
