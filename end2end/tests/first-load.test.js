// What a first visit costs on the wire, measured in Chromium with the Resource Timing API:
// the WASM bundle at most 1 MB transferred (brotli), nothing at all on the next page load
// (content-named files cached for good), and the HTML compressed too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { launch, newPage, hydrated, BASE, SHOTS } from './helpers.js';

async function bundleEntries(page) {
  return page.evaluate(() => performance.getEntriesByType('resource')
    .filter((e) => /\/pkg\/concierge-/.test(e.name))
    .map((e) => ({
      file: e.name.split('/').pop(),
      transferSize: e.transferSize,
      encodedBodySize: e.encodedBodySize,
      decodedBodySize: e.decodedBodySize,
    })));
}

test('the first page costs at most 1 MB of WASM and the next one nothing', async () => {
  const browser = await launch();
  try {
    const page = await newPage(browser);
    const first = await page.goto(BASE + '/login');
    await hydrated(page);
    const html = await first.allHeaders();
    assert.match(html['content-encoding'] ?? '', /^(br|gzip)$/, 'the HTML is compressed');
    const firstLoad = await bundleEntries(page);
    const wasm = firstLoad.find((e) => e.file.endsWith('_bg.wasm'));
    assert.ok(wasm, `the bundle was loaded: ${JSON.stringify(firstLoad)}`);
    assert.ok(wasm.transferSize > 0 && wasm.transferSize <= 1_000_000,
      `WASM transferred on first load: ${wasm.transferSize} bytes`);

    // A full page load in the same browser: the bundle comes from the cache.
    await page.goto(BASE + '/login');
    await hydrated(page);
    const secondLoad = await bundleEntries(page);
    for (const e of secondLoad) {
      assert.equal(e.transferSize, 0, `${e.file} fetched again: ${e.transferSize} bytes`);
    }
    const figures = { firstLoad, secondLoad, htmlEncoding: html['content-encoding'] };
    console.log(`first-load figures: ${JSON.stringify(figures)}`);
    writeFileSync(path.join(SHOTS, 'first-load.json'), JSON.stringify(figures, null, 2) + '\n');
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close();
  }
});
