// The web SDK in a real browser against a real provider: headless Chromium
// (playwright-core, the system chromium as in browser.test.mjs) on the
// company site page (web/site.html), served by a tiny Node server on its own
// loopback origin with portcullis's own snippet pasted in. The site logs
// alice in at oidc-provider (lib/idp.mjs: its real login and consent forms,
// her password), hands the code to the SDK (getAuthCode), and the SDK
// exchanges it at portcullis's token API, chats with the messenger token in
// the subprotocol carrier, keeps it fresh by itself (the messenger's
// token_lifetime is 6 s: the SDK refreshes at half of it), shares the
// session with a second tab (the refresh token in localStorage) and logs
// every tab out (BroadcastChannel, and portcullis's 4002 close).
//
// Steps run in order and share the browser; after a failed step the later
// ones are skipped, and the failure names a screenshot of every open tab.
// Everything is on 127.0.0.1 and stops in after(); requests the browser
// would make elsewhere are aborted and recorded.
//
// E2E_SHOW_LOG=1 prints portcullis's log when the suite ends.
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import path from 'node:path';

import { createRemoteJWKSet, decodeJwt } from 'jose';

import { openSocket, startBackend } from '../lib/backend.mjs';
import {
  launchChromium, stepper, watchedContext,
} from '../lib/browser.mjs';
import { USERS, startIdp } from '../lib/idp.mjs';
import {
  REPO_ROOT, freePort, metricSum, sleep, startPortcullis,
} from '../lib/portcullis.mjs';

const UPSTREAM = 'chat';
const DEPLOYMENT = '3f6c2a91-7d4e-4b0a-9c58-e1f20d7b6a43';
const TOKEN_LIFETIME_S = 6; // the messenger's session.token_lifetime (minimum 5 s)
const RT_KEY = `portcullis:${DEPLOYMENT}:refreshToken`; // the SDK's localStorage key
const TEST_MS = 60_000; // a whole step, screenshot included

describe('the site with the web SDK in headless Chromium, logged in at oidc-provider', () => {
  let idp;
  let backend;
  let proxy;
  let site; // the company site's server
  let origin; // portcullis
  let siteOrigin; // the company site, another origin
  let siteUrl; // the site's page, its redirect URI
  let messagingUrl; // the deployment's messagingEndpoint (config.json)
  let browser;
  let context;
  let page; // the first tab
  let second; // the second tab
  let watched; // the context, and what it recorded (lib/browser.mjs)
  let firstJwt; // the jwt of the exchange, taken as soon as the chat opened
  const chatSockets = new Map(); // playwright Page -> its chat WebSockets
  const secrets = new Set(); // tokens portcullis must never log
  const message = (n) => `hello ${n} from chromium ${Math.random().toString(36).slice(2, 8)}`;

  const tokenCalls = async (operation, result = 'ok') => metricSum(
    await proxy.metrics(),
    'portcullis_token_api_requests_total',
    { deployment: DEPLOYMENT, operation, ...(result && { result }) },
  ) ?? 0;

  // A direct handshake (the `ws` package) as the site's page would make it:
  // Origin = the site, the jwt in the subprotocol carrier next to chat.v1.
  const handshake = async (jwt) => {
    const res = await openSocket(messagingUrl, {
      headers: { origin: siteOrigin },
      protocols: [`authorization.bearer.${jwt}`, 'chat.v1'],
    });
    if (res.ws) {
      res.ws.close(1000);
      await once(res.ws, 'close');
    }
    return res;
  };

  // Everything the SDK of a tab told its listeners since `recordSdkEvents`
  // (no payloads: they may hold errors, never tokens, but stay short).
  const recordSdkEvents = (tab) => tab.evaluate(() => {
    window.sdkEvents = [];
    for (const name of ['authenticated', 'loggedOut', 'tokenError', 'authError', 'error']) {
      window.messenger.on(name, (p) => {
        const detail = p && (p.reason || (p.error && `${p.error.code} ${p.error.status}`));
        window.sdkEvents.push(detail ? `${name} ${detail}` : name);
      });
    }
  });
  const sdkEvents = (tab) => tab.evaluate(() => window.sdkEvents);

  // The close codes of every WebSocket of the tab's current document, as the
  // browser reported them (see the init script in before()).
  const socketLog = (tab) => tab.evaluate(() => window.socketLog);

  // Waits for the tab's chat to show "open".
  async function chatOpens(tab) {
    await tab.locator('#status.open, #status.closed').waitFor();
    assert.equal(await tab.locator('#status').textContent(), 'open');
  }

  // Sends `text` in the tab's chat and waits for the backend's echo, which
  // the page shows as a plain line (lib/backend.mjs echoes the text as is).
  async function chatEchoes(tab, text) {
    await tab.locator('#text').fill(text);
    await tab.locator('#send button[type="submit"]').click();
    await tab.locator('#log .msg.me', { hasText: `me: ${text}` }).waitFor();
    await tab.locator('#log .msg:not(.me):not(.sys)').filter({ hasText: text }).waitFor();
    assert.equal(await tab.locator('#text').inputValue(), '', 'the input is cleared');
  }

  // The tab shows the signed-out site.
  async function signedOut(tab) {
    await tab.locator('#sign-in').waitFor();
    assert.ok(await tab.locator('#chat').isHidden(), 'no chat');
    assert.ok(await tab.locator('#sign-out').isHidden(), 'no "Sign out"');
    assert.ok(await tab.locator('#signed-out').isVisible(), 'the "Sign in to chat" panel');
    assert.equal(await tab.locator('#account').textContent(), 'Not signed in');
  }

  // The tab shows the signed-in site, without a notice of trouble.
  async function signedIn(tab) {
    await tab.locator('#sign-out').waitFor();
    assert.ok(await tab.locator('#chat').isVisible(), 'the chat');
    assert.ok(await tab.locator('#sign-in').isHidden(), 'no "Sign in"');
    assert.ok(await tab.locator('#signed-out').isHidden());
    assert.ok(await tab.locator('#notice').isHidden(),
      `no notice: ${await tab.locator('#notice').textContent()}`);
  }

  // portcullis's log lines (JSON) that satisfy `pick`.
  const logLines = (pick) => proxy.log().split('\n').flatMap((l) => {
    try {
      const entry = JSON.parse(l);
      return pick(entry) ? [entry] : [];
    } catch {
      return [];
    }
  });
  const field = (entry, name) => entry[name] ?? entry.fields?.[name];

  const step = stepper({
    label: 'sdk',
    watched: () => watched,
    logTail: () => (proxy ? proxy.log().split('\n').slice(-30).join('\n') : ''),
    timeoutMs: TEST_MS,
  });

  // What set-up is doing, so that a failure of before() says where it
  // stopped (node's runner reports only the hook's error).
  let stage = 'start';
  before(async () => {
    try {
      await setUp();
    } catch (error) {
      process.stderr.write(`sdk-browser set-up failed while ${stage}: ${error.stack}\n`
        + `end of portcullis's log:\n${proxy ? proxy.log().split('\n').slice(-20).join('\n') : '(not started)'}\n`);
      throw error;
    }
  }, { timeout: 600_000 }); // the binary may need building first

  async function setUp() {
    // The company site's server listens first, on a port of its own choosing
    // (its page is rendered once portcullis's snippet is known).
    stage = 'starting the site';
    let html;
    site = createServer((req, res) => {
      if (html && req.method === 'GET' && new URL(req.url, siteOrigin).pathname === '/') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
        res.end(html);
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found');
      }
    });
    site.listen(0, '127.0.0.1');
    await once(site, 'listening');
    siteOrigin = `http://127.0.0.1:${site.address().port}`;
    siteUrl = `${siteOrigin}/`;
    const [proxyPort, adminPort] = [await freePort(), await freePort()];
    origin = `http://127.0.0.1:${proxyPort}`;

    // The site's page is the redirect URI of its login at the provider (a
    // plain-http loopback URI, which oidc-provider accepts for web clients
    // using the code flow).
    stage = 'starting oidc-provider and the backend';
    idp = await startIdp({ redirectUris: [siteUrl] });
    backend = await startBackend({ upstream: UPSTREAM });
    backend.assertionIssuer = origin;
    backend.assertionKeys = createRemoteJWKSet(new URL(`${origin}/.auth/jwks.json`));

    stage = 'starting portcullis';
    proxy = await startPortcullis({
      adminPort,
      providers: ['idp'],
      env: { E2E_CLIENT_SECRET: idp.clientSecret },
      config: `
listen: [{address: "127.0.0.1:${proxyPort}"}]
public_url: "${origin}"
threads: 1
admin: {address: "127.0.0.1:${adminPort}"}
providers:
  idp:
    issuer: "${idp.issuer}"
    client_id: ${idp.clientId}
    client_secret: {env: E2E_CLIENT_SECRET}
    scopes: [openid, email, profile]
messengers:
  support:
    authentication: {enabled: true, provider: idp}
    assertion: true
    session: {token_lifetime: ${TOKEN_LIFETIME_S}s}
upstreams:
  ${UPSTREAM}: {servers: ["127.0.0.1:${backend.port}"]}
deployments:
  - id: "${DEPLOYMENT}"
    messenger: support
    upstream: ${UPSTREAM}
    allowed_origins: ["${siteOrigin}"]
    redirect_uris: ["${siteUrl}"]
routes: [{path_prefix: /v1}]
logging: {format: json, level: info}
`,
    });
    stage = 'reading config.json, the snippet and sdk.js';
    const config = await (await fetch(`${origin}/.auth/deployments/${DEPLOYMENT}/config.json`)).json();
    messagingUrl = config.messagingEndpoint;
    assert.equal(messagingUrl, `ws://127.0.0.1:${proxyPort}/v1?deploymentId=${DEPLOYMENT}`);

    // The site owner's paste: the snippet's first <script> line, as is.
    const snippet = await fetch(`${origin}/.auth/deployments/${DEPLOYMENT}/snippet`);
    assert.equal(snippet.status, 200);
    const scriptLine = (await snippet.text()).split('\n').find((l) => l.startsWith('<script'));
    const tag = /^<script src="([^"]+)" integrity="(sha384-[^"]+)" crossorigin="anonymous"><\/script>$/
      .exec(scriptLine ?? '');
    assert.ok(tag, `the snippet's script element: ${scriptLine}`);
    // The integrity the snippet pins is the served SDK's (the browser checks
    // it too: the page has no Portcullis otherwise).
    const sdk = Buffer.from(await (await fetch(tag[1])).arrayBuffer());
    assert.equal(tag[2], `sha384-${createHash('sha384').update(sdk).digest('base64')}`);

    const template = await readFile(path.join(REPO_ROOT, 'web/site.html'), 'utf8');
    for (const placeholder of ['PORTCULLIS_SITE_CONFIG', 'PORTCULLIS_SNIPPET']) {
      assert.equal(template.split(placeholder).length, 2, `web/site.html has ${placeholder} once`);
    }
    // As src/demo/site.rs renders it: no "<" inside the JSON's <script>.
    const siteConfig = JSON.stringify({ portcullis: origin, deploymentId: DEPLOYMENT })
      .replaceAll('<', '\\u003c');
    html = template
      .replace('PORTCULLIS_SITE_CONFIG', () => siteConfig)
      .replace('PORTCULLIS_SNIPPET', () => scriptLine);

    stage = 'starting chromium';
    browser = await launchChromium();
    // Nothing leaves loopback: anything else is aborted and recorded, with
    // the page that asked for it.
    watched = await watchedContext(browser, { viewport: { width: 900, height: 900 } });
    ({ context } = watched);
    stage = 'preparing the browser context';
    // How each WebSocket of a page ended, as the browser saw it (the code of
    // the close frame received): the page's own handlers may drop a close
    // they no longer care about.
    await context.addInitScript(() => {
      const Native = window.WebSocket;
      window.socketLog = [];
      window.WebSocket = class extends Native {
        constructor(url, protocols) {
          super(url, protocols);
          const entry = { path: new URL(url).pathname, events: [] };
          window.socketLog.push(entry);
          this.addEventListener('open', () => entry.events.push('open'));
          this.addEventListener('close', (e) => entry.events.push(`close ${e.code}`));
        }
      };
    });
    context.on('page', (p) => {
      chatSockets.set(p, []);
      p.on('websocket', (ws) => {
        if (ws.url().startsWith(messagingUrl.split('?')[0])) chatSockets.get(p).push(ws);
      });
    });
    page = await context.newPage();
    stage = 'done';
  }

  after(async () => {
    await browser?.close();
    await proxy?.stop();
    if (process.env.E2E_SHOW_LOG && proxy) process.stderr.write(`portcullis log:\n${proxy.log()}\n`);
    await backend?.close();
    if (site) {
      const closed = new Promise((resolve) => { site.close(resolve); });
      site.closeAllConnections();
      await closed;
    }
    await idp?.close();
  });

  step('the site loads signed out: "Sign in", no chat, no socket', async () => {
    const sdkLoads = [];
    page.on('response', (r) => { if (new URL(r.url()).pathname === '/.auth/sdk.js') sdkLoads.push(r); });
    const res = await page.goto(siteUrl);
    assert.equal(res.status(), 200);
    await signedOut(page);
    assert.ok(await page.locator('#notice').isHidden(), 'no notice');
    // The SDK came from portcullis through the pasted element, passed the
    // integrity check, and found no session.
    assert.equal(sdkLoads.length, 1);
    assert.equal(new URL(sdkLoads[0].url()).origin, origin);
    assert.equal(sdkLoads[0].status(), 200);
    assert.deepEqual(
      await page.evaluate(() => ({ authenticated: messenger.authenticated, token: messenger.token })),
      { authenticated: false, token: null },
    );
    assert.equal(await page.evaluate((k) => localStorage.getItem(k), RT_KEY), null);
    assert.deepEqual(chatSockets.get(page), [], 'no chat socket before the login');
    assert.equal(await tokenCalls('exchange', null), 0);
  });

  step('"Sign in" at oidc-provider as alice; back on the site: signed in, the chat opens and echoes', async () => {
    const authorizing = page.waitForRequest((r) => r.isNavigationRequest()
      && new URL(r.url()).origin === idp.issuer);
    await page.locator('#sign-in').click();
    // The site's own authorization request: code + PKCE S256, for
    // portcullis's client, back to the page.
    const authorize = new URL((await authorizing).url()).searchParams;
    assert.equal(authorize.get('response_type'), 'code');
    assert.equal(authorize.get('client_id'), idp.clientId);
    assert.equal(authorize.get('redirect_uri'), siteUrl);
    assert.equal(authorize.get('code_challenge_method'), 'S256');
    assert.equal(authorize.get('scope'), 'openid email profile');
    await page.waitForURL((u) => u.origin === idp.issuer && u.pathname.startsWith('/interaction/'));
    await page.locator('input[name="login"]').fill('alice');
    await page.locator('input[name="password"]').fill(USERS.alice.password);
    await page.getByRole('button', { name: 'Sign-in' }).click();
    // The provider asks for consent to a new grant; then back to the site.
    const consent = page.getByRole('button', { name: 'Continue' });
    await consent.or(page.locator('#sign-out')).waitFor();
    if (await consent.isVisible()) await consent.click();
    await page.waitForURL((u) => u.origin === siteOrigin && u.pathname === '/' && !u.search);
    await signedIn(page);
    await chatOpens(page);
    firstJwt = await page.evaluate(() => messenger.token);
    assert.match(firstJwt ?? '', /^[\w-]+\.[\w-]+\.[\w-]+$/, 'the SDK holds a jwt');
    secrets.add(firstJwt);
    await recordSdkEvents(page);

    // portcullis's token: alice, this deployment, the configured lifetime.
    const claims = decodeJwt(firstJwt);
    assert.equal(claims.iss, origin);
    assert.equal(claims.aud, DEPLOYMENT);
    assert.equal(claims.sub, 'alice');
    assert.equal(claims.exp - claims.iat, TOKEN_LIFETIME_S);
    const refreshToken = await page.evaluate((k) => localStorage.getItem(k), RT_KEY);
    assert.match(refreshToken ?? '', /^pcr_/, 'the refresh token, in localStorage (storage: "local")');
    secrets.add(refreshToken);
    assert.ok(!(await context.cookies(origin)).some((c) => c.name.startsWith('portcullis')),
      'the token API sets no cookie of portcullis');

    // What the page shows of the backend's welcome: alice, through portcullis.
    await page.locator('#log .msg.sys', { hasText: 'connected as Alice Example' }).waitFor();
    assert.equal(await page.locator('#account').textContent(), 'Signed in as Alice Example');
    const shown = JSON.parse(await page.locator('#identity').textContent());
    assert.equal(shown.protocol, 'chat.v1', 'the handshake chose chat.v1, not the token entry');
    assert.equal(shown.identity['x-auth-subject'], 'alice');
    assert.equal(shown.identity['x-auth-deployment'], DEPLOYMENT);
    await chatEchoes(page, message(1));
    const upgrades = backend.seen.filter((s) => s.headers.upgrade === 'websocket');
    assert.equal(upgrades.length, 1, 'one chat connection reached the backend');
    const { headers } = upgrades[0];
    assert.equal(headers['x-auth-subject'], 'alice');
    assert.equal(headers['x-auth-deployment'], DEPLOYMENT);
    assert.equal(headers['x-auth-session'], claims.sid);
    assert.equal(headers['x-auth-email'], USERS.alice.claims.email);
    assert.equal(headers['sec-websocket-protocol'], 'chat.v1', 'the token entry is removed');
    assert.equal(headers.origin, siteOrigin);
    assert.equal(headers.authorization, undefined);

    // One exchange, and nothing else of the token API yet.
    assert.equal(await tokenCalls('exchange'), 1);
    assert.equal(await tokenCalls('exchange', null), 1, 'no refused exchange');
    assert.equal(await tokenCalls('revoke', null), 0);
  });

  step(`the jwt (${TOKEN_LIFETIME_S} s) is refreshed by the SDK: after 3 lifetimes the first one is refused, the chat still echoes`, async () => {
    const refreshes = await tokenCalls('refresh');
    // Keep the page open for more than three lifetimes; the SDK alone keeps
    // the token fresh (at half the lifetime, since it is short).
    await sleep((3 * TOKEN_LIFETIME_S + 1) * 1000);
    const grown = (await tokenCalls('refresh')) - refreshes;
    assert.ok(grown >= 2, `the SDK refreshed ${grown} times in ${3 * TOKEN_LIFETIME_S + 1} s`);
    assert.equal(await tokenCalls('refresh', null) - (await tokenCalls('refresh')), 0, 'no refused refresh');

    const now = await page.evaluate(() => ({ token: messenger.token, authenticated: messenger.authenticated }));
    assert.ok(now.authenticated, 'the SDK is authenticated');
    assert.notEqual(now.token, firstJwt, 'the jwt changed');
    secrets.add(now.token);
    const claims = decodeJwt(now.token);
    const first = decodeJwt(firstJwt);
    assert.equal(claims.sid, first.sid, 'the same session');
    assert.equal(claims.sub, 'alice');
    assert.ok(claims.exp * 1000 > Date.now(), 'the current jwt is unexpired');
    assert.ok(first.exp * 1000 < Date.now() - 5000, 'the first jwt expired (beyond any leeway)');

    // portcullis refuses the first jwt now, and takes the current one.
    const refused = await handshake(firstJwt);
    assert.equal(refused.status, 401, JSON.stringify(refused.body));
    assert.equal(refused.body.reason, 'token_expired', JSON.stringify(refused.body));
    const control = await handshake(now.token);
    assert.equal(control.status, 101, `the current jwt opens: ${JSON.stringify(control.body)}`);
    assert.equal(control.protocol, 'chat.v1');

    // The page's chat stayed on its one connection the whole time.
    await chatOpens(page);
    assert.equal(chatSockets.get(page).length, 1, 'no reconnection');
    assert.ok(!chatSockets.get(page)[0].isClosed(), 'the first socket is still open');
    assert.deepEqual(
      await page.locator('#log .msg.sys').allTextContents(),
      ['connected as Alice Example'],
      'no reconnection or close in the chat log',
    );
    await chatEchoes(page, message(2));
    await signedIn(page);
    assert.deepEqual(await sdkEvents(page), [], 'no tokenError, authError, error or loggedOut');
  });

  step('a second tab of the same browser is signed in without a login (shared refresh token); its chat opens', async () => {
    const refreshesBeforeTabs = await tokenCalls('refresh');
    second = await context.newPage();
    const toProvider = [];
    const tokenApi = []; // the second tab's token API calls
    second.on('request', (r) => {
      const u = new URL(r.url());
      if (u.origin === idp.issuer) toProvider.push(r.url());
      if (u.origin === origin && u.pathname.startsWith('/.auth/token') && r.method() !== 'OPTIONS') {
        tokenApi.push(`${r.method()} ${u.pathname}`);
      }
    });
    const res = await second.goto(siteUrl);
    assert.equal(res.status(), 200);
    await signedIn(second);
    await chatOpens(second);
    await second.locator('#log .msg.sys', { hasText: 'connected as Alice Example' }).waitFor();
    await recordSdkEvents(second);
    assert.deepEqual(toProvider, [], 'the second tab never went to the provider');
    assert.equal(second.url(), siteUrl);
    assert.equal(await tokenCalls('exchange', null), 1, 'no second exchange');
    assert.equal(tokenApi[0], 'POST /.auth/token/refresh', 'the second tab started with the shared refresh token');
    assert.ok(!tokenApi.includes('POST /.auth/token'), `no exchange from the second tab: ${tokenApi}`);
    assert.ok(await tokenCalls('refresh') > refreshesBeforeTabs);

    const mine = await second.evaluate(() => messenger.token);
    secrets.add(mine);
    assert.equal(decodeJwt(mine).sid, decodeJwt(firstJwt).sid, 'the same session as the first tab');
    const upgrades = backend.seen.filter((s) => s.headers.upgrade === 'websocket'
      && s.headers['sec-websocket-protocol'] === 'chat.v1' && s.headers.origin === siteOrigin);
    assert.equal(upgrades.at(-1).headers['x-auth-session'], decodeJwt(firstJwt).sid);
    await chatEchoes(second, message(3));

    // Both tabs now rotate the one refresh token; for more than a lifetime
    // neither trips over the other (a reuse would end the session).
    const refreshes = await tokenCalls('refresh');
    const tokens = async () => [
      await page.evaluate(() => messenger.token), await second.evaluate(() => messenger.token),
    ];
    const before = await tokens();
    await sleep((TOKEN_LIFETIME_S + 1) * 1000);
    const later = await tokens();
    for (const t of later) secrets.add(t);
    assert.ok(later.every((t, i) => t && t !== before[i]), 'each tab has refreshed its jwt');
    assert.ok((await tokenCalls('refresh')) - refreshes >= 2, 'both tabs keep refreshing');
    assert.equal(await tokenCalls('refresh', null), await tokenCalls('refresh'), 'no refused refresh');
    for (const tab of [page, second]) {
      await signedIn(tab);
      await chatOpens(tab);
      assert.deepEqual(await sdkEvents(tab), [], `no SDK trouble in ${tab === page ? 'the first' : 'the second'} tab`);
      assert.equal(chatSockets.get(tab).length, 1, 'one chat connection per tab');
    }
    assert.equal(metricSum(await proxy.metrics(), 'portcullis_session_ends_total') ?? 0, 0, 'the session lives');
    await chatEchoes(page, message(4));
  });

  step('"Sign out" in the first tab: the second tab is signed out too, its socket closed with 4002, the jwts refused', async () => {
    const jwts = [
      await page.evaluate(() => messenger.token),
      await second.evaluate(() => messenger.token),
    ];
    for (const jwt of jwts) secrets.add(jwt);
    // The person goes back to the first tab and signs out there.
    await page.bringToFront();
    await page.getByRole('button', { name: 'Sign out' }).click();

    await signedOut(page);
    await page.locator('#notice', { hasText: 'You are signed out of the chat (logout).' }).waitFor();
    // The other tab: loggedOut, shown signed out; its socket closed by
    // portcullis with 4002, and the page says so.
    await signedOut(second);
    // The SDK of the first tab tells the others through its BroadcastChannel
    // (reason "logout"); the 4002 close may have told this one first
    // ("revoked"). Either way the tab hears it once.
    await second.locator('#notice', { hasText: /^You are signed out of the chat \((logout|revoked)\)\.$/ }).waitFor();
    for (const tab of [page, second]) {
      const closes = async () => (await socketLog(tab)).filter((s) => s.path === '/v1');
      const deadline = Date.now() + 5000;
      while ((await closes()).some((s) => !s.events.some((e) => e.startsWith('close')))) {
        assert.ok(Date.now() < deadline, `the chat socket closes: ${JSON.stringify(await closes())}`);
        await sleep(100);
      }
      assert.deepEqual(
        (await closes()).map((s) => s.events),
        [['open', 'close 4002']],
        `${tab === page ? 'first' : 'second'} tab: its one chat socket, closed by portcullis with 4002`,
      );
    }
    // (The chat section is hidden now; what its log says is still there.)
    await second.locator('#log .msg.sys', { hasText: /^connection closed with code 4002 logged out$/ })
      .waitFor({ state: 'attached' });
    const secondEvents = await sdkEvents(second);
    assert.ok(
      ['["loggedOut logout"]', '["loggedOut revoked"]'].includes(JSON.stringify(secondEvents)),
      `the second tab's SDK: one loggedOut, from the first tab or from the 4002: ${JSON.stringify(secondEvents)}`,
    );
    assert.deepEqual(await sdkEvents(page), ['loggedOut logout']);
    for (const tab of [page, second]) {
      assert.deepEqual(
        await tab.evaluate((k) => ({
          rt: localStorage.getItem(k), token: messenger.token, authenticated: messenger.authenticated,
        }), RT_KEY),
        { rt: null, token: null, authenticated: false },
      );
    }

    // portcullis's side: one revoke, the session ended as a logout, both
    // sockets closed by it with 4002.
    assert.equal(await tokenCalls('revoke'), 1);
    assert.equal(await tokenCalls('revoke', null), 1);
    const metrics = await proxy.metrics();
    assert.equal(metricSum(metrics, 'portcullis_session_ends_total', { reason: 'logout' }), 1);
    assert.equal(metricSum(metrics, 'portcullis_forced_closes_total', { deployment: DEPLOYMENT, reason: 'logout' }), 2);
    const deadline = Date.now() + 5000;
    for (;;) {
      const closed = logLines((e) => field(e, 'close_code') === 4002);
      if (closed.length >= 2) {
        assert.equal(closed.length, 2, JSON.stringify(closed));
        for (const e of closed) {
          assert.equal(field(e, 'subject'), 'alice');
          assert.equal(field(e, 'auth'), 'subprotocol');
          assert.equal(field(e, 'forced_close'), 'logout');
        }
        break;
      }
      assert.ok(Date.now() < deadline, `the access log shows both sockets closed with 4002: ${JSON.stringify(closed)}`);
      await sleep(100);
    }
    // The jwts of both tabs are now refused: the session ended.
    for (const jwt of jwts) {
      const refused = await handshake(jwt);
      assert.equal(refused.status, 401, JSON.stringify(refused.body));
      assert.equal(refused.body.reason, 'session_ended', JSON.stringify(refused.body));
    }
  });

  step('no uncaught page error; the browser stayed on loopback; no token in portcullis\'s log', async () => {
    assert.deepEqual(watched.pageErrors, [], 'no uncaught error in the pages');
    // The provider's development login pages @import a web font from
    // fonts.googleapis.com (oidc-provider's layout); that is all that tried
    // to leave loopback, and it was aborted.
    const elsewhere = watched.offLoopback.filter(({ url, from }) => !(
      new URL(url).hostname === 'fonts.googleapis.com' && new URL(from ?? 'about:blank').origin === idp.issuer));
    assert.deepEqual(elsewhere, [], 'only the provider\'s pages tried to leave loopback');
    const log = proxy.log();
    for (const secret of secrets) assert.ok(!log.includes(secret), 'a token in portcullis\'s log');
  });
});
