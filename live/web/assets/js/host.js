// The host console /host/{stream} (docs/pages.md): go live (WHIP from the camera, or a key for
// OBS), start/end, pin/unpin, flash sales, moderation, and the stream's stats with a chart.
import { api } from './api.js';
import { $, h, svg, syncList, toast } from './dom.js';
import { clock, count, money, now, percent, syncClock, timeOf } from './fmt.js';
import { LiveSocket } from './live.js';
import { publish } from './media.js';
import * as session from './session.js';

session.setScope('host');
const streamId = decodeURIComponent(location.pathname.split('/')[2] || '');
const STATS_EVERY_MS = 3000;
const MUTE_S = 600;
const SKUS_KEY = 'livesale.skus';

const state = { stream: null, sales: new Map(), auctions: new Map(), pinned: null, likes: 0 };
const els = {
  title: $('#title'), status: $('#status'), viewers: $('#viewers'), likes: $('#likes-total'), conn: $('#conn'),
  start: $('#start'), end: $('#end'), warning: $('#owner-warning'), preview: $('#preview'), previewPoster: $('#preview-poster'),
  golive: $('#golive'), stopcam: $('#stopcam'), obs: $('#obs'), obsInfo: $('#obs-info'), videoStatus: $('#video-status'),
  stats: $('#stats'), statsNote: $('#stats-note'), chart: $('#chart'), pinnedNow: $('#pinned-now'),
  pinForm: $('#pin-form'), pinSku: $('#pin-sku'), unpin: $('#unpin'), productForm: $('#product-form'),
  saleForm: $('#sale-form'), auctionForm: $('#auction-form'), hostAuctions: $('#host-auctions'), hostSales: $('#host-sales'), comments: $('#host-comments'), skus: $('#skus'),
};
$('#viewer-link').href = `/s/${encodeURIComponent(streamId)}`;

const token = () => session.sessionToken();

async function hostCall(method, path, json) {
  let s = session.current();
  if (!s || s.role !== 'host') s = await session.signIn({ role: 'host', user: state.stream ? state.stream.host : '', reason: 'Sign in as this stream\'s host.' });
  if (!s) throw new Error('not signed in');
  return api(method, path, { token: s.token, json });
}

function report(e) {
  if (e && e.message === 'not signed in') return;
  toast(e.message || String(e), 'error');
}

function dollarsToCents(v) {
  return Math.round(Number(v) * 100);
}

// ---- known SKUs (there is no product list endpoint: the console remembers what it has seen) ----

function knownSkus() {
  try {
    return JSON.parse(localStorage.getItem(SKUS_KEY) || '[]');
  } catch {
    return [];
  }
}
function rememberSku(sku) {
  if (!sku) return;
  const list = [sku, ...knownSkus().filter((x) => x !== sku)].slice(0, 30);
  localStorage.setItem(SKUS_KEY, JSON.stringify(list));
  els.skus.replaceChildren(...list.map((x) => h('option', { value: x })));
}

// ---- stream state ----------------------------------------------------------------------------

function renderStream() {
  const st = state.stream;
  if (!st) return;
  els.title.textContent = st.title;
  document.title = `Host · ${st.title} · livesale`;
  const labels = { live: 'LIVE', scheduled: 'Scheduled', ended: 'Ended' };
  els.status.textContent = labels[st.status] || st.status;
  els.status.className = `badge ${st.status}`;
  document.body.dataset.stream = st.status;
  els.start.hidden = st.status !== 'scheduled';
  els.end.hidden = st.status !== 'live';
  const s = session.current();
  if (s && s.user !== st.host && s.role !== 'admin') {
    els.warning.textContent = `Signed in as ${s.user}: only ${st.host} (the host) can control this stream.`;
    els.warning.hidden = false;
  } else if (!s) {
    els.warning.textContent = `Sign in as ${st.host} to control this stream.`;
    els.warning.hidden = false;
  } else {
    els.warning.hidden = true;
  }
}

function renderPinned(product) {
  state.pinned = product;
  els.pinnedNow.replaceChildren(product
    ? h('span', {}, 'Pinned: ', h('b', { text: product.title }), ` · ${product.sku} · ${money(product.price_cents, product.currency)}`)
    : 'Nothing pinned');
  if (product) rememberSku(product.sku);
}

els.start.addEventListener('click', async () => {
  try {
    state.stream = await hostCall('POST', `/api/streams/${streamId}/start`);
    renderStream();
    toast('You are live.');
  } catch (e) { report(e); }
});

// Two taps to end: no confirm() (it blocks the page and live updates).
let endArmed = 0;
els.end.addEventListener('click', async () => {
  if (!endArmed) {
    els.end.textContent = 'Tap again to end';
    endArmed = setTimeout(() => { endArmed = 0; els.end.textContent = 'End stream'; }, 4000);
    return;
  }
  clearTimeout(endArmed);
  endArmed = 0;
  els.end.textContent = 'End stream';
  try {
    state.stream = await hostCall('POST', `/api/streams/${streamId}/end`);
    renderStream();
    stopCamera();
  } catch (e) { report(e); }
});

// ---- camera (WHIP) and OBS -------------------------------------------------------------------

let camera = null;
let publisher = null;

async function goLive() {
  els.golive.disabled = true;
  try {
    const s = session.current() || await session.signIn({ role: 'host', user: state.stream && state.stream.host });
    if (!s) return;
    if (!camera) {
      camera = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: true });
      els.preview.srcObject = camera;
      els.previewPoster.hidden = true;
    }
    publisher = await publish(streamId, camera, s.token);
    els.videoStatus.textContent = 'publishing';
    els.videoStatus.className = 'badge live';
    els.golive.hidden = true;
    els.stopcam.hidden = false;
    publisher.pc.addEventListener('connectionstatechange', () => {
      const st = publisher && publisher.pc.connectionState;
      if (st === 'failed') {
        toast('The video connection failed.', 'error');
        stopCamera();
      }
    });
  } catch (e) {
    if (e.name === 'NotAllowedError') toast('Camera permission was refused.', 'error');
    else if (e.status === 404 || e.status === 405) toast('This server has no WHIP endpoint (media is not enabled).', 'error');
    else report(e);
  } finally {
    els.golive.disabled = false;
  }
}

function stopCamera() {
  if (publisher) publisher.stop();
  publisher = null;
  if (camera) camera.getTracks().forEach((t) => t.stop());
  camera = null;
  els.preview.srcObject = null;
  els.previewPoster.hidden = false;
  els.videoStatus.textContent = 'off';
  els.videoStatus.className = 'badge';
  els.golive.hidden = false;
  els.stopcam.hidden = true;
}

els.golive.addEventListener('click', goLive);
els.stopcam.addEventListener('click', stopCamera);
els.obs.addEventListener('click', async () => {
  try {
    const r = await hostCall('POST', `/api/streams/${streamId}/key`);
    $('#whip-url').textContent = new URL(r.whip_url, location.href).href;
    $('#stream-key').textContent = r.stream_key;
    els.obsInfo.hidden = false;
    els.obs.textContent = 'New stream key';
  } catch (e) {
    if (e.status === 404 || e.status === 405) toast('This server has no stream keys (media is not enabled).', 'error');
    else report(e);
  }
});
for (const b of document.querySelectorAll('[data-copy]')) {
  b.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText($(`#${b.dataset.copy}`).textContent);
      toast('Copied.');
    } catch {
      toast('Copy failed: select the text instead.', 'error');
    }
  });
}

// ---- pin, products ---------------------------------------------------------------------------

els.pinForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const sku = els.pinSku.value.trim();
  try {
    const st = await hostCall('POST', `/api/streams/${streamId}/pin`, { sku });
    renderPinned(st.pinned);
    els.pinSku.value = '';
  } catch (ex) { report(ex); }
});
els.unpin.addEventListener('click', async () => {
  try {
    const st = await hostCall('DELETE', `/api/streams/${streamId}/pin`);
    renderPinned(st.pinned);
  } catch (ex) {
    if (ex.status === 405) toast('This server cannot unpin yet.', 'error');
    else report(ex);
  }
});
els.productForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = new FormData(els.productForm);
  try {
    const p = await hostCall('POST', '/api/products', {
      sku: String(f.get('sku')).trim(), title: String(f.get('title')).trim(), price_cents: dollarsToCents(f.get('price')),
    });
    rememberSku(p.sku);
    els.productForm.reset();
    toast(`Added ${p.title}.`);
  } catch (ex) { report(ex); }
});

// ---- flash sales -----------------------------------------------------------------------------

els.saleForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = new FormData(els.saleForm);
  try {
    const sale = await hostCall('POST', `/api/streams/${streamId}/sales`, {
      sku: String(f.get('sku')).trim(),
      price_cents: dollarsToCents(f.get('price')),
      stock: Number(f.get('stock')),
      per_user_limit: Number(f.get('limit')),
      duration_s: Math.round(Number(f.get('duration')) * 60),
      hold_s: Number(f.get('hold')),
    });
    upsertSale(sale);
    upsertSale(await hostCall('POST', `/api/sales/${sale.id}/start`));
    rememberSku(sale.sku);
    toast('Sale is open.');
  } catch (ex) { report(ex); }
});

function upsertSale(sale) {
  const prev = state.sales.get(sale.id) || {};
  state.sales.set(sale.id, { ...prev, ...sale });
  renderSales();
}

function renderSales() {
  const list = Array.from(state.sales.values()).sort((a, b) => (a.status === 'ended') - (b.status === 'ended'));
  syncList(els.hostSales, list, {
    key: (s) => s.id,
    shape: (s) => (s.status === 'ended' ? 'ended' : 'open'),
    build: (s) => h('li', { class: 'host-sale', dataset: { sale: s.id } },
      h('span', { class: 'name' }),
      s.status === 'ended'
        ? h('span', { class: 'badge ended', text: 'ended' })
        : h('button', { class: 'btn danger small', type: 'button', text: 'End sale', onclick: () => endSale(s.id) }),
      h('span', { class: 'facts' })),
    update: (el, s) => {
      const end = timeOf(s.ends_at);
      const when = s.status === 'active' && end ? `ends in ${clock(end - now())}` : s.status;
      el.dataset.status = s.status;
      el.querySelector('.name').textContent = s.title || s.sku;
      el.querySelector('.facts').textContent = `${money(s.price_cents, s.currency)} · ${s.available} of ${s.stock} left${s.sold != null ? ` · ${s.sold} sold` : ''} · ${when}`;
    },
  });
}

async function endSale(id) {
  try {
    upsertSale(await hostCall('POST', `/api/sales/${id}/end`));
  } catch (e) { report(e); }
}

// ---- auctions (docs/auctions.md) ----------------------------------------------------------

els.auctionForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = new FormData(els.auctionForm);
  try {
    const a = await hostCall('POST', `/api/streams/${streamId}/auctions`, {
      sku: String(f.get('sku')).trim(),
      starting_bid_cents: dollarsToCents(f.get('start')),
      duration_s: Number(f.get('duration')),
      hold_s: Number(f.get('hold')),
    });
    upsertAuction(a);
    upsertAuction(await hostCall('POST', `/api/auctions/${a.id}/start`));
    rememberSku(a.sku);
    toast('Auction is open.');
  } catch (ex) {
    if (ex.status === 404 && ex.code === 'not_found' && /Not Found/.test(ex.message)) toast('This server has no auctions yet.', 'error');
    else report(ex);
  }
});

function upsertAuction(a) {
  const prev = state.auctions.get(a.id) || {};
  state.auctions.set(a.id, { ...prev, ...a });
  renderAuctions();
}

function renderAuctions() {
  syncList(els.hostAuctions, Array.from(state.auctions.values()), {
    key: (a) => a.id,
    shape: () => 'auction',
    build: (a) => h('li', { class: 'host-sale', dataset: { auction: a.id } },
      h('span', { class: 'name' }), h('span', { class: 'badge' }), h('span', { class: 'facts' })),
    update: (el, a) => {
      const end = timeOf(a.ends_at);
      const when = a.status === 'active' && end ? `ends in ${clock(end - now())}` : a.status;
      const who = a.status === 'sold' ? `won by ${a.winner}` : a.leader ? `${a.leader} leads` : 'no bids';
      el.dataset.status = a.status;
      el.querySelector('.name').textContent = a.title || a.sku;
      const badge = el.querySelector('.badge');
      badge.textContent = a.status;
      badge.className = `badge ${a.status === 'active' ? 'live' : ''}`;
      el.querySelector('.facts').textContent = `${money(a.price_cents || a.starting_bid_cents, a.currency)} · ${who} · ${a.bids || 0} bids · ${when}`;
    },
  });
}

// ---- comments and moderation -----------------------------------------------------------------

function addComment(c) {
  const li = h('li', { dataset: { id: c.id, user: c.user } },
    h('span', { class: 'body' }, h('span', { class: 'who', text: c.user }), h('span', { class: 'text', text: c.text })),
    h('button', { class: 'btn small ghost', type: 'button', text: 'Delete', title: 'Delete this comment', onclick: () => deleteComment(c.id) }),
    h('button', { class: 'btn small danger', type: 'button', text: 'Mute', title: `Mute ${c.user} for 10 minutes`, onclick: () => mute(c.user) }));
  els.comments.prepend(li);
  while (els.comments.children.length > 200) els.comments.lastElementChild.remove();
}

async function deleteComment(id) {
  try {
    await hostCall('DELETE', `/api/streams/${streamId}/comments/${encodeURIComponent(id)}`);
    removeComment(id);
  } catch (e) { report(e); }
}

function removeComment(id) {
  for (const li of els.comments.children) if (li.dataset.id === id) li.remove();
}

async function mute(user) {
  try {
    await hostCall('POST', `/api/streams/${streamId}/mutes`, { user, duration_s: MUTE_S });
    toast(`${user} is muted for 10 minutes.`);
  } catch (e) { report(e); }
}

// ---- stats -----------------------------------------------------------------------------------

const STAT_TILES = [
  ['viewers_now', 'watching', count], ['viewers_peak', 'peak', count], ['unique_viewers', 'unique viewers', count],
  ['comments', 'comments', count], ['likes', 'likes', count], ['orders', 'orders', count],
  ['paid_orders', 'paid orders', count], ['units_sold', 'units sold', count], ['gmv_cents', 'sales', (v) => money(v)],
  ['conversion', 'conversion', percent], ['gpm_cents', 'per 1000 views', (v) => money(v)], ['avg_watch_s', 'avg watch', (v) => clock(v * 1000)],
];

function statsPlaceholder(text) {
  els.stats.replaceChildren(h('p', { class: 'muted', text }));
  els.chart.setAttribute('hidden', '');
  els.chart.nextElementSibling.hidden = true;
}

function renderStats(st) {
  els.chart.removeAttribute('hidden');
  els.chart.nextElementSibling.hidden = false;
  els.stats.replaceChildren(...STAT_TILES.map(([k, label, f]) =>
    h('div', { class: 'stat', dataset: { stat: k } }, h('b', { text: st[k] == null ? '–' : f(st[k]) }), h('span', { text: label }))));
  els.statsNote.textContent = st.provisional ? 'provisional · live' : 'final';
  renderChart(st.series || []);
}

// A small hand-drawn SVG: orders per minute as bars, peak viewers per minute as a line, over the last
// 30 minutes (at least 10 slots, so one minute of data is not one huge bar). Drawn at the element's own
// pixel size so text is never stretched.
const SLOTS_MIN = 10;
const SLOTS_MAX = 30;

function niceMax(v) {
  if (v <= 2) return 2;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v && Number.isInteger((m * p) / 2)) return m * p;
  return Math.ceil(v / 2) * 2;
}

function renderChart(series) {
  const W = Math.max(240, Math.round(els.chart.getBoundingClientRect().width) || 600);
  const H = 150;
  const pad = { l: 34, r: 34, t: 10, b: 20 };
  const pts = series.slice(-SLOTS_MAX);
  const n = Math.max(pts.length, SLOTS_MIN);
  const maxV = niceMax(Math.max(0, ...pts.map((p) => p.viewers_max || 0)));
  const maxO = niceMax(Math.max(0, ...pts.map((p) => p.orders || 0)));
  const iw = W - pad.l - pad.r;
  const ih = H - pad.t - pad.b;
  const step = iw / n;
  const x = (i) => pad.l + step * (n - pts.length + i) + step / 2; // newest minute on the right
  const yV = (v) => pad.t + ih - (v / maxV) * ih;
  const kids = [];
  for (let g = 0; g <= 2; g++) {
    const y = pad.t + (ih * g) / 2;
    kids.push(svg('line', { class: 'grid', x1: pad.l, x2: W - pad.r, y1: y, y2: y }));
    kids.push(svg('text', { x: pad.l - 6, y: y + 3, 'text-anchor': 'end' }, String((maxV * (2 - g)) / 2)));
    kids.push(svg('text', { x: W - pad.r + 6, y: y + 3 }, String((maxO * (2 - g)) / 2)));
  }
  const bw = Math.min(step * 0.6, 28);
  pts.forEach((p, i) => {
    const bh = ((p.orders || 0) / maxO) * ih;
    if (bh > 0) kids.push(svg('rect', { class: 'bar', x: x(i) - bw / 2, y: pad.t + ih - bh, width: bw, height: bh, rx: 2 }));
  });
  if (pts.length) {
    const d = pts.map((p, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${yV(p.viewers_max || 0).toFixed(1)}`).join(' ');
    kids.push(svg('path', { class: 'line', d }));
    const last = pts[pts.length - 1];
    kids.push(svg('circle', { class: 'dot', cx: x(pts.length - 1), cy: yV(last.viewers_max || 0), r: 3.5 }));
    const label = (p) => new Date(p.minute).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    kids.push(svg('text', { x: x(0), y: H - 4, 'text-anchor': pts.length > 1 ? 'start' : 'middle' }, label(pts[0])));
    if (pts.length > 1) kids.push(svg('text', { x: x(pts.length - 1), y: H - 4, 'text-anchor': 'end' }, label(last)));
  } else {
    kids.push(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'No data yet'));
  }
  els.chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
  els.chart.replaceChildren(...kids);
}

// Sold and held counts are not pushed to viewers; the console reads them with the stats.
async function refreshSales() {
  try {
    const r = await api('GET', `/api/streams/${encodeURIComponent(streamId)}/sales`);
    for (const sale of r.sales) upsertSale(sale);
    for (const a of r.auctions || []) upsertAuction(a);
  } catch {
    // the next round tries again
  }
}

let statsTimer = 0;
async function pollStats() {
  clearTimeout(statsTimer);
  refreshSales();
  const t = token();
  if (t) {
    try {
      renderStats(await api('GET', `/api/streams/${streamId}/stats`, { token: t }));
    } catch (e) {
      if (e.status === 404 || e.status === 405) {
        els.statsNote.textContent = 'not available on this server';
        statsPlaceholder('This server does not report stream stats yet.');
        return; // no stats endpoint: stop asking
      }
      els.statsNote.textContent = e.status === 403 ? 'only the host can see these' : 'stats unavailable, retrying';
      if (e.status === 403) statsPlaceholder(`Only ${state.stream ? state.stream.host : 'the host'} can see this stream's stats.`);
    }
  } else {
    els.statsNote.textContent = '';
    statsPlaceholder('Sign in as the host to see live stats.');
  }
  statsTimer = setTimeout(pollStats, STATS_EVERY_MS);
}

// ---- live socket -----------------------------------------------------------------------------

const handlers = {
  snapshot(ev) {
    syncClock(ev.ts);
    state.stream = { ...(state.stream || {}), ...ev.stream };
    renderStream();
    renderPinned(ev.pinned);
    state.sales.clear();
    for (const s of ev.sales || []) upsertSale(s);
    els.comments.replaceChildren();
    for (const c of ev.recent || []) addComment(c);
    els.viewers.textContent = `${count(ev.viewers)} watching`;
    els.likes.textContent = `♥ ${count(ev.likes)}`;
  },
  comment: addComment,
  comment_deleted(ev) { removeComment(ev.id); },
  likes(ev) { els.likes.textContent = `♥ ${count(ev.total)}`; },
  viewers(ev) { els.viewers.textContent = `${count(ev.count)} watching`; },
  stock(ev) {
    const s = state.sales.get(ev.sale);
    if (s) upsertSale({ id: ev.sale, available: ev.available });
  },
  sale(ev) {
    const { sale: id, type: _t, seq: _s, ts: _ts, ...rest } = ev;
    upsertSale({ id, ...rest });
  },
  pin(ev) { renderPinned(ev.product); },
  bid(ev) {
    if (state.auctions.has(ev.auction)) upsertAuction({ id: ev.auction, price_cents: ev.price_cents, leader: ev.leader, ends_at: ev.ends_at, bids: ev.bids });
  },
  auction(ev) {
    const { auction: id, type: _t, seq: _s, ts: _ts, ...rest } = ev;
    if (state.auctions.has(id)) upsertAuction({ id, ...rest });
    else api('GET', `/api/auctions/${encodeURIComponent(id)}`).then(upsertAuction).catch(() => {});
  },
  stream(ev) {
    state.stream = { ...state.stream, status: ev.status };
    renderStream();
  },
  video(ev) {
    if (!publisher) {
      els.videoStatus.textContent = ev.status === 'live' ? 'live (OBS)' : 'off';
      els.videoStatus.className = ev.status === 'live' ? 'badge live' : 'badge';
    }
  },
};

function onStatus(status, info = {}) {
  if (status === 'reconnecting') {
    els.conn.textContent = 'Connection lost. Reconnecting…';
    els.conn.className = 'conn warn';
    els.conn.hidden = false;
  } else if (status === 'live') {
    els.conn.hidden = true;
  } else if (status === 'closed') {
    els.conn.textContent = info.code === 4504 ? 'This stream does not exist any more.' : 'Disconnected.';
    els.conn.className = 'conn error';
    els.conn.hidden = false;
  }
}

const live = new LiveSocket(streamId, {
  token: token(),
  onEvent: (ev) => { const f = handlers[ev.type]; if (f) f(ev); },
  onStatus,
});

async function init() {
  els.skus.replaceChildren(...knownSkus().map((x) => h('option', { value: x })));
  session.mountChip($('#chip'), 'host', () => (state.stream ? state.stream.host : ''));
  session.onChange((s) => {
    renderStream();
    live.setToken(s && s.token);
    pollStats();
  });
  try {
    state.stream = await api('GET', `/api/streams/${encodeURIComponent(streamId)}`);
    renderStream();
    for (const s of state.stream.sales || []) rememberSku(s.sku);
  } catch (e) { report(e); }
  live.connect();
  pollStats();
  setInterval(() => { renderSales(); renderAuctions(); }, 1000);
}

init();
