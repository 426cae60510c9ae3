// The demo in a real browser: `portcullis demo` (proxy, echo chat backend and
// development provider, from a copy of conf/demo.yaml moved to free loopback
// ports) driven by headless Chromium through playwright-core, as a person
// would: open the page, log in as alice at the provider's page, chat, log out.
// Chromium is the system one (CHROMIUM_PATH, else /usr/bin/chromium); no
// browser is downloaded. Steps run in order and share one page; after a
// failed step the later ones are skipped, and the failure names a screenshot
// of every open tab. Everything is on 127.0.0.1 and stops in after(); the
// process exits by itself.
//
// E2E_SHOW_LOG=1 prints the demo's log when the suite ends.
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

import {
  launchChromium, stepper, watchedContext,
} from '../lib/browser.mjs';
import {
  REPO_ROOT, freePort, launchPortcullis, metricSum, sleep, waitUntilReady,
} from '../lib/portcullis.mjs';

// The chat deployment of conf/demo.yaml (the page's default).
const CHAT = '6f2d3c1a-0b4e-4c5d-9e8f-7a6b5c4d3e2f';
const TEST_MS = 45_000; // a whole step, screenshot included

// The log without terminal colours (NO_COLOR is set, but to be sure).
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

// `portcullis demo -c <copy of conf/demo.yaml on free ports>`; resolves once
// the proxy's and the admin listener's /healthz answer and the provider
// entry is ready. Returns the URLs, `log()` and `stop()`.
async function startDemo({ timeoutMs = 30_000 } = {}) {
  const [proxyPort, backendPort, providerPort, adminPort, sitePort] = [
    await freePort(), await freePort(), await freePort(), await freePort(), await freePort(),
  ];
  const shipped = await readFile(path.join(REPO_ROOT, 'conf/demo.yaml'), 'utf8');
  const config = shipped
    .replaceAll('127.0.0.1:8080', `127.0.0.1:${proxyPort}`)
    .replaceAll('localhost:8080', `localhost:${proxyPort}`)
    .replaceAll('127.0.0.1:8081', `127.0.0.1:${backendPort}`)
    .replaceAll('127.0.0.1:8082', `127.0.0.1:${providerPort}`)
    .replaceAll('127.0.0.1:9090', `127.0.0.1:${adminPort}`)
    .replaceAll('127.0.0.1:8083', `127.0.0.1:${sitePort}`);
  for (const port of [':8080', ':8081', ':8082', ':8083', ':9090']) {
    assert.ok(!config.includes(port), `conf/demo.yaml names ${port} somewhere this test does not move`);
  }

  // The demo provides its client secret itself when none is set.
  const env = { ...process.env, NO_COLOR: '1' };
  delete env.PORTCULLIS_DEMO_CLIENT_SECRET;
  const running = await launchPortcullis('demo', config, {
    env, prefix: 'portcullis-e2e-demo-', fileName: 'demo.yaml',
  });

  const demo = {
    origin: `http://127.0.0.1:${proxyPort}`,
    provider: `http://127.0.0.1:${providerPort}`,
    admin: `http://127.0.0.1:${adminPort}`,
    site: `http://127.0.0.1:${sitePort}`,
    log: () => stripAnsi(running.log()),
    exitCode: running.exitCode,
    stop: running.stop,
  };

  // A failed or hung request counts as not listening yet.
  const ok = async (url) => (await fetch(url, { signal: AbortSignal.timeout(2000) })).ok;
  await waitUntilReady(demo, async () => {
    // The proxy's /healthz goes through the page route to the backend's.
    if (!(await ok(`${demo.admin}/healthz`) && await ok(`${demo.origin}/healthz`))) return false;
    const metrics = await (await fetch(`${demo.admin}/metrics`)).text();
    return metricSum(metrics, 'portcullis_provider_ready', { provider: 'demo-idp' }) === 1;
  }, { timeoutMs, name: 'portcullis demo' });
  return demo;
}

// From the page's context, a new WebSocket to the chat (as the page's own
// connect() makes it): what happened, in order (`open`, `error`,
// `close <code>`). An opened socket is closed once the backend's welcome
// arrived: closing within a millisecond of the 101 can make pingora 0.9 cut
// the tunnel (1006) before the close frame is relayed, which no chat client does.
function tryChatSocket(page) {
  return page.evaluate(({ deployment, waitMs }) => new Promise((resolve) => {
    const url = `ws://${location.host}/v1/chat?deploymentId=${encodeURIComponent(deployment)}`;
    const events = [];
    const ws = new WebSocket(url, ['chat.v1']);
    const timer = setTimeout(() => {
      resolve({ url, events, timedOut: true });
      ws.close();
    }, waitMs);
    ws.onopen = () => { events.push('open'); };
    ws.onmessage = () => { ws.close(1000); };
    ws.onerror = () => { events.push('error'); };
    ws.onclose = (e) => {
      clearTimeout(timer);
      events.push(`close ${e.code}`);
      resolve({ url, events, code: e.code });
    };
  }), { deployment: CHAT, waitMs: 10_000 });
}

// From the page's context, /.auth/me as the page asks it.
function pageMe(page) {
  return page.evaluate(async () => {
    const resp = await fetch('/.auth/me', { credentials: 'same-origin', cache: 'no-store' });
    return { status: resp.status, body: resp.ok ? await resp.json() : null };
  });
}

// Waits for the tab's chat connection to show "open".
async function chatOpens(tab) {
  await tab.locator('#status.open, #status.closed').waitFor();
  const status = await tab.locator('#status').textContent();
  assert.equal(
    status,
    'open',
    `the chat connection shows "${status}", not "open"`,
  );
}

describe('the demo in headless Chromium: log in as alice, chat, log out', () => {
  let demo;
  let browser;
  let context;
  let page; // the tab the person uses
  let watcher; // a second tab, open on the chat while the first logs out
  let watched; // the context, and what it recorded (lib/browser.mjs)
  const pageSockets = []; // the chat sockets of `page`
  const message = `hello from chromium ${Math.random().toString(36).slice(2, 8)}`;

  const step = stepper({
    label: 'demo',
    watched: () => watched,
    logTail: () => (demo ? demo.log().split('\n').slice(-30).join('\n') : ''),
    timeoutMs: TEST_MS,
  });

  before(async () => {
    demo = await startDemo();
    browser = await launchChromium();
    watched = await watchedContext(browser);
    ({ context } = watched);
    page = await context.newPage();
    page.on('websocket', (ws) => {
      if (new URL(ws.url()).pathname === '/v1/chat') pageSockets.push(ws);
    });
  }, { timeout: 600_000 }); // the binary may need building first

  after(async () => {
    await browser?.close();
    await demo?.stop();
    if (process.env.E2E_SHOW_LOG && demo) process.stderr.write(`portcullis demo log:\n${demo.log()}\n`);
  });

  step('the page loads and shows "not logged in"; the chat socket is refused', async () => {
    const res = await page.goto(`${demo.origin}/`);
    assert.equal(res.status(), 200);
    await page.locator('#logged-out').getByText('You are not logged in').waitFor();
    assert.ok(await page.locator('#logged-in').isHidden(), 'no chat before login');
    assert.ok(await page.locator('#checking').isHidden());
    assert.equal(
      await page.locator('#login').getAttribute('href'),
      `/.auth/login?deployment=${CHAT}&rd=%2F`,
    );
    assert.equal((await pageMe(page)).status, 401);
    const attempt = await tryChatSocket(page);
    assert.ok(!attempt.events.includes('open'), `refused before login: ${JSON.stringify(attempt)}`);
  });

  step('"Log in" leads to the provider\'s page; alice is picked; back on the page, logged in', async () => {
    await page.locator('#login').click();
    await page.waitForURL((u) => u.origin === demo.provider && u.pathname === '/authorize');
    await page.getByText('NOT FOR PRODUCTION').first().waitFor();
    for (const user of ['alice', 'bob', 'carol']) {
      await page.locator(`button[name="user"][value="${user}"]`).waitFor();
    }
    await page.locator('button[name="user"][value="alice"]').click();
    await page.waitForURL((u) => u.origin === demo.origin && u.pathname === '/' && !u.search);
    const who = page.locator('#who');
    await who.getByText('Logged in as Alice Example').waitFor();
    assert.equal(await who.textContent(), 'Logged in as Alice Example (alice@example.com)');
    assert.ok(await page.locator('#logged-out').isHidden());
    const cookies = await context.cookies(demo.origin);
    const session = cookies.find((c) => c.name === 'portcullis');
    assert.ok(session?.value, `a session cookie: ${cookies.map((c) => c.name)}`);
    assert.equal(session.httpOnly, true);
    const me = await pageMe(page);
    assert.equal(me.status, 200);
    assert.equal(me.body.subject, 'alice');
  });

  step('the chat connects; a message echoes as "Alice Example: …"; the backend saw alice', async () => {
    await chatOpens(page);
    await page.locator('#log .msg.sys', { hasText: 'connected as Alice Example' }).waitFor();

    await page.locator('#text').fill(message);
    await page.locator('#send button[type="submit"]').click();
    await page.locator('#log .msg.me', { hasText: `me: ${message}` }).waitFor();
    const echo = page.locator('#log .msg').filter({ hasText: `Alice Example: ${message}` });
    await echo.waitFor();
    assert.equal(await echo.textContent(), `Alice Example: ${message}`);
    assert.equal(await page.locator('#text').inputValue(), '', 'the input is cleared');

    const shown = JSON.parse(await page.locator('#identity').textContent());
    assert.equal(shown.user, 'Alice Example');
    assert.equal(shown.protocol, 'chat.v1');
    assert.equal(shown.identity['x-auth-email'], 'alice@example.com');
    assert.equal(shown.identity['x-auth-subject'], 'alice');
    assert.equal(shown.identity['x-auth-deployment'], CHAT);
    assert.equal(typeof shown.identity['x-auth-assertion'], 'string');

    // The control for the last step: with the session, the same attempt
    // from the page opens.
    const attempt = await tryChatSocket(page);
    assert.deepEqual(
      attempt.events,
      ['open', 'close 1000'],
      JSON.stringify(attempt),
    );
  });

  step('"Log out" ends the session: the page shows logged out, the chat socket closed with 4002', async () => {
    // A second tab on the chat, to watch its socket when the first logs out
    // (the first navigates away, which would close its socket anyway).
    watcher = await context.newPage();
    await watcher.goto(`${demo.origin}/`);
    await chatOpens(watcher);

    const landing = page.waitForResponse((r) => r.url() === `${demo.origin}/`
      && r.request().isNavigationRequest() && r.request().frame() === page.mainFrame());
    const committed = page.waitForEvent('framenavigated', {
      predicate: (f) => f === page.mainFrame() && f.url() === `${demo.origin}/`,
    });
    await page.getByRole('button', { name: 'Log out' }).click();
    const back = await landing;
    await committed;
    assert.equal(back.status(), 200);
    // The way back: portcullis's logout, the provider's end_session, the page.
    const chain = [];
    for (let r = back.request().redirectedFrom(); r; r = r.redirectedFrom()) chain.unshift(r);
    assert.deepEqual(
      chain.map((r) => `${r.method()} ${new URL(r.url()).origin}${new URL(r.url()).pathname}`),
      [`POST ${demo.origin}/.auth/logout`, `GET ${demo.provider}/end_session`],
    );

    await page.locator('#logged-out').getByText('You are not logged in').waitFor();
    assert.ok(await page.locator('#logged-in').isHidden());
    assert.ok(!(await context.cookies(demo.origin)).some((c) => c.name === 'portcullis' && c.value),
      'the session cookie is gone');
    // The page's own socket went with the page when it navigated away;
    // playwright does not always report the close of a socket whose page
    // left, so the watching tab is where the 4002 is checked.
    assert.ok(pageSockets.length >= 2, 'the page had its chat socket (and the control)');

    // The watching tab's socket was closed by portcullis with 4002; the page
    // says so and then finds itself logged out.
    await watcher.locator('#notice', { hasText: 'session ended (4002)' }).waitFor();
    await watcher.locator('#logged-out').getByText('You are not logged in').waitFor();
    // The chat section is hidden now; what it says is still there.
    assert.equal(await watcher.locator('#status').textContent(), 'session ended (4002)');
    assert.equal(await watcher.locator('#status').getAttribute('class'), 'closed');
    assert.ok(
      (await watcher.locator('#log .msg.sys').allTextContents()).includes('session ended (4002)'),
      'the chat log says why it ended',
    );
  });

  step('after logout a new WebSocket from the page is refused; /.auth/me is 401', async () => {
    assert.equal((await pageMe(page)).status, 401);
    const attempt = await tryChatSocket(page);
    assert.ok(!attempt.timedOut, `the attempt ends: ${JSON.stringify(attempt)}`);
    assert.ok(!attempt.events.includes('open'), `never opens: ${JSON.stringify(attempt)}`);
    assert.equal(attempt.events.at(-1), 'close 1006', JSON.stringify(attempt));
    assert.ok(attempt.events.includes('error'), JSON.stringify(attempt));

    // portcullis's side: the upgrade was refused for want of a session, and
    // alice's sockets were the ones it closed with 4002.
    const deadline = Date.now() + 5000;
    let lines;
    for (;;) {
      lines = demo.log().split('\n').filter((l) => l.includes('portcullis::access')
        && l.includes('path="/v1/chat"') && l.includes('websocket=true'));
      if (lines.filter((l) => /\bstatus=401\b/.test(l)).length >= 2
        && lines.some((l) => /\bclose_code=4002\b/.test(l))) break;
      assert.ok(Date.now() < deadline, `the access log shows the refusals and the 4002:\n${lines.join('\n')}`);
      await sleep(100);
    }
    assert.ok(lines.filter((l) => /\bclose_code=4002\b/.test(l))
      .every((l) => /\bsubject="?alice"?/.test(l)), lines.join('\n'));

    assert.deepEqual(watched.pageErrors, [], 'no uncaught error in the page');
    assert.deepEqual(watched.offLoopback, [], 'the browser stayed on loopback');
  });
});

// The demo's second page: a company site on its own origin (the chat
// deployment's redirect URI) with its own login at the development provider.
// It hands the authorization code to the SDK it loaded through the pasted
// snippet; the SDK exchanges it at portcullis (the token API) and chats with
// the messenger token in the subprotocol. No cookie of portcullis is involved.
describe('the demo\'s company site: its own login, the SDK exchanges the code, chat, sign out', () => {
  let demo;
  let browser;
  let watched; // the context, and what it recorded (lib/browser.mjs)
  let page;
  let firstToken; // the messenger token the SDK got by the exchange
  const message = `hello from the site ${Math.random().toString(36).slice(2, 8)}`;

  const step = stepper({
    label: 'site',
    watched: () => watched,
    logTail: () => (demo ? demo.log().split('\n').slice(-30).join('\n') : ''),
    timeoutMs: TEST_MS,
  });

  const tokenCalls = async (operation, result = 'ok') => {
    const metrics = await (await fetch(`${demo.admin}/metrics`)).text();
    return metricSum(metrics, 'portcullis_token_api_requests_total', { deployment: CHAT, operation, result });
  };

  // From the site's context, a chat WebSocket with `token` in the
  // subprotocol carrier, as the SDK opens it: what happened, in order.
  const tryTokenSocket = (token) => page.evaluate(({ origin, deployment, token: t }) => new Promise((resolve) => {
    const url = `${origin.replace('http', 'ws')}/v1/chat?deploymentId=${encodeURIComponent(deployment)}`;
    const events = [];
    const ws = new WebSocket(url, ['chat.v1', `authorization.bearer.${t}`]);
    const timer = setTimeout(() => { resolve({ events, timedOut: true }); ws.close(); }, 10_000);
    ws.onopen = () => { events.push('open'); };
    ws.onmessage = () => { ws.close(1000); };
    ws.onerror = () => { events.push('error'); };
    ws.onclose = (e) => { clearTimeout(timer); events.push(`close ${e.code}`); resolve({ events }); };
  }), { origin: demo.origin, deployment: CHAT, token });

  before(async () => {
    demo = await startDemo();
    browser = await launchChromium();
    watched = await watchedContext(browser);
    page = await watched.context.newPage();
  }, { timeout: 600_000 });

  after(async () => {
    await browser?.close();
    await demo?.stop();
    if (process.env.E2E_SHOW_LOG && demo) process.stderr.write(`portcullis demo log:\n${demo.log()}\n`);
  });

  step('the site, on its own origin, loads the SDK from the pasted snippet and shows "Sign in"', async () => {
    assert.notEqual(demo.site, demo.origin);
    const sdkLoads = [];
    page.on('response', (r) => { if (new URL(r.url()).pathname === '/.auth/sdk.js') sdkLoads.push(r); });
    const res = await page.goto(`${demo.site}/`);
    assert.equal(res.status(), 200);
    await page.locator('#sign-in').waitFor();
    assert.ok(await page.locator('#chat').isHidden(), 'no chat before the site\'s login');
    assert.equal(await page.locator('#account').textContent(), 'Not signed in');
    // The SDK came from portcullis, pinned as the snippet pins it, and the
    // browser's integrity check let it run.
    assert.equal(sdkLoads.length, 1);
    assert.equal(new URL(sdkLoads[0].url()).origin, demo.origin);
    const snippet = await (await fetch(`${demo.origin}/.auth/deployments/${CHAT}/snippet`)).text();
    const pasted = snippet.split('\n').find((l) => l.includes('/.auth/sdk.js'));
    assert.ok((await page.content()).includes(pasted), 'the page carries the snippet\'s script element');
    assert.equal(await page.evaluate(() => typeof window.messenger?.getTokens), 'function');
  });

  step('"Sign in" at the provider as bob; back on the site the SDK exchanges the code and the chat opens', async () => {
    await page.locator('#sign-in').click();
    await page.waitForURL((u) => u.origin === demo.provider && u.pathname === '/authorize');
    const authorize = new URL(page.url()).searchParams;
    assert.equal(authorize.get('redirect_uri'), `${demo.site}/`);
    assert.equal(authorize.get('code_challenge_method'), 'S256');
    await page.locator('button[name="user"][value="bob"]').click();
    await page.waitForURL((u) => u.origin === demo.site && u.pathname === '/' && !u.search);
    await chatOpens(page);
    await page.locator('#log .msg.sys', { hasText: 'connected as Bob Other' }).waitFor();
    assert.equal(await page.locator('#account').textContent(), 'Signed in as Bob Other');
    assert.equal(await tokenCalls('exchange'), 1, 'one exchange at the token API');

    await page.locator('#text').fill(message);
    await page.locator('#send button[type="submit"]').click();
    await page.locator('#log .msg').filter({ hasText: `Bob Other: ${message}` }).waitFor();

    const shown = JSON.parse(await page.locator('#identity').textContent());
    assert.equal(shown.identity['x-auth-subject'], 'bob');
    assert.equal(shown.identity['x-auth-deployment'], CHAT);
    assert.equal(typeof shown.identity['x-auth-assertion'], 'string');
    // The token path, not portcullis's cookie login: the proxy's origin has no session cookie.
    assert.ok(!(await watched.context.cookies(demo.origin)).some((c) => c.name === 'portcullis'));
    firstToken = await page.evaluate(() => window.messenger.token);
    assert.match(firstToken, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    const refresh = await page.evaluate((id) => localStorage.getItem(`portcullis:${id}:refreshToken`), CHAT);
    assert.ok(refresh, 'the site keeps the refresh token in localStorage');
    assert.deepEqual((await tryTokenSocket(firstToken)).events, ['open', 'close 1000'],
      'the control: the token opens a socket');
  });

  step('"Sign out" revokes: the page is signed out, its socket closed with 4002, the token refused', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('#sign-in').waitFor();
    assert.ok(await page.locator('#chat').isHidden());
    await page.locator('#notice', { hasText: 'signed out of the chat (logout)' }).waitFor();
    assert.equal(await tokenCalls('revoke'), 1);
    assert.equal(await page.evaluate((id) => localStorage.getItem(`portcullis:${id}:refreshToken`), CHAT), null);
    const refused = await tryTokenSocket(firstToken);
    assert.ok(!refused.events.includes('open'), `the revoked token opens nothing: ${JSON.stringify(refused)}`);

    // portcullis closed bob's chat socket (the SDK's, at the deployment's
    // messaging endpoint /v1) itself, with 4002.
    const deadline = Date.now() + 5000;
    for (;;) {
      const closed = demo.log().split('\n').filter((l) => l.includes('portcullis::access')
        && l.includes('path="/v1"') && /\bclose_code=4002\b/.test(l));
      if (closed.some((l) => /\bsubject="?bob"?/.test(l))) break;
      assert.ok(Date.now() < deadline, `the access log shows bob's socket closed with 4002:\n${closed.join('\n')}`);
      await sleep(100);
    }
    assert.deepEqual(watched.pageErrors, [], 'no uncaught error in the page');
    assert.deepEqual(watched.offLoopback, [], 'the browser stayed on loopback');
  });
});
