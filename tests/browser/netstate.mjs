// Each network's connection state and its MOTD in Debian's Chromium (issue 18,
// finding 5). Driven by `tests/it/web.rs` (`chromium_shows_each_networks_state_and_the_motd`;
// see lib.mjs for the conversation over stdio). Alice has three networks:
//   testnet  connected to InspIRCd;
//   broken   TLS to InspIRCd's plaintext port: fails, backs off, tries again;
//   stalled  through a relay that holds the connection unanswered (registering)
//            until the script asks to `restore` it.

import { env, req, run, step, T } from './lib.mjs';

const CHANNEL = env('FERRY_CHANNEL');
const MOTD = 'Ferry test server';

/** Waits until the header's text (`#topic`) matches `re`. */
async function header(t, re) {
  try {
    await t.page.locator('#topic', { hasText: re }).waitFor({ timeout: T });
  } catch (e) {
    throw new Error(`header ${JSON.stringify(await t.page.locator('#topic').textContent())} does not match ${re}: ${e.message}`);
  }
}

/**
 * The sidebar link of network `name` (the dot, the name, the stage in words). Found by
 * its name's text: the dot's title (the state in full) is part of its accessible name.
 */
const netLink = (t, name) => t.nav.locator('a.netlink', { has: t.page.locator('.name', { hasText: new RegExp(`^${name}$`) }) });

/** The MOTD shows exactly once in the open buffer, after its heading. */
async function motdShown(t, network) {
  await t.once(`Message of the day of ${network}:`);
  await t.once(MOTD);
  const row = t.messages.locator('.msg.motd', { hasText: MOTD });
  if (await row.count() !== 1) throw new Error('the MOTD line is not a motd row');
}

run(async (t) => {
  const { page } = t;
  step('login');
  await t.login();

  step('a failing network says why and when it tries again');
  const broken = netLink(t, 'broken');
  await broken.locator('.netstate', { hasText: /^(backing off|retrying…)$/ }).waitFor({ timeout: T });
  await broken.click();
  await header(t, /^Disconnected: .*TLS handshake.*; next attempt at \d/);
  await broken.locator('.netstate', { hasText: /^backing off$/ }).waitFor({ timeout: T });
  // Then it tries again, and still says what went wrong last time.
  await header(t, /^Connecting \(attempt \d+\)… Last error: .*TLS handshake/);
  await broken.locator('.netstate', { hasText: /^retrying…$/ }).waitFor({ timeout: T });

  step('a network whose server does not answer is registering');
  const stalled = netLink(t, 'stalled');
  await stalled.locator('.netstate', { hasText: /^registering…$/ }).waitFor({ timeout: T });
  await stalled.locator('.dot[data-state="registering"]').waitFor({ timeout: T });
  await stalled.click();
  await header(t, /^Connected, registering…$/);

  step('a connected network: no stage text, its MOTD in its buffer');
  const testnet = netLink(t, 'testnet');
  if (await testnet.locator('.netstate').count()) throw new Error(`connected network shows a stage: ${await testnet.textContent()}`);
  if (await testnet.locator('.badge').count()) throw new Error('the MOTD counts as unread');
  await testnet.click();
  await header(t, /^Connected as alice$/);
  await motdShown(t, 'testnet');

  step('after a reload');
  await page.reload();
  await t.connected();
  await t.nav.getByRole('link', { name: CHANNEL }).waitFor({ timeout: T });
  if (await testnet.locator('.badge').count()) throw new Error('the MOTD counts as unread after a reload');
  await testnet.click();
  await motdShown(t, 'testnet');
  await stalled.locator('.netstate', { hasText: /^registering…$/ }).waitFor({ timeout: T });

  step('a fresh registration shows its MOTD live');
  await stalled.click();
  if (await t.row(MOTD).count()) throw new Error('a MOTD before stalled registered');
  await req('restore');
  // The held connection is reset; the next attempt gets through.
  await header(t, /^Connected as alice/);
  if (await stalled.locator('.netstate').count()) throw new Error(`connected network shows a stage: ${await stalled.textContent()}`);
  await motdShown(t, 'stalled');
});
