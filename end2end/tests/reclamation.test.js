// Reclamation: a tenant's VM powered off "40 days ago" (its state history moved back in the
// database: simulated weeks); the admin's dry run lists it with the evidence, the rule is
// saved enabled; the periodic check (every 5 s under scripts/test) proposes it, the owner is
// told (bell) and keeps it with a reason. Desktop and 390 px phone, keyboard, axe.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  launch, newPage, goto, shot, hydrated, adminPage, invite, joinWithCode, publishTemplate,
  createTenant, requestVm, smallRequestsAutoApproved, simulatedHost, axeViolations,
} from './helpers.js';

const run = `r${Date.now().toString(36)}`;
const db = process.env.CONCIERGE_E2E_DATABASE_URL;

test('a dry run finds a long powered-off VM; its owner keeps it with a reason', { skip: !db && 'CONCIERGE_E2E_DATABASE_URL unset (scripts/test sets it)' }, async () => {
  const browser = await launch();
  try {
    const admin = await adminPage(browser);
    const template = `Reclaim ${run}`;
    await publishTemplate(admin, { hostName: `recl-${run}`, uri: simulatedHost(), template, sizes: 'small 1 1 10' });
    const tenant = `Reclaim ${run}`;
    const tenantUrl = await createTenant(admin, tenant);
    const email = `olga-${run}@reclaim.example`;
    const code = await invite(admin, email, 'Olga Owner', 'requester');
    await smallRequestsAutoApproved(admin, tenantUrl);

    const olga = await newPage(browser);
    await joinWithCode(olga, email, code, 'Olga Owner', `olga-${run}-passphrase`);
    const vm = `old-${run}`;
    await requestVm(olga, { template, size: 'small', prefix: vm });
    await olga.locator('h1 [data-state=fulfilled]').waitFor({ timeout: 60000 });
    await goto(olga, '/vms');
    await olga.locator(`tr[data-vm="${vm}"]`).getByRole('link').click();
    await olga.waitForURL('**/vms/*/*');
    await hydrated(olga);
    await olga.getByRole('button', { name: 'Force off' }).click();
    await olga.locator('h1 .badge', { hasText: 'shutoff' }).waitFor();
    const uuid = olga.url().split('/').pop();
    execFileSync('psql', [db, '-qc', `UPDATE domain_state_history SET at = at - interval '40 days' WHERE uuid = '${uuid}'`]);

    // The dry run, by keyboard: the VM with the days it has been off.
    await goto(admin, '/reclamation');
    await admin.selectOption('#rule-scope', { label: tenant });
    await admin.selectOption('#rule-kind', 'powered_off');
    await admin.fill('#rule-days', '30');
    await admin.selectOption('#rule-action', 'stop');
    await admin.fill('#rule-response', '7');
    await admin.locator('#rule-response').press('Enter');
    const dry = admin.locator('#dry-run');
    await dry.getByText('1 VM would be proposed now').waitFor();
    const row = dry.locator('#candidates tbody tr');
    await row.getByRole('link', { name: vm }).waitFor();
    await row.getByText('Days off').waitFor();
    assert.match(await row.locator('dd').nth(1).innerText(), /^4\d$/);
    await shot(admin, 'reclamation-dry-run');
    const violations = await axeViolations(admin);
    assert.deepEqual(violations, [], JSON.stringify(violations, null, 2));
    await dry.getByLabel(/Enabled/).check();
    await dry.getByRole('button', { name: 'Save this rule' }).click();
    await admin.locator('#rules tbody tr', { hasText: tenant }).getByText('enabled').waitFor();

    // Within a check (5 s), the owner is told; the bell leads to the proposal.
    await goto(olga, '/notifications');
    const note = olga.locator('li.notification', { hasText: `${vm} may be reclaimed` });
    for (let i = 0; i < 30 && !(await note.count()); i += 1) {
      await olga.waitForTimeout(1000);
      await goto(olga, '/notifications');
    }
    await note.getByRole('link').click();
    await olga.waitForURL('**/proposals');
    await hydrated(olga);
    const card = olga.locator(`li.proposal[data-vm="${vm}"]`);
    await card.getByText('Stop on').waitFor();
    await shot(olga, 'reclamation-proposal');
    const reason = card.getByLabel('Why it is still needed');
    await reason.fill('Quarterly reports run on it');
    await reason.press('Enter');
    await card.getByText('Answered: kept').waitFor();
    await card.getByText('Quarterly reports run on it', { exact: false }).waitFor();

    await olga.setViewportSize({ width: 390, height: 844 });
    await goto(olga, '/proposals');
    await card.waitFor();
    const wide = await olga.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 390, `the proposals page is ${wide} px wide on a 390 px phone`);
    await shot(olga, 'reclamation-proposal-phone');
    await admin.setViewportSize({ width: 390, height: 844 });
    await goto(admin, '/reclamation');
    const adminWide = await admin.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(adminWide <= 390, `the reclamation page is ${adminWide} px wide on a 390 px phone`);
    await shot(admin, 'reclamation-phone');
    for (const p of [admin, olga]) assert.deepEqual(p.errors, [], 'no script or CSP errors');
  } finally {
    await browser.close();
  }
});
