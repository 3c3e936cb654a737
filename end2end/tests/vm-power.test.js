// A real guest that ignores the ACPI power button (a blank disk: the firmware finds nothing to
// boot) on the machine's libvirtd + QEMU: "Shut down" shows "shutting down…", and the VM is
// forced off when the (shortened, scripts/test: 4 s) timeout passes, with the outcome in its
// operation log. Runs where scripts/test started libvirtd (CONCIERGE_LIBVIRTD_TESTS=1).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, newPage, goto, shot, hydrated, adminPage, invite, joinWithCode, publishTemplate,
  createTenant, requestVm, smallRequestsAutoApproved,
} from './helpers.js';

const run = `p${Date.now().toString(36)}`;
const enabled = process.env.CONCIERGE_LIBVIRTD_TESTS === '1';

test('a guest that ignores shutdown is forced off at the timeout, and the page says so', { skip: !enabled && 'libvirtd not started (CONCIERGE_LIBVIRTD_TESTS unset)' }, async () => {
  const browser = await launch();
  try {
    const admin = await adminPage(browser);
    const template = `Blank ${run}`;
    await publishTemplate(admin, {
      hostName: `qemu-${run}`, uri: 'qemu:///system', pool: 'concierge-e2e',
      poolPath: '/var/lib/libvirt/images/concierge-e2e', volume: 'e2e-blank.qcow2', template,
      sizes: 'tiny 1 0.25 1',
    });
    const tenantUrl = await createTenant(admin, `Power ${run}`);
    const email = `pat-${run}@power.example`;
    const code = await invite(admin, email, 'Pat Power', 'requester');
    await smallRequestsAutoApproved(admin, tenantUrl);

    const pat = await newPage(browser);
    await joinWithCode(pat, email, code, 'Pat Power', `pat-${run}-passphrase`);
    await requestVm(pat, { template, size: 'tiny', prefix: `blank-${run}` });
    await pat.locator('h1 [data-state=fulfilled]').waitFor({ timeout: 120000 });
    await goto(pat, '/vms');
    await pat.locator(`tr[data-vm="blank-${run}"]`).getByRole('link').click();
    await pat.waitForURL('**/vms/*/*');
    await hydrated(pat);
    await pat.locator('h1 .badge', { hasText: 'running' }).waitFor();

    const t0 = Date.now();
    await pat.getByRole('button', { name: 'Shut down' }).click();
    await pat.getByTestId('shutting-down').waitFor();
    assert.equal(await pat.getByRole('button', { name: 'Shut down' }).count(), 0, 'not offered twice');
    await shot(pat, 'vm-shutting-down');
    await pat.locator('h1 .badge', { hasText: 'shutoff' }).waitFor({ timeout: 60000 });
    const waited = Date.now() - t0;
    assert.ok(waited >= 3500, `forced off after the timeout, not at once (${waited} ms)`);
    const outcome = pat.locator('tr', { hasText: 'shutdown' }).first();
    await outcome.getByText('it was forced off').waitFor();
    await shot(pat, 'vm-forced-off');

    // Leave nothing on the host: the VM and its disk go.
    await pat.getByText('Delete this VM').click();
    await pat.fill('#confirm', `blank-${run}`);
    await pat.getByRole('button', { name: 'Delete VM' }).click();
    await goto(pat, '/vms');
    // (Once seen: the delete answered only after 30 s or more; the server log says where.)
    await pat.locator(`tr[data-vm="blank-${run}"]`).waitFor({ state: 'detached', timeout: 90000 });
    for (const p of [admin, pat]) assert.deepEqual(p.errors, [], 'no script or CSP errors');
  } finally {
    await browser.close();
  }
});
