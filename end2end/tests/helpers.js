// Shared helpers: Debian's Chromium through playwright-core (never a downloaded browser).
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { randomUUID } from 'node:crypto';
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

/// A simulated host for libvirt's test driver: 16 CPUs, 64 GiB, one 1 TiB dir pool `images`.
export function simulatedHost() {
  // Inside the directory the server accepts simulated hosts from (scripts/test sets it).
  const dir = mkdtempSync(path.join(process.env.CONCIERGE_SIMULATED_FLEETS_DIR || tmpdir(), 'concierge-e2e-'));
  const file = path.join(dir, 'node.xml');
  writeFileSync(file, `<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>8</cores><threads>2</threads><active>16</active><mhz>2400</mhz><model>x86_64</model></cpu>
  <memory>67108864</memory>
  <pool type='dir'><name>images</name><uuid>${randomUUID()}</uuid><capacity>1099511627776</capacity>
    <allocation>0</allocation><available>1099511627776</available><target><path>/var/lib/libvirt/images</path></target></pool>
</node>
`);
  return `test://${file}`;
}

/// As a fleet admin (page already signed in): registers a host, creates a base image in
/// `pool`, registers it in the image library and publishes a template on it offered to every
/// tenant. Returns the host's page URL.
///
/// With `files` ([source path, volume name], copied into `poolPath` on this machine), the base
/// image is a real one; `kernel`/`initrd` name its direct-boot volumes and `loginUser` turns on
/// cloud-init. `domainType` sets the host's virtualization (qemu: emulation).
export async function publishTemplate(admin, {
  hostName, uri, pool = 'images', poolPath = null, template, sizes, volume = 'base.qcow2',
  files = [], kernel = '', initrd = '', loginUser = '', domainType = '',
}) {
  await goto(admin, '/hosts');
  await admin.fill('#host-name', hostName);
  await admin.fill('#host-uri', uri);
  await admin.getByRole('button', { name: 'Register host' }).click();
  // Tests that share this machine's libvirtd register the same URI: the second one uses the
  // host the first registered (a URI is registered once).
  const outcome = await Promise.race([
    admin.getByRole('link', { name: hostName }).waitFor().then(() => 'new'),
    admin.getByText('That URI is already registered.').waitFor().then(() => 'taken'),
  ]);
  if (outcome === 'taken') {
    await goto(admin, '/hosts');
    const card = admin.locator('article.host-card').filter({ has: admin.locator('p.mono', { hasText: new RegExp(`^${uri.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`) }) });
    hostName = (await card.locator('h2 a').first().textContent()).trim();
  }
  await admin.getByRole('link', { name: hostName, exact: true }).click();
  await admin.waitForURL('**/hosts/*');
  await hydrated(admin);
  const hostUrl = admin.url();
  // The host's pools arrive with its first inventory, moments after registration.
  const hasPool = () => admin.locator(`#volume-pool option[value="${pool}"]`).count();
  for (let i = 0; i < 20 && !(await hasPool()); i++) {
    await admin.waitForTimeout(500);
    if (i % 4 === 3) await goto(admin, new URL(hostUrl).pathname);
  }
  if (poolPath && !(await admin.locator(`#volume-pool option[value="${pool}"]`).count())) {
    await admin.fill('#pool-name', pool);
    await admin.fill('#pool-path', poolPath);
    await admin.getByRole('button', { name: 'Create pool' }).click();
    // The host page lists pools from its inventory: look again until the new one is there.
    for (let i = 0; i < 30 && !(await hasPool()); i++) {
      const refused = admin.locator('.form-error');
      if (await refused.count()) throw new Error(`pool ${pool}: ${await refused.first().textContent()}`);
      await admin.waitForTimeout(1000);
      await goto(admin, new URL(hostUrl).pathname);
    }
  }
  if (!(await admin.locator(`#volume-pool option[value="${pool}"]`).count())) {
    throw new Error(`pool ${pool} is not on ${hostName}`);
  }
  if (domainType) {
    await admin.selectOption('#domain-type', domainType);
    await admin.locator('#domain-type-form').getByRole('button', { name: 'Save' }).click();
    await admin.waitForTimeout(500);
  }
  if (files.length) {
    const { copyFileSync, existsSync } = await import('node:fs');
    for (const [source, name] of files) {
      if (!existsSync(path.join(poolPath, name))) copyFileSync(source, path.join(poolPath, name));
    }
    await goto(admin, new URL(hostUrl).pathname);
  }
  await admin.selectOption('#volume-pool', pool);
  if (!(await admin.locator(`tr[data-volume="${volume}"]`).count())) {
    await admin.fill('#volume-name', volume);
    await admin.fill('#volume-size', '1');
    await admin.getByRole('button', { name: 'Create volume' }).click();
    await admin.locator(`tr[data-volume="${volume}"]`).waitFor();
  }
  // The volume becomes an image of the library, which the template then points at.
  const imageName = `${volume} on ${hostName}`;
  await goto(admin, '/images');
  if (!(await admin.locator(`article[data-image="${imageName}"]`).count())) {
    await admin.fill('#reg-name', imageName);
    await admin.selectOption('#reg-host', { label: hostName });
    await admin.fill('#reg-pool', pool);
    await admin.fill('#reg-volume', volume);
    if (kernel) await admin.fill('#reg-kernel', kernel);
    if (initrd) await admin.fill('#reg-initrd', initrd);
    if (loginUser) await admin.fill('#reg-login', loginUser);
    await admin.getByRole('button', { name: 'Register' }).click();
    await admin.locator(`article[data-image="${imageName}"]`).waitFor({ timeout: 60000 });
  }
  await goto(admin, '/templates');
  await admin.fill('#tpl-new-name', template);
  await admin.fill('#tpl-new-os', 'Debian GNU/Linux 12');
  await admin.fill('#tpl-new-description', 'A walkthrough template.');
  await admin.fill('#tpl-new-sizes', sizes);
  await admin.fill('#tpl-new-tenants', '*');
  const option = admin.locator('#tpl-new-image option', { hasText: imageName });
  await admin.selectOption('#tpl-new-image', await option.getAttribute('value'));
  await admin.getByRole('button', { name: 'Create template' }).click();
  const card = admin.locator(`article[data-template="${template}"]`);
  await card.waitFor();
  await card.getByRole('button', { name: 'Publish' }).click();
  await card.getByText('published', { exact: true }).waitFor();
  return hostUrl;
}

/// As a fleet admin: a new tenant; returns its members page URL.
export async function createTenant(admin, name) {
  await goto(admin, '/tenants');
  await admin.fill('#tenant-name', name);
  await admin.click('text=Create tenant');
  await admin.getByRole('link', { name }).click();
  await admin.waitForURL('**/tenants/*');
  await hydrated(admin);
  return admin.url();
}

/// The requester asks for `count` VMs of `size`; returns the request page's URL.
export async function requestVm(page, { template, size, prefix, purpose = 'Walkthrough' }) {
  await goto(page, '/catalog');
  await page.locator('article', { hasText: template }).getByRole('link', { name: 'Request' }).click();
  await page.waitForURL('**/requests/new?*');
  await hydrated(page);
  await page.check(`input[name=size][value=${size}]`);
  await page.fill('#req-prefix', prefix);
  await page.fill('#req-purpose', purpose);
  await page.getByRole('button', { name: 'Submit request' }).click();
  await page.waitForURL((u) => /^\/requests\/[0-9a-f-]{36}$/.test(u.pathname));
  await hydrated(page);
  return page.url();
}

/// Runs axe-core on the page and returns its violations (rule id, impact, first targets).
export async function axeViolations(page) {
  const { readFileSync } = await import('node:fs');
  const source = readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');
  await page.evaluate(source);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  return result;
}

/// As a fleet or tenant admin: requests up to 2 vCPUs, 4 GiB, one VM and 30 days go ahead
/// without approval; larger ones need one level of any approver.
export async function smallRequestsAutoApproved(admin, tenantUrl) {
  await admin.goto(`${tenantUrl}/quotas`);
  await hydrated(admin);
  await admin.fill('#pol-vcpus', '2');
  await admin.fill('#pol-mem', '4');
  await admin.fill('#pol-count', '1');
  await admin.fill('#pol-lease', '30');
  await admin.selectOption('#level-0-mode', 'any');
  await admin.getByRole('button', { name: 'Save policy' }).click();
  await admin.getByText('are approved automatically; others need 1 level(s)').waitFor();
}
