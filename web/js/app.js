// Ferry's web client: login, sidebar of buffers, message view, composer, search.
// State lives in plain objects; the DOM is rebuilt from it (the whole message list
// when the buffer changes, one row at a time for live messages).
//
// Each network also has a buffer of its own (kind `network`, not stored on the
// server): the network's MOTD (from `hello`, and again at each registration),
// then server notices, errors and replies that belong to no channel, since the
// page was opened.

import { Conn } from './conn.js';
import { el, messageRow, foldRow, FOLDABLE, highlight, paintNick, mentions, dayLabel, hhmm, plural, strip } from './render.js';
import { formatted } from './format.js';
import { runLine, COMMANDS } from './commands.js';
import { Notifier } from './notify.js';
import { Account } from './account.js';
import { inviteToken, showSignUp } from './signup.js';

const $ = (id) => document.getElementById(id);
const PAGE = 100;

const state = {
  user: null,
  networks: new Map(),    // name → network info (from `hello` / `network`)
  buffers: new Map(),     // key(network, name) → buffer
  current: null,          // key of the open buffer
  conn: null,
  sent: [],               // composer history, newest last
  histPos: null,
  tab: null,              // tab-completion cycle state
  openOnJoin: new Set(),  // channels the person just asked to join
  lastCommand: new Map(), // network → { key, at }: where the last command was typed
  listing: new Map(),     // network → channels of a /list reply being received
  notify: null,           // notifications (notify.js)
  wantHash: true,         // open the buffer named in the URL (`#network/buffer`) after `hello`
  account: null,          // the "Networks & account" dialog (account.js)
};

const key = (network, name) => `${network}\u0000${name.toLowerCase()}`;
// The network's own buffer: no channel or nick is empty.
const netKey = (network) => `${network}\u0000`;
/** Local lines kept in a network buffer (a /list can be long). */
const NET_LINES = 2000;
/** Replies later than this after a command show in the network buffer. */
const REPLY_WINDOW = 15_000;
// The session lives in the HttpOnly cookie; the token from the login answer is kept
// only in memory, for following `moved` to another origin (the cookie stays behind).
// After a reload it is gone: a move to another origin then asks to log in there.
let sessionToken = null;
const token = () => sessionToken;

function buffer(network, name, kind) {
  if (kind === 'network') return netBuffer(network);
  const k = key(network, name);
  let b = state.buffers.get(k);
  if (!b) {
    const net = state.networks.get(network);
    const chantypes = net?.chantypes || '#&';
    b = {
      key: k, network, name, kind: kind || (chantypes.includes(name[0]) ? 'channel' : 'query'),
      joined: false, topic: null, members: new Map(), unread: 0, highlights: 0, readMarker: 0,
      messages: [], ids: new Set(), more: true, loading: false, loaded: false,
      detached: false, moreAfter: false, local: [],
    };
    state.buffers.set(k, b);
  }
  return b;
}

function netBuffer(network) {
  const k = netKey(network);
  let b = state.buffers.get(k);
  if (!b) {
    b = {
      key: k, network, name: network, kind: 'network', joined: true, topic: null, members: new Map(),
      unread: 0, highlights: 0, readMarker: 0, messages: [], ids: new Set(), more: false, loading: false,
      loaded: true, detached: false, moreAfter: false, local: [],
    };
    state.buffers.set(k, b);
  }
  return b;
}

// ---- login ----

async function api(path, opts = {}) {
  const headers = { ...(opts.body ? { 'content-type': 'application/json' } : {}) };
  const r = await fetch(path, { credentials: 'same-origin', ...opts, headers });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(body.error?.message || r.statusText), { status: r.status, code: body.error?.code });
  return body;
}

async function boot() {
  const invite = inviteToken();
  if (invite !== null) {
    showSignUp({
      api, token: invite, onLogin: showLogin,
      onDone: (r) => { sessionToken = r.token; state.user = r.user; startApp(); },
    });
    return;
  }
  try {
    state.user = await api('/api/me');
    startApp();
  } catch {
    showLogin();
  }
}

function showLogin() {
  $('app').hidden = true;
  $('login').hidden = false;
  $('username').focus();
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('login-error').textContent = '';
  try {
    const r = await api('/api/login', { method: 'POST', body: JSON.stringify({ username: $('username').value, password: $('password').value }) });
    sessionToken = r.token;
    state.user = r.user || { name: $('username').value };
    $('password').value = '';
    startApp();
  } catch (err) {
    $('login-error').textContent = err.status === 429 ? 'Too many attempts; wait a minute.' : 'Wrong username or password.';
  }
});

$('logout').addEventListener('click', async () => {
  try { await api('/api/logout', { method: 'POST' }); } catch { /* already gone */ }
  sessionToken = null;
  location.reload();
});

function startApp() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('me').textContent = state.user?.name ? `· ${state.user.name}` : '';
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  state.conn = new Conn({ url: `${proto}//${location.host}/ws`, token, onEvent, onState });
  state.conn.start();
  state.notify = new Notifier({ api, onOpen: openByName, onChange: renderNotify });
  state.notify.start();
  state.account ||= new Account({ api, onChanged: networksChanged });
  $('input').focus();
}

/** The person changed their networks (`account.js`): a removed one's buffers go, and
 * the websocket starts again so its snapshot has every network as it now is. */
function networksChanged(removed) {
  if (removed) {
    for (const b of buffersOf(removed)) state.buffers.delete(b.key);
    state.networks.delete(removed);
    if (state.current && !state.buffers.has(state.current)) state.current = null;
    renderSidebar();
  }
  state.conn.restart();
}

// ---- notifications ----

/** Opens a buffer by its names (a notification click, the URL's `#network/buffer`). */
function openByName(network, name) {
  if (!network) return;
  open(name ? buffer(network, name).key : netBuffer(network).key);
}

/** `#network/buffer` (as the sidebar's links), or null. */
function hashTarget() {
  const m = /^#([^/]+)\/(.*)$/.exec(location.hash);
  if (!m) return null;
  try { return [decodeURIComponent(m[1]), decodeURIComponent(m[2])]; } catch { return null; }
}

window.addEventListener('hashchange', () => {
  // An invite link opened in a tab already on this page: start over with it.
  if (inviteToken() !== null) { location.reload(); return; }
  const t = hashTarget();
  if (t && state.networks.size) openByName(...t);
});

/** The settings toggle and the current buffer's mute switch, from `state.notify`. */
function renderNotify() {
  const n = state.notify;
  const box = $('notify');
  $('notify-row').hidden = !n?.supported;
  if (n) box.checked = n.enabled;
  const b = state.buffers.get(state.current);
  const mute = $('mute');
  mute.hidden = !n?.pushAvailable || !b || b.kind === 'network';
  if (b && n) {
    const muted = n.isMuted(b.network, b.name);
    mute.setAttribute('aria-pressed', String(muted));
    mute.textContent = muted ? '🔕' : '🔔';
    mute.title = muted ? 'Notifications muted for this buffer' : 'Mute notifications for this buffer';
  }
}

$('notify').addEventListener('change', async (e) => {
  const on = e.target.checked;
  const note = $('notify-note');
  note.textContent = '';
  try {
    if (on) note.textContent = (await state.notify.enable()) || '';
    else await state.notify.disable();
  } catch (err) {
    note.textContent = err.message;
  }
  renderNotify();
});

$('detach').addEventListener('click', async () => {
  const b = state.buffers.get(state.current);
  if (!b || b.kind !== 'channel') return;
  try {
    await state.conn.request({ type: b.chanDetached ? 'attach' : 'detach', network: b.network, channel: b.name });
  } catch (err) {
    systemLine(`${b.chanDetached ? 'Attach' : 'Detach'} failed: ${err.message}`, 'ERROR');
  }
});

$('mute').addEventListener('click', async () => {
  const b = state.buffers.get(state.current);
  if (!b || !state.notify) return;
  try {
    await state.notify.setMuted(b.network, b.name, !state.notify.isMuted(b.network, b.name));
  } catch (err) {
    systemLine(`Mute failed: ${err.message}`, 'ERROR');
  }
});

// ---- connection state ----

function onState(s, detail) {
  // The session ended elsewhere: start over (the login form if it is gone).
  // This page's own password change closes its socket too, but its login session
  // stays: connect again instead.
  if (s === 'ended' && /password changed/.test(detail || '') && state.account?.changedPasswordRecently()) {
    state.conn.restart();
    return;
  }
  if (s === 'ended') { location.reload(); return; }
  const c = $('conn');
  c.dataset.state = s;
  c.textContent = { connecting: 'Connecting…', reconnecting: 'Reconnecting…', connected: 'Connected', offline: 'Offline' }[s] || s;
  c.title = detail || '';
  if (detail && s !== 'connected') c.textContent += ` (${detail})`;
}

// ---- events ----

function onEvent(ev) {
  switch (ev.type) {
    case 'hello': return onHello(ev);
    case 'message': return onMessage(ev);
    case 'join': {
      const b = buffer(ev.network, ev.buffer, 'channel');
      if (ev.own) {
        b.joined = true;
        if (state.openOnJoin.delete(b.key)) open(b.key);
      } else b.members.set(ev.nick, '');
      return refresh(b);
    }
    case 'part': case 'kick': {
      const b = buffer(ev.network, ev.buffer, 'channel');
      if (ev.own) { b.joined = false; b.members.clear(); } else b.members.delete(ev.nick);
      return refresh(b);
    }
    case 'quit':
      for (const b of buffersOf(ev.network)) if (b.members.delete(ev.nick)) refresh(b);
      return;
    case 'nick':
      for (const b of buffersOf(ev.network)) {
        if (b.members.has(ev.old)) { const p = b.members.get(ev.old); b.members.delete(ev.old); b.members.set(ev.new, p); refresh(b); }
      }
      if (ev.own) { const n = state.networks.get(ev.network); if (n) n.nick = ev.new; }
      return;
    case 'names': {
      const b = buffer(ev.network, ev.buffer, 'channel');
      b.members = new Map(ev.members.map((m) => [m.nick, m.prefix]));
      return refresh(b);
    }
    case 'topic': {
      const b = buffer(ev.network, ev.buffer, 'channel');
      b.topic = ev.topic;
      return refresh(b);
    }
    case 'mode': return onMode(ev);
    case 'network':
      state.networks.set(ev.name, ev);
      netBuffer(ev.name);
      // A fresh registration brings its MOTD: shown again, as IRC clients do.
      if (ev.motd) showMotd(ev.name, ev.motd, true);
      renderSidebar();
      if (state.current === netKey(ev.name)) renderHeader();
      return;
    case 'buffer': {
      const b = buffer(ev.network, ev.name, ev.kind);
      renderSidebar();
      return open(b.key);
    }
    case 'channel': {
      // Detached (logged, its lines not sent live) or attached again: then what was
      // said meanwhile is loaded from the history.
      const b = buffer(ev.network, ev.buffer, 'channel');
      const was = b.chanDetached;
      b.chanDetached = ev.detached;
      if (was && !ev.detached) {
        Object.assign(b, { messages: [], ids: new Set(), more: true, detached: false, moreAfter: false, loaded: false });
        if (b.key === state.current) renderMessages();
        loadOlder(b);
      }
      renderSidebar();
      if (b.key === state.current) renderHeader();
      return;
    }
    case 'read': {
      const b = state.buffers.get(key(ev.network, ev.buffer));
      if (b) { b.readMarker = Math.max(b.readMarker, ev.id); recount(b); renderSidebar(); }
      return;
    }
    case 'notice': return onNotice(ev);
    case 'error':
      // "Not running here" while a session moves or starts: the connection pill says
      // so and the client retries; it is not a message.
      if (ev.re == null && ev.code !== 'unavailable') systemLine(ev.message, 'ERROR');
      return;
    default: return;
  }
}

function buffersOf(network) {
  return [...state.buffers.values()].filter((b) => b.network === network);
}

function onHello(ev) {
  state.networks = new Map(ev.networks.map((n) => [n.name, n]));
  for (const n of ev.networks) {
    netBuffer(n.name);
    // After a reload the buffer is empty: the MOTD comes first. A reconnected
    // socket's `hello` repeats what is shown already.
    if (n.motd) showMotd(n.name, n.motd, false);
  }
  const seen = new Set();
  for (const i of ev.buffers) {
    const b = buffer(i.network, i.name, i.kind);
    seen.add(b.key);
    Object.assign(b, { kind: i.kind, joined: i.joined, topic: i.topic, unread: i.unread, highlights: i.highlights, readMarker: i.read_marker, chanDetached: !!i.detached });
    b.members = new Map(i.members.map((m) => [m.nick, m.prefix]));
    if (b.key === state.current && document.visibilityState === 'visible') { b.unread = 0; b.highlights = 0; }
  }
  const target = state.wantHash ? hashTarget() : null;
  state.wantHash = false;
  if (target) {
    openByName(...target);
  } else if (!state.current || !state.buffers.has(state.current)) {
    const first = [...state.buffers.values()].find((b) => b.kind === 'channel' && b.joined)
      || [...state.buffers.values()].find((b) => b.kind !== 'network') || state.buffers.values().next().value;
    if (first) open(first.key); else render();
  } else {
    renderSidebar();
    renderHeader();
    renderMembers();
    const b = state.buffers.get(state.current);
    // A fresh connection (page reload) has not replayed anything: load the newest.
    if (!b.loaded) loadOlder(b);
  }
}

function onMessage(m) {
  const b = buffer(m.network, m.buffer);
  if (m.id != null && b.ids.has(m.id)) return;   // already shown (history and live overlap)
  if (b.detached) {
    // The view shows older context; newer messages load when it scrolls down.
    b.moreAfter = true;
  } else {
    if (m.id != null) b.ids.add(m.id);
    b.messages.push(m);
  }
  applyMessageState(b, m);
  const active = b.key === state.current && document.visibilityState === 'visible';
  if (!m.own && ['PRIVMSG', 'ACTION', 'NOTICE'].includes(m.kind)) {
    const nick = state.networks.get(m.network)?.nick;
    const mention = mentions(strip(m.text), nick);
    // Live lines only (not a replay after a reconnect), none already read.
    if (state.conn?.synced && m.id != null && m.id > b.readMarker) {
      state.notify?.message({ ...m, text: strip(m.text) }, { query: b.kind === 'query', mention, nick });
    }
    if (b.key !== state.current) {
      b.unread++;
      if (b.kind === 'query' || mention) b.highlights++;
      renderSidebar();
    } else if (active) markRead(b);
  }
  if (b.key === state.current && !b.detached) appendLive(b, m);
}

/** Stored join/part lines also keep the member list right across replays. */
function applyMessageState(b, m) {
  if (m.kind === 'TOPIC') { b.topic = m.text || null; if (b.key === state.current) renderHeader(); }
}

function onMode(ev) {
  const net = state.networks.get(ev.network);
  if (net && ev.target.toLowerCase() === net.nick?.toLowerCase()) {
    // Our own user modes are stored nowhere: say so in the network buffer.
    addLine(netBuffer(ev.network), { sender: ev.by, text: `${ev.by} set your modes: ${ev.modes.join(' ')}` });
    return;
  }
  const b = state.buffers.get(key(ev.network, ev.target));
  if (!b || !net) return;
  const [modes, ...args] = ev.modes;
  const prefixModes = new Map(net.prefix);
  let sign = '+';
  for (const c of modes || '') {
    if (c === '+' || c === '-') { sign = c; continue; }
    if (prefixModes.has(c)) {
      const nick = args.shift();
      if (!nick || !b.members.has(nick)) continue;
      const sym = prefixModes.get(c);
      let p = b.members.get(nick).replace(sym, '');
      if (sign === '+') p += sym;
      const order = [...prefixModes.values()];
      p = [...p].sort((a, z) => order.indexOf(a) - order.indexOf(z)).join('');
      b.members.set(nick, p);
    } else if ('kbeIlLjf'.includes(c) && (sign === '+' || 'kbeI'.includes(c))) {
      args.shift();
    }
  }
  refresh(b);
}

function refresh(b) {
  renderSidebar();
  if (b.key === state.current) { renderHeader(); renderMembers(); }
}

function systemLine(text, kind = 'SYSTEM') {
  const b = state.buffers.get(state.current);
  if (b) addLine(b, { kind, text });
}

/**
 * Adds a line that is not stored (a notice, a reply, an error) to buffer `b`;
 * `quiet`: it does not count as unread (the MOTD).
 */
function addLine(b, line, { quiet = false } = {}) {
  const m = { id: null, time: new Date().toISOString(), network: b.network, buffer: b.name, sender: '', kind: 'SERVER', text: '', own: false, ...line };
  b.messages.push(m);
  if (b.kind === 'network' && b.messages.length > NET_LINES) b.messages.splice(0, b.messages.length - NET_LINES);
  if (b.key === state.current && !b.detached) appendLive(b, m);
  else if (b.kind === 'network' && !quiet) {
    b.unread++;
    if (m.invite) b.highlights++;
    renderSidebar();
  }
}

/**
 * The network's message of the day in its buffer, one row a line. `fresh`: a new
 * registration's (always shown); else `hello`'s, shown unless the page shows it.
 */
function showMotd(network, motd, fresh) {
  const b = netBuffer(network);
  const text = motd.join('\n');
  if (!fresh && b.motd === text) return;
  b.motd = text;
  addLine(b, { kind: 'SYSTEM', text: `Message of the day of ${network}:` }, { quiet: true });
  for (const line of motd) addLine(b, { kind: 'MOTD', text: line }, { quiet: true });
}

/** Error replies and replies to commands the bouncer does not route (AWAY, INVITE). */
const ANSWERS = new Set(['221', '305', '306', '341', '381', '391']);

/**
 * Puts a `notice` where the person looks for it: a reply to their own command in
 * the buffer they typed it in; a line about a channel (or, for an error, a nick)
 * in that buffer; everything else in the network buffer.
 */
function onNotice(ev) {
  const nb = netBuffer(ev.network);
  if (ev.code === '321') return;
  if (ev.code === '322' || ev.code === '323') return onList(ev, nb);
  const last = state.lastCommand.get(ev.network);
  const asked = last && Date.now() - last.at < REPLY_WINDOW ? state.buffers.get(last.key) : null;
  const current = state.buffers.get(state.current);
  const here = current?.network === ev.network ? current : null;
  const named = ev.buffer ? state.buffers.get(key(ev.network, ev.buffer)) : null;
  const numeric = /^\d{3}$/.test(ev.code || '');
  const line = {
    kind: ev.error ? 'ERROR' : 'SERVER',
    // A person's nick (an invite, a wallops) in the nick column; a server's name
    // goes before its notice's text.
    sender: numeric || ev.code === 'NOTICE' ? '' : ev.from || '',
    text: ev.code === 'NOTICE' && ev.from ? `${ev.from}: ${ev.text}` : ev.text,
    invite: ev.code === 'INVITE',
  };
  let target = nb;
  if (ev.reply) target = asked || here || nb;
  else if (ev.code === 'INVITE') target = here || nb;
  else if (named && named.kind !== 'network') target = named;
  else if ((ev.error || ANSWERS.has(ev.code)) && asked) target = asked;
  addLine(target, line);
}

/** A /list reply: gathered, then shown biggest channels first (at most 200 of them). */
function onList(ev, nb) {
  let l = state.listing.get(ev.network);
  if (!l) { l = []; state.listing.set(ev.network, l); }
  if (ev.code === '322') { l.push(ev); return; }
  state.listing.delete(ev.network);
  const chans = l.map((e) => ({ name: e.params?.[0] || '', users: Number(e.params?.[1]) || 0, topic: e.params?.[2] || '' }))
    .filter((c) => c.name).sort((a, z) => z.users - a.users);
  const shown = chans.slice(0, 200);
  addLine(nb, { text: chans.length > shown.length
    ? `${plural(chans.length, 'channel')}; the ${shown.length} biggest:`
    : `${plural(chans.length, 'channel')}${chans.length ? ':' : '.'}` });
  for (const c of shown) addLine(nb, { channel: c.name, text: `(${plural(c.users, 'user')}) ${c.topic}` });
}

// ---- read markers and unread counts ----

let readTimer = null;
function markRead(b) {
  const last = [...b.messages].reverse().find((m) => m.id != null);
  b.unread = 0; b.highlights = 0;
  if (!last || last.id <= b.readMarker) return;
  b.readMarker = last.id;
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    state.conn.request({ type: 'read', network: b.network, buffer: b.name, last_id: b.readMarker }).catch(() => {});
  }, 300);
}

function recount(b) {
  if (b.key === state.current) return;
  const unread = b.messages.filter((m) => m.id > b.readMarker && !m.own && ['PRIVMSG', 'ACTION', 'NOTICE'].includes(m.kind));
  if (b.loaded) b.unread = unread.length;
  if (b.readMarker >= (b.messages.at(-1)?.id ?? 0)) { b.unread = 0; b.highlights = 0; }
}

// ---- history ----

async function loadOlder(b) {
  if (b.loading || !b.more || !state.conn?.connected) return;
  b.loading = true;
  const before = b.messages.find((m) => m.id != null)?.id ?? null;
  const box = $('messages');
  try {
    const r = await state.conn.request({ type: 'history', network: b.network, buffer: b.name, before, limit: PAGE });
    const fresh = r.messages.filter((m) => !b.ids.has(m.id));
    for (const m of fresh) b.ids.add(m.id);
    // All older than what is shown (`before`); local lines (no id) stay where they are.
    b.messages = [...fresh, ...b.messages];
    b.more = r.more;
  } catch (e) {
    if (e.code === 'not_found') b.more = false;   // nothing stored yet
  } finally {
    b.loading = false;
    b.loaded = true;
  }
  if (b.key === state.current) {
    // Measured now, not before the request: the person may have scrolled meanwhile.
    const fromBottom = box.scrollHeight - box.scrollTop;
    renderMessages();
    box.scrollTop = before == null ? box.scrollHeight : box.scrollHeight - fromBottom;
    if (before == null) markRead(b);
    renderSidebar();
  }
}

async function historyApi(b, params) {
  const q = new URLSearchParams({ network: b.network, buffer: b.name, limit: '50', ...params });
  return api(`/api/history?${q}`);
}

/** Opens a buffer around message `id` (a search result), in context. */
async function jumpTo(network, bufName, id) {
  const b = buffer(network, bufName);
  const [older, newer] = await Promise.all([
    historyApi(b, { before: String(id + 1) }),
    historyApi(b, { after: String(id) }),
  ]);
  b.messages = [...older.messages, ...newer.messages];
  b.ids = new Set(b.messages.map((m) => m.id));
  b.more = older.more;
  b.moreAfter = newer.more;
  b.detached = newer.more;
  b.loaded = true;
  open(b.key, { keep: true });
  const row = $('messages').querySelector(`[data-id="${id}"]`);
  if (row) {
    const details = row.closest('details');
    if (details) details.open = true;
    row.classList.add('target');
    row.scrollIntoView({ block: 'center' });
  }
  $('latest').hidden = !b.detached;
}

async function loadNewer(b) {
  if (b.loading || !b.detached) return;
  b.loading = true;
  try {
    const after = b.messages.at(-1)?.id ?? 0;
    const r = await historyApi(b, { after: String(after), limit: '100' });
    for (const m of r.messages) if (!b.ids.has(m.id)) { b.ids.add(m.id); b.messages.push(m); }
    b.detached = r.more;
    b.moreAfter = r.more;
  } finally { b.loading = false; }
  if (b.key === state.current) {
    const box = $('messages'); const top = box.scrollTop;
    renderMessages(); box.scrollTop = top;
    $('latest').hidden = !b.detached;
  }
}

$('latest').addEventListener('click', () => {
  const b = state.buffers.get(state.current);
  if (!b) return;
  Object.assign(b, { messages: [], ids: new Set(), more: true, detached: false, moreAfter: false, loaded: false });
  $('latest').hidden = true;
  renderMessages();
  loadOlder(b);
});

$('messages').addEventListener('scroll', () => {
  const box = $('messages');
  const b = state.buffers.get(state.current);
  if (!b) return;
  if (box.scrollTop < 120) loadOlder(b);
  if (b.detached && box.scrollHeight - box.scrollTop - box.clientHeight < 80) loadNewer(b);
});

// ---- rendering ----

function open(k, { keep = false } = {}) {
  const b = state.buffers.get(k);
  if (!b) return;
  state.current = k;
  closeNav();
  closeMembers();
  b.unread = 0; b.highlights = 0;
  render();
  const box = $('messages');
  if (!keep) box.scrollTop = box.scrollHeight;
  $('latest').hidden = !b.detached;
  if (!b.loaded && !keep) loadOlder(b); else if (!keep) markRead(b);
}

function render() {
  renderSidebar();
  renderHeader();
  renderMembers();
  renderMessages();
}

function renderSidebar() {
  const ul = $('buffers');
  ul.replaceChildren();
  const link = (b, cls, ...label) => {
    const badge = b.unread > 0 ? el('span', { class: `badge${b.highlights ? ' highlight' : ''}`, 'aria-label': `${b.unread} unread${b.highlights ? `, ${plural(b.highlights, 'highlight')}` : ''}` }, String(b.unread)) : null;
    return el('a', {
      href: `#${encodeURIComponent(b.network)}/${encodeURIComponent(b.kind === 'network' ? '' : b.name)}`,
      class: [cls, b.kind === 'channel' && !b.joined ? 'parted' : '', b.chanDetached ? 'detached' : '', b.unread ? 'unread' : ''].join(' ').trim() || null,
      'aria-current': b.key === state.current ? 'page' : null,
      onclick: (e) => { e.preventDefault(); open(b.key); },
    }, ...label, badge);
  };
  for (const net of state.networks.values()) {
    // The network's name opens its own buffer (server messages).
    ul.append(el('li', { class: 'net' }, link(netBuffer(net.name), 'netlink',
      el('span', { class: 'dot', dataset: { state: net.state }, title: netState(net) }),
      el('span', { class: 'name' }, net.name),
      // Not connected: say so in words next to the dot (the details in its title
      // and in the network's buffer header).
      net.state === 'connected' ? null : el('span', { class: 'netstate', title: netState(net) }, shortState(net)))));
    const bufs = buffersOf(net.name).filter((b) => b.kind !== 'network')
      .sort((a, z) => (a.kind === z.kind ? a.name.localeCompare(z.name) : a.kind === 'channel' ? -1 : 1));
    for (const b of bufs) ul.append(el('li', {}, link(b, '', el('span', { class: 'name' }, b.name))));
  }
  const total = [...state.buffers.values()].reduce((n, b) => n + b.highlights, 0);
  document.title = total ? `(${total}) Ferry` : 'Ferry';
}

function renderHeader() {
  const b = state.buffers.get(state.current);
  $('title').textContent = b ? b.name : 'Ferry';
  const topic = $('topic');
  if (b?.kind === 'network') {
    topic.textContent = netState(state.networks.get(b.network));
  } else if (b?.topic) {
    topic.replaceChildren(formatted(b.topic));
  } else {
    topic.textContent = b?.kind === 'channel' && !b.joined ? 'You are not in this channel.' : '';
  }
  topic.title = b?.kind === 'network' ? topic.textContent : strip(b?.topic || '');
  const toggle = $('members-toggle');
  toggle.hidden = b?.kind !== 'channel';
  if (b?.kind === 'channel') $('members-count').textContent = String(b.members.size);
  const detach = $('detach');
  detach.hidden = b?.kind !== 'channel' || !b.joined;
  if (b?.kind === 'channel') {
    detach.setAttribute('aria-pressed', String(!!b.chanDetached));
    detach.textContent = b.chanDetached ? 'Attach' : 'Detach';
    detach.title = b.chanDetached
      ? 'Detached: logged, not followed live. Attach to follow it again.'
      : 'Detach: stay in the channel and keep its log, without its lines live (a mention attaches it)';
  }
  renderNotify();
}

/** A network's connection state in words: the stage, the last error, the next attempt. */
function netState(n) {
  if (!n) return '';
  switch (n.state) {
    case 'connected': return `Connected as ${n.nick}`;
    case 'connecting': {
      const stage = n.attempt > 1 ? `Connecting (attempt ${n.attempt})…` : 'Connecting…';
      return n.last_error ? `${stage} Last error: ${n.last_error}` : stage;
    }
    case 'registering': {
      // The socket (and TLS) is up: logging in (CAP, SASL, NICK) until the welcome.
      const stage = n.attempt > 1 ? `Connected, registering (attempt ${n.attempt})…` : 'Connected, registering…';
      return n.last_error ? `${stage} Last error: ${n.last_error}` : stage;
    }
    case 'disconnected': {
      const why = `Disconnected${n.reason ? `: ${n.reason}` : ''}`;
      if (!n.retrying) return `${why}; not retrying (fix the network settings)`;
      const at = n.retry_at ? new Date(n.retry_at) : null;
      return at && !Number.isNaN(at.getTime()) ? `${why}; next attempt at ${at.toLocaleTimeString()}` : `${why}; reconnecting`;
    }
    case 'stopped': return 'Stopped';
    default: return n.state;
  }
}

/** The stage in a word or two, for the sidebar. */
function shortState(n) {
  switch (n.state) {
    case 'connecting': return n.last_error ? 'retrying…' : 'connecting…';
    case 'registering': return 'registering…';
    case 'disconnected': return n.retrying ? 'backing off' : 'failed';
    case 'stopped': return 'stopped';
    default: return n.state;
  }
}

function renderMembers() {
  const b = state.buffers.get(state.current);
  const box = $('members');
  box.replaceChildren();
  if (!b || b.kind !== 'channel') { box.hidden = true; return; }
  box.hidden = false;
  const net = state.networks.get(b.network);
  const order = (net?.prefix || []).map(([, s]) => s);
  const rank = (p) => (p ? order.indexOf(p[0]) : order.length);
  const list = [...b.members].sort(([an, ap], [zn, zp]) => rank(ap) - rank(zp) || an.localeCompare(zn, undefined, { sensitivity: 'base' }));
  box.append(el('div', { class: 'members-head' }, el('h3', { id: 'members-title' }, plural(list.length, 'member')),
    el('button', { type: 'button', class: 'members-close', 'aria-label': 'Close members', onclick: closeMembers }, '✕')));
  const ul = el('ul', { 'aria-labelledby': 'members-title' });
  for (const [nick, p] of list) {
    // A name opens a private conversation.
    ul.append(el('li', {}, el('span', { class: 'pfx' }, p[0] || ''),
      paintNick(el('button', { type: 'button', class: 'member', onclick: () => query(b.network, nick) }, nick), nick)));
  }
  box.append(ul);
  if ($('members-count')) $('members-count').textContent = String(list.length);
}

/** Rows for a list of messages: day separators, and runs of joins/parts folded. */
function rows(b, msgs, prevTime) {
  const nick = state.networks.get(b.network)?.nick;
  const out = [];
  let run = [];
  let day = prevTime ? new Date(prevTime).toDateString() : null;
  const flush = () => {
    if (run.length === 1) out.push(messageRow(run[0], nick, joinListed));
    else if (run.length > 1) out.push(foldRow(run, nick, joinListed));
    run = [];
  };
  for (const m of msgs) {
    const d = new Date(m.time);
    if (d.toDateString() !== day) { flush(); day = d.toDateString(); out.push(el('div', { class: 'day', role: 'separator' }, dayLabel(d))); }
    if (FOLDABLE.has(m.kind)) { run.push(m); continue; }
    flush();
    out.push(messageRow(m, nick, joinListed));
  }
  flush();
  return out;
}

function renderMessages() {
  const box = $('messages');
  const b = state.buffers.get(state.current);
  box.replaceChildren();
  if (!b) return;
  if (b.kind === 'network') {
    box.append(el('div', { class: 'loading-more' }, `Messages from ${b.name}'s server (its message of the day; notices, errors, replies while this page is open) appear here. Type /help for commands.`));
  } else if (b.more && b.loaded) box.append(el('div', { class: 'loading-more' }, 'Scroll up for older messages'));
  else if (!b.more && b.loaded) box.append(el('div', { class: 'loading-more' }, `This is the beginning of ${b.name}.`));
  box.append(...rows(b, b.messages));
}

/** Appends one live message, joining a fold that ends the list if it folds too. */
function appendLive(b, m) {
  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  const i = b.messages.lastIndexOf(m);
  const prev = b.messages[i - 1];
  if (FOLDABLE.has(m.kind) && prev && FOLDABLE.has(prev.kind)) {
    // Rebuild the trailing run of foldable lines as one fold.
    let start = i;
    while (start > 0 && FOLDABLE.has(b.messages[start - 1].kind)) start--;
    const run = b.messages.slice(start, i + 1);
    // The run so far is the last row: one message or one fold.
    box.lastElementChild?.remove();
    box.append(...rows(b, run, run[0].time));
  } else {
    box.append(...rows(b, [m], prev?.time));
  }
  if (atBottom || m.own) box.scrollTop = box.scrollHeight;
}

// ---- composer ----

$('composer').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = $('input');
  const line = input.value;
  if (!line.trim()) return;
  state.sent.push(line);
  if (state.sent.length > 100) state.sent.shift();
  state.histPos = null;
  input.value = '';
  const b = state.buffers.get(state.current);
  const network = b?.network || state.networks.keys().next().value;
  // Replies to this line show where it was typed.
  if (b) state.lastCommand.set(network, { key: b.key, at: Date.now() });
  try {
    await runLine(line, {
      b, network,
      nick: state.networks.get(network)?.nick,
      req: (cmd) => state.conn.request(cmd),
      // A command that opens a buffer (/msg, /list) has its replies shown there.
      open: (t) => { state.lastCommand.set(network, { key: t.key, at: Date.now() }); open(t.key); },
      buffer: (net, name) => buffer(net, name),
      netBuffer,
      note: (t, text) => (t ? addLine(t, { kind: 'SYSTEM', text }) : undefined),
      isChannel: (name) => (state.networks.get(network)?.chantypes || '#&').includes(name[0]),
      joinThenOpen,
    });
  } catch (err) {
    systemLine(err.message, 'ERROR');
  }
});

/** Joins `channel` (or opens it if already joined); it opens once joined. */
async function joinThenOpen(network, channel, key) {
  const existing = state.buffers.get(`${network}\u0000${channel.toLowerCase()}`);
  if (existing?.joined) return open(existing.key);
  state.openOnJoin.add(`${network}\u0000${channel.toLowerCase()}`);
  return state.conn.request({ type: 'join', network, channel, key });
}

/** A channel button of a /list reply. */
function joinListed(channel) {
  const b = state.buffers.get(state.current);
  if (!b) return;
  joinThenOpen(b.network, channel).catch((err) => systemLine(err.message, 'ERROR'));
}

/** Opens a private conversation with `nick`. */
function query(network, nick) {
  closeMembers();
  open(buffer(network, nick, 'query').key);
}

$('input').addEventListener('keydown', (e) => {
  const input = e.target;
  if (e.key === 'ArrowUp' && (state.histPos !== null || !input.value)) {
    if (!state.sent.length) return;
    e.preventDefault();
    state.histPos = state.histPos === null ? state.sent.length - 1 : Math.max(0, state.histPos - 1);
    input.value = state.sent[state.histPos];
  } else if (e.key === 'ArrowDown' && state.histPos !== null) {
    e.preventDefault();
    state.histPos++;
    if (state.histPos >= state.sent.length) { state.histPos = null; input.value = ''; } else input.value = state.sent[state.histPos];
  } else if (e.key === 'Tab') {
    e.preventDefault();
    complete(input);
  } else {
    state.tab = null;
  }
});

/** Nick completion: Tab completes the word before the cursor; Tab again cycles. */
function complete(input) {
  const b = state.buffers.get(state.current);
  if (!b) return;
  if (!state.tab) {
    const pos = input.selectionStart;
    const before = input.value.slice(0, pos);
    const start = before.search(/\S*$/);
    const word = before.slice(start).toLowerCase();
    if (!word) return;
    const recent = [...b.messages].reverse().map((m) => m.sender).filter(Boolean);
    const pool = [...new Set([...recent, ...b.members.keys(), b.kind === 'query' ? b.name : null].filter(Boolean))];
    const candidates = word.startsWith('/')
      ? COMMANDS.filter((c) => c.startsWith(word))
      : pool.filter((n) => n.toLowerCase().startsWith(word));
    if (!candidates.length) return;
    state.tab = { start, end: pos, after: input.value.slice(pos), candidates, i: 0 };
  } else {
    state.tab.i = (state.tab.i + 1) % state.tab.candidates.length;
  }
  const t = state.tab;
  const pick = t.candidates[t.i];
  const suffix = t.start === 0 && !pick.startsWith('/') ? ': ' : ' ';
  const head = input.value.slice(0, t.start) + pick + suffix;
  input.value = head + t.after;
  input.setSelectionRange(head.length, head.length);
}

// ---- search ----

$('search-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const q = $('search').value.trim();
  if (!q) return;
  const list = $('results-list');
  list.replaceChildren();
  $('results').hidden = false;
  $('results-title').textContent = `Searching for “${q}”…`;
  try {
    const r = await api(`/api/search?${new URLSearchParams({ q, limit: '50' })}`);
    const n = r.results.length;
    $('results-title').textContent = `${n}${r.next_before ? '+' : ''} ${n === 1 && !r.next_before ? 'result' : 'results'} for “${q}”`;
    for (const m of r.results) {
      const t = new Date(m.time);
      const btn = el('button', { type: 'button', onclick: () => { $('results').hidden = true; $('search').value = ''; jumpTo(m.network, m.buffer, m.id).catch((err) => systemLine(err.message, 'ERROR')); } },
        el('div', { class: 'where' }, `${m.buffer} · ${m.network} · ${t.toLocaleDateString()} ${hhmm(t)}`),
        el('div', {}, paintNick(el('strong', {}, m.sender), m.sender), ' ', highlight(strip(m.text), q)));
      list.append(el('li', {}, btn));
    }
  } catch (err) {
    $('results-title').textContent = `Search failed: ${err.message}`;
  }
});

$('results-close').addEventListener('click', () => { $('results').hidden = true; });

// ---- phone layout ----

function closeNav() {
  $('app').classList.remove('nav-open');
  $('menu').setAttribute('aria-expanded', 'false');
  $('scrim').hidden = !$('app').classList.contains('members-open');
}

function closeMembers() {
  $('app').classList.remove('members-open');
  $('members-toggle').setAttribute('aria-expanded', 'false');
  $('scrim').hidden = !$('app').classList.contains('nav-open');
}

// On a phone the member list slides in from the right, like the buffers from the left.
$('members-toggle').addEventListener('click', () => {
  const open = !$('app').classList.contains('members-open');
  closeNav();
  $('app').classList.toggle('members-open', open);
  $('members-toggle').setAttribute('aria-expanded', String(open));
  $('scrim').hidden = !open;
});

$('menu').addEventListener('click', () => {
  const open = !$('app').classList.contains('nav-open');
  closeMembers();
  $('app').classList.toggle('nav-open', open);
  $('menu').setAttribute('aria-expanded', String(open));
  $('scrim').hidden = !open;
});
$('scrim').addEventListener('click', () => { closeNav(); closeMembers(); });
document.addEventListener('keydown', (e) => { if (e.key === 'Escape') { closeNav(); closeMembers(); } });

document.addEventListener('visibilitychange', () => {
  const b = state.buffers.get(state.current);
  if (b && document.visibilityState === 'visible') { markRead(b); renderSidebar(); }
});

boot();
