// Ferry's service worker: shows Web Push notifications (highlights and private
// messages, pushed by the server while no client of the user is active) and opens
// the right buffer when one is clicked. It handles no fetches: the page works as
// before without it. Served from the web root so its scope is the whole client.
//
// A push is one JSON object (docs/websocket.md, "Notifications"):
//   {"network", "buffer", "sender", "text", "id", "time", "reason", "count", "truncated"?}

/** The notification for one push payload: title, options (tag per buffer). */
function notificationFor(p) {
  const where = p.reason === 'private' ? p.network : `${p.buffer} · ${p.network}`;
  const count = p.count > 1 ? ` (${p.count} messages)` : '';
  return {
    title: `${p.sender || 'Someone'} in ${where}${count}`,
    options: {
      body: p.text || '',
      // One notification per buffer: a burst replaces the previous one.
      tag: tagFor(p.network, p.buffer),
      renotify: true,
      icon: '/favicon.svg',
      timestamp: p.time ? Date.parse(p.time) : Date.now(),
      data: { network: p.network, buffer: p.buffer, id: p.id },
    },
  };
}

function tagFor(network, buffer) {
  return `ferry:${network}/${String(buffer).toLowerCase()}`;
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  let p;
  try {
    p = event.data ? event.data.json() : null;
  } catch {
    p = null;
  }
  // A push must show something; one we cannot read still says where to look.
  const n = p && p.network && p.buffer
    ? notificationFor(p)
    : { title: 'Ferry', options: { body: 'New messages', tag: 'ferry', data: {} } };
  event.waitUntil(self.registration.showNotification(n.title, n.options));
});

/**
 * Opens the notification's buffer: in an open Ferry tab (focused, told which buffer
 * to show), else in a new window at `/#network/buffer`.
 */
async function openBuffer(data) {
  const { network, buffer } = data || {};
  const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  const origin = self.location.origin;
  const tab = windows.find((c) => new URL(c.url).origin === origin);
  if (tab) {
    if (network && buffer) tab.postMessage({ type: 'ferry-open', network, buffer });
    // Focusing needs the click's user activation; without it the tab still switched.
    try { await tab.focus(); } catch { /* not allowed here */ }
    return tab;
  }
  const hash = network && buffer ? `#${encodeURIComponent(network)}/${encodeURIComponent(buffer)}` : '';
  return self.clients.openWindow(`/${hash}`);
}

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(openBuffer(event.notification.data));
});
