// Building message rows. Untrusted text only ever goes into text nodes (format.js
// builds the formatting and links with createElement), never through innerHTML.

import { formatted, strip, themed, nickHex } from './format.js';

export { strip };

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
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

/** Colours `el`'s text with `nick`'s colour (readable on both themes). */
export function paintNick(node, nick) {
  themed(node, nickHex(nick));
  return node;
}

export function nickEl(nick) {
  return paintNick(el('span', { class: 'nick', title: nick }, nick), nick);
}

/** `1 member`, `2 members`. */
export const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

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

const SPOKEN = ['PRIVMSG', 'NOTICE', 'ACTION'];
const LOCAL = ['SYSTEM', 'ERROR', 'SERVER', 'MOTD'];

/** One message row. `nick` is ours, for highlights; `onJoin(channel)` joins a listed channel. */
export function messageRow(m, nick, onJoin) {
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
  const isEvent = !SPOKEN.includes(m.kind) && !LOCAL.includes(m.kind);
  const cls = ['msg', kind, isEvent ? 'event' : ''];
  if (!m.own && nick && SPOKEN.includes(m.kind) && mentions(strip(m.text), nick)) cls.push('highlight');
  let who;
  if (m.kind === 'ACTION') who = el('span', { class: 'nick' }, '*');
  else if (isEvent || !m.sender) who = el('span', { class: 'nick' }, '–');
  else if (LOCAL.includes(m.kind)) who = el('span', { class: 'nick', title: m.sender }, m.sender);
  else who = nickEl(m.sender);
  const text = el('span', { class: 'text' });
  if (m.kind === 'ACTION') text.append(paintNick(el('span', {}, m.sender), m.sender), ' ');
  if (m.channel && onJoin) {
    // A channel of a /list reply: a button that joins it.
    text.append(el('button', { type: 'button', class: 'chan', onclick: () => onJoin(m.channel) }, m.channel), ' ');
  }
  text.append(formatted(isEvent ? eventText(m) : m.text));
  return el('div', { class: cls.join(' ').trim(), dataset: m.id != null ? { id: m.id } : {} },
    el('time', { datetime: m.time, title: t.toLocaleString() }, hhmm(t)), who, text);
}

/** A folded run of joins/parts/quits/nick changes: a summary line, details inside. */
export function foldRow(run, nick, onJoin) {
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
  for (const m of run) d.append(messageRow(m, nick, onJoin));
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
