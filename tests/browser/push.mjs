// Notifications in Debian's Chromium (issue 12): the service worker, the settings
// toggle, the per-buffer mute switch and desktop notifications while hidden.
//   node push.mjs
// Driven by `tests/it/web.rs` (see lib.mjs for the conversation over stdio).
//
// A push is delivered through the DevTools protocol (`ServiceWorker.deliverPushMessage`
// hands the payload to the worker's `push` event as it would arrive decrypted).
// Headless Chromium shows no notification UI and cannot click one, so notifications
// are read with `registration.getNotifications()`, and a click is played by calling
// the worker's own click routine (`openBuffer`, what its `notificationclick` handler
// runs) with the notification's data, in the worker.
//
// Headless Chromium has no push service either (`pushManager.subscribe` takes the
// browser down), so the page's `PushManager` stands in for one: it hands out a
// subscription with a real P-256 key (which the server checks) and an endpoint
// nobody listens on — or fails, as a browser without a push service does.

import { env, req, run, step, T } from './lib.mjs';

const CHANNEL = env('FERRY_CHANNEL');
const URL_ = env('FERRY_URL');

/** Polls `f` (async, in Node) until it returns something truthy (a non-empty array). */
async function until(what, f) {
  const end = Date.now() + T;
  for (;;) {
    const v = await f();
    if (Array.isArray(v) ? v.length : v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Delivers one push over CDP and waits for `seen()` (async, truthy when its notification
 * shows). Chromium drops a CDP delivery that reaches a worker while it is starting or
 * stopping (seen once in CI on a loaded machine), where a real push service would
 * deliver again; so does this, up to three times, saying so on stderr.
 */
async function deliver(cdp, registrationId, payload, what, seen) {
  for (let attempt = 1; ; attempt++) {
    await cdp.send('ServiceWorker.deliverPushMessage', { origin: new URL(URL_).origin, registrationId, data: JSON.stringify(payload) });
    const end = Date.now() + (attempt < 3 ? T / 3 : T);
    for (;;) {
      const v = await seen();
      if (Array.isArray(v) ? v.length : v) return v;
      if (Date.now() > end) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    if (attempt === 3) throw new Error(`timed out waiting for ${what} (delivered three times)`);
    console.error(`push ${payload.id} not shown after attempt ${attempt}; delivering it again`);
  }
}

/** The notifications the service worker's registration shows now. */
const shown = (page) => page.evaluate(async () => {
  const reg = await navigator.serviceWorker.ready;
  return (await reg.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
});

const clearShown = (page) => page.evaluate(async () => {
  const reg = await navigator.serviceWorker.ready;
  for (const n of await reg.getNotifications()) n.close();
});

/** Replaces the page's push service (see above); `window.ferryPushFails` makes it fail. */
function fakePushService() {
  const b64url = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  let current = null;
  PushManager.prototype.getSubscription = async () => current;
  PushManager.prototype.subscribe = async (options) => {
    if (window.ferryPushFails) throw new DOMException('Registration failed - push service not available', 'AbortError');
    if (!options?.userVisibleOnly || !(options.applicationServerKey?.byteLength === 65)) throw new Error('subscribe without the VAPID key');
    const pair = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
    const keys = {
      p256dh: b64url(await crypto.subtle.exportKey('raw', pair.publicKey)),
      auth: b64url(crypto.getRandomValues(new Uint8Array(16))),
    };
    const endpoint = `http://127.0.0.1:1/push/${keys.auth}`;
    current = {
      endpoint,
      toJSON: () => ({ endpoint, expirationTime: null, keys }),
      unsubscribe: async () => { current = null; return true; },
    };
    return current;
  };
}

run(async (t) => {
  const { page, context } = t;
  await page.addInitScript(fakePushService);
  await context.grantPermissions(['notifications'], { origin: new URL(URL_).origin });
  const cdp = await context.newCDPSession(page);
  const registrations = [];
  cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => registrations.push(...e.registrations));
  await cdp.send('ServiceWorker.enable');

  step('login; the service worker registers from the web root');
  await t.login();
  const script = await page.evaluate(async () => (await navigator.serviceWorker.ready).active.scriptURL);
  if (new URL(script).pathname !== '/sw.js') throw new Error(`worker script ${script}`);
  const [type, csp] = await page.evaluate(async () => { const r = await fetch('/sw.js'); return [r.headers.get('content-type'), r.headers.get('content-security-policy')]; });
  if (!/^text\/javascript/.test(type) || !/worker-src 'self'/.test(csp)) throw new Error(`/sw.js served as ${type} with ${csp}`);
  const reg = await until('the worker registration over CDP', () => registrations.find((r) => r.scopeURL === `${new URL(URL_).origin}/` && !r.isDeleted));
  const sw = context.serviceWorkers().find((w) => w.url().endsWith('/sw.js')) || await context.waitForEvent('serviceworker', { timeout: T });

  step('the toggle subscribes this browser and hands the subscription to the server');
  const toggle = page.getByLabel('Notifications on this browser');
  await toggle.check();
  const endpoint = await until('the subscription on the server', async () => (await req('push-subs')) || null);
  const local = await page.evaluate(async () => (await (await navigator.serviceWorker.ready).pushManager.getSubscription())?.endpoint);
  if (endpoint !== local) throw new Error(`the server holds ${endpoint}, the browser ${local}`);
  if (!(await toggle.isChecked())) throw new Error('the toggle is not on');

  step('a push (documented JSON payload) shows a notification with sender and text');
  const payload = {
    network: 'testnet', buffer: CHANNEL, sender: 'bob', text: 'alice: ça marche ? ✓',
    id: 4242, time: new Date().toISOString(), reason: 'mention', count: 1,
  };
  // Another buffer is open, so the click has somewhere to go from.
  await t.nav.getByRole('link', { name: 'testnet' }).click();
  await page.getByRole('heading', { name: 'testnet' }).waitFor({ timeout: T });
  const [n] = await deliver(cdp, reg.registrationId, payload, 'the push notification',
    async () => (await shown(page)).filter((x) => x.data?.id === 4242));
  if (!n.title.includes('bob') || !n.title.includes(CHANNEL) || !n.title.includes('testnet')) throw new Error(`title ${JSON.stringify(n.title)}`);
  if (n.body !== payload.text) throw new Error(`body ${JSON.stringify(n.body)}`);

  step('a burst in the same buffer replaces it (one per buffer, with the count)');
  const burst = await deliver(cdp, reg.registrationId, { ...payload, id: 4243, text: 'alice: still there?', count: 3 }, 'the replacing notification', async () => {
    const all = await shown(page);
    return all.some((x) => x.data?.id === 4243) && all;
  });
  if (burst.length !== 1 || !burst[0].title.includes('3 messages')) throw new Error(`after a burst: ${JSON.stringify(burst)}`);

  step('a click opens the buffer in this tab');
  await sw.evaluate(async () => {
    const [note] = await self.registration.getNotifications();
    note.close();
    // eslint-disable-next-line no-undef
    await openBuffer(note.data);
  });
  await page.getByRole('heading', { name: CHANNEL }).waitFor({ timeout: T });
  await t.nav.locator('a[aria-current=page]', { hasText: CHANNEL }).waitFor({ timeout: T });

  step('a private push opens a conversation that was not there yet');
  const [p] = await deliver(cdp, reg.registrationId,
    { network: 'testnet', buffer: 'dave', sender: 'dave', text: 'psst', id: 4300, time: new Date().toISOString(), reason: 'private', count: 1 },
    'the private notification', async () => (await shown(page)).filter((x) => x.data?.buffer === 'dave'));
  if (p.title !== 'dave in testnet' || p.body !== 'psst') throw new Error(`private: ${JSON.stringify(p)}`);
  await sw.evaluate(async () => {
    const note = (await self.registration.getNotifications()).find((x) => x.data.buffer === 'dave');
    note.close();
    // eslint-disable-next-line no-undef
    await openBuffer(note.data);
  });
  await page.getByRole('heading', { name: 'dave' }).waitFor({ timeout: T });

  step('the mute switch mutes the buffer on the server');
  await t.nav.getByRole('link', { name: CHANNEL }).click();
  const mute = page.getByRole('button', { name: 'Mute notifications' });
  await mute.click();
  await page.locator('#mute[aria-pressed=true]').waitFor({ timeout: T });
  const muted = await page.evaluate(async () => (await (await fetch('/api/push/settings')).json()).muted);
  if (!muted.some((m) => m.network === 'testnet' && m.buffer === CHANNEL)) throw new Error(`muted on the server: ${JSON.stringify(muted)}`);
  await mute.click();
  await page.locator('#mute[aria-pressed=false]').waitFor({ timeout: T });
  const after = await page.evaluate(async () => (await (await fetch('/api/push/settings')).json()).muted);
  if (after.length) throw new Error(`still muted: ${JSON.stringify(after)}`);

  step('the toggle turns them off: unsubscribed here and on the server');
  await toggle.uncheck();
  await until('no subscription on the server', async () => (await req('push-subs')) === '');
  if (await page.evaluate(async () => !!(await (await navigator.serviceWorker.ready).pushManager.getSubscription()))) throw new Error('still subscribed');
  if (await page.evaluate(() => localStorage.getItem('ferry.notifications')) !== null) throw new Error('still on');

  step('no push service: the toggle says so, and a hidden tab notifies by itself');
  await page.evaluate(() => { window.ferryPushFails = true; });
  await toggle.check();
  await page.locator('#notify-note', { hasText: 'only while Ferry is open' }).waitFor({ timeout: T });
  if (!(await toggle.isChecked()) || (await req('push-subs')) !== '') throw new Error('toggle state after a failed subscription');
  {
    await clearShown(page);
    // Headless pages are always visible: the test says this one is hidden.
    await page.evaluate(() => {
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await req('say', 'a plain line nobody needs to hear about');
    await t.once('a plain line nobody needs');
    await req('send', 'bob PRIVMSG alice :are you around? ✓');
    const [d] = await until('the desktop notification', async () => (await shown(page)).filter((x) => x.data?.buffer === 'bob'));
    if (d.title !== 'bob in testnet' || d.body !== 'are you around? ✓') throw new Error(`desktop: ${JSON.stringify(d)}`);
    const all = await shown(page);
    if (all.length !== 1) throw new Error(`only the private message notifies: ${JSON.stringify(all)}`);
  }
});
