// What a browser walkthrough found (issue 14), checked as users meet it: which sizes need
// approval, an error on the one inbox card submitted, sign-in that returns where you were,
// a revert across a resize that keeps the quota true, a phone-width layout without sideways
// scrolling, and axe-core over the main pages.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, newPage, goto, shot, hydrated, adminPage, invite, joinWithCode, simulatedHost,
  publishTemplate, createTenant, requestVm, smallRequestsAutoApproved, axeViolations, signIn, BASE,
} from './helpers.js';

const run = `w${Date.now().toString(36)}`;
const template = `Walk ${run}`;

describe('walkthrough', () => {
  let browser;
  let admin;
  let ray;
  let ada;
  let tenantUrl;
  let hostUrl;
  let vmUrl;
  const rayEmail = `ray-${run}@walk.example`;
  const rayPassword = `ray-${run}-passphrase`;
  const adaEmail = `ada-${run}@walk.example`;

  before(async () => {
    browser = await launch();
    admin = await adminPage(browser);
    hostUrl = await publishTemplate(admin, {
      hostName: `walk-${run}`, uri: simulatedHost(), template,
      sizes: 'small 1 1 10\nlarge 4 8 50',
    });
    tenantUrl = await createTenant(admin, `Walk ${run}`);
    const adaCode = await invite(admin, adaEmail, 'Ada Approver', 'approver');
    const rayCode = await invite(admin, rayEmail, 'Ray Requester', 'requester');
    // Small requests go ahead; large ones need one approval by any approver.
    await smallRequestsAutoApproved(admin, tenantUrl);
    ray = await newPage(browser);
    await joinWithCode(ray, rayEmail, rayCode, 'Ray Requester', rayPassword);
    ada = await newPage(browser);
    await joinWithCode(ada, adaEmail, adaCode, 'Ada Approver', `ada-${run}-passphrase`);
  });

  after(async () => {
    for (const p of [admin, ray, ada].filter(Boolean)) assert.deepEqual(p.errors, [], 'no script or CSP errors');
    await browser?.close();
  });

  it('the catalog and the request form say which sizes need approval', async () => {
    await goto(ray, '/catalog');
    const card = ray.locator('article', { hasText: template });
    await card.locator('li', { hasText: 'small' }).getByText('no approval needed').waitFor();
    await card.locator('li', { hasText: 'large' }).getByText('needs approval').waitFor();
    await card.getByText('Any size needs approval for more than 1 VM at once or a lease longer than 30 days.').waitFor();
    await card.getByRole('link', { name: 'Request' }).click();
    await ray.waitForURL('**/requests/new?*');
    await ray.locator('label', { hasText: 'large' }).getByText('needs approval').waitFor();
    // The nav highlights Catalog on the form.
    assert.equal(await ray.locator('nav a[aria-current=page]').textContent(), 'Catalog');
  });

  it('a form error marks the field, focuses it and is announced once', async () => {
    await goto(ray, '/catalog');
    await ray.locator('article', { hasText: template }).getByRole('link', { name: 'Request' }).click();
    await ray.waitForURL('**/requests/new?*');
    await hydrated(ray);
    await ray.fill('#req-prefix', 'Bad Name!');
    await ray.fill('#req-purpose', 'Testing errors');
    await ray.getByRole('button', { name: 'Submit request' }).click();
    await ray.locator('#name_prefix-error').waitFor();
    assert.equal(await ray.getAttribute('#req-prefix', 'aria-invalid'), 'true');
    assert.equal(await ray.evaluate(() => document.activeElement?.id), 'req-prefix');
    assert.equal(await ray.locator('[role=alert]').count(), 1, 'one announcement');
  });

  it('rejecting one inbox card without a reason shows the error on that card only', async () => {
    await requestVm(ray, { template, size: 'large', prefix: `big-a-${run}` });
    await requestVm(ray, { template, size: 'large', prefix: `big-b-${run}` });
    await goto(ada, '/approvals');
    const a = ada.locator('.inbox-item', { hasText: `big-a-${run}` });
    const b = ada.locator('.inbox-item', { hasText: `big-b-${run}` });
    await a.waitFor();
    await b.waitFor();
    // The nav counts what waits for this approver.
    await ada.locator('nav .count-badge').waitFor();
    assert.ok(Number(await ada.locator('nav .count-badge').textContent()) >= 2);
    await a.getByRole('button', { name: 'Reject' }).click();
    await a.locator('.field-error').waitFor();
    assert.equal(await b.locator('.field-error, .form-error').count(), 0, 'the other card stays clean');
    await shot(ada, 'approvals-one-card-error');
    // Decided with a reason, the card leaves the inbox.
    await a.getByLabel('Reason (required to reject)').fill('Too large for a walkthrough');
    await a.getByRole('button', { name: 'Reject' }).click();
    await a.waitFor({ state: 'detached' });
    await b.getByLabel('Reason (required to reject)').fill('Too large as well');
    await b.getByRole('button', { name: 'Reject' }).click();
    await b.waitFor({ state: 'detached' });
  });

  it('a deep link opened while signed out returns there after sign-in', async () => {
    const page = await newPage(browser);
    await page.goto(`${BASE}/requests?state=rejected`);
    await page.waitForURL('**/login?next=*');
    await hydrated(page);
    await page.getByText('Sign in to open that page.').waitFor();
    await page.fill('#email', rayEmail);
    await page.fill('#password', rayPassword);
    await page.click('main button[type=submit]');
    await page.waitForURL((u) => u.pathname === '/requests' && u.searchParams.get('state') === 'rejected');
    await page.getByRole('cell', { name: `big-a-${run}` }).waitFor();
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });

  it('a session that ends sends the open page to sign-in, and back after it', async () => {
    const page = await newPage(browser);
    await signIn(page, rayEmail, rayPassword);
    await page.waitForURL((u) => u.pathname === '/');
    const url = await requestVm(page, { template, size: 'large', prefix: `wait-${run}` });
    await page.locator('h1 [data-state=pending_approval]').waitFor();
    // The session ends (as after the idle timeout); the page's next call finds out.
    await page.context().clearCookies();
    await page.getByRole('button', { name: 'Cancel request' }).click();
    await page.waitForURL('**/login?expired=1&next=*').catch(async (e) => {
      // Two calls may find the session gone at once (the click's and the live stream's):
      // the second navigation to sign-in aborts the first, which is the same page.
      if (!String(e).includes('ERR_ABORTED')) throw e;
      await page.waitForURL('**/login?expired=1&next=*');
    });
    await hydrated(page);
    await page.getByTestId('session-expired').waitFor();
    await page.fill('#email', rayEmail);
    await page.fill('#password', rayPassword);
    await page.click('main button[type=submit]');
    await page.waitForURL(url);
    await page.locator('h1 [data-state=pending_approval]').waitFor();
    await page.getByRole('button', { name: 'Cancel request' }).click();
    await page.locator('h1 [data-state=cancelled]').waitFor();
    // 401s of the expired calls are expected; nothing else.
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });

  it('a missing VM answers 404 with the not-found page', async () => {
    const res = await ray.goto(`${BASE}/vms/00000000-0000-0000-0000-000000000000/00000000-0000-0000-0000-000000000001`);
    assert.equal(res.status(), 404);
    await ray.getByRole('heading', { name: 'Not found' }).waitFor();
  });

  it('a revert across a resize brings back the old size, in the record and the quota', async () => {
    const url = await requestVm(ray, { template, size: 'small', prefix: `rev-${run}` });
    assert.ok(url);
    await ray.locator('h1 [data-state=fulfilled]').waitFor({ timeout: 30000 });
    await goto(ray, '/vms');
    await ray.locator(`tr[data-vm="rev-${run}"]`).getByRole('link').click();
    await ray.waitForURL('**/vms/*/*');
    await hydrated(ray);
    vmUrl = ray.url();
    await ray.fill('#snap-name', 'before-resize');
    await ray.getByRole('button', { name: 'Take snapshot' }).click();
    await ray.locator('td[data-label=Name]', { hasText: 'before-resize' }).waitFor();
    await ray.getByRole('button', { name: 'Force off' }).click();
    await ray.locator('h1 .badge', { hasText: 'shutoff' }).waitFor();
    await ray.fill('#resize-vcpus', '2');
    await ray.fill('#resize-mem', '2');
    await ray.getByRole('button', { name: 'Resize' }).click();
    await ray.locator('.facts', { hasText: '2048 MiB' }).waitFor();
    // Reverting asks first.
    await ray.getByText('Revert…').click();
    await ray.getByRole('button', { name: 'Revert to before-resize' }).click();
    await ray.locator('.facts', { hasText: '1024 MiB' }).waitFor();
    const ops = await ray.locator('table', { hasText: 'Took' }).locator('tbody td[data-label=Action]').allTextContents();
    for (const op of ['snapshot revert: before-resize', 'resize', 'snapshot create: before-resize']) {
      assert.ok(ops.some((o) => o.includes(op)), `${op} in ${ops}`);
    }
    await shot(ray, 'vm-after-revert');
    await goto(ray, '/vms');
    await ray.locator(`tr[data-vm="rev-${run}"]`).getByText('1 vCPU · 1 GiB').waitFor();
    // The ledger agrees with the VMs that exist.
    await admin.goto(`${tenantUrl}/quotas`);
    await hydrated(admin);
    await admin.getByRole('button', { name: 'Recount against existing VMs' }).click();
    await admin.getByText('The ledger matches the counters and the VMs that exist.').waitFor();
  });

  it('on a phone the menu folds and no page scrolls sideways', async () => {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const phone = await context.newPage();
    phone.errors = [];
    phone.on('pageerror', (e) => phone.errors.push(String(e)));
    await signIn(phone, rayEmail, rayPassword);
    await phone.waitForURL((u) => u.pathname === '/');
    await hydrated(phone);
    assert.equal(await phone.locator('#main-nav').isVisible(), false, 'menu folded');
    // Keyboard: the menu control opens it.
    await phone.focus('#nav-toggle');
    await phone.keyboard.press('Space');
    await phone.locator('#main-nav').waitFor({ state: 'visible' });
    await phone.screenshot({ path: `${process.cwd()}/screenshots/phone-menu.png` });
    await phone.locator('#main-nav').getByRole('link', { name: 'Requests' }).click();
    await phone.waitForURL('**/requests');
    await hydrated(phone);
    assert.equal(await phone.locator('#main-nav').isVisible(), false, 'folded again after navigating');
    const vmPath = new URL(vmUrl).pathname;
    for (const [path, name] of [['/requests', 'phone-requests'], ['/vms', 'phone-my-vms'], [vmPath, 'phone-vm'], ['/catalog', 'phone-catalog'], ['/', 'phone-home']]) {
      await phone.goto(BASE + path);
      await hydrated(phone);
      const wide = await phone.evaluate(() => document.documentElement.scrollWidth);
      await phone.screenshot({ path: `${process.cwd()}/screenshots/${name}.png`, fullPage: true });
      const culprits = await phone.evaluate(() => [...document.querySelectorAll('body *')]
        .filter((e) => e.getBoundingClientRect().right > 391)
        .slice(0, 5).map((e) => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`));
      assert.ok(wide <= 390, `${path} is ${wide} px wide at 390 px: ${culprits.join(', ')}`);
    }
    assert.deepEqual(phone.errors, []);
    await context.close();
  });

  it('axe-core finds no violations on the main pages', async () => {
    const results = {};
    // axe is injected into the page, which the content security policy would refuse.
    const check = async (cookies, paths) => {
      const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 860 } });
      if (cookies) await context.addCookies(cookies);
      const page = await context.newPage();
      for (const path of paths) {
        await page.goto(BASE + path);
        await hydrated(page);
        const v = await axeViolations(page);
        if (v.length) results[path] = v;
      }
      await context.close();
    };
    await check(await ray.context().cookies(), ['/', '/catalog', '/requests', '/vms', new URL(vmUrl).pathname]);
    await check(await ada.context().cookies(), ['/approvals']);
    const tenant = new URL(tenantUrl).pathname;
    await check(await admin.context().cookies(), ['/dashboard', new URL(hostUrl).pathname, '/templates', '/images', '/tenants',
      tenant, `${tenant}/quotas`, '/reports', '/rate-cards', '/audit', '/account']);
    await check(null, ['/login']);
    assert.deepEqual(results, {}, JSON.stringify(results, null, 2));
  });
});
