// The tour of Ferry's web client in Debian's Chromium, driven by playwright-core:
// login, backlog, live and sent messages, history, search, a dropped socket, a
// moved session, a gap marker, folded joins, the screenshot, a phone-sized screen.
//
// Run by the Rust test `tests/it/web.rs`, which starts InspIRCd and Ferry and plays
// the other people on IRC (see lib.mjs for the conversation over stdio).
//
// Env as lib.mjs, plus FERRY_MOVED_URL, FERRY_SCREENSHOT and FERRY_SCREENSHOT_PHONE
// (optional PNG paths).

import { env, req, run, step, T } from './lib.mjs';

const CHANNEL = env('FERRY_CHANNEL');
const MOVED_URL = env('FERRY_MOVED_URL');

await run(async ({ page, context, messages, row, once, connected, login, nav, composer }) => {
  step('login');
  await login();

  step('session in the HttpOnly cookie only');
  const stored = await page.evaluate(() => JSON.stringify({
    local: Object.fromEntries(Object.entries(localStorage)),
    session: Object.fromEntries(Object.entries(sessionStorage)),
    cookie: document.cookie,
  }));
  const token = /[0-9a-f]{64}/;
  if (token.test(stored)) throw new Error(`a session token is readable by scripts: ${stored}`);
  const cookie = (await context.cookies()).find((c) => c.name === 'ferry_session');
  if (!cookie || !cookie.httpOnly || !token.test(cookie.value)) {
    throw new Error(`no HttpOnly session cookie: ${JSON.stringify(cookie)}`);
  }

  step('backlog');
  await nav.getByRole('link', { name: CHANNEL }).click();
  await once('backlog 249:');

  step('live message');
  await req('say', 'is anyone using the web client yet?');
  await once('is anyone using the web client yet?');

  step('send');
  await composer.fill('yes, this is Chromium talking through Ferry');
  await composer.press('Enter');
  await req('expect', 'yes, this is Chromium talking through Ferry');
  await once('yes, this is Chromium talking through Ferry');
  // Up arrow recalls it.
  await composer.press('ArrowUp');
  if ((await composer.inputValue()) !== 'yes, this is Chromium talking through Ferry') throw new Error('no composer history');
  await composer.fill('');
  // Tab completes a nick.
  await composer.fill('car');
  await composer.press('Tab');
  if ((await composer.inputValue()) !== 'carol: ') throw new Error(`tab completion gave ${await composer.inputValue()}`);
  await composer.fill('');
  // /me
  await composer.fill('/me waves');
  await composer.press('Enter');
  await req('expect', '\u0001ACTION waves\u0001');
  await messages.locator('.msg.action .text', { hasText: 'waves' }).first().waitFor({ timeout: T });

  step('scroll back');
  for (let i = 0; i < 20 && !(await row('backlog 0:').count()); i++) {
    await messages.evaluate((el) => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); });
    await page.waitForTimeout(300);
  }
  await once('backlog 0:');
  await once('backlog 120:');

  step('search');
  const search = page.getByRole('searchbox', { name: 'Search' });
  await search.fill('haystack');
  await search.press('Enter');
  const results = page.getByRole('region', { name: 'Search results' });
  await results.getByRole('button', { name: /needle in the haystack/ }).click();
  const target = messages.locator('.msg.target');
  await target.waitFor({ timeout: T });
  if (!(await target.textContent()).includes('needle in the haystack')) throw new Error('search opened the wrong message');
  await row('backlog 101:').first().waitFor({ timeout: T }); // context around it
  await page.getByRole('button', { name: /Jump to latest/ }).click();
  await once('yes, this is Chromium talking through Ferry');

  step('socket drop');
  await req('drop');
  await page.locator('#conn:not([data-state="connected"])').waitFor({ timeout: T });
  await req('say-many', 'while away');
  await connected();
  for (const i of [1, 2, 3]) await once(`while away ${i}`);
  await req('say', 'back again');
  await once('back again');
  for (const i of [1, 2, 3]) await once(`while away ${i}`);

  step('moved');
  await req('moved', MOVED_URL);
  await page.locator(`body[data-ws="${MOVED_URL}"]`).waitFor({ state: 'attached', timeout: T });
  await connected();
  await req('say', 'hello on the new node');
  await once('hello on the new node');
  await once('back again');

  step('history gap');
  await req('gap');
  const gap = messages.locator('.msg.gap[role="separator"]', { hasText: 'history gap — Ferry moved this session' });
  await gap.waitFor({ timeout: T });
  if (await gap.count() !== 1) throw new Error('one gap separator');

  step('joins and parts fold');
  await req('churn');
  await messages.locator('details.fold summary', { hasText: '2 joined, 2 left' }).waitFor({ timeout: T });

  step('screenshot');
  await req('say-json', JSON.stringify('\x02release 1.4\x02 is out: \x0303all tests green\x03, \x1dfinally\x1d \x0304,01 ship it \x0f'));
  await once('release 1.4 is out');
  await req('say', 'the screenshot is at docs/screenshot.png, by the way: https://example.org/ferry');
  await once('the screenshot is at docs/screenshot.png');
  await messages.evaluate((el) => { el.scrollTop = el.scrollHeight; });
  await page.waitForTimeout(200);
  if (process.env.FERRY_SCREENSHOT) await page.screenshot({ path: process.env.FERRY_SCREENSHOT });

  step('phone');
  await page.setViewportSize({ width: 390, height: 844 });
  const menu = page.getByRole('button', { name: 'Show buffers' });
  await menu.waitFor({ timeout: T });
  await page.waitForTimeout(300);
  const closed = await nav.boundingBox();
  if (closed && closed.x + closed.width > 1) throw new Error('the sidebar covers the phone screen');
  await menu.click();
  await page.waitForTimeout(300);
  if ((await nav.boundingBox()).x < 0) throw new Error('the menu does not open the sidebar');
  await nav.getByRole('link', { name: CHANNEL }).click();
  await page.waitForTimeout(300);
  await composer.waitFor({ timeout: T });

  if (process.env.FERRY_SCREENSHOT_PHONE) await page.screenshot({ path: process.env.FERRY_SCREENSHOT_PHONE });
});
