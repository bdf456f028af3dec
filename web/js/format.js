// IRC formatting (mIRC control codes) as DOM nodes, and colours that stay readable
// on both themes. Message text only ever lands in text nodes; a colour reaches the
// page only as a hex string from the palette below or six checked hex digits, set
// through CSSOM custom properties (allowed by the CSP, unlike style attributes).

// Codes: bold, colour, hex colour, reset, monospace, reverse, italics, strike, underline.
const CODES = /\x03(?:(\d{1,2})(?:,(\d{1,2}))?)?|\x04(?:([0-9a-f]{6})(?:,([0-9a-f]{6}))?)?|[\x02\x0f\x11\x16\x1d\x1e\x1f]/gi;
// Other control characters (a stray CTCP \x01, a bell) would show as boxes.
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/g;

/** Colours 0–98 (0–15 the classic mIRC ones, 16–98 the extended palette); 99 is "default". */
export const PALETTE = [
  'ffffff', '000000', '00007f', '009300', 'ff0000', '7f0000', '9c009c', 'fc7f00',
  'ffff00', '00fc00', '009393', '00ffff', '0000fc', 'ff00ff', '7f7f7f', 'd2d2d2',
  '470000', '472100', '474700', '324700', '004700', '00472c', '004747', '002747', '000047', '2e0047', '470047', '47002a',
  '740000', '743a00', '747400', '517400', '007400', '007449', '007474', '004074', '000074', '4b0074', '740074', '740045',
  'b50000', 'b56300', 'b5b500', '7db500', '00b500', '00b571', '00b5b5', '0063b5', '0000b5', '7500b5', 'b500b5', 'b5006b',
  'ff0000', 'ff8c00', 'ffff00', 'b2ff00', '00ff00', '00ffa0', '00ffff', '008cff', '0000ff', 'a500ff', 'ff00ff', 'ff0098',
  'ff5959', 'ffb459', 'ffff71', 'cfff60', '6fff6f', '65ffc9', '6dffff', '59b4ff', '5959ff', 'c459ff', 'ff66ff', 'ff59bc',
  'ff9c9c', 'ffd39c', 'ffff9c', 'e2ff9c', '9cff9c', '9cffdb', '9cffff', '9cd3ff', '9c9cff', 'dc9cff', 'ff9cff', 'ff94d3',
  '000000', '131313', '282828', '363636', '4d4d4d', '656565', '818181', '9f9f9f', 'bcbcbc', 'e2e2e2', 'ffffff',
];

const URL_RE = /\b(?:https?:\/\/|www\.)[^\s<>"']+[^\s<>"'.,;:!?)\]}]/gi;

/** Text with clickable links, as DOM nodes (an `<a>` only ever gets an http(s) href). */
export function linkify(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    if (m.index > last) frag.append(text.slice(last, m.index));
    const a = document.createElement('a');
    a.href = m[0].startsWith('www.') ? 'https://' + m[0] : m[0];
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    a.textContent = m[0];
    frag.append(a);
    last = m.index + m[0].length;
  }
  if (last < text.length) frag.append(text.slice(last));
  return frag;
}

/** The text without formatting codes or other control characters. */
export function strip(text) {
  return text.replace(CODES, '').replace(CONTROL, '');
}

const paletteHex = (n) => (n == null ? undefined : n === 99 ? null : PALETTE[n] ?? undefined);

/**
 * Formatted text (with clickable links) as a fragment of text nodes and spans.
 * Toggles: bold, italics, underline, strikethrough, monospace, reverse. Colours:
 * `\x03fg[,bg]` (a foreground alone keeps the background), `\x04RRGGBB[,RRGGBB]`,
 * a bare `\x03`/`\x04` ends colours, `\x0f` ends everything.
 */
export function formatted(text) {
  const frag = document.createDocumentFragment();
  if (!/[\x02-\x04\x0f\x11\x16\x1d-\x1f]/.test(text)) {
    frag.append(linkify(text.replace(CONTROL, '')));
    return frag;
  }
  const st = { b: false, i: false, u: false, s: false, m: false, rev: false, fg: null, bg: null };
  let last = 0;
  const flush = (end) => {
    const piece = text.slice(last, end).replace(CONTROL, '');
    if (piece) frag.append(styled(piece, st));
  };
  for (const m of text.matchAll(CODES)) {
    flush(m.index);
    last = m.index + m[0].length;
    switch (m[0][0]) {
      case '\x02': st.b = !st.b; break;
      case '\x1d': st.i = !st.i; break;
      case '\x1f': st.u = !st.u; break;
      case '\x1e': st.s = !st.s; break;
      case '\x11': st.m = !st.m; break;
      case '\x16': st.rev = !st.rev; break;
      case '\x0f': Object.assign(st, { b: false, i: false, u: false, s: false, m: false, rev: false, fg: null, bg: null }); break;
      case '\x03': {
        if (m[1] == null) { st.fg = null; st.bg = null; break; }
        const fg = paletteHex(Number(m[1]));
        const bg = paletteHex(m[2] == null ? null : Number(m[2]));
        if (fg !== undefined) st.fg = fg;
        if (bg !== undefined) st.bg = bg;
        break;
      }
      case '\x04':
        if (m[3] == null) { st.fg = null; st.bg = null; break; }
        st.fg = m[3].toLowerCase();
        if (m[4] != null) st.bg = m[4].toLowerCase();
        break;
      default: break;
    }
  }
  flush(text.length);
  return frag;
}

function styled(piece, st) {
  const plain = !st.b && !st.i && !st.u && !st.s && !st.m && !st.rev && !st.fg && !st.bg;
  if (plain) return linkify(piece);
  const span = document.createElement('span');
  const cls = [];
  if (st.b) cls.push('irc-b');
  if (st.i) cls.push('irc-i');
  if (st.u) cls.push('irc-u');
  if (st.s) cls.push('irc-s');
  if (st.m) cls.push('irc-m');
  const [fg, bg] = st.rev ? [st.bg, st.fg] : [st.fg, st.bg];
  if (st.rev && !fg && !bg) cls.push('irc-rev');
  if (bg) cls.push('irc-bg');
  span.className = cls.join(' ');
  if (bg) {
    // The sender chose the background: keep it, and its foreground if they chose one.
    span.style.backgroundColor = `#${bg}`;
    span.style.color = `#${fg || (contrast(rgb(bg), [0, 0, 0]) >= contrast(rgb(bg), [255, 255, 255]) ? '000000' : 'ffffff')}`;
  } else if (fg && st.rev) {
    // Reversed with only a background set: that colour on the theme's text colour.
    span.style.backgroundColor = 'var(--fg)';
    span.style.color = `#${fg}`;
  } else if (fg) {
    themed(span, fg);
  }
  span.append(linkify(piece));
  return span;
}

// ---- colours readable on both themes ----

// The lightest and darkest backgrounds a message row has in each theme (panel,
// highlighted row): a colour is made to contrast 4.5:1 (WCAG AA) with both.
const THEMES = {
  light: { bgs: ['ffffff', 'fff4c2', 'f7f8fa'], step: -0.02 },
  dark: { bgs: ['1b1f27', '3a3417', '15181e'], step: 0.02 },
};
export const MIN_CONTRAST = 4.5;
const cache = new Map();

/** Sets `el`'s text colour to `hex`, lightened or darkened per theme until readable. */
export function themed(el, hex) {
  let pair = cache.get(hex);
  if (!pair) {
    pair = [readable(hex, THEMES.light), readable(hex, THEMES.dark)];
    if (cache.size > 2000) cache.clear();
    cache.set(hex, pair);
  }
  el.classList.add('c');
  el.style.setProperty('--c-light', pair[0]);
  el.style.setProperty('--c-dark', pair[1]);
}

function readable(hex, theme) {
  const bgs = theme.bgs.map(rgb);
  let c = rgb(hex);
  const [h, s] = hsl(c);
  let l = hsl(c)[2];
  for (let n = 0; n < 60 && Math.min(...bgs.map((b) => contrast(c, b))) < MIN_CONTRAST; n++) {
    l = Math.min(1, Math.max(0, l + theme.step));
    c = fromHsl(h, s, l);
  }
  return `rgb(${c.map(Math.round).join(' ')})`;
}

export function rgb(hex) {
  return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

const channel = (v) => { const c = v / 255; return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);

/** WCAG contrast ratio of two [r, g, b] colours. */
export function contrast(a, b) {
  const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
}

function hsl([r, g, b]) {
  [r, g, b] = [r / 255, g / 255, b / 255];
  const max = Math.max(r, g, b), min = Math.min(r, g, b), l = (max + min) / 2, d = max - min;
  if (!d) return [0, 0, l];
  const s = d / (1 - Math.abs(2 * l - 1));
  const h = max === r ? ((g - b) / d + 6) % 6 : max === g ? (b - r) / d + 2 : (r - g) / d + 4;
  return [h * 60, s, l];
}

function fromHsl(h, s, l) {
  const k = (n) => (n + h / 30) % 12;
  const a = s * Math.min(l, 1 - l);
  return [0, 8, 4].map((n) => 255 * (l - a * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1))));
}

/** A stable colour per nick: a hue from the nick, readable on both themes. */
export function nickHex(nick) {
  let h = 2166136261;  // FNV-1a: close nicks get far-apart hues
  for (const c of nick.toLowerCase()) h = Math.imul(h ^ c.codePointAt(0), 16777619) >>> 0;
  return fromHsl(h % 360, 0.65, 0.5).map((v) => Math.round(v).toString(16).padStart(2, '0')).join('');
}
