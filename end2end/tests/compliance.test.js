// Compliance in the browser (issue 19): a member sets up two-factor sign-in by scanning the
// QR code's key into an authenticator (the `otpauth` package plays the phone app), signs in
// with password then code, a wrong code is refused next to the field; the tenant requires a
// second factor; the audit page verifies its chains. Screenshots at 1280 and 390 px.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as OTPAuth from 'otpauth';
import {
  launch, newPage, adminPage, goto, hydrated, shot, signIn, createTenant, invite, joinWithCode,
  axeViolations, BASE,
} from './helpers.js';

const run = Date.now().toString(36);

function authenticator(key) {
  return new OTPAuth.TOTP({
    secret: OTPAuth.Secret.fromBase32(key.replace(/\s+/g, '')),
    algorithm: 'SHA1', digits: 6, period: 30,
  });
}

/// The next code the app shows that was not shown yet (each code signs in once).
async function nextCode(totp, used) {
  for (;;) {
    const code = totp.generate();
    if (!used.has(code)) {
      used.add(code);
      return code;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

test('a member sets up two-factor sign-in and signs in with a code', async () => {
  const browser = await launch();
  try {
    const admin = await adminPage(browser);
    const tenantUrl = await createTenant(admin, `Secure ${run}`);
    const email = `zoe-${run}@secure.example`;
    const code = await invite(admin, email, 'Zoe Admin', 'tenant_admin');
    const zoe = await newPage(browser);
    const password = `zoe-${run}-passphrase`;
    await joinWithCode(zoe, email, code, 'Zoe Admin', password);

    // Setup on the account page: the QR code and the key; a wrong code is refused by name.
    await goto(zoe, '/account');
    const card = zoe.getByRole('region', { name: 'Two-factor sign-in' });
    await card.getByText('Off').waitFor();
    await card.getByRole('button', { name: 'Set up an authenticator app' }).click();
    await zoe.locator('#enrolment .qr svg').waitFor();
    const key = (await zoe.locator('#totp-secret').textContent()).trim();
    const totp = authenticator(key);
    const used = new Set();
    await zoe.fill('#confirm-code', '000000');
    await zoe.getByRole('button', { name: 'Turn on' }).click();
    await zoe.locator('#code-error').getByText('That code does not match').waitFor();
    await shot(zoe, 'two-factor-setup');
    await zoe.fill('#confirm-code', await nextCode(totp, used));
    await zoe.getByRole('button', { name: 'Turn on' }).click();
    const codes = zoe.locator('#recovery-codes li');
    await codes.first().waitFor();
    assert.equal(await codes.count(), 10);
    const recovery = (await codes.nth(0).textContent()).trim();
    await card.getByText('On', { exact: true }).waitFor();
    await shot(zoe, 'two-factor-recovery-codes');

    // Signing in again: the password, then the code page.
    const again = await newPage(browser);
    await signIn(again, email, password);
    await again.waitForURL('**/login/code**');
    await hydrated(again);
    await shot(again, 'login-code');
    await again.fill('#code', '123456');
    await again.getByRole('button', { name: 'Sign in' }).click();
    await again.locator('#code-error').getByText('That code is not right').waitFor();
    assert.equal(await again.locator('#code').getAttribute('aria-invalid'), 'true');
    await again.fill('#code', await nextCode(totp, used));
    await again.getByRole('button', { name: 'Sign in' }).click();
    await again.waitForURL((u) => u.pathname === '/');
    // A recovery code signs in once, on a phone.
    const phone = await newPage(browser);
    await phone.setViewportSize({ width: 390, height: 800 });
    await signIn(phone, email, password);
    await phone.waitForURL('**/login/code**');
    await hydrated(phone);
    assert.deepEqual(await axeViolations(phone), []);
    await shot(phone, 'login-code-phone');
    await phone.fill('#code', recovery);
    await phone.getByRole('button', { name: 'Sign in' }).click();
    await phone.waitForURL((u) => u.pathname === '/');

    // Zoe requires it of her tenant's members; a member without one is sent to the setup.
    await goto(zoe, tenantUrl.replace(/^https?:\/\/[^/]+/, ''));
    const policy = zoe.getByRole('region', { name: 'Two-factor sign-in' });
    await policy.getByLabel(/Require a second factor/).check();
    await policy.getByRole('button', { name: 'Save' }).click();
    await policy.getByText('A second factor is now required.').waitFor();
    const memberEmail = `yan-${run}@secure.example`;
    const memberCode = await invite(zoe, memberEmail, 'Yan Member', 'requester');
    const yan = await newPage(browser);
    await goto(yan, `/join?email=${encodeURIComponent(memberEmail)}&code=${encodeURIComponent(memberCode)}`);
    await yan.fill('#join-name', 'Yan Member');
    await yan.fill('#join-password', `yan-${run}-passphrase`);
    await yan.fill('#join-confirm', `yan-${run}-passphrase`);
    await yan.getByRole('button', { name: 'Create my account and join' }).click();
    await yan.waitForURL('**/two-factor');
    await hydrated(yan);
    await yan.getByText('Your organisation requires a second factor.').waitFor();
    await shot(yan, 'two-factor-required');
    assert.deepEqual(zoe.errors.concat(again.errors, phone.errors, yan.errors), []);
  } finally {
    await browser.close();
  }
});

test('the audit page verifies the chains and offers the exports', async () => {
  const browser = await launch();
  try {
    const admin = await adminPage(browser);
    await goto(admin, '/audit');
    const integrity = admin.getByRole('region', { name: 'Integrity' });
    await integrity.getByRole('button', { name: 'Verify now' }).click();
    await integrity.locator('.badge.ok', { hasText: 'Intact' }).first().waitFor();
    assert.equal(await integrity.locator('.badge.danger').count(), 0);
    await shot(admin, 'audit-integrity');
    // The export is the server's own download, with every row's hashes.
    const res = await admin.request.get(`${BASE}/audit/export.jsonl`);
    assert.equal(res.status(), 200);
    const first = JSON.parse((await res.text()).split('\n')[0]);
    assert.match(first.row_hash, /^[0-9a-f]{64}$/);
    await admin.setViewportSize({ width: 390, height: 800 });
    await goto(admin, '/audit');
    await integrity.getByRole('button', { name: 'Verify now' }).waitFor();
    const width = await admin.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `the audit page fits a phone (${width} px)`);
    await shot(admin, 'audit-integrity-phone');
    assert.deepEqual(admin.errors, []);
  } finally {
    await browser.close();
  }
});
