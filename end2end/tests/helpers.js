// Shared helpers: Debian's Chromium through playwright-core (never a downloaded browser).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const BASE = process.env.CONCIERGE_URL ?? 'http://127.0.0.1:3000';
export const SHOTS = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'screenshots');
mkdirSync(SHOTS, { recursive: true });

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

/// A fresh browser context (its own cookies) with a page that fails the test on CSP or
/// script errors.
export async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  // Expected refusals (401/403/422) show up as failed loads; CSP violations, panics and
  // server errors do not belong in a passing run.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) page.errors.push(m.text());
  });
  page.on('response', (r) => {
    if (r.status() >= 500) page.errors.push(`${r.status()} ${r.url()}`);
  });
  return page;
}

/// Waits until the WASM bundle has hydrated the page (the app marks <body>).
export async function hydrated(page) {
  await page.waitForSelector('body[data-hydrated="true"]', { timeout: 30000 });
}

export async function goto(page, path) {
  await page.goto(BASE + path);
  await hydrated(page);
}

export async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

export async function signIn(page, email, password) {
  await goto(page, '/login');
  await page.fill('#email', email);
  await page.fill('#password', password);
  await page.click('main button[type=submit]');
}

/// First sign-in with a one-time password: the portal insists on a new one.
export async function firstSignIn(page, email, oneTimePassword, newPassword) {
  await signIn(page, email, oneTimePassword);
  await page.waitForURL('**/password');
  await hydrated(page);
  await page.fill('#current_password', oneTimePassword);
  await page.fill('#new_password', newPassword);
  await page.fill('#confirm_password', newPassword);
  await page.click('main button[type=submit]');
  await page.waitForURL('**/account?changed=1');
}

/// Invites `email` from a tenant's members page (already open) and returns the invitation
/// code the page shows once.
export async function invite(admin, email, name, role) {
  const shown = admin.getByTestId('invitation-code');
  const before = (await shown.count()) ? (await shown.textContent()).trim() : null;
  await admin.fill('#member-email', email);
  await admin.fill('#member-name', name);
  await admin.selectOption('#member-role', role);
  await admin.getByRole('button', { name: 'Invite', exact: true }).click();
  // The previous invitation's code may still be on screen: wait for the new one.
  await admin.waitForFunction((prev) => {
    const el = document.querySelector('[data-testid=invitation-code]');
    return el && el.textContent.trim() !== prev;
  }, before);
  const code = (await shown.textContent()).trim();
  await admin.getByRole('cell', { name: email }).first().waitFor();
  return code;
}

/// A newcomer creates their account with the invitation code on the join page.
export async function joinWithCode(page, email, code, name, password) {
  await goto(page, `/join?email=${encodeURIComponent(email)}&code=${encodeURIComponent(code)}`);
  await page.fill('#join-name', name);
  await page.fill('#join-password', password);
  await page.fill('#join-confirm', password);
  await page.getByRole('button', { name: 'Create my account and join' }).click();
  await page.waitForURL((u) => u.pathname === '/');
  await hydrated(page);
}

export const ADMIN_EMAIL = process.env.CONCIERGE_ADMIN_EMAIL ?? 'admin@concierge.local';
export const ADMIN_OTP = process.env.CONCIERGE_ADMIN_PASSWORD;
/// The admin's password after the first journey replaced the one-time password (every test
/// file signs in with whichever is current).
export const ADMIN_PASSWORD = `${ADMIN_OTP}-changed`;

/// A page signed in as the first fleet admin, replacing the one-time password if no test did.
export async function adminPage(browser) {
  const page = await newPage(browser);
  await signIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
  const failed = page.getByText('E-mail or password is incorrect.');
  const landed = page.waitForURL((u) => !u.pathname.startsWith('/login'), { timeout: 15000 }).then(() => 'in');
  const outcome = await Promise.race([landed, failed.waitFor({ timeout: 15000 }).then(() => 'failed')]);
  if (outcome === 'failed') await firstSignIn(page, ADMIN_EMAIL, ADMIN_OTP, ADMIN_PASSWORD);
  return page;
}
