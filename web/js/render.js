// Building message rows. Untrusted text only ever goes into text nodes: links are
// made with createElement and an http(s) href, never with innerHTML.

const URL_RE = /\b(?:https?:\/\/|www\.)[^\s<>"']+[^\s<>"'.,;:!?)\]}]/gi;

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'style') e.style.cssText = v;  // CSSOM: allowed by the CSP, unlike style attributes
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

/** Text with clickable links, as DOM nodes. */
export function linkify(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    if (m.index > last) frag.append(text.slice(last, m.index));
    const href = m[0].startsWith('www.') ? 'https://' + m[0] : m[0];
    frag.append(el('a', { href, target: '_blank', rel: 'noopener noreferrer' }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) frag.append(text.slice(last));
  return frag;
}

/** Text with each word of `query` wrapped in <mark>, as DOM nodes. */
export function highlight(text, query) {
  const words = query.toLowerCase().split(/[^\p{L}\p{N}]+/u).filter(Boolean);
  const frag = document.createDocumentFragment();
  for (const part of text.split(/([\p{L}\p{N}]+)/u)) {
    if (words.includes(part.toLowerCase())) frag.append(el('mark', {}, part));
    else if (part) frag.append(part);
  }
  return frag;
}

/** A stable colour per nick. */
export function nickColor(nick) {
  let h = 2166136261;  // FNV-1a: close nicks get far-apart hues
  for (const c of nick.toLowerCase()) h = Math.imul(h ^ c.codePointAt(0), 16777619) >>> 0;
  return `hsl(${h % 360} 60% 42%)`;
}

export function nickEl(nick) {
  return el('span', { class: 'nick', style: `color:${nickColor(nick)}`, title: nick }, nick);
}

const two = (n) => String(n).padStart(2, '0');
export const hhmm = (d) => `${two(d.getHours())}:${two(d.getMinutes())}`;

export const FOLDABLE = new Set(['JOIN', 'PART', 'QUIT', 'NICK']);

function eventText(m) {
  switch (m.kind) {
    case 'JOIN': return `${m.sender} joined`;
    case 'PART': return `${m.sender} left${m.text ? ` (${m.text})` : ''}`;
    case 'QUIT': return `${m.sender} quit${m.text ? ` (${m.text})` : ''}`;
    case 'NICK': return `${m.sender} is now known as ${m.text}`;
    case 'KICK': return `${m.sender} kicked ${m.text}`;
    case 'MODE': return `${m.sender} set mode ${m.text}`;
    case 'TOPIC': return `${m.sender} changed the topic to: ${m.text}`;
    default: return m.text;
  }
}

/** One message row. `nick` is ours, for highlights. */
export function messageRow(m, nick) {
  const t = new Date(m.time);
  if (m.kind === 'GAP') {
    // A hole in the history (the session moved between servers and the network
    // could not fill it): a separator across the log, not a message.
    const detail = (m.text || '').replace(/^\[gap\]\s*/, '');
    return el('div', { class: 'msg gap', role: 'separator', title: detail, dataset: m.id != null ? { id: m.id } : {} },
      el('time', { datetime: m.time, title: t.toLocaleString() }, hhmm(t)),
      el('span', { class: 'text' }, `history gap — ${detail || 'some messages may be missing here'}`));
  }
  const kind = m.kind.toLowerCase();
  const isEvent = !['PRIVMSG', 'NOTICE', 'ACTION', 'SYSTEM', 'ERROR'].includes(m.kind);
  const cls = ['msg', kind, isEvent ? 'event' : ''];
  if (!m.own && nick && ['PRIVMSG', 'ACTION', 'NOTICE'].includes(m.kind) && mentions(m.text, nick)) cls.push('highlight');
  let who;
  if (m.kind === 'ACTION') who = el('span', { class: 'nick' }, '*');
  else if (isEvent || m.kind === 'SYSTEM' || m.kind === 'ERROR') who = el('span', { class: 'nick' }, '–');
  else who = nickEl(m.sender);
  const text = el('span', { class: 'text' });
  if (m.kind === 'ACTION') text.append(el('span', { style: `color:${nickColor(m.sender)}` }, m.sender), ' ');
  text.append(linkify(isEvent ? eventText(m) : m.text));
  return el('div', { class: cls.join(' ').trim(), dataset: m.id != null ? { id: m.id } : {} },
    el('time', { datetime: m.time, title: t.toLocaleString() }, hhmm(t)), who, text);
}

/** A folded run of joins/parts/quits/nick changes: a summary line, details inside. */
export function foldRow(run, nick) {
  const count = (k) => run.filter((m) => m.kind === k).length;
  const parts = [];
  if (count('JOIN')) parts.push(`${count('JOIN')} joined`);
  if (count('PART') + count('QUIT')) parts.push(`${count('PART') + count('QUIT')} left`);
  if (count('NICK')) parts.push(`${count('NICK')} changed nick`);
  const first = new Date(run[0].time);
  const summary = el('summary', { class: 'msg event' },
    el('time', {}, hhmm(first)), el('span', { class: 'nick' }, '↔'),
    el('span', { class: 'text' }, parts.join(', ')));
  const d = el('details', { class: 'fold', dataset: { id: run[run.length - 1].id } }, summary);
  for (const m of run) d.append(messageRow(m, nick));
  return d;
}

export function mentions(text, nick) {
  if (!nick) return false;
  const esc = nick.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`(^|[^\\w])${esc}([^\\w]|$)`, 'i').test(text);
}

export function dayLabel(d) {
  return d.toLocaleDateString(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
}
