// Detaching and attaching a channel from the web client on a 390×844 phone (issue 11,
// item 5). Driven by `tests/it/web.rs` (`chromium_detaches_and_attaches_a_channel_on_a_phone`;
// see lib.mjs for the conversation over stdio). Alice is in the channel with bob.

import { env, req, run, step, T } from './lib.mjs';

const CHANNEL = env('FERRY_CHANNEL');

run(async (t) => {
  const { page } = t;
  step('login on a phone: the channel opens, with its switch in the header');
  await t.login();
  await page.locator('#title', { hasText: CHANNEL }).waitFor({ timeout: T });
  const sw = page.locator('#detach');
  await sw.waitFor({ state: 'visible', timeout: T });
  const box = await sw.boundingBox();
  if (!box || box.x + box.width > 390 || box.height < 28) throw new Error(`the switch does not fit a phone: ${JSON.stringify(box)}`);
  if (await sw.textContent() !== 'Detach') throw new Error(`switch says ${await sw.textContent()}`);

  step('detach: the switch and the sidebar say so');
  await sw.click();
  await page.locator('#detach[aria-pressed="true"]', { hasText: 'Attach' }).waitFor({ timeout: T });
  await t.nav.locator('a.detached', { hasText: CHANNEL }).waitFor({ state: 'attached', timeout: T });

  step('a line said while detached is not shown live');
  await req('say', 'said while you were away');
  await req('say', 'and more of it');
  // The bouncer stored them (checked by the test) but sent nothing live.
  if (await t.row('said while you were away').count()) throw new Error('a detached channel line was shown live');

  step('attach: what was said meanwhile is loaded');
  await sw.click();
  await page.locator('#detach[aria-pressed="false"]', { hasText: 'Detach' }).waitFor({ timeout: T });
  try {
    await t.once('said while you were away');
  } catch (e) {
    throw new Error(`${e.message}\nshown: ${await t.messages.textContent()}`);
  }
  await t.once('and more of it');
  if (await t.nav.locator('a.detached').count()) throw new Error('still marked detached');

  step('detached again, a mention attaches it by itself');
  await sw.click();
  await page.locator('#detach[aria-pressed="true"]').waitFor({ timeout: T });
  await req('say', 'quiet again');
  await req('say', 'alice: are you there?');
  await page.locator('#detach[aria-pressed="false"]').waitFor({ timeout: T });
  await t.once('alice: are you there?');
  await t.once('quiet again');

  step('after a reload, a detached channel is still marked');
  await sw.click();
  await page.locator('#detach[aria-pressed="true"]').waitFor({ timeout: T });
  await page.reload();
  await t.connected();
  await page.locator('#detach[aria-pressed="true"]', { hasText: 'Attach' }).waitFor({ timeout: T });
  await t.nav.locator('a.detached', { hasText: CHANNEL }).waitFor({ state: 'attached', timeout: T });
}, { viewport: { width: 390, height: 844 } });
