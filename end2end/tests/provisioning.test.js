// Provisioning journey: a fleet admin publishes a template on a simulated host; a requester
// asks for a VM that needs approval; an approver approves it in another browser; the
// requester's open page turns "running" without a reload.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, newPage, goto, shot, hydrated, adminPage, invite, joinWithCode, simulatedHost } from './helpers.js';

const run = Date.now().toString(36);

test('a request needing approval is approved in another browser and runs without a reload', async () => {
  const browser = await launch();
  try {
    const admin = await adminPage(browser);

    // A host with a base image in its pool.
    const hostName = `prov-${run}`;
    await goto(admin, '/hosts');
    await admin.fill('#host-name', hostName);
    await admin.fill('#host-uri', simulatedHost());
    await admin.getByRole('button', { name: 'Register host' }).click();
    await admin.getByRole('link', { name: hostName }).click();
    await admin.waitForURL('**/hosts/*');
    await hydrated(admin);
    await admin.fill('#volume-name', 'debian-12.qcow2');
    await admin.fill('#volume-size', '2');
    await admin.getByRole('button', { name: 'Create volume' }).click();
    await admin.getByText('debian-12.qcow2', { exact: true }).waitFor();

    // The volume joins the image library; a template on it, offered to every tenant, published.
    await goto(admin, '/images');
    const image = `Debian 12 image ${run}`;
    await admin.fill('#reg-name', image);
    await admin.selectOption('#reg-host', { label: hostName });
    await admin.fill('#reg-pool', 'images');
    await admin.fill('#reg-volume', 'debian-12.qcow2');
    await admin.getByRole('button', { name: 'Register' }).click();
    const imageCard = admin.locator(`article[data-image="${image}"]`);
    await imageCard.waitFor();
    // A simulated host's volume is not a file: no SHA-256 to read, and the page says so.
    await imageCard.getByText('no cloud-init').waitFor();
    await imageCard.getByText('not read (a simulated host', { exact: false }).waitFor();
    await shot(admin, 'images');
    await goto(admin, '/templates');
    const template = `Debian 12 ${run}`;
    await admin.fill('#tpl-new-name', template);
    await admin.fill('#tpl-new-os', 'Debian GNU/Linux 12');
    await admin.fill('#tpl-new-description', 'Stable server image with cloud-init.');
    await admin.fill('#tpl-new-sizes', 'tiny 1 0.5 10\nsmall 1 2 20\nlarge 4 8 80');
    await admin.fill('#tpl-new-tenants', '*');
    const option = admin.locator('#tpl-new-image option', { hasText: image });
    await admin.selectOption('#tpl-new-image', await option.getAttribute('value'));
    await admin.getByRole('button', { name: 'Create template' }).click();
    const card = admin.locator(`article[data-template="${template}"]`);
    await card.waitFor();
    await card.getByRole('button', { name: 'Publish' }).click();
    await card.getByText('published', { exact: true }).waitFor();
    await shot(admin, 'templates');

    // A tenant with an approver and a requester.
    await goto(admin, '/tenants');
    const tenant = `Provisioning ${run}`;
    await admin.fill('#tenant-name', tenant);
    await admin.click('text=Create tenant');
    await admin.getByRole('link', { name: tenant }).click();
    await admin.waitForURL('**/tenants/*');
    await hydrated(admin);
    const tenantUrl = admin.url();
    const approverEmail = `ada-${run}@prov.example`;
    const requesterEmail = `ray-${run}@prov.example`;
    const approverCode = await invite(admin, approverEmail, 'Ada Approver', 'approver');
    const requesterCode = await invite(admin, requesterEmail, 'Ray Requester', 'requester');
    await admin.goto(`${tenantUrl}/quotas`);
    await hydrated(admin);
    await admin.getByText('Approval policy').waitFor();
    await shot(admin, 'quotas');

    // The approver is signed in with a page open before anything waits for her.
    const ada = await newPage(browser);
    await joinWithCode(ada, approverEmail, approverCode, 'Ada Approver', `ada-${run}-passphrase`);
    await goto(ada, '/');
    const adaNavigations = [];
    ada.on('framenavigated', (f) => { if (f === ada.mainFrame()) adaNavigations.push(f.url()); });

    // The requester asks for a large VM: above the auto-approval thresholds.
    const ray = await newPage(browser);
    await joinWithCode(ray, requesterEmail, requesterCode, 'Ray Requester', `ray-${run}-passphrase`);
    await goto(ray, '/catalog');
    await ray.getByRole('heading', { name: template }).waitFor();
    await shot(ray, 'catalog');
    await ray.locator('article', { hasText: template }).getByRole('link', { name: 'Request' }).click();
    await ray.waitForURL('**/requests/new?*');
    await hydrated(ray);
    await ray.check('input[name=size][value=large]');
    await ray.fill('#req-count', '1');
    await ray.fill('#req-prefix', `build-${run}`);
    await ray.fill('#req-purpose', 'CI runners for the release');
    // The quota effect follows the form.
    await ray.getByText('4 of 16 vCPUs').waitFor();
    await shot(ray, 'new-request');
    // A bad name is named next to its field and nothing is submitted.
    await ray.fill('#req-prefix', 'Build <1>; rm -rf /');
    await ray.getByRole('button', { name: 'Submit request' }).click();
    await ray.locator('#name_prefix-error').waitFor();
    await ray.fill('#req-prefix', `build-${run}`);
    await ray.getByRole('button', { name: 'Submit request' }).click();
    await ray.waitForURL((u) => /^\/requests\/[0-9a-f-]{36}$/.test(u.pathname));
    await hydrated(ray);
    await ray.locator('h1 [data-state=pending_approval]').waitFor();
    await ray.getByText('Waiting for approval at level 1').waitFor();
    await shot(ray, 'request-pending');

    // Her bell counts it at once, without a reload; the notification leads to the inbox.
    await ada.locator('#unread-count', { hasText: '1' }).waitFor({ timeout: 5000 });
    assert.deepEqual(adaNavigations, [], 'the bell updated without a reload');
    await ada.getByRole('link', { name: /Notifications/ }).click();
    await ada.waitForURL('**/notifications');
    await hydrated(ada);
    const note = ada.locator('.notification.unread', { hasText: `build-${run}` });
    await note.waitFor();
    await shot(ada, 'notifications');
    await note.getByRole('link', { name: /Waiting for your approval/ }).click();
    await ada.waitForURL('**/approvals');
    await hydrated(ada);
    const item = ada.locator('.inbox-item', { hasText: `build-${run}` });
    await item.waitFor();
    await item.getByText('Would be placed on').waitFor();
    await shot(ada, 'approvals');
    await item.getByRole('button', { name: 'Approve' }).click();
    await ada.getByText('Nothing is waiting for you.').waitFor();

    // The requester's open page follows along without a reload.
    const navigations = [];
    ray.on('framenavigated', (f) => { if (f === ray.mainFrame()) navigations.push(f.url()); });
    await ray.locator('h1 [data-state=fulfilled]').waitFor({ timeout: 30000 });
    await ray.locator('td.vm-state', { hasText: 'running' }).waitFor();
    assert.deepEqual(navigations, [], 'no reload or navigation');
    await shot(ray, 'request-fulfilled');
    // The requester was told it was approved and is ready; reading them clears the bell.
    await ray.locator('#unread-count', { hasText: '2' }).waitFor({ timeout: 5000 });
    await goto(ray, '/notifications');
    await ray.locator('.notification', { hasText: 'Approved:' }).waitFor();
    await ray.locator('.notification', { hasText: 'Ready:' }).waitFor();
    await ray.getByRole('button', { name: 'Mark all read' }).click();
    await ray.getByText('0 unread').waitFor();
    await ray.locator('#unread-count').waitFor({ state: 'detached', timeout: 5000 });
    // On a phone the list fits and the bell stays in the bar (outside the folded menu).
    await ray.setViewportSize({ width: 390, height: 844 });
    await goto(ray, '/notifications');
    await ray.locator('.topbar .bell').waitFor({ state: 'visible' });
    const wide = await ray.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 390, `/notifications is ${wide} px wide on a 390 px phone`);
    await shot(ray, 'notifications-phone');
    await ray.setViewportSize({ width: 1280, height: 860 });

    // My requests: filtered and sorted on the server through a plain GET form.
    await goto(ray, '/requests');
    await ray.fill('input[name=search]', `build-${run}`);
    await ray.selectOption('select[name=state]', 'fulfilled');
    await ray.getByRole('button', { name: 'Apply' }).click();
    await ray.waitForURL('**/requests?*state=fulfilled*');
    await ray.getByRole('cell', { name: `build-${run}` }).waitFor();
    await shot(ray, 'requests');
    await ray.selectOption('select[name=state]', 'rejected');
    await ray.getByRole('button', { name: 'Apply' }).click();
    await ray.getByText('No requests match.').waitFor();

    await goto(ray, '/vms');
    await ray.locator(`tr[data-vm="build-${run}"]`).getByText('running').waitFor();
    await shot(ray, 'my-vms');
    await ray.locator(`tr[data-vm="build-${run}"]`).getByRole('link').click();
    await ray.waitForURL('**/vms/*/*');
    await hydrated(ray);
    await ray.getByRole('heading', { name: 'Lease' }).waitFor();
    await ray.locator('figure.chart[data-chart="CPU"] ._chartistry svg').waitFor();
    await shot(ray, 'vm-managed');

    // A fleet admin forces the VM off from another browser: the owner's open page follows
    // (pushed over server-sent events), without a reload.
    const vmUrl = ray.url();
    navigations.length = 0;
    await goto(admin, new URL(vmUrl).pathname);
    await admin.getByRole('button', { name: 'Force off' }).click();
    await admin.locator('h1 .badge', { hasText: 'shutoff' }).waitFor();
    await ray.locator('h1 .badge', { hasText: 'shutoff' }).waitFor({ timeout: 5000 });
    assert.deepEqual(navigations, [], 'still no reload');

    // The fleet dashboard follows a VM started in another browser, without a reload.
    await goto(admin, '/dashboard');
    await admin.getByRole('heading', { name: 'VMs by state' }).waitFor();
    const running = () => admin.evaluate(() => {
      const row = [...document.querySelectorAll('.bar-row')]
        .find((r) => r.querySelector('.bar-label')?.textContent === 'running');
      return row ? Number(row.querySelector('.bar-value').textContent) : 0;
    });
    const before = await running();
    const dashNavigations = [];
    admin.on('framenavigated', (f) => { if (f === admin.mainFrame()) dashNavigations.push(f.url()); });
    await ray.getByRole('button', { name: 'Start' }).click();
    await ray.locator('h1 .badge', { hasText: 'running' }).waitFor();
    await admin.waitForFunction((prev) => {
      const row = [...document.querySelectorAll('.bar-row')]
        .find((r) => r.querySelector('.bar-label')?.textContent === 'running');
      return row && Number(row.querySelector('.bar-value').textContent) > prev;
    }, before, { timeout: 5000 });
    assert.deepEqual(dashNavigations, [], 'the dashboard did not reload');
    // The charts over time: drawn in the browser (leptos-chartistry) with a text alternative
    // from the server; the range picker swaps them for another range.
    const cpuChart = admin.locator('figure.chart[data-chart="Fleet CPU busy"]');
    await cpuChart.locator('._chartistry svg').waitFor();
    assert.match(await cpuChart.locator('.chart-frame[role=img]').getAttribute('aria-label'), /^Fleet CPU busy: /);
    assert.equal(await admin.locator('figure.chart').count(), 3);
    await admin.getByRole('link', { name: '7 days' }).click();
    await admin.waitForURL('**/dashboard?range=7d');
    await admin.locator('.range-picker a[aria-current=true]', { hasText: '7 days' }).waitFor();
    await cpuChart.locator('._chartistry svg').waitFor();
    await shot(admin, 'dashboard');
    await goto(admin, '/reports');
    await admin.getByRole('heading', { name: 'Usage and cost' }).waitFor();
    await shot(admin, 'reports');
    await goto(ray, '/');
    await ray.locator(`li[data-vm="build-${run}"]`).waitFor();
    await shot(ray, 'home-requester-dashboard');

    for (const p of [admin, ray, ada]) assert.deepEqual(p.errors, [], 'no script or CSP errors');
  } finally {
    await browser.close();
  }
});
