// Issue 11: a person opens an invite link (`ferry user invite`), chooses a name and
// a password in the web client and lands logged in; mistakes show in the form (two
// different passwords, a taken name); the used link then says it is not valid, and
// the new account logs in with its password.
//
//   node invite.mjs desktop   1280×800
//   node invite.mjs phone     390×844: the form fits the screen, nothing overflows
//
// Env (besides lib.mjs's): FERRY_INVITE_URL (the URL the CLI printed), FERRY_NEW_USER,
// FERRY_TAKEN_USER (a name that exists).

import { run, env, step, T } from './lib.mjs';

const scenario = process.argv[2] || 'desktop';
const phone = scenario === 'phone';

async function tour(t) {
  const { page } = t;
  const name = env('FERRY_NEW_USER');
  const password = `${name} battery staple`;
  const form = page.getByRole('form', { name: 'Join Ferry' });
  const fill = async (n, pw, again = pw) => {
    await form.getByLabel('Choose a name').fill(n);
    await form.getByLabel('Choose a password').fill(pw);
    await form.getByLabel('The password again').fill(again);
    await form.getByRole('button', { name: 'Create account' }).click();
  };

  step('open the invite link: the form says what it offers');
  await page.goto(env('FERRY_INVITE_URL'));
  await page.locator('#signup-note', { hasText: 'works once' }).waitFor({ timeout: T });
  if (phone) {
    const fits = await page.evaluate(() => {
      const r = document.getElementById('signup-form').getBoundingClientRect();
      const d = document.documentElement;
      return r.left >= 0 && r.right <= window.innerWidth + 1 && d.scrollWidth <= d.clientWidth + 1;
    });
    if (!fits) throw new Error('the sign-up form does not fit the phone screen');
  }

  step('mistakes show in the form');
  await fill(name, password, 'something else');
  await page.locator('#signup-error', { hasText: 'passwords differ' }).waitFor({ timeout: T });
  await fill(env('FERRY_TAKEN_USER'), password);
  await page.locator('#signup-error', { hasText: 'is taken' }).waitFor({ timeout: T });

  step('sign up: logged in at once');
  await fill(name, password);
  await t.connected();
  await page.locator('#me', { hasText: name }).waitFor({ timeout: T });
  if (page.url().includes('invite=')) throw new Error(`the used invite stays in the URL: ${page.url()}`);
  await page.reload();
  await t.connected();
  await page.locator('#me', { hasText: name }).waitFor({ timeout: T });

  step('the link is used up');
  if (phone) await page.getByRole('button', { name: 'Show buffers' }).click();
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByRole('button', { name: 'Log in' }).waitFor({ timeout: T });
  await page.goto(env('FERRY_INVITE_URL'));
  await page.locator('#signup-error', { hasText: 'not valid' }).waitFor({ timeout: T });
  if (!(await form.getByRole('button', { name: 'Create account' }).isDisabled())) {
    throw new Error('a used invite still offers the form');
  }

  step('log in with the chosen password');
  await page.getByRole('link', { name: /log in/ }).click();
  await page.getByLabel('Username').fill(name);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await t.connected();
  await page.locator('#me', { hasText: name }).waitFor({ timeout: T });
}

// The mistakes it makes on purpose: a taken name (409), the used invite (404).
const expectedConsole = /status of (409|404)/;
await run(tour, phone ? { viewport: { width: 390, height: 844 }, expectedConsole } : { expectedConsole });
