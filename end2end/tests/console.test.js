// A real Debian guest (scripts/guest-image) on the machine's libvirtd + QEMU (TCG): its owner
// opens the serial console and sees the login prompt, then the graphical console and sees its
// screen; tickets are single-use, expire, belong to their VM's people only; a cross-origin
// upgrade is refused; signing out ends an open console. Runs where scripts/test started
// libvirtd and built the guest image.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import path from 'node:path';
import {
  launch, newPage, goto, shot, hydrated, adminPage, invite, joinWithCode, publishTemplate,
  createTenant, requestVm, smallRequestsAutoApproved, BASE,
} from './helpers.js';

const run = `c${Date.now().toString(36)}`;
const images = process.env.CONCIERGE_GUEST_IMAGE_DIR;
const enabled = process.env.CONCIERGE_LIBVIRTD_TESTS === '1' && images;

/// Asks for a ticket from inside `page` (its session, its origin); resolves to {status, url}.
function askTicket(page, host, uuid, kind) {
  return page.evaluate(async ([h, u, k]) => {
    const r = await fetch('/api/open_console', { method: 'POST', body: new URLSearchParams({ host_id: h, uuid: u, kind: k }) });
    const j = await r.json().catch(() => null);
    return { status: r.status, url: j && j.url };
  }, [host, uuid, kind]);
}

/// Opens a WebSocket from `page`: 'open' or 'refused'.
function tryOpen(page, url) {
  return page.evaluate((u) => new Promise((resolve) => {
    const ws = new WebSocket(`ws://${location.host}${u}`);
    ws.onopen = () => { resolve('open'); ws.close(); };
    ws.onerror = () => resolve('refused');
  }), url);
}

/// A raw upgrade request with another site's Origin: the HTTP status the server answers.
function crossOriginUpgrade(url, cookie) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${BASE}${url}`, {
      headers: {
        Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==', Origin: 'http://evil.example', Cookie: cookie,
      },
    });
    req.on('response', (res) => { resolve(res.statusCode); res.resume(); });
    req.on('upgrade', (_res, socket) => { socket.destroy(); resolve(101); });
    req.on('error', reject);
    req.end();
  });
}

test('a VM owner uses the serial and graphical consoles, and nobody else can', { skip: !enabled && 'libvirtd or the guest image missing (scripts/test provides both)', timeout: 600000 }, async () => {
  const browser = await launch();
  try {
    const admin = await adminPage(browser);
    const template = `Debian ${run}`;
    const pool = '/var/lib/libvirt/images/concierge-e2e';
    await publishTemplate(admin, {
      hostName: `qemu-${run}`, uri: 'qemu:///system', pool: 'concierge-e2e', poolPath: pool,
      template, sizes: 'small 1 0.5 4', volume: 'e2e-debian-12.qcow2',
      files: [
        [path.join(images, 'debian-12.qcow2'), 'e2e-debian-12.qcow2'],
        [path.join(images, 'debian-12.vmlinuz'), 'e2e-debian-12.vmlinuz'],
        [path.join(images, 'debian-12.initrd'), 'e2e-debian-12.initrd'],
      ],
      kernel: 'e2e-debian-12.vmlinuz', initrd: 'e2e-debian-12.initrd', loginUser: 'debian', domainType: 'qemu',
    });
    const tenantUrl = await createTenant(admin, `Consoles ${run}`);
    const email = `cora-${run}@consoles.example`;
    const code = await invite(admin, email, 'Cora Console', 'requester');
    await smallRequestsAutoApproved(admin, tenantUrl);
    const otherTenant = await createTenant(admin, `Elsewhere ${run}`);
    const otherEmail = `eve-${run}@elsewhere.example`;
    await admin.goto(otherTenant);
    await hydrated(admin);
    const otherCode = await invite(admin, otherEmail, 'Eve Elsewhere', 'tenant_admin');

    const cora = await newPage(browser);
    await joinWithCode(cora, email, code, 'Cora Console', `cora-${run}-passphrase`);
    await requestVm(cora, { template, size: 'small', prefix: `deb-${run}` });
    await cora.locator('h1 [data-state=fulfilled]').waitFor({ timeout: 180000 });
    await goto(cora, '/vms');
    await cora.locator(`tr[data-vm="deb-${run}"]`).getByRole('link').click();
    await cora.waitForURL('**/vms/*/*');
    await hydrated(cora);
    const [, , host, uuid] = new URL(cora.url()).pathname.split('/');
    await cora.locator('#login').waitFor();
    await shot(cora, 'vm-login-booting');

    // Serial: the guest boots on it, and its login prompt arrives.
    await cora.getByRole('link', { name: 'Serial console' }).click();
    await cora.waitForURL('**/console/serial');
    await cora.getByText('Connected.').waitFor({ timeout: 30000 });
    const screen = () => cora.evaluate(() => {
      const b = globalThis.conciergeConsole.term.buffer.active;
      const lines = [];
      for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
      return lines.join('\n');
    });
    const deadline = Date.now() + 240000;
    let text = '';
    while (Date.now() < deadline) {
      text = await screen();
      if (/login:\s*$/m.test(text)) break;
      await cora.waitForTimeout(3000);
      await cora.locator('#console').press('Enter');
    }
    assert.match(text, new RegExp(`deb-${run} login:`), `the serial console shows the guest's login prompt:\n${text.slice(-800)}`);
    await shot(cora, 'console-serial');

    // Graphical: a non-empty screen.
    await cora.getByRole('link', { name: 'Graphical console' }).click();
    await cora.waitForURL('**/console/graphical');
    await cora.getByText('Connected.').waitFor({ timeout: 30000 });
    let painted = false;
    for (let i = 0; i < 30 && !painted; i++) {
      painted = await cora.evaluate(() => {
        const c = document.querySelector('#console canvas');
        if (!c || !c.width) return false;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let j = 4; j < d.length; j += 4) if (d[j] !== d[0] || d[j + 1] !== d[1] || d[j + 2] !== d[2]) return true;
        return false;
      });
      if (!painted) await cora.waitForTimeout(1000);
    }
    assert.ok(painted, 'the graphical console shows the guest screen');
    await shot(cora, 'console-graphical');

    // Tickets: single use, short-lived, and only for people who may act on the VM.
    const t = await askTicket(cora, host, uuid, 'serial');
    assert.equal(t.status, 200);
    assert.equal(await tryOpen(cora, t.url), 'open');
    assert.equal(await tryOpen(cora, t.url), 'refused', 'a replayed ticket is refused');
    const late = await askTicket(cora, host, uuid, 'serial');
    const cookies = (await cora.context().cookies()).map((c) => `${c.name}=${c.value}`).join('; ');
    assert.equal(await crossOriginUpgrade(late.url, cookies), 403, 'a cross-origin upgrade is refused');
    await cora.waitForTimeout(31000);
    assert.equal(await tryOpen(cora, late.url), 'refused', 'an expired ticket is refused');
    const eve = await newPage(browser);
    await joinWithCode(eve, otherEmail, otherCode, 'Eve Elsewhere', `eve-${run}-passphrase`);
    const stranger = await askTicket(eve, host, uuid, 'serial');
    assert.equal(stranger.status, 403, "another tenant's admin gets no ticket");
    assert.equal(stranger.url, undefined);

    // Signing out ends an open console within seconds.
    await goto(cora, `/vms/${host}/${uuid}/console/serial`);
    await cora.getByText('Connected.').waitFor({ timeout: 30000 });
    const other = await cora.context().newPage();
    await other.goto(`${BASE}/account`);
    await hydrated(other);
    const t0 = Date.now();
    await other.getByRole('button', { name: 'Sign out' }).click();
    await cora.getByText(/Console closed: signed out/).waitFor({ timeout: 15000 });
    assert.ok(Date.now() - t0 < 10000, 'the console ends within seconds of signing out');

    // Leave nothing on the host.
    await adminDelete(admin, host, uuid, `deb-${run}`);
    for (const p of [admin]) assert.deepEqual(p.errors, [], 'no script or CSP errors');
  } finally {
    await browser.close();
  }
});

async function adminDelete(admin, host, uuid, name) {
  await goto(admin, `/vms/${host}/${uuid}`);
  await admin.getByText('Delete this VM').click();
  await admin.fill('#confirm', name);
  await admin.getByRole('button', { name: 'Delete VM' }).click();
  await admin.waitForTimeout(2000);
}
