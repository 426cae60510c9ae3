// The admin status page (GET /admin/) in headless Chromium: the real
// portcullis binary with a provider (the test IdP, lib/idp.mjs), a backend
// and deployments, one of them with a hostile name; the page is opened with
// the admin token, its visible content checked, its style shown to pass the
// page's own Content-Security-Policy, no script run, and a screenshot saved
// under the test's temporary folder (a non-empty PNG of sensible size; no
// pixel comparison). Everything is on 127.0.0.1 and stops in after().
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { startBackend } from '../lib/backend.mjs';
import { launchChromium, watchedContext } from '../lib/browser.mjs';
import { startIdp } from '../lib/idp.mjs';
import {
  freePort, launchPortcullis, metricSum, waitUntilReady,
} from '../lib/portcullis.mjs';

const ADMIN_TOKEN = 'e2e-admin-token-not-on-the-page';
const HOSTILE_NAME = '<img src=x onerror="alert(1)"><script>alert(2)</script>';

describe('the status page in headless Chromium', () => {
  let idp;
  let backend;
  let proxy;
  let browser;
  let watched;
  let adminPort;
  let proxyPort;
  let shotsDir;
  const dialogs = [];

  before(async () => {
    idp = await startIdp();
    backend = await startBackend({ upstream: 'chat' });
    proxyPort = await freePort();
    adminPort = await freePort();
    const config = `
listen: [{address: "127.0.0.1:${proxyPort}"}]
public_url: "http://127.0.0.1:${proxyPort}"
threads: 1
admin: {address: "127.0.0.1:${adminPort}", token: {env: E2E_ADMIN_TOKEN}}
providers:
  idp:
    issuer: "${idp.issuer}"
    client_id: ${idp.clientId}
    client_secret: {env: E2E_CLIENT_SECRET}
messengers:
  support:
    authentication:
      enabled: true
      provider: idp
      require: {groups_any: [customers], email_domains: [example.com]}
  public: {authentication: {enabled: false}}
upstreams:
  chat: {servers: ["127.0.0.1:${backend.port}"]}
deployments:
  - {id: support-web, name: '${HOSTILE_NAME}', messenger: support, upstream: chat, allowed_origins: ["https://www.example.com"]}
  - {id: open-web, name: Open chat, messenger: public, upstream: chat, status: inactive, allow_all_origins: true}
routes: [{path_prefix: /v1}]
logging: {format: json, level: info}
`;
    proxy = await launchPortcullis('run', config, {
      env: { ...process.env, E2E_CLIENT_SECRET: idp.clientSecret, E2E_ADMIN_TOKEN: ADMIN_TOKEN },
    });
    // Up, and the provider discovered with its keys (/metrics needs the token).
    await waitUntilReady(proxy, async () => {
      const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      return res.ok && metricSum(await res.text(), 'portcullis_provider_ready', { provider: 'idp' }) === 1;
    }, { timeoutMs: 15_000 });
    browser = await launchChromium();
    watched = await watchedContext(browser, { viewport: { width: 1200, height: 900 } });
    await watched.context.setExtraHTTPHeaders({ authorization: `Bearer ${ADMIN_TOKEN}` });
    shotsDir = await mkdtemp(path.join(tmpdir(), 'portcullis-e2e-status-'));
  }, { timeout: 600_000 }); // the binary may need building first

  after(async () => {
    await browser?.close();
    await proxy?.stop();
    await backend?.close();
    await idp?.close();
    if (shotsDir) await rm(shotsDir, { recursive: true, force: true });
  });

  test('the page shows the set-up, runs nothing, obeys its CSP and screenshots', { timeout: 60_000 }, async () => {
    const page = await watched.context.newPage();
    page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
    const res = await page.goto(`http://127.0.0.1:${adminPort}/admin/`);
    assert.equal(res.status(), 200);
    const headers = res.headers();
    assert.equal(headers['cache-control'], 'no-store');
    assert.match(headers['content-security-policy'], /^default-src 'none'; style-src 'sha256-/);

    assert.equal(await page.title(), 'portcullis status');
    const body = page.locator('body');
    for (const text of [
      'Providers', idp.issuer, 'discovered', 'usable',
      'Messengers', 'in any group of: customers', 'email in: example.com (verified)',
      'Deployments', 'support-web', 'https://www.example.com', 'open-web', 'any origin', 'inactive',
      `127.0.0.1:${backend.port}`, 'Sessions', 'No reload since start.',
    ]) {
      assert.ok((await body.innerText()).includes(text), `"${text}" is not on the page`);
    }
    // The hostile name is shown as text: no element came out of it.
    await page.getByText(HOSTILE_NAME, { exact: true }).waitFor();
    assert.equal(await page.locator('img').count(), 0);
    assert.equal(await page.locator('body script').count(), 0);
    assert.deepEqual(dialogs, []);
    // The snippet link points at the proxy listener.
    assert.equal(
      await page.locator('a', { hasText: 'snippet' }).first().getAttribute('href'),
      `http://127.0.0.1:${proxyPort}/.auth/deployments/support-web/snippet`,
    );
    // The style sheet passed the CSP (its hash matches): "inactive" is red.
    const color = await page.locator('span.bad', { hasText: 'inactive' })
      .evaluate((e) => getComputedStyle(e).color);
    assert.equal(color, 'rgb(176, 0, 32)');
    const violations = watched.consoleLines.filter((l) => /Content Security Policy|Refused/i.test(l));
    assert.deepEqual(violations, []);
    assert.deepEqual(watched.pageErrors, []);
    assert.ok(!(await page.content()).includes(ADMIN_TOKEN));
    assert.ok(!(await page.content()).includes(idp.clientSecret));

    const shot = path.join(shotsDir, 'status.png');
    await page.screenshot({ path: shot, fullPage: true });
    const png = await readFile(shot);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    // IHDR: width and height, big-endian, at bytes 16..24.
    const width = png.readUInt32BE(16);
    const height = png.readUInt32BE(20);
    assert.equal(width, 1200);
    assert.ok(height >= 400 && height <= 10_000, `height ${height}`);
    assert.ok(png.length > 10_000, `${png.length} bytes`);
  });
});
