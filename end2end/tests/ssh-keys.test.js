// SSH keys on the account page: add (fingerprint shown), refuse bad keys next to the field,
// remove; usable by keyboard and on a 390 px phone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { launch, adminPage, goto, shot, axeViolations, SHOTS } from './helpers.js';

function keypair() {
  const dir = mkdtempSync(path.join(tmpdir(), 'concierge-e2e-key-'));
  const file = path.join(dir, 'id');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'walkthrough@laptop', '-f', file]);
  const pub = readFileSync(`${file}.pub`, 'utf8').trim();
  const fingerprint = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${file}.pub`], { encoding: 'utf8' }).split(' ')[1];
  rmSync(dir, { recursive: true, force: true });
  return { pub, fingerprint };
}

test('a user keeps SSH keys on their account page', async () => {
  const browser = await launch();
  try {
    const page = await adminPage(browser);
    await goto(page, '/account');
    const card = page.getByRole('region', { name: 'SSH keys' });
    await card.waitFor();

    // A private key is refused, with a message next to the field and nothing stored.
    await page.fill('#key', '-----BEGIN OPENSSH PRIVATE KEY-----');
    await page.getByRole('button', { name: 'Add key' }).click();
    await page.locator('#key-error').getByText('That is a private key').waitFor();
    assert.equal(await page.locator('#key').getAttribute('aria-invalid'), 'true');
    await shot(page, 'account-ssh-key-error');

    // A real key: listed with ssh-keygen's own fingerprint.
    const { pub, fingerprint } = keypair();
    await page.fill('#key', pub);
    await page.keyboard.press('Tab');
    await page.getByRole('button', { name: 'Add key' }).click();
    await card.getByText(fingerprint).waitFor();
    await card.getByText('walkthrough@laptop (ssh-ed25519)').waitFor();
    assert.equal(await page.inputValue('#key'), '', 'the form is cleared after adding');
    // The same key twice is refused.
    await page.fill('#key', pub);
    await page.getByRole('button', { name: 'Add key' }).click();
    await page.locator('#key-error').getByText('already on your account').waitFor();
    await shot(page, 'account-ssh-keys');
    const violations = await axeViolations(page);
    assert.deepEqual(violations, [], JSON.stringify(violations, null, 2));

    // On a phone the long fingerprint wraps instead of widening the page.
    await page.setViewportSize({ width: 390, height: 844 });
    await goto(page, '/account');
    await card.getByText(fingerprint).waitFor();
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 390, `the account page is ${wide} px wide on a 390 px phone`);
    await page.screenshot({ path: path.join(SHOTS, 'account-ssh-keys-phone.png'), fullPage: true });

    // Removing it by keyboard.
    await page.setViewportSize({ width: 1280, height: 860 });
    await goto(page, '/account');
    const remove = card.getByRole('button', { name: /Remove key walkthrough@laptop/ });
    await remove.focus();
    await page.keyboard.press('Enter');
    await card.getByText(fingerprint).waitFor({ state: 'detached' });
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close();
  }
});
