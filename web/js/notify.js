// Notifications in the web client: the service worker (`/sw.js`), this browser's
// Web Push subscription ("Notifications on this browser"), the per-buffer mute
// switch, and desktop notifications from the page while its tab is hidden.
//
// No duplicates: with a push subscription the server pushes whenever no client of
// the user is focused, so the page shows nothing itself; without one (a server with
// push turned off, a browser without a push service) the page notifies while hidden.
// Both use the service worker's `showNotification` with the same tag per buffer and
// the same click handling (open that buffer).

const FLAG = 'ferry.notifications';

/** base64url → bytes, for `applicationServerKey`. */
function keyBytes(b64url) {
  const b64 = b64url.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

const muteKey = (network, buffer) => `${network}\u0000${String(buffer).toLowerCase()}`;

export class Notifier {
  /**
   * @param {object} o
   * @param {(path: string, opts?: object) => Promise<any>} o.api the user API
   * @param {(network: string, buffer: string) => void} o.onOpen open a buffer (a click)
   * @param {() => void} o.onChange the mute state or availability changed
   */
  constructor({ api, onOpen, onChange }) {
    this.api = api;
    this.onOpen = onOpen;
    this.onChange = onChange;
    this.registration = null;
    this.subscription = null;
    /** The server has push turned on (its settings answered). */
    this.pushAvailable = false;
    this.muted = new Set();
    this.keywords = [];
    this.supported = 'serviceWorker' in navigator && 'Notification' in window;
  }

  /** Whether the person turned notifications on in this browser. */
  get wanted() {
    try { return localStorage.getItem(FLAG) === '1'; } catch { return false; }
  }

  set wanted(on) {
    try { if (on) localStorage.setItem(FLAG, '1'); else localStorage.removeItem(FLAG); } catch { /* private mode */ }
  }

  get enabled() { return this.wanted && this.supported && Notification.permission === 'granted'; }

  async start() {
    if (this.supported) {
      navigator.serviceWorker.addEventListener('message', (e) => {
        if (e.data?.type === 'ferry-open') this.onOpen(e.data.network, e.data.buffer);
      });
      try {
        this.registration = await navigator.serviceWorker.register('/sw.js', { scope: '/' });
      } catch (err) {
        console.warn('service worker not registered:', err);
      }
    }
    try {
      const s = await this.api('/api/push/settings');
      this.pushAvailable = true;
      this.keywords = s.keywords || [];
      this.muted = new Set(s.muted.map((m) => muteKey(m.network, m.buffer)));
    } catch {
      this.pushAvailable = false;
    }
    // Hand an existing subscription over again (the server may have dropped it).
    if (this.enabled && this.pushAvailable && this.registration?.pushManager) {
      try {
        this.subscription = await this.registration.pushManager.getSubscription();
        if (this.subscription) await this.post(this.subscription);
      } catch (err) {
        console.warn('push subscription not renewed:', err);
      }
    }
    this.onChange();
  }

  post(sub) {
    const j = sub.toJSON();
    return this.api('/api/push/subscriptions', { method: 'POST', body: JSON.stringify({ endpoint: j.endpoint, keys: j.keys }) });
  }

  /**
   * Turns notifications on: permission, then (when the server and the browser can)
   * a push subscription handed to the server. Resolves with a note for the person
   * when push is not available (notifications then come only while the tab is open).
   */
  async enable() {
    if (!this.supported) throw new Error('This browser cannot show notifications.');
    const permission = await Notification.requestPermission();
    if (permission !== 'granted') throw new Error('Notifications are blocked for this site in the browser.');
    this.wanted = true;
    if (!this.pushAvailable) return 'Push is off on this server: notifications come only while Ferry is open in a tab.';
    try {
      const reg = this.registration || await navigator.serviceWorker.ready;
      const { public_key: key } = await this.api('/api/push/vapid');
      this.subscription = await reg.pushManager.getSubscription()
        || await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(key) });
      await this.post(this.subscription);
      return null;
    } catch (err) {
      this.subscription = null;
      return `No push service (${err.message}): notifications come only while Ferry is open in a tab.`;
    }
  }

  /** Turns notifications off: unsubscribes this browser and tells the server. */
  async disable() {
    this.wanted = false;
    const sub = this.subscription || await this.registration?.pushManager?.getSubscription().catch(() => null);
    this.subscription = null;
    if (!sub) return;
    const { endpoint } = sub;
    await sub.unsubscribe().catch(() => {});
    if (this.pushAvailable) {
      await this.api('/api/push/subscriptions', { method: 'DELETE', body: JSON.stringify({ endpoint }) })
        .catch((err) => { if (err.status !== 404) throw err; });
    }
  }

  isMuted(network, buffer) { return this.muted.has(muteKey(network, buffer)); }

  async setMuted(network, buffer, muted) {
    const r = await this.api('/api/push/mute', { method: 'PUT', body: JSON.stringify({ network, buffer, muted }) });
    if (r.muted) this.muted.add(muteKey(network, buffer)); else this.muted.delete(muteKey(network, buffer));
    this.onChange();
  }

  /**
   * A live line arrived while the tab is hidden: a desktop notification when it is
   * private, mentions `nick` or a keyword — unless push covers it (this browser is
   * subscribed), the buffer is muted or notifications are off.
   */
  message(m, { query, mention, nick }) {
    if (!document.hidden || !this.enabled || this.subscription || m.own) return;
    if (!['PRIVMSG', 'ACTION'].includes(m.kind) || this.isMuted(m.network, m.buffer)) return;
    const text = m.text || '';
    const lower = text.toLowerCase();
    const keyword = this.keywords.some((k) => k && lower.includes(k.toLowerCase()));
    const reason = query ? 'private' : mention ? 'mention' : keyword ? 'keyword' : null;
    if (!reason || (nick && m.sender === nick)) return;
    const where = reason === 'private' ? m.network : `${m.buffer} · ${m.network}`;
    const show = this.registration
      ? this.registration.showNotification.bind(this.registration)
      : (title, options) => new Notification(title, options);
    Promise.resolve(show(`${m.sender} in ${where}`, {
      body: text,
      tag: `ferry:${m.network}/${String(m.buffer).toLowerCase()}`,
      renotify: true,
      icon: '/favicon.svg',
      data: { network: m.network, buffer: m.buffer, id: m.id },
    })).catch((err) => console.warn('notification not shown:', err));
  }
}
