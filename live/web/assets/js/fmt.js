// Formatting of money, counts and clocks.

export function money(cents, currency = 'USD') {
  const n = Number(cents) / 100;
  try {
    return new Intl.NumberFormat(undefined, { style: 'currency', currency }).format(n);
  } catch {
    return `${n.toFixed(2)} ${currency}`;
  }
}

export function count(n) {
  n = Number(n) || 0;
  if (n < 1000) return String(n);
  if (n < 1e6) return `${(n / 1000).toFixed(n < 1e4 ? 1 : 0).replace(/\.0$/, '')}k`;
  return `${(n / 1e6).toFixed(1).replace(/\.0$/, '')}M`;
}

// Milliseconds as m:ss (or h:mm:ss); never negative.
export function clock(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return hh ? `${hh}:${String(mm).padStart(2, '0')}:${ss}` : `${mm}:${ss}`;
}

export function percent(x) {
  return `${(Number(x || 0) * 100).toFixed(1)}%`;
}

// The server's clock, as far as we know it: snapshots carry `ts` (epoch ms).
let skew = 0;
export function syncClock(serverTs) {
  if (typeof serverTs === 'number') skew = serverTs - Date.now();
}
export function now() {
  return Date.now() + skew;
}

export function timeOf(iso) {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}
