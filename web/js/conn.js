// The websocket connection: resume after every (re)connect, reconnect with backoff
// (at once after a restart, close code 1012), follow `moved`, and match replies to
// requests by their `id`.

const BACKOFF = [250, 1000, 2000, 5000, 10000];

export class Conn {
  /**
   * @param {object} o
   * @param {string} o.url websocket URL
   * @param {() => string|null} o.token the session token (sent only to other origins)
   * @param {(ev: object) => void} o.onEvent
   * @param {(state: string, detail?: string) => void} o.onState
   */
  constructor({ url, token, onEvent, onState }) {
    this.url = url;
    // The page's own node: after a failed reconnect to a node the session had moved
    // to (it may be down, the session on yet another node), ask here again, as a
    // reload would; this node knows where the session runs now.
    this.home = url;
    this.token = token;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = null;   // newest message id seen; sent as `resume`
    this.ws = null;
    this.attempt = 0;
    this.nextReq = 1;
    this.pending = new Map();
    this.stopped = false;
    this.timer = null;
    // Whether the person is looking at this tab, as last told to the server (which
    // sends no push notifications meanwhile); `null` after each (re)connect.
    this.sentFocus = null;
    this.synced = false;
    for (const [target, name] of [[document, 'visibilitychange'], [window, 'focus'], [window, 'blur']]) {
      target.addEventListener(name, () => this.sendFocus());
    }
  }

  /** Tells the server whether this tab is visible and focused, when it changed. */
  sendFocus() {
    if (!this.synced || !this.connected) return;
    const focused = document.visibilityState === 'visible' && document.hasFocus();
    if (focused === this.sentFocus) return;
    this.sentFocus = focused;
    this.request({ type: 'focus', focused }).catch(() => {});
  }

  start() { this.stopped = false; this.open(); }

  /** A fresh connection now (resuming where this one was): a new snapshot. */
  restart() { this.stop(); this.attempt = 0; this.start(); }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, 'bye');
  }

  open() {
    clearTimeout(this.timer);
    let url = this.url;
    const sameOrigin = new URL(url).host === location.host;
    const token = this.token();
    if (!sameOrigin && token) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    this.onState(this.attempt ? 'reconnecting' : 'connecting');
    const ws = new WebSocket(url);
    this.ws = ws;
    document.body.dataset.ws = this.url;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'resume', last_id: this.lastId }));
    };
    ws.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; }
      if (ev.type === 'synced') {
        this.attempt = 0;
        this.onState('connected');
        this.synced = true;
        this.sentFocus = null;
        this.sendFocus();
      }
      if (ev.type === 'message' && ev.id != null && (this.lastId == null || ev.id > this.lastId)) this.lastId = ev.id;
      if (ev.type === 'hello' && this.lastId == null) this.fresh = true;
      if (ev.type === 'moved') { this.movedTo = ev.url; }
      if (ev.re != null && this.pending.has(ev.re)) {
        const { resolve, reject } = this.pending.get(ev.re);
        this.pending.delete(ev.re);
        if (ev.type === 'error') reject(Object.assign(new Error(ev.message), { code: ev.code })); else resolve(ev);
      }
      this.onEvent(ev);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.synced = false;
      for (const { reject } of this.pending.values()) reject(new Error('disconnected'));
      this.pending.clear();
      if (this.stopped) return;
      if (e.code === 1008 && /logged out|password changed|session expired/.test(e.reason)) {
        // The login session ended (logout in another tab, a password change): a
        // reconnect would be refused, so stop and let the app ask for a login.
        this.stopped = true;
        this.onState('ended', e.reason);
        return;
      }
      if (this.movedTo) {
        // Follow the session to its new node at once, and resume there.
        this.url = this.movedTo;
        this.movedTo = null;
        this.attempt = 0;
        this.onState('reconnecting', 'session moved');
        this.open();
        return;
      }
      if (e.code === 1012 && this.attempt === 0) {
        // The server restarts in place (an upgrade): the same address answers again
        // as soon as the new process serves, so reconnect at once and resume. Once
        // only: should that fail, back off as usual.
        this.attempt = 1;
        this.open();
        return;
      }
      const delay = BACKOFF[Math.min(this.attempt, BACKOFF.length - 1)];
      this.attempt++;
      if (this.attempt > 1) this.url = this.home;
      this.onState('offline', e.reason ? `${e.reason}; retrying` : `retrying in ${Math.ceil(delay / 1000)}s`);
      this.timer = setTimeout(() => this.open(), delay);
    };
  }

  get connected() { return this.ws && this.ws.readyState === WebSocket.OPEN; }

  /** Sends a command; resolves with its reply (or rejects with an `error` event). */
  request(cmd) {
    if (!this.connected) return Promise.reject(new Error('not connected'));
    const id = this.nextReq++;
    this.ws.send(JSON.stringify({ ...cmd, id }));
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
  }
}
