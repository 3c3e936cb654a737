// The image library in Chromium against the machine's libvirtd: a fleet admin uploads a
// qcow2 file through the browser (in chunks, with progress), sees the SHA-256 the host holds
// (the same as the file's), and a raw file posing as qcow2 is refused with nothing left
// behind. Runs where scripts/test started libvirtd.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { launch, goto, shot, adminPage, publishTemplate, SHOTS } from './helpers.js';

const run = `i${Date.now().toString(36)}`;
const enabled = process.env.CONCIERGE_LIBVIRTD_TESTS === '1';

test('a fleet admin uploads an image through the browser and a fake one is refused', { skip: !enabled && 'libvirtd missing (scripts/test starts it)', timeout: 300000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'concierge-e2e-images-'));
  // About 12 MiB of random data as qcow2: two chunks.
  writeFileSync(path.join(dir, 'data.raw'), randomBytes(12 << 20));
  const file = path.join(dir, `upload-${run}.qcow2`);
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', path.join(dir, 'data.raw'), file]);
  const sha = createHash('sha256').update(readFileSync(file)).digest('hex');
  const fake = path.join(dir, `fake-${run}.qcow2`);
  const bytes = Buffer.alloc(1 << 20);
  Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]).copy(bytes);
  writeFileSync(fake, bytes);

  const browser = await launch();
  try {
    const admin = await adminPage(browser);
    const hostName = `up-${run}`;
    const pool = 'cc-e2e-upload';
    const poolPath = '/var/lib/libvirt/images/cc-e2e-upload';
    // A host (this machine's libvirtd through its socket) with a registered blank image.
    await publishTemplate(admin, {
      hostName, uri: 'qemu:///system?socket=/run/libvirt/libvirt-sock', pool, poolPath,
      template: `Blank ${run}`, sizes: 'tiny 1 0.5 1', volume: `blank-${run}.qcow2`,
    });

    await goto(admin, '/images');
    const form = admin.locator('#image-upload');
    await admin.fill('#up-name', `Uploaded ${run}`);
    await admin.setInputFiles('#up-file', file);
    await admin.selectOption('#up-host', { label: hostName });
    await admin.fill('#up-pool', pool);
    await admin.fill('#up-login', 'debian');
    await form.getByRole('button', { name: 'Upload' }).click();
    const card = admin.locator(`article[data-image="Uploaded ${run}"]`);
    await card.waitFor({ timeout: 120000 });
    await card.locator(`code[data-sha256="${sha}"]`).waitFor();
    await card.getByText('qcow2', { exact: true }).waitFor();
    await card.getByText('12.0 MiB', { exact: true }).waitFor();
    await shot(admin, 'images-uploaded');

    // An upload cut off after its first chunk (the tab closed): listed with its progress,
    // resumed from the same file where the server says it stands.
    const resumedFile = path.join(dir, `resumed-${run}.qcow2`);
    writeFileSync(resumedFile, readFileSync(file));
    const hostId = await admin.locator('#up-host option', { hasText: hostName }).getAttribute('value');
    await admin.setInputFiles('#up-file', resumedFile);
    await admin.evaluate(async ([host, pool, name]) => {
      const file = document.querySelector('#up-file').files[0];
      const start = await fetch('/api/start_image_upload', {
        method: 'POST', headers: { Accept: 'application/json' },
        body: new URLSearchParams({ name, host, pool, file_name: file.name, size: String(file.size) }),
      });
      const t = await start.json();
      await fetch(`/images/${t.image_id}/${t.host_id}/upload?offset=0`, { method: 'PUT', body: file.slice(0, 8 << 20) });
    }, [hostId, pool, `Resumed ${run}`]);
    await goto(admin, '/images');
    const cut = admin.locator(`article[data-image="Resumed ${run}"]`);
    await cut.locator('tr[data-state="uploading"]').waitFor();
    assert.match(await cut.locator('progress').getAttribute('aria-label'), /^uploaded 8\.0 MiB of 12\.\d MiB$/);
    await shot(admin, 'images-interrupted');
    await cut.locator('input[type=file]').setInputFiles(resumedFile);
    await cut.getByRole('button', { name: 'Resume', exact: true }).click();
    await admin.locator(`article[data-image="Resumed ${run}"] code[data-sha256="${sha}"]`).waitFor({ timeout: 120000 });

    // The fake: refused by name at the finish, and neither image nor volume stays.
    await admin.fill('#up-name', `Fake ${run}`);
    await admin.setInputFiles('#up-file', fake);
    await admin.selectOption('#up-host', { label: hostName });
    await admin.fill('#up-pool', pool);
    await admin.fill('#up-login', '');
    await form.getByRole('button', { name: 'Upload' }).click();
    await form.locator('.upload-status', { hasText: 'claiming to be qcow2' }).waitFor({ timeout: 60000 });
    await shot(admin, 'images-refused');
    await goto(admin, '/images');
    assert.equal(await admin.locator(`article[data-image="Fake ${run}"]`).count(), 0);
    assert.ok(!existsSync(path.join(poolPath, `fake-${run}.qcow2`)), 'the fake volume is gone');

    // Bad input names its field, in the browser too.
    await admin.fill('#up-name', '');
    await admin.setInputFiles('#up-file', file);
    await admin.evaluate(() => document.querySelector('#up-name').removeAttribute('required'));
    await form.getByRole('button', { name: 'Upload' }).click();
    await admin.locator('#up-name-error', { hasText: 'required' }).waitFor();

    // On a phone the library reads without sideways scrolling.
    const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await context.addCookies(await admin.context().cookies());
    const phone = await context.newPage();
    await goto(phone, '/images');
    await phone.locator(`article[data-image="Uploaded ${run}"]`).waitFor();
    await phone.screenshot({ path: path.join(SHOTS, 'phone-images.png'), fullPage: true });
    const wide = await phone.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 390, `/images is ${wide} px wide at 390 px`);
    await context.close();
  } finally {
    await browser.close();
  }
});
