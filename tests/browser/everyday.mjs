// The web client's everyday features in Debian's Chromium, one scenario per run:
//   node everyday.mjs formatting   IRC formatting, readable colours on both themes, XSS
//   node everyday.mjs commands     slash commands and where their replies show
//   node everyday.mjs phone        390×844: member list, unread, plurals, live gap
// Driven by `tests/it/web.rs` (see lib.mjs for the conversation over stdio).
// Env as lib.mjs, plus FERRY_SCREENSHOT / FERRY_SCREENSHOT_PHONE (optional PNG paths).

import { env, req, run, step, T } from './lib.mjs';

const CHANNEL = env('FERRY_CHANNEL');
const AA = 4.5; // WCAG AA contrast for text

// ---- colour arithmetic (WCAG 2) ----

const rgbOf = (css) => {
  const m = css.match(/rgba?\(([^)]+)\)/);
  if (!m) throw new Error(`not an rgb() colour: ${css}`);
  return m[1].split(/[ ,/]+/).filter(Boolean).slice(0, 3).map(Number);
};
const lin = (v) => { const c = v / 255; return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
const contrast = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };

/** Computed styles of the spans in the first row showing `text`, by their own text. */
async function spans(t, text) {
  const row = t.row(text).first();
  await row.waitFor({ timeout: T });
  return row.evaluate((el) => {
    const out = {};
    for (const s of el.querySelectorAll('span, a')) {
      const cs = getComputedStyle(s);
      out[s.textContent] = {
        weight: Number(cs.fontWeight), style: cs.fontStyle, deco: cs.textDecorationLine,
        family: cs.fontFamily, color: cs.color, bg: cs.backgroundColor,
      };
    }
    return out;
  });
}

async function panel(page) {
  return rgbOf(await page.locator('.main').evaluate((el) => getComputedStyle(el).backgroundColor));
}

// ---- finding 13 ----

async function formatting(t) {
  const { page, messages } = t;
  step('login');
  await t.login();

  step('a formatted line');
  const line = '\x02bold\x02 \x1ditalic\x1d \x1funder\x1f \x1estrike\x1e \x11mono\x11 \x16rev\x16 '
    + '\x0304red\x03 \x0301,08pair\x0f \x0352ext\x03 \x04ff8800hex\x04 \x0300white\x03 \x0301black\x0f '
    + '\x02\x1d\x0312,15mixed\x0f end';
  await req('say-json', JSON.stringify(line));
  await t.once('bold italic under');
  const plain = await t.row('bold italic under').first().textContent();
  const want = 'bold italic under strike mono rev red pair ext hex white black mixed end';
  if (plain !== want) throw new Error(`formatting codes leak into the text: ${JSON.stringify(plain)}`);
  if (/[\x00-\x1f]/.test(plain)) throw new Error('control characters are shown');

  const s = await spans(t, 'bold italic under');
  const check = (cond, what) => { if (!cond) throw new Error(`${what}: ${JSON.stringify(s)}`); };
  check(s.bold?.weight >= 700, 'bold is bold');
  check(s.italic?.style === 'italic', 'italics are italic');
  check(s.under?.deco.includes('underline'), 'underline is underlined');
  check(s.strike?.deco.includes('line-through'), 'strikethrough is struck through');
  check(/mono/i.test(s.mono?.family || ''), 'monospace is monospace');
  check(s.pair?.color === 'rgb(0, 0, 0)' && s.pair?.bg === 'rgb(255, 255, 0)', 'a colour pair (1,8: black on yellow) is kept as sent');
  check(s.mixed?.weight >= 700 && s.mixed?.style === 'italic' && s.mixed?.bg === 'rgb(210, 210, 210)', 'bold, italic and a background combine');
  check(!s.end, 'reset ends the formatting');
  const red = rgbOf(s.red.color);
  check(red[0] > 2 * red[1] && red[0] > 2 * red[2], 'red stays red');
  const orange = rgbOf(s.hex.color);
  check(orange[0] > orange[2] + 80, 'hex ff8800 stays orange');

  for (const theme of ['light', 'dark']) {
    step(`readable on the ${theme} theme`);
    await page.emulateMedia({ colorScheme: theme });
    const bg = await panel(page);
    const now = await spans(t, 'bold italic under');
    // Reverse: the theme's colours swapped.
    check(rgbOf(now.rev.bg).join() !== bg.join() && contrast(rgbOf(now.rev.color), rgbOf(now.rev.bg)) >= AA, `reverse on ${theme}`);
    for (const k of ['red', 'ext', 'hex', 'white', 'black']) {
      const c = contrast(rgbOf(now[k].color), bg);
      if (c < AA) throw new Error(`"${k}" has contrast ${c.toFixed(2)} on the ${theme} theme (${now[k].color} on ${bg})`);
    }
    await page.emulateMedia({ colorScheme: 'light' });
  }

  step('every palette colour is readable on both themes');
  const codes = [...Array(99).keys()];
  const two = (n) => String(n).padStart(2, '0');
  for (const half of [codes.slice(0, 50), codes.slice(50)]) {
    await req('say-json', JSON.stringify(`palette ${half.map((n) => `\x03${two(n)}c${two(n)}\x03`).join(' ')}`));
  }
  await t.once(`palette c00`);
  await t.once(`palette c50`);
  for (const theme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: theme });
    const bg = await panel(page);
    const all = { ...(await spans(t, 'palette c00')), ...(await spans(t, 'palette c50')) };
    for (const n of codes) {
      const sp = all[`c${two(n)}`];
      if (!sp) throw new Error(`colour ${n} not rendered: ${Object.keys(all)}`);
      const c = contrast(rgbOf(sp.color), bg);
      if (c < AA) throw new Error(`colour ${n} has contrast ${c.toFixed(2)} on the ${theme} theme (${sp.color})`);
    }
    // Nick colours too: in the log and the member list.
    const nicks = await page.locator('.msg .nick.c, .members .member').evaluateAll((els) => els.map((e) => [e.textContent, getComputedStyle(e).color]));
    if (nicks.length < 3) throw new Error(`nicks not coloured: ${JSON.stringify(nicks)}`);
    for (const [nick, color] of nicks) {
      const c = contrast(rgbOf(color), bg);
      if (c < AA) throw new Error(`nick ${nick} has contrast ${c.toFixed(2)} on the ${theme} theme (${color})`);
    }
  }
  await page.emulateMedia({ colorScheme: 'light' });

  step('a hostile line stays text');
  const hostile = '<img src=x onerror="window.__xss=1">\x02<script>window.__xss=2</script>\x02 '
    + '\x04ff0000;background:url(https://example.org/x)\x04 <svg onload="window.__xss=3"></svg> '
    + '\x0304,01<b>bold?</b>\x0f https://example.org/a"onmouseover="window.__xss=4 javascript:window.__xss=5 &lt;';
  await req('say-json', JSON.stringify(hostile));
  const evil = t.row('<img src=x onerror=').first();
  await evil.waitFor({ timeout: T });
  const shown = await evil.textContent();
  if (!shown.includes('<script>window.__xss=2</script>') || !shown.includes('<b>bold?</b>') || !shown.endsWith('&lt;')) {
    throw new Error(`the hostile line is not shown as text: ${shown}`);
  }
  const elements = await messages.locator('img, script, svg, iframe, b, object, embed').count();
  if (elements) throw new Error(`${elements} elements made from message text`);
  const links = await evil.locator('a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
  if (!links.includes('https://example.org/a') || links.some((h) => !['https://example.org/a', 'https://example.org/x'].includes(h))) {
    throw new Error(`links: ${JSON.stringify(links)}`);
  }
  const styles = await evil.locator('span').evaluateAll((ss) => ss.map((s) => s.getAttribute('style') || ''));
  if (styles.some((st) => /url\(|;\s*background:url/.test(st))) throw new Error(`CSS from message text: ${styles}`);
  await evil.hover();
  if (await page.evaluate(() => window.__xss) !== undefined) throw new Error('message text ran script');

  step('screenshot');
  await messages.evaluate((el) => { el.scrollTop = el.scrollHeight; });
  if (process.env.FERRY_SCREENSHOT) {
    await page.screenshot({ path: process.env.FERRY_SCREENSHOT });
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.screenshot({ path: process.env.FERRY_SCREENSHOT.replace(/\.png$/, '-dark.png') });
    await page.emulateMedia({ colorScheme: 'light' });
  }
}

// ---- finding 14 ----

/** Rows of the open buffer whose text matches `re`, waited for. */
async function shows(t, text, { cls = 'server', n = 1 } = {}) {
  const loc = t.messages.locator(`.msg.${cls} .text`, { hasText: text });
  await loc.first().waitFor({ timeout: T });
  const c = await loc.count();
  if (c !== n) throw new Error(`"${text}" is shown ${c} times, not ${n}`);
}

async function title(t, want) {
  await t.page.locator('#title', { hasText: new RegExp(`^${want.replace(/[#.]/g, '\\$&')}$`) }).waitFor({ timeout: T });
}

async function members(t, nick, prefix) {
  const li = t.page.locator('#members li', { has: t.page.locator('.member', { hasText: new RegExp(`^${nick}$`) }) });
  if (prefix == null) {
    await li.waitFor({ state: 'detached', timeout: T });
    return;
  }
  await t.page.locator('#members li', { has: t.page.locator('.pfx', { hasText: new RegExp(`^${prefix.replace('+', '\\+')}$`) }) })
    .filter({ has: t.page.locator('.member', { hasText: new RegExp(`^${nick}$`) }) }).waitFor({ timeout: T });
}

async function commands(t) {
  const { page, nav } = t;
  const netLink = nav.getByRole('link', { name: /testnet/ });
  step('login');
  await t.login();
  await title(t, CHANNEL);

  step('an error nobody here asked for goes to the network buffer');
  await req('irc-client', 'FOO');
  await netLink.locator('.badge').waitFor({ timeout: T });
  await netLink.click();
  await title(t, 'testnet');
  await shows(t, 'FOO: Unknown command', { cls: 'error' });
  await page.locator('#topic', { hasText: 'Connected as alice' }).waitFor({ timeout: T });
  await nav.getByRole('link', { name: CHANNEL }).click();
  await title(t, CHANNEL);

  step('/whois');
  await t.type('/whois bob');
  await shows(t, /^bob is ~?bob@/);
  await shows(t, 'End of /WHOIS list');
  await t.type('/whois nobody');
  await shows(t, 'nobody: No such nick', { cls: 'error' });

  step('/op /deop /voice /devoice');
  await t.type('/op bob');
  await members(t, 'bob', '@');
  await t.once('alice set mode +o bob');
  await t.type('/deop bob');
  await members(t, 'bob', '');
  await t.type('/voice carol');
  await members(t, 'carol', '+');
  await t.type('/devoice carol');
  await members(t, 'carol', '');

  step('/mode');
  await t.type('/mode');
  await shows(t, /^#ferry modes: \+[a-z]*n/);
  await t.type('/ban eve');
  await t.once('alice set mode +b eve!*@*');
  await t.type('/mode +b');
  await shows(t, /^#ferry ban eve!\*@\* \(set by alice/);
  await shows(t, 'End of channel ban list');
  await t.type('/unban eve');
  await t.once('alice set mode -b eve!*@*');

  step('/invite');
  await req('connect', 'dave');
  await t.type('/invite dave');
  await req('expect-line', `dave INVITE ${CHANNEL}`);
  await shows(t, `Inviting dave to ${CHANNEL}`);

  step('/kick');
  await t.type('/kick carol behave');
  await req('expect-line', 'carol KICK behave');
  await members(t, 'carol', null);
  await t.once('alice kicked carol behave');

  step('/topic');
  await t.type('/topic a \x02bold\x02 new topic');
  await page.locator('#topic .irc-b', { hasText: 'bold' }).waitFor({ timeout: T });
  await t.type('/topic');
  await shows(t, 'Topic of #ferry: a bold new topic');

  step('/away and /back');
  await t.type('/away gone fishing');
  await shows(t, 'You have been marked as being away');
  await t.type('/back');
  await shows(t, 'You are no longer marked as being away');

  step('/raw and /quote');
  await t.type('/raw PRIVMSG bob :raw hello');
  await req('expect-line', 'bob PRIVMSG raw hello');
  await t.type('/raw QUIT :bye');
  await shows(t, 'QUIT is the bouncer', { cls: 'error' });
  await t.type('/quote VERSION');
  // A reply that belongs to no channel: in the network buffer.
  await netLink.locator('.badge').waitFor({ timeout: T });
  await netLink.click();
  await shows(t, /InspIRCd/);

  step('/list');
  await nav.getByRole('link', { name: CHANNEL }).click();
  await t.type('/list');
  await title(t, 'testnet');
  await shows(t, /^1 channel:$/);
  const listed = t.messages.locator('.msg .chan', { hasText: CHANNEL });
  await listed.waitFor({ timeout: T });
  const entry = await listed.locator('xpath=..').textContent();
  if (!entry.includes('(2 users)')) throw new Error(`the /list entry says how many users: ${entry}`);
  await listed.click();
  await title(t, CHANNEL);

  step('/motd');
  await t.type('/motd');
  await title(t, 'testnet');
  await shows(t, 'Ferry test server');

  step('an invitation shows where you are');
  await nav.getByRole('link', { name: CHANNEL }).click();
  await req('send', 'bob JOIN #bobs');
  await req('send', 'bob INVITE alice #bobs');
  await shows(t, 'bob invites you to #bobs');

  step('/help and unknown commands');
  await t.type('/help');
  await shows(t, '/whois nick', { cls: 'system' });
  await t.type('/frobnicate');
  await shows(t, 'Unknown command /frobnicate', { cls: 'error' });
  if (process.env.FERRY_SCREENSHOT) {
    await page.screenshot({ path: process.env.FERRY_SCREENSHOT });
    await netLink.click();
    await page.screenshot({ path: process.env.FERRY_SCREENSHOT.replace(/\.png$/, '-network.png') });
  }
}

// ---- finding 15 ----

/** A buffer link's accessible name: the buffer's name, then maybe its unread count. */
const named = (name) => new RegExp(`^${name.replace(/[#.]/g, '\\$&')}( |$)`);

async function phone(t) {
  const { page, nav } = t;
  const menu = page.getByRole('button', { name: 'Show buffers' });
  const toggle = page.getByRole('button', { name: 'Show members' });
  const list = page.locator('#members');
  const onScreen = async (loc) => { const b = await loc.boundingBox(); return b && b.x >= 0 && b.x + b.width <= 391; };
  const settle = () => page.waitForTimeout(300); // the slide-in transition (.2s)
  const openBuffer = async (name) => {
    await menu.click();
    await settle();
    await nav.getByRole('link', { name: named(name) }).click();
    await title(t, name);
    await settle();
  };

  step('login on a phone');
  await t.login();
  await title(t, CHANNEL);

  step('the member list opens from a button');
  await toggle.waitFor({ timeout: T });
  if ((await toggle.textContent()).trim() !== '3') throw new Error(`the button shows ${await toggle.textContent()}`);
  if (await onScreen(list)) throw new Error('the member list covers the phone screen before it is opened');
  await toggle.click();
  await settle();
  if (!(await onScreen(list))) throw new Error(`the member list is not on screen: ${JSON.stringify(await list.boundingBox())}`);
  if ((await toggle.getAttribute('aria-expanded')) !== 'true') throw new Error('aria-expanded');
  await list.getByRole('heading', { name: '3 members' }).waitFor({ timeout: T });
  for (const nick of ['alice', 'bob', 'carol']) await list.getByRole('button', { name: nick, exact: true }).waitFor({ timeout: T });
  if (process.env.FERRY_SCREENSHOT_PHONE) await page.screenshot({ path: process.env.FERRY_SCREENSHOT_PHONE });
  // Tapping beside it closes it; tapping a name opens a conversation.
  await page.mouse.click(20, 400);
  await settle();
  if (await onScreen(list)) throw new Error('tapping outside does not close the member list');
  await toggle.click();
  await settle();
  await list.getByRole('button', { name: 'bob', exact: true }).click();
  await title(t, 'bob');
  await settle();
  if (await onScreen(list)) throw new Error('the member list stays open over the conversation');
  if (await toggle.isVisible()) throw new Error('a private buffer has no member list button');

  step('one\'s own join is not unread');
  await openBuffer(CHANNEL);
  // Another client of alice joins: the buffer appears, with nothing unread.
  await req('irc-client', 'JOIN #solo');
  const solo = nav.getByRole('link', { name: named('#solo') });
  await solo.waitFor({ state: 'attached', timeout: T });
  if (await solo.locator('.badge').count()) throw new Error('own join counted as unread (live)');
  await page.reload();
  await t.connected();
  await solo.waitFor({ state: 'attached', timeout: T });
  if (await solo.locator('.badge').count()) throw new Error(`own join counted as unread after a reload: ${await solo.textContent()}`);

  step('plurals');
  await openBuffer('#solo');
  await toggle.click();
  await settle();
  await list.getByRole('heading', { name: '1 member', exact: true }).waitFor({ timeout: T });
  await page.mouse.click(20, 400);
  await settle();
  const search = page.getByRole('searchbox', { name: 'Search' });
  await search.fill('xylophone');
  await search.press('Enter');
  await page.locator('#results-title', { hasText: /^1 result for “xylophone”$/ }).waitFor({ timeout: T });
  await page.getByRole('button', { name: 'Close search results' }).click();

  step('a gap shows live after the session moved to a node that died');
  await openBuffer(CHANNEL);
  await req('moved-dead');
  await page.locator('#conn:not([data-state="connected"])').waitFor({ timeout: T });
  // The dead node does not answer: the client asks its own node again, as a reload would.
  await t.connected();
  await req('gap');
  const gap = t.messages.locator('.msg.gap[role="separator"]', { hasText: 'history gap — Ferry moved this session' });
  await gap.waitFor({ timeout: T });
  if (await gap.count() !== 1) throw new Error('one gap separator');
  await req('say', 'after the gap');
  await t.once('after the gap');
}

const scenario = process.argv[2];
const scenarios = { formatting, commands, phone };
if (!scenarios[scenario]) throw new Error(`usage: node everyday.mjs ${Object.keys(scenarios).join('|')}`);
await run(scenarios[scenario], scenario === 'phone' ? { viewport: { width: 390, height: 844 } } : {});
