// Foundation journey: fleet admin → tenant → tenant admin → requester, in three browsers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, newPage, goto, shot, signIn, firstSignIn, hydrated, BASE, invite, joinWithCode,
  ADMIN_EMAIL, ADMIN_OTP, ADMIN_PASSWORD as ADMIN_NEW_PASSWORD,
} from './helpers.js';

const ADMIN_PASSWORD = ADMIN_OTP;
const run = Date.now().toString(36);

test('fleet admin, tenant admin and requester each get exactly their pages', async () => {
  assert.ok(ADMIN_PASSWORD, 'CONCIERGE_ADMIN_PASSWORD must be set');
  const browser = await launch();
  try {
    // Fleet admin: wrong password first, then the real one-time password.
    const admin = await newPage(browser);
    await goto(admin, '/login');
    await shot(admin, 'login');
    await admin.fill('#email', ADMIN_EMAIL);
    await admin.fill('#password', 'not-the-password');
    await admin.click('main button[type=submit]');
    await admin.getByText('E-mail or password is incorrect.').waitFor();
    await firstSignIn(admin, ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_NEW_PASSWORD);

    await goto(admin, '/tenants');
    const tenantName = `Acme ${run}`;
    await admin.fill('#tenant-name', tenantName);
    await admin.click('text=Create tenant');
    await admin.getByRole('link', { name: tenantName }).waitFor();
    // A duplicate name is refused next to the field.
    await admin.fill('#tenant-name', tenantName.toUpperCase());
    await admin.click('text=Create tenant');
    await admin.getByText('A tenant with that name already exists.').waitFor();
    await shot(admin, 'tenants');

    await admin.getByRole('link', { name: tenantName }).click();
    await admin.waitForURL('**/tenants/*');
    await hydrated(admin);
    const tenantAdminEmail = `tara-${run}@acme.example`;
    const tenantAdminCode = await invite(admin, tenantAdminEmail, 'Tara Admin', 'tenant_admin');
    assert.match(tenantAdminCode, /^\w{5}-\w{5}-\w{5}-\w{5}$/);
    await shot(admin, 'members');

    // Tenant admin: joins with the code, adds a requester from their own members page.
    const tara = await newPage(browser);
    await goto(tara, `/join?email=${encodeURIComponent(tenantAdminEmail)}&code=${encodeURIComponent(tenantAdminCode)}`);
    await shot(tara, 'join');
    await joinWithCode(tara, tenantAdminEmail, tenantAdminCode, 'Tara Admin', `tara-${run}-passphrase`);

    await goto(admin, '/users');
    await admin.getByRole('cell', { name: tenantAdminEmail }).waitFor();
    await shot(admin, 'users');
    await goto(admin, '/audit');
    await admin.getByRole('cell', { name: 'member.join' }).first().waitFor();
    await shot(admin, 'audit');
    await tara.getByRole('link', { name: `${tenantName} members` }).click();
    await tara.waitForURL('**/tenants/*');
    await hydrated(tara);
    const requesterEmail = `rick-${run}@acme.example`;
    const requesterCode = await invite(tara, requesterEmail, 'Rick Requester', 'requester');
    // An existing account (the fleet admin's) gets the same kind of answer, and is asked on
    // its account page; declining leaves everything as it was.
    await invite(tara, ADMIN_EMAIL, '', 'manager');
    await goto(admin, '/account');
    const card = admin.getByRole('region', { name: 'Invitations' });
    await card.getByText(`${tenantName}`, { exact: true }).waitFor();
    await shot(admin, 'account-invitation');
    await card.getByRole('button', { name: 'Decline' }).click();
    await card.waitFor({ state: 'detached' });
    // Tenant admins do not see fleet pages.
    await goto(tara, '/tenants');
    await tara.getByText('Not allowed').waitFor();

    // Requester: first sign-in, then the fleet and admin pages are closed.
    const rick = await newPage(browser);
    await joinWithCode(rick, requesterEmail, requesterCode, 'Rick Requester', `rick-${run}-passphrase`);
    await goto(rick, '/');
    await rick.getByText(`Welcome, Rick`).waitFor();
    await rick.getByText(tenantName, { exact: true }).waitFor();
    await shot(rick, 'home-requester');
    for (const path of ['/tenants', '/users', '/audit']) {
      const res = await rick.goto(BASE + path);
      assert.equal(res.status(), 403, `${path} must be refused`);
      await rick.getByText('Not allowed').waitFor();
    }
    assert.equal(await rick.getByRole('link', { name: 'Tenants' }).count(), 0);

    // Before hydration (here: with JavaScript off) forms still work and show their errors.
    const plain = await (await browser.newContext({ javaScriptEnabled: false })).newPage();
    await plain.goto(BASE + '/login');
    await plain.fill('#email', requesterEmail);
    await plain.fill('#password', 'wrong password, no js');
    await plain.click('main button[type=submit]');
    await plain.getByText('E-mail or password is incorrect.').waitFor();
    await plain.fill('#email', requesterEmail);
    await plain.fill('#password', `rick-${run}-passphrase`);
    await plain.click('main button[type=submit]');
    await plain.getByText('Welcome, Rick').waitFor();
    await plain.goto(BASE + '/password');
    await plain.fill('#current_password', `rick-${run}-passphrase`);
    await plain.fill('#new_password', 'password123');
    await plain.fill('#confirm_password', 'password123');
    await plain.click('main button[type=submit]');
    await plain.locator('#new_password-error').getByText('one of the most common').waitFor();
    await shot(plain, 'password-error-nojs');

    // Fleet admin registers a simulated host; its inventory shows up.
    await goto(admin, '/hosts');
    await admin.fill('#host-name', 'simulated-e2e');
    await admin.fill('#host-uri', 'test:///default');
    await admin.fill('#host-labels', 'demo, e2e');
    await admin.getByRole('button', { name: 'Register host' }).click();
    await admin.getByRole('link', { name: 'simulated-e2e' }).waitFor();
    await admin.getByRole('link', { name: 'simulated-e2e' }).click();
    await admin.waitForURL('**/hosts/*');
    await hydrated(admin);
    await admin.getByRole('link', { name: 'test', exact: true }).waitFor();
    await shot(admin, 'host');
    // The VM page: suspend and resume the simulated domain without a reload.
    await admin.getByRole('link', { name: 'test', exact: true }).click();
    await admin.waitForURL('**/vms/*/*');
    await hydrated(admin);
    await admin.getByRole('button', { name: 'Suspend' }).click();
    await admin.locator('h1 .badge', { hasText: 'paused' }).waitFor();
    await admin.getByRole('cell', { name: 'suspend' }).waitFor();
    await shot(admin, 'vm');
    // A full load of the same page hydrates cleanly (no nested resources).
    await goto(admin, new URL(admin.url()).pathname);
    await admin.getByRole('heading', { name: 'Adopt into a tenant' }).waitFor();
    await admin.getByRole('button', { name: 'Resume' }).click();
    await admin.locator('h1 .badge', { hasText: 'running' }).waitFor();
    // Back on the host: a new blank volume appears in its pool's list.
    await admin.getByRole('link', { name: 'on simulated-e2e' }).click();
    await admin.waitForURL('**/hosts/*');
    await hydrated(admin);
    await admin.fill('#volume-name', 'e2e-disk.qcow2');
    await admin.fill('#volume-size', '1');
    await admin.getByRole('button', { name: 'Create volume' }).click();
    await admin.getByText('e2e-disk.qcow2', { exact: true }).waitFor();
    // …and a new isolated network shows up without a reload.
    await admin.fill('#net-name', 'e2e-isolated');
    await admin.selectOption('#net-mode', 'isolated');
    await admin.fill('#net-address', '10.99.0.1');
    await admin.fill('#net-prefix', '24');
    await admin.getByRole('button', { name: 'Define network' }).click();
    await admin.getByRole('cell', { name: 'e2e-isolated' }).waitFor();
    await shot(admin, 'host-storage');
    await goto(admin, '/hosts');
    await shot(admin, 'hosts');

    for (const p of [admin, tara, rick]) assert.deepEqual(p.errors, [], 'no script or CSP errors');
    await goto(admin, '/');
    await shot(admin, 'home-admin');
  } finally {
    await browser.close();
  }
});
