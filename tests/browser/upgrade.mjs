// The web client across an in-place upgrade (issue 13): the node closes the page's
// websocket with 1012 ("Ferry is restarting"), the page reconnects by itself — no
// reload — to the new process and resumes from its last message id, and shows every
// numbered line said before, during and after the upgrade exactly once. Driven by
// `tests/it/upgrade.rs` (`chromium_shows_every_line_once_across_an_upgrade`; see
// lib.mjs for the conversation over stdio): `REQ upgrade` starts a talker saying
// `n 1..=N` throughout and runs `ferry upgrade` while it talks; its answer is N.

import { req, run, step, T } from './lib.mjs';

run(async (t) => {
  const { page } = t;
  step('login');
  await t.login();
  await req('say', 'before the upgrade');
  await t.once('before the upgrade');
  // Gone after a reload: proves the page was never reloaded.
  await page.evaluate(() => { window.ferryNoReload = true; });
  // Every state the connection goes through, as the page shows it.
  await page.evaluate(() => {
    window.ferryStates = [];
    const c = document.getElementById('conn');
    new MutationObserver(() => window.ferryStates.push(`${c.dataset.state} ${c.textContent}`))
      .observe(c, { attributes: true, childList: true, characterData: true, subtree: true });
  });

  step('upgrade while a talker says numbered lines');
  const n = Number(await req('upgrade'));
  if (!(n > 0)) throw new Error(`bad line count ${n}`);

  step('the page reconnected by itself and shows every line once');
  await t.connected();
  for (let i = 1; i <= n; i++) {
    try {
      await t.once(new RegExp(`^n ${i}$`));
    } catch (e) {
      throw new Error(`${e.message}\nshown: ${await t.messages.textContent()}`);
    }
  }
  await t.once('before the upgrade');
  if (!await page.evaluate(() => window.ferryNoReload === true)) throw new Error('the page was reloaded');
  const states = await page.evaluate(() => window.ferryStates);
  if (!states.some((s) => /^reconnecting /.test(s))) {
    throw new Error(`the page did not say it reconnects: ${JSON.stringify(states)}`);
  }
  if (states.some((s) => /^offline/.test(s))) {
    throw new Error(`the page went offline (backed off) instead of reconnecting at once: ${JSON.stringify(states)}`);
  }

  step('the page still sends, through the new process');
  await t.type('hello from the new process');
  await t.once('hello from the new process');
  await req('heard', 'hello from the new process');
}, { expectedConsole: /WebSocket/ });
