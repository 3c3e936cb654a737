// Webhooks page: an internal URL is refused next to its field; a new endpoint shows its
// signing secret once; "Send test event" fills the delivery log; usable on a 390 px phone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, adminPage, goto, shot, axeViolations } from './helpers.js';

test('a fleet admin adds a webhook endpoint, tests it and reads its delivery log', async () => {
  const browser = await launch();
  try {
    const page = await adminPage(browser);
    await goto(page, '/webhooks');
    await page.getByRole('heading', { name: 'Webhooks', level: 1 }).waitFor();

    // The server's own network is refused (the end2end server does not allow it).
    await page.fill('#webhook-url', 'http://127.0.0.1:9/hook');
    await page.getByLabel(/A request was approved/).check();
    await page.getByRole('button', { name: 'Add endpoint' }).click();
    await page.locator('#url-error').getByText('loopback').waitFor();
    assert.equal(await page.locator('#webhook-url').getAttribute('aria-invalid'), 'true');
    await shot(page, 'webhooks-refused');

    // A public address (TEST-NET-1, where nothing answers): added, secret shown once.
    const url = `https://192.0.2.10/hook-${Date.now()}`;
    await page.fill('#webhook-url', url);
    await page.fill('#webhook-description', 'Ops chat');
    await page.getByLabel(/Test events/).check();
    await page.getByRole('button', { name: 'Add endpoint' }).click();
    const secret = page.locator('#webhook-secret code');
    await secret.waitFor();
    assert.match(await secret.innerText(), /^whsec_[A-Za-z0-9+/=]{32}$/);
    const card = page.locator(`li.webhook[data-url="${url}"]`);
    await card.getByRole('heading', { name: 'Ops chat' }).waitFor();

    // The test event: its delivery shows in the log with the failed attempt's reason.
    await card.getByRole('button', { name: 'Send test event' }).click();
    await page.getByText('Test event queued').waitFor();
    const row = card.locator('tbody tr').first();
    await row.getByText('webhook.test').waitFor();
    for (let i = 0; i < 40; i += 1) {
      if ((await row.locator('td[data-label="Attempts"]').innerText()).trim() !== '0') break;
      await page.waitForTimeout(500);
      await page.reload();
      await page.waitForSelector('body[data-hydrated="true"]');
    }
    assert.notEqual((await row.locator('td[data-label="Attempts"]').innerText()).trim(), '0');
    await shot(page, 'webhooks');
    const violations = await axeViolations(page);
    assert.deepEqual(violations, [], JSON.stringify(violations, null, 2));

    // Turned off by keyboard: the test button is disabled.
    await card.getByRole('button', { name: 'Turn off' }).focus();
    await page.keyboard.press('Enter');
    await card.getByRole('button', { name: 'Turn on' }).waitFor();
    assert.ok(await card.getByRole('button', { name: 'Send test event' }).isDisabled());

    await page.setViewportSize({ width: 390, height: 844 });
    await goto(page, '/webhooks');
    await card.waitFor();
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 390, `the webhooks page is ${wide} px wide on a 390 px phone`);
    await shot(page, 'webhooks-phone');
    await card.getByRole('button', { name: /Remove the endpoint/ }).click();
    await card.waitFor({ state: 'detached' });
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close();
  }
});

test('a fleet admin adds an alert rule and reads the capacity runway', async () => {
  const browser = await launch();
  try {
    const page = await adminPage(browser);
    await goto(page, '/alerts');
    await page.getByRole('heading', { name: 'Alerts', level: 1 }).waitFor();
    // A threshold out of range is refused next to its field.
    await page.fill('#alert-name', 'CPU saturated');
    await page.fill('#alert-threshold', '150');
    await page.fill('#alert-for', '10');
    await page.getByRole('button', { name: 'Add rule' }).click();
    await page.locator('#threshold-error').getByText('percentage from 0 to 100').waitFor();
    await page.fill('#alert-threshold', '90');
    await page.selectOption('#alert-severity', 'critical');
    await page.getByRole('button', { name: 'Add rule' }).click();
    const row = page.locator('#alert-rules tr', { hasText: 'CPU saturated' });
    await row.getByText('vm cpu above 90 % for 10 min (critical)').waitFor();
    // The form is blank again, and the field the earlier error marked is no longer marked.
    assert.equal(await page.locator('#alert-threshold').getAttribute('aria-invalid'), null);
    await shot(page, 'alerts');
    const violations = await axeViolations(page);
    assert.deepEqual(violations, [], JSON.stringify(violations, null, 2));

    await goto(page, '/dashboard');
    await page.getByRole('heading', { name: 'Capacity runway' }).waitFor();
    await page.locator('#runway .runway').first().waitFor();
    await shot(page, 'dashboard-runway');

    await page.setViewportSize({ width: 390, height: 844 });
    for (const [path, name] of [['/alerts', 'alerts-phone'], ['/dashboard', 'dashboard-phone']]) {
      await goto(page, path);
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      await shot(page, name);
      const culprits = await page.evaluate(() => [...document.querySelectorAll('body *')]
        .filter((e) => e.getBoundingClientRect().right > 391)
        .slice(0, 5).map((e) => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`));
      // The dashboard's Fullest hosts table once made it 430 px wide with several hosts: its
      // cells are labelled and its meters wrap now.
      assert.ok(wide <= 390, `${path} is ${wide} px wide on a 390 px phone: ${culprits.join(', ')}`);
    }
    await goto(page, '/alerts');
    await page.locator('#alert-rules tr', { hasText: 'CPU saturated' }).getByRole('button', { name: 'Remove the rule CPU saturated' }).click();
    await page.locator('#alert-rules tr', { hasText: 'CPU saturated' }).waitFor({ state: 'detached' });
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close();
  }
});
