// What the browser scripts share: Chromium started through playwright-core, the
// stdio conversation with the Rust test (`REQ <action> <arg>` → `OK [answer]`), the
// login, and the failure report.
//
// Env: FERRY_URL, FERRY_USER, FERRY_PASSWORD, FERRY_CHANNEL, CHROMIUM (default
// /usr/bin/chromium).

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };
export const T = 20_000;

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Asks the Rust test to act; resolves with its answer (may be empty). */
export async function req(action, arg = '') {
  console.log(`REQ ${action} ${arg}`);
  const { value, done } = await lines.next();
  if (done || !value.startsWith('OK')) throw new Error(`request ${action} failed: ${value}`);
  return value.slice(2).trim();
}

export const step = (s) => console.log(`STEP ${s}`);

/**
 * Starts Chromium with a fresh profile, runs `body(t)` and exits: 0 with
 * `BROWSER OK`, else 1 with `BROWSER FAIL` and a screenshot in the temp dir.
 * `t` has `page`, `context`, `messages` (the log), `row(text)`, `once(text)`,
 * `connected()`, `login()`, `problems` (page errors, console errors, CSP violations).
 * `expectedConsole`: a regex of console errors the scenario provokes on purpose.
 */
export async function run(body, { viewport = { width: 1280, height: 800 }, expectedConsole = null } = {}) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'ferry-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport,
    colorScheme: 'light',
  });
  const page = context.pages()[0] || await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // The first `GET /api/me` answers 401 before login, and a reconnect to a dead
  // node fails: those are expected.
  page.on('console', (m) => {
    // A scenario may expect more (`expectedConsole`: refusals it provokes on purpose).
    if (m.type() === 'error' && !/status of 401|WebSocket connection to .* failed/.test(m.text())
      && !(expectedConsole && expectedConsole.test(m.text()))) problems.push(`console error: ${m.text()}`);
  });
  // Anything the Content-Security-Policy blocks is a bug (or an attack that got far).
  await page.exposeFunction('ferryCspViolation', (d) => problems.push(`CSP violation: ${d}`));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => window.ferryCspViolation(`${e.violatedDirective} ${e.blockedURI}`));
  });

  const messages = page.getByRole('log', { name: 'Messages' });
  const row = (text) => messages.locator('.msg .text', { hasText: text });
  const t = {
    page, context, messages, problems, row,
    nav: page.getByRole('navigation', { name: 'Buffers' }),
    composer: page.getByRole('textbox', { name: 'Message' }),
    async once(text) {
      await row(text).first().waitFor({ timeout: T });
      const n = await row(text).count();
      if (n !== 1) throw new Error(`"${text}" is shown ${n} times`);
    },
    async connected() {
      await page.locator('#conn[data-state="connected"]').waitFor({ timeout: T });
    },
    async login() {
      await page.goto(env('FERRY_URL'));
      await page.getByLabel('Username').fill(env('FERRY_USER'));
      await page.getByLabel('Password').fill(env('FERRY_PASSWORD'));
      await page.getByRole('button', { name: 'Log in' }).click();
      await t.nav.getByRole('link', { name: env('FERRY_CHANNEL') }).waitFor({ timeout: T });
      await t.connected();
    },
    /** Types a line in the composer and sends it. */
    async type(line) {
      await t.composer.fill(line);
      await t.composer.press('Enter');
    },
  };
  try {
    await body(t);
    if (problems.length) throw new Error(problems.join('\n'));
    console.log('BROWSER OK');
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
    process.exit(0);
  } catch (e) {
    console.log(`BROWSER FAIL ${e.stack || e}`);
    try { await page.screenshot({ path: join(tmpdir(), 'ferry-browser-failure.png') }); } catch { /* ignore */ }
    console.log(`problems: ${problems.join(' | ')}`);
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
    process.exit(1);
  }
}
