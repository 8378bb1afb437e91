// The viewer WebSocket (docs/realtime.md): snapshot, then events; stream-log events are applied in
// `seq` order, and after a drop the client resumes with since=<last seq applied>.

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 8000;

export class LiveSocket {
  constructor(streamId, { token, onEvent, onStatus }) {
    this.streamId = streamId;
    this.token = token || null;
    this.onEvent = onEvent;
    this.onStatus = onStatus || (() => {});
    this.seq = null;
    this.ws = null;
    this.attempt = 0;
    this.stopped = false;
    this.timer = 0;
  }

  url() {
    const q = new URLSearchParams();
    if (this.token) q.set('token', this.token);
    if (this.seq != null) q.set('since', String(this.seq));
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}/ws/streams/${encodeURIComponent(this.streamId)}?${q}`;
  }

  connect(quiet = false) {
    clearTimeout(this.timer);
    this.stopped = false;
    const resuming = this.seq != null && !quiet;
    this.onStatus(resuming ? 'resuming' : 'connecting');
    const ws = new WebSocket(this.url());
    this.ws = ws;
    let first = true;
    ws.addEventListener('message', (m) => {
      if (ws !== this.ws) return;
      let data;
      try {
        data = JSON.parse(m.data);
      } catch {
        return;
      }
      const events = Array.isArray(data) ? data : [data];
      for (const ev of events) {
        if (!this.apply(ev)) return;
      }
      if (first) {
        first = false;
        this.attempt = 0;
        this.onStatus('live', { resumed: resuming });
      }
    });
    ws.addEventListener('close', (e) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (e.code >= 4500 && e.code <= 4999) {
        this.onStatus('closed', { code: e.code });
        return;
      }
      this.scheduleReconnect();
    });
  }

  // Applies one event; false when a gap was seen and the socket is being replaced.
  apply(ev) {
    if (ev.type === 'snapshot') {
      this.seq = typeof ev.seq === 'number' ? ev.seq : 0;
      this.onEvent(ev);
      return true;
    }
    if (typeof ev.seq === 'number' && this.seq != null) {
      if (ev.seq <= this.seq) return true; // already applied
      if (ev.seq > this.seq + 1) {
        this.resync();
        return false;
      }
      this.seq = ev.seq;
    }
    this.onEvent(ev);
    return true;
  }

  resync(quiet = false) {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.connect(quiet);
  }

  scheduleReconnect() {
    const base = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** this.attempt);
    this.attempt += 1;
    this.onStatus('reconnecting', { inMs: base });
    this.timer = setTimeout(() => this.connect(), base / 2 + Math.random() * base / 2);
  }

  setToken(token) {
    this.token = token || null;
    if (this.ws) this.resync(true); // same stream, new identity: not a drop worth telling
  }

  send(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  get open() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }
}
