// Issue 11: a person runs their own account from the web client. Logged in without
// any network, they add one ("Networks & account"; a mistake first, shown next to
// the form), see it connect (the IRC server sees the JOIN), leave and join a channel,
// disconnect and connect it, remove it after a confirmation, change their password
// (a wrong current one first) and log in again with the new one. Editing its
// settings reconnects it.
//
//   node account.mjs desktop   1280×800
//   node account.mjs phone     390×844: the dialog fills the screen, nothing overflows
//
// Env (besides lib.mjs's): FERRY_IRCD (host:port of the IRC server), FERRY_NEW_PASSWORD,
// FERRY_SCREENSHOT (optional: the connected network's settings).

import { run, env, req, step, T } from './lib.mjs';

const scenario = process.argv[2] || 'desktop';
const phone = scenario === 'phone';
const chan = `#acct-${scenario}`;

async function tour(t) {
  const { page } = t;
  const user = env('FERRY_USER');
  const logIn = async (password) => {
    await page.getByLabel('Username').fill(user);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Log in' }).click();
  };

  step('log in with no network yet');
  await page.goto(env('FERRY_URL'));
  await logIn(env('FERRY_PASSWORD'));
  await t.connected();
  await req('connect', 'watcher');
  await req('send', `watcher JOIN ${chan}`);

  const dialog = page.getByRole('dialog', { name: 'Networks & account' });
  const openAccount = async () => {
    if (phone) await page.getByRole('button', { name: 'Show buffers' }).click();
    await page.getByRole('button', { name: 'Networks & account' }).click();
    await dialog.waitFor({ timeout: T });
  };
  await openAccount();
  await dialog.getByText('No networks yet').waitFor({ timeout: T });

  step('add a network: a mistake, shown next to the form, then right');
  await dialog.getByRole('button', { name: 'Add network' }).click();
  await dialog.getByLabel('Name', { exact: true }).fill('testnet');
  await dialog.getByLabel('Server (host:port)').fill('127.0.0.1');
  await dialog.getByLabel('TLS', { exact: true }).uncheck();
  await dialog.getByLabel('Nick', { exact: true }).fill(user);
  await dialog.getByLabel(/^Channels/).fill(chan);
  await dialog.getByRole('button', { name: 'Add', exact: true }).click();
  await page.locator('#net-error', { hasText: 'HOST:PORT' }).waitFor({ timeout: T });
  await dialog.getByLabel('Server (host:port)').fill(env('FERRY_IRCD'));
  await dialog.getByRole('button', { name: 'Add', exact: true }).click();
  await req('expect-line', 'watcher JOIN');
  await page.locator('#net-state', { hasText: `Connected as ${user}` }).waitFor({ timeout: T });
  await dialog.locator('#net-chanlist li', { hasText: chan }).waitFor({ timeout: T });
  if (process.env.FERRY_SCREENSHOT) await page.screenshot({ path: process.env.FERRY_SCREENSHOT });
  if (phone) {
    const fits = await page.evaluate(() => {
      const d = document.getElementById('account');
      const r = d.getBoundingClientRect();
      return r.left >= 0 && r.right <= window.innerWidth + 1 && d.scrollWidth <= d.clientWidth + 1;
    });
    if (!fits) throw new Error('the account dialog does not fit the phone screen');
  }

  step('leave and join a channel');
  await dialog.getByRole('button', { name: `Leave ${chan}` }).click();
  await req('expect-line', 'watcher PART');
  await dialog.locator('#net-chanlist', { hasText: 'No channels.' }).waitFor({ timeout: T });
  await dialog.getByLabel('Channel to join').fill(chan);
  await dialog.getByRole('button', { name: 'Join', exact: true }).click();
  await req('expect-line', 'watcher JOIN');
  await dialog.locator('#net-chanlist li', { hasText: chan }).waitFor({ timeout: T });

  step('the sidebar shows the network and its channel');
  await t.nav.getByRole('link', { name: chan }).waitFor({ timeout: T, state: 'attached' });

  step('disconnect and connect');
  await dialog.getByRole('button', { name: 'Disconnect' }).click();
  await req('expect-line', 'watcher QUIT');
  await page.locator('#net-state', { hasText: 'you turned it off' }).waitFor({ timeout: T });
  await dialog.getByRole('button', { name: 'Connect', exact: true }).click();
  await req('expect-line', 'watcher JOIN');
  await page.locator('#net-state', { hasText: `Connected as ${user}` }).waitFor({ timeout: T });

  step('edit its settings: a mistake, then a new real name (it reconnects)');
  await dialog.getByRole('button', { name: 'Edit settings' }).click();
  await dialog.getByLabel('Certificate check').fill('pin:zz');
  await dialog.getByRole('button', { name: 'Save', exact: true }).click();
  await page.locator('#net-error', { hasText: 'tls_verify' }).waitFor({ timeout: T });
  await dialog.getByLabel('Certificate check').fill('');
  await dialog.getByLabel('Real name (optional)').fill('Dora Explorer');
  await dialog.getByRole('button', { name: 'Save', exact: true }).click();
  await req('expect-line', 'watcher QUIT');
  await req('expect-line', 'watcher JOIN');
  await page.locator('#net-state', { hasText: `Connected as ${user}` }).waitFor({ timeout: T });

  step('remove, after a confirmation');
  await dialog.getByRole('button', { name: 'Remove…' }).click();
  await dialog.getByRole('alertdialog').getByText('deletes its backlog').waitFor({ timeout: T });
  await dialog.getByRole('button', { name: 'Keep it' }).click();
  await dialog.getByRole('button', { name: 'Remove…' }).click();
  await dialog.getByRole('button', { name: 'Remove', exact: true }).click();
  await req('expect-line', 'watcher QUIT');
  await dialog.getByText('No networks yet').waitFor({ timeout: T });

  step('change the password: a wrong current one first');
  const newPassword = env('FERRY_NEW_PASSWORD');
  await dialog.getByLabel('Current password').fill('not my password');
  await dialog.getByLabel('New password', { exact: true }).fill(newPassword);
  await dialog.getByLabel('New password again').fill(newPassword);
  await dialog.getByRole('button', { name: 'Change password' }).click();
  await page.locator('#pw-error', { hasText: 'current password is wrong' }).waitFor({ timeout: T });
  await dialog.getByLabel('Current password').fill(env('FERRY_PASSWORD'));
  await dialog.getByRole('button', { name: 'Change password' }).click();
  await page.locator('#pw-done', { hasText: 'Password changed' }).waitFor({ timeout: T });
  await dialog.getByRole('button', { name: 'Close' }).click();

  step('log out, and in again with the new password only');
  if (phone && !(await page.locator('.app.nav-open').count())) await page.getByRole('button', { name: 'Show buffers' }).click();
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByRole('button', { name: 'Log in' }).waitFor({ timeout: T });
  await logIn(env('FERRY_PASSWORD'));
  await page.locator('#login-error', { hasText: 'Wrong username or password' }).waitFor({ timeout: T });
  await logIn(newPassword);
  await t.connected();
}

// The mistakes it makes on purpose: a bad address (400), a wrong current password (403).
const expectedConsole = /status of (400|403)/;
await run(tour, phone ? { viewport: { width: 390, height: 844 }, expectedConsole } : { expectedConsole });
