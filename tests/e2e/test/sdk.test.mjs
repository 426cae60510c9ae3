// Unit tests of the browser SDK, web/sdk.js, with no browser and no server.
// Each "tab" is a node:vm context that loads sdk.js as a page would, with
// fakes for what a browser gives it: fetch (answered by FakeServer, which
// follows portcullis's token contract, refresh-token rotation included),
// WebSocket, BroadcastChannel, sessionStorage/localStorage (localStorage
// shared by the tabs of a world, with storage events), location, history,
// document.currentScript and timers. Time is a fake clock (Clock): nothing
// sleeps for real, timers run only when a test advances the clock, and
// `flush` lets pending promise chains settle between steps.
//
// Run: node --test test/sdk.test.mjs (from tests/e2e), or npm test.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, webcrypto } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPO_ROOT = path.resolve(E2E_DIR, '../..');
const SDK_PATH = path.join(REPO_ROOT, 'web/sdk.js');
const DTS_PATH = path.join(REPO_ROOT, 'web/sdk.d.ts');
const SDK_SOURCE = readFileSync(SDK_PATH, 'utf8');

const DEP = 'dep-1';
const EDGE = 'https://edge.example'; // serves sdk.js and /.auth/
const SITE = 'https://shop.example'; // the page that embeds it
const RT_KEY = `portcullis:${DEP}:refreshToken`;
const LOGIN_KEY = `portcullis:${DEP}:login`;
const CONFIG = {
  id: DEP,
  status: 'Active',
  auth: { enabled: true, allowSessionUpgrade: false },
  oidc: {
    issuer: 'https://idp.example',
    authorizationEndpoint: 'https://idp.example/authorize?audience=chat',
    clientId: 'shop-web',
    scopes: ['openid', 'profile', 'offline_access'],
  },
  endpoints: {
    token: `${EDGE}/.auth/token`,
    refresh: `${EDGE}/.auth/token/refresh`,
    revoke: `${EDGE}/.auth/token`,
  },
  messagingEndpoint: `wss://edge.example/v1?deploymentId=${DEP}`,
  sdkVersion: '1.0.0',
};
const EVENTS = ['ready', 'authenticating', 'authenticated', 'loggedOut', 'tokenError', 'authError', 'error'];

// Objects made in a vm context have that context's prototypes, which
// deepStrictEqual tells apart: compare their JSON instead.
const plain = (v) => (v === undefined ? v : JSON.parse(JSON.stringify(v)));
// Let every pending promise chain and queued fake event settle.
async function flush() {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
}

// Fake time: timers run when advance() reaches them, in time order.
class Clock {
  constructor() {
    this.now = Date.UTC(2025, 0, 6, 9, 0, 0);
    this.timers = new Map();
    this.seq = 0;
    const clock = this;
    this.Date = class extends Date {
      static now() {
        return clock.now;
      }
    };
    this.setTimeout = (fn, ms = 0, ...args) => {
      const id = ++this.seq;
      this.timers.set(id, { at: this.now + Math.max(0, Number(ms) || 0), fn: () => fn(...args) });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
  }
  async advance(ms) {
    const end = this.now + ms;
    for (;;) {
      await flush();
      let next = null;
      for (const [id, t] of this.timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
      if (!next) break;
      this.timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = end;
    await flush();
  }
  // The machine sleeps: time passes, no timer runs.
  sleep(ms) {
    this.now += ms;
  }
}

// portcullis's /.auth/ endpoints: rotating refresh tokens, revocation (which
// closes the open sockets with 4002, before its own answer arrives).
// once(route, answer) queues a one-shot answer for "METHOD /path".
class FakeServer {
  constructor(world) {
    this.world = world;
    this.n = 0;
    this.expiresIn = 900;
    this.live = new Set();
    this.queue = [];
    this.config = structuredClone(CONFIG);
  }
  once(route, answer) {
    this.queue.push({ route, answer });
  }
  issue(withRefresh) {
    const n = ++this.n;
    const body = { jwt: `jwt-${n}`, expiresIn: this.expiresIn };
    if (withRefresh) {
      body.refreshToken = `rt-${n}`;
      this.live.add(body.refreshToken);
    }
    return { status: 200, body };
  }
  handle(req) {
    const route = `${req.method} ${req.path}`;
    const queued = this.queue.findIndex((q) => q.route === route);
    if (queued >= 0) return this.queue.splice(queued, 1)[0].answer;
    switch (route) {
      case `GET /.auth/deployments/${DEP}/config.json`:
        return { status: 200, body: this.config };
      case 'POST /.auth/token':
        return this.issue(!req.body.oauth.idToken);
      case 'POST /.auth/token/refresh':
        if (!this.live.delete(req.body.refreshToken)) {
          return { status: 401, body: { error: 'invalid_grant', error_description: 'refresh token is not valid' } };
        }
        return this.issue(true);
      case 'DELETE /.auth/token':
        this.live.clear();
        for (const ws of this.world.sockets) if (ws.readyState === 1) ws.drop(4002, 'logged out');
        return { status: 204 };
      default:
        return { status: 404, body: { error: 'not_found', error_description: route } };
    }
  }
}

// Tabs of one site in one browser, sharing a server, a clock, localStorage,
// BroadcastChannel and the list of WebSockets opened.
function makeWorld() {
  const world = {
    clock: new Clock(),
    requests: [],
    sockets: [],
    tabs: [],
    logs: [],
    local: new Map(),
    channels: new Map(),
  };
  world.server = new FakeServer(world);
  world.fetch = async (url, init = {}) => {
    const u = new URL(url);
    const req = {
      url: String(url),
      origin: u.origin,
      method: init.method || 'GET',
      path: u.pathname,
      headers: { ...(init.headers || {}) },
      body: init.body === undefined ? undefined : JSON.parse(init.body),
      credentials: init.credentials,
    };
    world.requests.push(req);
    const answer = world.server.handle(req);
    if (answer.networkError) throw new TypeError('Failed to fetch');
    const text = answer.body === undefined ? '' : JSON.stringify(answer.body);
    const headers = new Map(Object.entries(answer.headers || {}).map(([k, v]) => [k.toLowerCase(), String(v)]));
    return {
      status: answer.status,
      ok: answer.status >= 200 && answer.status < 300,
      headers: { get: (name) => headers.get(name.toLowerCase()) ?? null },
      text: async () => text,
      json: async () => JSON.parse(text),
    };
  };
  world.WebSocket = class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = [...protocols];
      this.readyState = 0;
      this.protocol = '';
      this.sent = [];
      this.closedWith = null;
      world.sockets.push(this);
    }
    send(data) {
      this.sent.push(data);
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 2;
      setImmediate(() => this.drop(code ?? 1005, reason ?? ''));
    }
    // what the server side does
    accept(protocol = this.protocols[1]) {
      this.readyState = 1;
      this.protocol = protocol;
      this.onopen?.({ type: 'open' });
    }
    receive(data) {
      this.onmessage?.({ type: 'message', data });
    }
    drop(code, reason = '') {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ type: 'close', code, reason, wasClean: code !== 1006 });
    }
  };
  world.BroadcastChannel = class FakeBroadcastChannel {
    constructor(name) {
      this.name = name;
      this.onmessage = null;
      if (!world.channels.has(name)) world.channels.set(name, new Set());
      world.channels.get(name).add(this);
    }
    postMessage(data) {
      const copy = structuredClone(data);
      for (const other of world.channels.get(this.name)) {
        if (other !== this) setImmediate(() => other.onmessage?.({ data: copy }));
      }
    }
    close() {
      world.channels.get(this.name).delete(this);
    }
  };
  return world;
}

class FakeStorage {
  constructor(map = new Map(), onChange = () => {}) {
    this.map = map;
    this.onChange = onChange;
  }
  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }
  setItem(key, value) {
    const oldValue = this.getItem(key);
    this.map.set(key, String(value));
    this.onChange(key, oldValue, String(value));
  }
  removeItem(key) {
    const oldValue = this.getItem(key);
    this.map.delete(key);
    this.onChange(key, oldValue, null);
  }
  get length() {
    return this.map.size;
  }
  values() {
    return [...this.map.values()];
  }
}

class FakeTarget {
  constructor() {
    this.listeners = new Map();
  }
  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
  }
  removeEventListener(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }
  dispatch(type, fields = {}) {
    for (const fn of [...(this.listeners.get(type) || [])]) fn({ type, ...fields });
  }
  count() {
    return [...this.listeners.values()].reduce((n, set) => n + set.size, 0);
  }
}

// A page at `href` that loaded sdk.js from `script` (null: inline script).
function openTab(world, { href = `${SITE}/shop/cart`, script = `${EDGE}/sdk.js`, broadcast = true, locks } = {}) {
  const tab = { world, url: new URL(href), assigned: [], replaced: [] };
  tab.window = new FakeTarget();
  tab.document = new FakeTarget();
  tab.document.visibilityState = 'visible';
  tab.document.currentScript = script ? { src: script } : null;
  tab.sessionStorage = new FakeStorage();
  tab.localStorage = new FakeStorage(world.local, (key, oldValue, newValue) => {
    for (const other of world.tabs) {
      if (other !== tab) setImmediate(() => other.window.dispatch('storage', { key, oldValue, newValue }));
    }
  });
  const location = {
    get href() { return tab.url.href; },
    get origin() { return tab.url.origin; },
    get pathname() { return tab.url.pathname; },
    get search() { return tab.url.search; },
    get hash() { return tab.url.hash; },
    assign: (url) => tab.assigned.push(String(url)),
  };
  const history = {
    state: { page: 1 },
    replaceState: (state, title, url) => {
      tab.replaced.push({ state, url });
      tab.url = new URL(url, tab.url);
    },
  };
  const log = (level) => (...args) => world.logs.push(`${level}: ${args.map((a) => (a instanceof Object ? `${a.message ?? ''} ${JSON.stringify(a)}` : String(a))).join(' ')}`);
  const sandbox = {
    console: { log: log('log'), info: log('info'), warn: log('warn'), error: log('error'), debug: log('debug') },
    setTimeout: world.clock.setTimeout,
    clearTimeout: world.clock.clearTimeout,
    Date: world.clock.Date,
    URL,
    crypto: webcrypto,
    fetch: world.fetch,
    WebSocket: world.WebSocket,
    sessionStorage: tab.sessionStorage,
    localStorage: tab.localStorage,
    location,
    history,
    document: tab.document,
    navigator: locks ? { locks } : {},
    addEventListener: (type, fn) => tab.window.addEventListener(type, fn),
    removeEventListener: (type, fn) => tab.window.removeEventListener(type, fn),
  };
  if (broadcast) sandbox.BroadcastChannel = world.BroadcastChannel;
  const context = vm.createContext(sandbox);
  vm.runInContext('var window = globalThis;', context);
  vm.runInContext(SDK_SOURCE, context, { filename: SDK_PATH });
  tab.document.currentScript = null; // as in a browser, once the script has run
  tab.Portcullis = context.Portcullis;
  tab.create = (options = {}) => tab.Portcullis.create({ deploymentId: DEP, ...options });
  world.tabs.push(tab);
  return tab;
}

// Every SDK event of `m`, in order: [{name, payload}].
function record(m) {
  const log = [];
  for (const name of EVENTS) m.on(name, (payload) => log.push({ name, payload }));
  log.names = (...skip) => log.map((e) => e.name).filter((n) => !skip.includes(n));
  log.of = (name) => log.filter((e) => e.name === name).map((e) => e.payload);
  return log;
}
function onceReady(m) {
  return new Promise((resolve) => m.on('ready', resolve));
}
const refreshes = (world) => world.requests.filter((r) => r.path === '/.auth/token/refresh');
const exchanges = (world) => world.requests.filter((r) => r.method === 'POST' && r.path === '/.auth/token');
const codeProvider = (calls = []) => async (args) => {
  calls.push(plain(args));
  return { authCode: `code-${calls.length}`, redirectUri: `${SITE}/callback` };
};

// A tab logged in through getAuthCode: jwt-1, rt-1 (expiresIn 900 s).
async function loggedIn(world, options = {}, tabOptions = {}) {
  const tab = openTab(world, tabOptions);
  const m = tab.create({ getAuthCode: codeProvider(), ...options });
  const log = record(m);
  await m.getTokens();
  await flush();
  return { tab, m, log };
}

describe('loading', () => {
  test('a script sets window.Portcullis with its version; node can require it', () => {
    const tab = openTab(makeWorld());
    assert.equal(tab.Portcullis.version, '1.0.0');
    assert.equal(typeof tab.Portcullis.create, 'function');
    const required = createRequire(import.meta.url)(SDK_PATH);
    assert.equal(required.version, '1.0.0');
    assert.equal(typeof required.create, 'function');
    assert.equal(globalThis.Portcullis, undefined, 'require leaves the global alone');
  });

  test('create needs a deploymentId and a known storage', () => {
    const tab = openTab(makeWorld());
    assert.throws(() => tab.Portcullis.create({}), /deploymentId/);
    assert.throws(() => tab.create({ storage: 'cookie' }), /storage/);
  });

  test('baseUrl: the origin of the script, else of the page, else as given', async () => {
    const world = makeWorld();
    for (const [tabOptions, options, origin] of [
      [{ script: 'https://edge.example:8443/static/v1/sdk.js' }, {}, 'https://edge.example:8443'],
      [{ script: null }, {}, SITE],
      [{}, { baseUrl: 'https://other.example/' }, 'https://other.example'],
    ]) {
      const m = openTab(world, tabOptions).create({ getAuthCode: codeProvider(), ...options });
      await m.getTokens();
      assert.equal(world.requests.at(-1).url, `${origin}/.auth/token`);
    }
  });
});

describe('code exchange', () => {
  test('getTokens sends the AuthProvider fields, emits authenticating then authenticated', async () => {
    const world = makeWorld();
    const tab = openTab(world);
    const calls = [];
    const m = tab.create({
      getAuthCode: async (args) => {
        calls.push(plain(args));
        return {
          authCode: 'code-A', redirectUri: `${SITE}/callback`, codeVerifier: 'v'.repeat(43),
          nonce: 'nonce-A', maxAge: '300', iss: 'https://idp.example',
        };
      },
    });
    const log = record(m);
    assert.equal(m.token, null);
    assert.equal(m.authenticated, false);
    const info = await m.getTokens();
    assert.deepEqual(calls, [{ forceUpdate: false }]);
    const [post] = exchanges(world);
    assert.equal(exchanges(world).length, 1);
    assert.equal(post.url, `${EDGE}/.auth/token`);
    assert.equal(post.headers['Content-Type'], 'application/json');
    assert.deepEqual(post.body, {
      deploymentId: DEP,
      oauth: {
        code: 'code-A', redirectUri: `${SITE}/callback`, codeVerifier: 'v'.repeat(43),
        nonce: 'nonce-A', maxAge: 300, iss: 'https://idp.example',
      },
    });
    assert.deepEqual(log.names('ready'), ['authenticating', 'authenticated']);
    const expiresAt = world.clock.now + 900_000;
    assert.deepEqual(plain(info), { expiresAt });
    assert.deepEqual(plain(log.of('authenticated')), [{ expiresAt }]);
    assert.equal(m.token, 'jwt-1');
    assert.equal(m.authenticated, true);
  });

  for (const [storage, where] of [['session', 'sessionStorage'], ['local', 'localStorage'], ['memory', null]]) {
    test(`storage "${storage}": the refresh token ${where ? `goes to ${where}` : 'stays in memory'}, the jwt never is stored`, async () => {
      const world = makeWorld();
      const { tab, m } = await loggedIn(world, { storage });
      const stores = { sessionStorage: tab.sessionStorage, localStorage: tab.localStorage };
      for (const [name, store] of Object.entries(stores)) {
        assert.equal(store.getItem(RT_KEY), name === where ? 'rt-1' : null, name);
        assert.ok(!store.values().some((v) => v.includes('jwt-1')), `no jwt in ${name}`);
      }
      await m.refreshToken(); // the token it kept is the one it uses
      assert.deepEqual(refreshes(world).map((r) => r.body), [{ refreshToken: 'rt-1', deploymentId: DEP }]);
      if (where) assert.equal(stores[where].getItem(RT_KEY), 'rt-2');
    });
  }

  test('idToken variant: {idToken, nonce}, no refresh token kept, no refresh timer', async () => {
    const world = makeWorld();
    const tab = openTab(world);
    const m = tab.create({ getAuthCode: async () => ({ idToken: 'id-token-1', nonce: 'nonce-1' }) });
    await m.getTokens();
    assert.deepEqual(exchanges(world)[0].body, { deploymentId: DEP, oauth: { idToken: 'id-token-1', nonce: 'nonce-1' } });
    assert.equal(m.token, 'jwt-1');
    assert.equal(tab.sessionStorage.length, 0);
    await world.clock.advance(3 * 3600_000);
    assert.equal(refreshes(world).length, 0);
    assert.equal(m.authenticated, false, 'expired, with nothing to refresh it with');
  });

  test('a failed exchange emits error with the server code; a bad getAuthCode emits authError', async () => {
    const world = makeWorld();
    const tab = openTab(world);
    world.server.once('POST /.auth/token', { status: 400, body: { error: 'invalid_grant', error_description: 'code used' } });
    const m = tab.create({ getAuthCode: codeProvider() });
    const log = record(m);
    await assert.rejects(m.getTokens(), { name: 'PortcullisError', code: 'invalid_grant', status: 400, message: 'code used' });
    assert.equal(log.of('error')[0].error.code, 'invalid_grant');
    const bad = tab.create({ getAuthCode: async () => ({ redirectUri: `${SITE}/cb` }) });
    const badLog = record(bad);
    await assert.rejects(bad.getTokens(), { code: 'invalid_auth_code' });
    assert.deepEqual(badLog.names('ready'), ['authenticating', 'authError']);
    const none = tab.create({});
    await assert.rejects(none.getTokens(), { code: 'login_required' });
    assert.equal(exchanges(world).length, 1);
  });
});

describe('refresh', () => {
  test('refreshes by itself before expiry and stores each rotated token', async () => {
    const world = makeWorld();
    const { tab, m, log } = await loggedIn(world);
    const start = world.clock.now;
    await world.clock.advance(839_999); // 60 s margin: due at 840 s
    assert.equal(refreshes(world).length, 0);
    await world.clock.advance(1);
    assert.deepEqual(refreshes(world).map((r) => r.body), [{ refreshToken: 'rt-1', deploymentId: DEP }]);
    assert.equal(refreshes(world)[0].url, `${EDGE}/.auth/token/refresh`);
    assert.equal(tab.sessionStorage.getItem(RT_KEY), 'rt-2');
    assert.equal(m.token, 'jwt-2');
    assert.equal(m.authenticated, true);
    // a page left open for hours stays logged in, each refresh with the latest token
    await world.clock.advance(4 * 3600_000);
    const sent = refreshes(world).map((r) => r.body.refreshToken);
    assert.equal(sent.length, 1 + Math.floor((4 * 3600_000) / 840_000));
    assert.deepEqual(sent, sent.map((_, i) => `rt-${i + 1}`));
    assert.equal(m.authenticated, true);
    assert.equal(log.of('tokenError').length, 0);
  });

  test('authenticated fires per login, not per refresh: the snippet\'s connect-on-authenticated opens one socket', async () => {
    const world = makeWorld();
    const tab = openTab(world);
    const m = tab.create({ getAuthCode: codeProvider() });
    const log = record(m);
    m.on('authenticated', () => m.connect());
    await m.getTokens();
    await world.clock.advance(2 * 3600_000); // routine refreshes
    world.sockets[0].accept();
    world.sockets[0].drop(4001); // refresh and reconnect
    await world.clock.advance(0);
    // 8 routine refreshes; the 4001 needed none (the client already had a newer jwt)
    assert.equal(refreshes(world).length, 8);
    assert.equal(world.sockets.length, 2);
    assert.equal(world.sockets[1].protocols[0], `authorization.bearer.${m.token}`);
    assert.equal(log.of('authenticated').length, 1);
  });

  test('a short-lived jwt (expiresIn < 2 × margin) is refreshed at half its life', async () => {
    const world = makeWorld();
    world.server.expiresIn = 100;
    await loggedIn(world);
    await world.clock.advance(49_999);
    assert.equal(refreshes(world).length, 0);
    await world.clock.advance(1);
    assert.equal(refreshes(world).length, 1);
  });

  test('a stored refresh token is restored on create, then ready fires, also for late subscribers', async () => {
    const world = makeWorld();
    const tab = openTab(world);
    tab.sessionStorage.setItem(RT_KEY, 'rt-stored');
    world.server.live.add('rt-stored');
    const m = tab.create({});
    const log = record(m);
    const ready = await onceReady(m);
    assert.deepEqual(plain(ready), { authenticated: true });
    assert.deepEqual(refreshes(world).map((r) => r.body), [{ refreshToken: 'rt-stored', deploymentId: DEP }]);
    assert.deepEqual(log.names(), ['authenticated', 'ready']);
    assert.equal(m.token, 'jwt-1');
    assert.equal(tab.sessionStorage.getItem(RT_KEY), 'rt-1');
    const late = [];
    m.on('ready', (payload) => late.push(plain(payload)));
    await flush();
    assert.deepEqual(late, [{ authenticated: true }]);
    await world.clock.advance(3600_000);
    assert.equal(log.of('ready').length, 1, 'ready fires once');
    assert.equal(late.length, 1);
  });

  test('ready says authenticated: false when the stored token is dead', async () => {
    const world = makeWorld();
    const tab = openTab(world);
    tab.sessionStorage.setItem(RT_KEY, 'rt-dead');
    const m = tab.create({});
    const log = record(m);
    assert.deepEqual(plain(await onceReady(m)), { authenticated: false });
    assert.deepEqual(log.names(), ['tokenError', 'ready']);
    assert.equal(tab.sessionStorage.getItem(RT_KEY), null);
  });

  test('refresh answered 401: tokenError, tokens dropped, the site\'s reAuthenticate is called', async () => {
    const world = makeWorld();
    const tab = openTab(world);
    tab.sessionStorage.setItem(RT_KEY, 'rt-0');
    world.server.live.add('rt-0');
    let reAuthenticated = 0;
    const m = tab.create({ reAuthenticate: async () => { reAuthenticated++; } });
    const log = record(m);
    await onceReady(m);
    world.server.live.clear(); // the session ended on the server
    await world.clock.advance(840_000);
    assert.equal(refreshes(world).length, 2);
    const [{ error }] = log.of('tokenError');
    assert.equal(error.code, 'invalid_grant');
    assert.equal(error.status, 401);
    assert.equal(reAuthenticated, 1);
    assert.equal(m.token, null);
    assert.equal(m.authenticated, false);
    assert.equal(tab.sessionStorage.getItem(RT_KEY), null);
    await world.clock.advance(3600_000);
    assert.equal(refreshes(world).length, 2, 'no refresh without a refresh token');
  });

  test('refresh answered 401 with getAuthCode: a new code with forceUpdate, exchanged', async () => {
    const world = makeWorld();
    const calls = [];
    const { tab, m, log } = await loggedIn(world, { getAuthCode: codeProvider(calls) });
    world.server.live.clear();
    const info = await m.refreshToken();
    assert.deepEqual(calls, [{ forceUpdate: false }, { forceUpdate: true }]);
    assert.equal(exchanges(world).length, 2);
    assert.equal(exchanges(world)[1].body.oauth.code, 'code-2');
    assert.equal(m.token, 'jwt-2');
    assert.equal(tab.sessionStorage.getItem(RT_KEY), 'rt-2');
    assert.equal(info.expiresAt, world.clock.now + 900_000);
    assert.deepEqual(log.names('ready'), ['authenticating', 'authenticated', 'tokenError', 'authenticating', 'authenticated']);
  });

  test('429 on refresh: waits Retry-After seconds, then tries again', async () => {
    const world = makeWorld();
    const { m, log } = await loggedIn(world);
    world.server.once('POST /.auth/token/refresh', {
      status: 429, headers: { 'Retry-After': '7' }, body: { error: 'rate_limited', error_description: 'slow down' },
    });
    await world.clock.advance(840_000);
    assert.equal(refreshes(world).length, 1);
    await world.clock.advance(6_999);
    assert.equal(refreshes(world).length, 1, 'not before Retry-After');
    await world.clock.advance(1);
    assert.equal(refreshes(world).length, 2);
    assert.equal(refreshes(world)[1].body.refreshToken, 'rt-1');
    assert.equal(m.token, 'jwt-2');
    assert.equal(log.of('tokenError').length, 0);
  });

  test('a network failure keeps the tokens and retries later', async () => {
    const world = makeWorld();
    const { tab, m, log } = await loggedIn(world);
    world.server.once('POST /.auth/token/refresh', { networkError: true });
    await world.clock.advance(840_000);
    assert.equal(log.of('tokenError')[0].error.code, 'network_error');
    assert.equal(tab.sessionStorage.getItem(RT_KEY), 'rt-1');
    assert.equal(m.token, 'jwt-1');
    await world.clock.advance(5_000);
    assert.equal(refreshes(world).length, 2);
    assert.equal(m.token, 'jwt-2');
  });

  test('waking up (visibilitychange, online) after the machine slept refreshes at once', async () => {
    for (const [target, type] of [['document', 'visibilitychange'], ['window', 'online']]) {
      const world = makeWorld();
      const { tab, m } = await loggedIn(world);
      world.clock.sleep(2 * 3600_000);
      assert.equal(m.authenticated, false);
      tab[target].dispatch(type);
      await flush();
      assert.equal(refreshes(world).length, 1, type);
      assert.equal(m.token, 'jwt-2', type);
      tab[target].dispatch(type); // not due any more
      await flush();
      assert.equal(refreshes(world).length, 1, type);
    }
  });

  test('tabs sharing local storage each refresh with the latest rotated token', async () => {
    const world = makeWorld();
    const a = await loggedIn(world, { storage: 'local' });
    const b = openTab(world).create({ storage: 'local' });
    await onceReady(b); // b restored rt-1 and rotated it to rt-2
    assert.equal(world.local.get(RT_KEY), 'rt-2');
    await world.clock.advance(840_000); // both due now: a first, then b
    assert.deepEqual(refreshes(world).map((r) => r.body.refreshToken), ['rt-1', 'rt-2', 'rt-3']);
    assert.equal(world.local.get(RT_KEY), 'rt-4');
    assert.equal(a.m.token, 'jwt-3');
    assert.equal(b.token, 'jwt-4');
    assert.equal(a.log.of('tokenError').length, 0);
  });

  test('with navigator.locks, tabs sharing a token refresh one at a time', async () => {
    const world = makeWorld();
    const held = [];
    let chain = Promise.resolve();
    const locks = {
      request(name, fn) {
        const run = chain.then(async () => {
          held.push(name);
          try { return await fn(); } finally { held.pop(); }
        });
        chain = run.catch(() => {});
        return run;
      },
    };
    const seen = [];
    const fetch = world.fetch;
    world.fetch = async (url, init) => { seen.push(held.length); return fetch(url, init); };
    const a = await loggedIn(world, { storage: 'local' }, { locks });
    const b = openTab(world, { locks }).create({ storage: 'local' });
    await onceReady(b);
    await Promise.all([a.m.refreshToken(), b.refreshToken()]);
    assert.deepEqual(refreshes(world).map((r) => r.body.refreshToken), ['rt-1', 'rt-2', 'rt-3']);
    assert.deepEqual(seen.slice(1), [1, 1, 1], 'every refresh inside the lock');
    assert.equal(held.length, 0);
  });
});

describe('logout', () => {
  for (const broadcast of [true, false]) {
    test(`DELETE with the bearer, storage cleared, loggedOut here and in the other tab (${broadcast ? 'BroadcastChannel' : 'storage event'})`, async () => {
      const world = makeWorld();
      const a = await loggedIn(world, { storage: 'local' }, { broadcast });
      const bTab = openTab(world, { broadcast });
      const b = bTab.create({ storage: 'local' });
      const bLog = record(b);
      await onceReady(b);
      assert.equal(b.authenticated, true);
      await a.m.logout();
      const del = world.requests.filter((r) => r.method === 'DELETE');
      assert.equal(del.length, 1);
      assert.equal(del[0].url, `${EDGE}/.auth/token`);
      assert.equal(del[0].headers.Authorization, 'Bearer jwt-1');
      assert.equal(del[0].body, undefined);
      assert.equal(world.local.get(RT_KEY), undefined);
      assert.equal(a.m.token, null);
      assert.deepEqual(plain(a.log.of('loggedOut')), [{ reason: 'logout' }]);
      await flush();
      assert.deepEqual(plain(bLog.of('loggedOut')), [{ reason: 'logout' }]);
      assert.equal(b.token, null);
      await world.clock.advance(3600_000);
      assert.equal(refreshes(world).length, 1, 'no refresh after logout, in either tab');
      assert.equal(a.log.of('loggedOut').length + bLog.of('loggedOut').length, 2);
    });
  }

  test('the other tab, whose chat portcullis closed with 4002, hears of the logout once', async () => {
    const world = makeWorld();
    const a = await loggedIn(world, { storage: 'local' });
    const bTab = openTab(world);
    const b = bTab.create({ storage: 'local' });
    const bLog = record(b);
    await onceReady(b);
    const s = b.connect('wss://chat.example/');
    const closes = [];
    s.onclose = (e) => closes.push(e.code);
    await flush();
    world.sockets[0].accept();
    await a.m.logout(); // the server drops b's socket with 4002, then a broadcasts
    await flush();
    assert.deepEqual(closes, [4002]);
    assert.deepEqual(plain(bLog.of('loggedOut')), [{ reason: 'revoked' }]);
    assert.deepEqual(plain(a.log.of('loggedOut')), [{ reason: 'logout' }]);
  });

  test('a socket the server is already closing reports the server\'s code, not the logout\'s 1000', async () => {
    const world = makeWorld();
    const a = await loggedIn(world, { storage: 'local' });
    const bTab = openTab(world);
    const b = bTab.create({ storage: 'local' });
    await onceReady(b);
    const s = b.connect('wss://chat.example/');
    const closes = [];
    s.onclose = (e) => closes.push(`${e.code} ${e.reason}`);
    await flush();
    const ws = world.sockets[0];
    ws.accept();
    ws.readyState = 2; // the server's 4002 close frame is in; the close event is still to come
    await a.m.logout(); // b hears the broadcast while its socket is closing
    await flush();
    assert.deepEqual(closes, [], 'nothing is reported before the socket has closed');
    assert.equal(ws.closedWith ?? null, null, 'no second close is sent');
    ws.drop(4002, 'logged out');
    await flush();
    assert.deepEqual(closes, ['4002 logged out']);
  });

  test('401 on DELETE counts as logged out', async () => {
    const world = makeWorld();
    const { tab, m, log } = await loggedIn(world);
    world.server.once('DELETE /.auth/token', { status: 401, body: { error: 'invalid_token' } });
    await m.logout();
    assert.deepEqual(plain(log.of('loggedOut')), [{ reason: 'logout' }]);
    assert.equal(tab.sessionStorage.getItem(RT_KEY), null);
    assert.equal(log.of('error').length, 0);
  });

  test('an expired jwt is refreshed first, so that the revocation is authorised', async () => {
    const world = makeWorld();
    const { m } = await loggedIn(world);
    world.clock.sleep(3600_000);
    await m.logout();
    assert.equal(refreshes(world).length, 1);
    assert.equal(world.requests.at(-1).headers.Authorization, 'Bearer jwt-2');
  });

  test('a server error on DELETE rejects, keeps the session and emits error', async () => {
    const world = makeWorld();
    const { tab, m, log } = await loggedIn(world);
    world.server.once('DELETE /.auth/token', { status: 502, body: { error: 'bad_gateway' } });
    await assert.rejects(m.logout(), { code: 'bad_gateway', status: 502 });
    assert.equal(log.of('error')[0].error.code, 'bad_gateway');
    assert.equal(log.of('loggedOut').length, 0);
    assert.equal(tab.sessionStorage.getItem(RT_KEY), 'rt-1');
  });
});

describe('messaging socket', () => {
  test('connect offers the token as a subprotocol, then chat.v1; default url from config.json', async () => {
    const world = makeWorld();
    const { m } = await loggedIn(world);
    const s = m.connect();
    const seen = [];
    s.onopen = () => seen.push('open');
    s.addEventListener('message', (e) => seen.push(`message ${e.data}`));
    assert.equal(s.readyState, 0);
    await flush();
    assert.equal(world.requests.at(-1).url, `${EDGE}/.auth/deployments/${DEP}/config.json`);
    const [ws] = world.sockets;
    assert.equal(ws.url, CONFIG.messagingEndpoint);
    assert.deepEqual(ws.protocols, ['authorization.bearer.jwt-1', 'chat.v1']);
    assert.throws(() => s.send('too early'), { code: 'not_open' });
    ws.accept();
    assert.equal(s.readyState, 1);
    assert.equal(s.protocol, 'chat.v1');
    s.send('hello');
    assert.deepEqual(ws.sent, ['hello']);
    ws.receive('hi there');
    assert.deepEqual(seen, ['open', 'message hi there']);
    m.connect('wss://chat.example/other', { protocols: ['chat.v2', 'chat.v1'] });
    const custom = openTab(world).create({ protocols: ['x.v1'], getAuthCode: codeProvider() });
    await custom.getTokens();
    custom.connect('wss://chat.example/x');
    await flush();
    assert.deepEqual(world.sockets[1].protocols, ['authorization.bearer.jwt-1', 'chat.v2', 'chat.v1']);
    assert.equal(world.sockets[1].url, 'wss://chat.example/other');
    assert.deepEqual(world.sockets[2].protocols, ['authorization.bearer.jwt-2', 'x.v1']);
    assert.throws(() => m.connect('wss://chat.example/', { protocols: [] }), /at least one subprotocol/);
  });

  test('connect with a jwt near expiry refreshes it first (and makes do with it when the server is unreachable)', async () => {
    const world = makeWorld();
    const { m } = await loggedIn(world);
    world.clock.sleep(850_000); // within the margin; no timer has run
    m.connect('wss://chat.example/');
    await flush();
    assert.equal(refreshes(world).length, 1);
    assert.deepEqual(world.sockets[0].protocols, ['authorization.bearer.jwt-2', 'chat.v1']);
    world.clock.sleep(850_000);
    world.server.once('POST /.auth/token/refresh', { networkError: true });
    m.connect('wss://chat.example/');
    await flush();
    assert.equal(refreshes(world).length, 2);
    assert.deepEqual(world.sockets[1].protocols, ['authorization.bearer.jwt-2', 'chat.v1']);
  });

  test('close 4001: refresh, then reconnect with the fresh token', async () => {
    const world = makeWorld();
    const { m } = await loggedIn(world);
    const s = m.connect('wss://chat.example/');
    const events = [];
    for (const type of ['open', 'close', 'reconnecting']) s.addEventListener(type, (e) => events.push(`${type} ${e.code ?? ''}`.trim()));
    await flush();
    world.sockets[0].accept();
    world.sockets[0].drop(4001, 'credential expired');
    await world.clock.advance(0);
    assert.equal(refreshes(world).length, 1, 'refreshed although the jwt looked valid');
    assert.equal(world.sockets.length, 2);
    assert.deepEqual(world.sockets[1].protocols, ['authorization.bearer.jwt-2', 'chat.v1']);
    world.sockets[1].accept();
    assert.deepEqual(events, ['open', 'reconnecting 4001', 'open']);
    assert.equal(s.readyState, 1);
  });

  test('close 4001 with a dead refresh token: reAuthenticate, and the wrapper closes', async () => {
    const world = makeWorld();
    let reAuthenticated = 0;
    const tab = openTab(world);
    tab.sessionStorage.setItem(RT_KEY, 'rt-0');
    world.server.live.add('rt-0');
    const m = tab.create({ reAuthenticate: async () => { reAuthenticated++; } });
    await onceReady(m);
    const s = m.connect('wss://chat.example/');
    const closes = [];
    s.onclose = (e) => closes.push(e.code);
    await flush();
    world.server.live.clear();
    world.sockets[0].accept();
    world.sockets[0].drop(4001);
    await world.clock.advance(0);
    assert.equal(reAuthenticated, 1);
    assert.deepEqual(closes, [4001]);
    await world.clock.advance(600_000);
    assert.equal(world.sockets.length, 1);
  });

  test('close 4002: no reconnect, tokens cleared, loggedOut', async () => {
    const world = makeWorld();
    const { tab, m, log } = await loggedIn(world);
    const s = m.connect('wss://chat.example/');
    const closes = [];
    s.onclose = (e) => closes.push(plain({ code: e.code, reason: e.reason }));
    await flush();
    world.sockets[0].accept();
    world.sockets[0].drop(4002, 'session revoked');
    await flush();
    assert.deepEqual(closes, [{ code: 4002, reason: 'session revoked' }]);
    assert.equal(s.readyState, 3);
    assert.deepEqual(plain(log.of('loggedOut')), [{ reason: 'revoked' }]);
    assert.equal(m.token, null);
    assert.equal(tab.sessionStorage.getItem(RT_KEY), null);
    await world.clock.advance(3600_000);
    assert.equal(world.sockets.length, 1);
    assert.equal(refreshes(world).length, 0);
  });

  test('close 1006 (and 1001): reconnect with capped exponential backoff and jitter', async () => {
    const world = makeWorld();
    const { m } = await loggedIn(world);
    const s = m.connect('wss://chat.example/');
    const delays = [];
    s.onreconnecting = (e) => delays.push(e.delay);
    await flush();
    world.sockets[0].accept();
    world.sockets[0].drop(1001, 'going away');
    // attempt n waits in [base/2, base), base = 1 s · 2^n, at most 30 s
    const windows = [[500, 1000], [1000, 2000], [2000, 4000], [4000, 8000], [8000, 16000], [15000, 30000], [15000, 30000]];
    for (const [i, [low, high]] of windows.entries()) {
      await world.clock.advance(low - 1);
      assert.equal(world.sockets.length, i + 1, `attempt ${i + 1}: not before ${low} ms`);
      await world.clock.advance(high - low + 1);
      assert.equal(world.sockets.length, i + 2, `attempt ${i + 1}: by ${high} ms`);
      assert.ok(delays[i] >= low && delays[i] < high, `delay ${delays[i]} in [${low}, ${high})`);
      world.sockets.at(-1).drop(1006); // never opened
    }
    // a connection that stays up resets the backoff
    await world.clock.advance(30_000);
    world.sockets.at(-1).accept();
    await world.clock.advance(60_000);
    world.sockets.at(-1).drop(1006);
    await world.clock.advance(1000);
    assert.equal(world.sockets.length, windows.length + 3);
    assert.equal(refreshes(world).length, 0, 'no token needed refreshing');
  });

  test('close() by the app: one close event, no reconnect', async () => {
    const world = makeWorld();
    const { m } = await loggedIn(world);
    const s = m.connect('wss://chat.example/');
    const closes = [];
    s.addEventListener('close', (e) => closes.push(e.code));
    await flush();
    world.sockets[0].accept();
    s.close(1000, 'bye');
    await flush();
    assert.deepEqual(world.sockets[0].closedWith, { code: 1000, reason: 'bye' });
    assert.deepEqual(closes, [1000]);
    assert.equal(s.readyState, 3);
    await world.clock.advance(600_000);
    assert.equal(world.sockets.length, 1);
    // closed while waiting to reconnect
    const t = m.connect('wss://chat.example/');
    await flush();
    world.sockets[1].drop(1006);
    t.close();
    await world.clock.advance(600_000);
    assert.equal(world.sockets.length, 2);
  });

  test('logout: the server\'s 4002 closes are expected, one loggedOut, no reconnect', async () => {
    const world = makeWorld();
    const { m, log } = await loggedIn(world);
    const open = m.connect('wss://chat.example/');
    await flush();
    world.sockets[0].accept();
    const waiting = m.connect('wss://chat.example/');
    await flush();
    world.sockets[1].drop(1006); // waiting to reconnect during the logout
    const closes = [];
    open.onclose = (e) => closes.push(`open ${e.code}`);
    waiting.onclose = (e) => closes.push(`waiting ${e.code}`);
    await m.logout();
    await flush();
    assert.deepEqual(closes.sort(), ['open 4002', 'waiting 1000']);
    assert.deepEqual(plain(log.of('loggedOut')), [{ reason: 'logout' }]);
    assert.equal(open.readyState, 3);
    await world.clock.advance(600_000);
    assert.equal(world.sockets.length, 2);
  });

  test('a socket that is not open yet is closed by logout', async () => {
    const world = makeWorld();
    const { m } = await loggedIn(world);
    const s = m.connect('wss://chat.example/');
    await flush();
    await m.logout();
    await flush();
    assert.equal(world.sockets[0].closedWith.code, 1000);
    assert.equal(s.readyState, 3);
  });
});

describe('built-in login', () => {
  test('login() redirects to the authorize endpoint with state, nonce and an S256 challenge', async () => {
    const world = makeWorld();
    const tab = openTab(world, { href: `${SITE}/shop/cart?item=3#top` });
    const m = tab.create({});
    await m.login();
    assert.equal(tab.assigned.length, 1);
    const url = new URL(tab.assigned[0]);
    assert.equal(`${url.origin}${url.pathname}`, 'https://idp.example/authorize');
    const q = Object.fromEntries(url.searchParams);
    const saved = JSON.parse(tab.sessionStorage.getItem(LOGIN_KEY));
    assert.match(saved.codeVerifier, /^[A-Za-z0-9_-]{43}$/);
    assert.match(saved.state, /^[A-Za-z0-9_-]{22}$/);
    assert.match(saved.nonce, /^[A-Za-z0-9_-]{22}$/);
    const challenge = createHash('sha256').update(saved.codeVerifier).digest('base64url');
    assert.deepEqual(q, {
      audience: 'chat',
      response_type: 'code',
      client_id: 'shop-web',
      redirect_uri: `${SITE}/shop/cart`,
      scope: 'openid profile offline_access',
      state: saved.state,
      nonce: saved.nonce,
      code_challenge: challenge,
      code_challenge_method: 'S256',
    });
    assert.equal(saved.redirectUri, `${SITE}/shop/cart`);
    await m.login();
    const again = JSON.parse(tab.sessionStorage.getItem(LOGIN_KEY));
    assert.notEqual(again.state, saved.state);
    assert.notEqual(again.codeVerifier, saved.codeVerifier);
  });

  test('the redirectUri option is used', async () => {
    const tab = openTab(makeWorld());
    await tab.create({ redirectUri: `${SITE}/auth/done` }).login();
    assert.equal(new URL(tab.assigned[0]).searchParams.get('redirect_uri'), `${SITE}/auth/done`);
  });

  test('the redirect back is exchanged with the saved verifier and nonce, and the address cleaned', async () => {
    const world = makeWorld();
    const tab = openTab(world, { href: `${SITE}/shop/cart?item=3&code=code-X&state=S1&iss=https%3A%2F%2Fidp.example#top` });
    const saved = { state: 'S1', nonce: 'N1', codeVerifier: 'V'.repeat(43), redirectUri: `${SITE}/shop/cart` };
    tab.sessionStorage.setItem(LOGIN_KEY, JSON.stringify(saved));
    const m = tab.create({});
    const log = record(m);
    await m.getTokens();
    const ready = await onceReady(m);
    assert.equal(exchanges(world).length, 1);
    assert.deepEqual(exchanges(world)[0].body, {
      deploymentId: DEP,
      oauth: { code: 'code-X', redirectUri: `${SITE}/shop/cart`, codeVerifier: 'V'.repeat(43), nonce: 'N1', iss: 'https://idp.example' },
    });
    assert.equal(tab.url.href, `${SITE}/shop/cart?item=3#top`);
    assert.deepEqual(tab.replaced.map((r) => r.state), [{ page: 1 }]);
    assert.equal(tab.sessionStorage.getItem(LOGIN_KEY), null);
    assert.equal(tab.sessionStorage.getItem(RT_KEY), 'rt-1');
    assert.deepEqual(plain(ready), { authenticated: true });
    assert.deepEqual(log.names(), ['authenticating', 'authenticated', 'ready']);
  });

  test('start-up completes the redirect by itself', async () => {
    const world = makeWorld();
    const tab = openTab(world, { href: `${SITE}/?code=code-Y&state=S2` });
    tab.sessionStorage.setItem(LOGIN_KEY, JSON.stringify({ state: 'S2', nonce: 'N2', codeVerifier: 'W'.repeat(43), redirectUri: `${SITE}/` }));
    const m = tab.create({});
    assert.deepEqual(plain(await onceReady(m)), { authenticated: true });
    assert.equal(exchanges(world)[0].body.oauth.code, 'code-Y');
    assert.equal(tab.url.href, `${SITE}/`);
  });

  test('a mismatched state is rejected without an exchange', async () => {
    const world = makeWorld();
    const tab = openTab(world, { href: `${SITE}/shop/cart?code=code-X&state=EVIL` });
    tab.sessionStorage.setItem(LOGIN_KEY, JSON.stringify({ state: 'S1', nonce: 'N1', codeVerifier: 'V'.repeat(43), redirectUri: `${SITE}/shop/cart` }));
    const m = tab.create({});
    const log = record(m);
    await assert.rejects(m.getTokens(), { code: 'invalid_state' });
    assert.deepEqual(plain(await onceReady(m)), { authenticated: false });
    assert.equal(exchanges(world).length, 0);
    assert.equal(log.of('authError')[0].error.code, 'invalid_state');
    assert.equal(tab.url.href, `${SITE}/shop/cart`);
    assert.equal(m.token, null);
  });

  test('an error answer from the provider is an authError with its code', async () => {
    const world = makeWorld();
    const tab = openTab(world, { href: `${SITE}/?error=access_denied&error_description=no&state=S1` });
    tab.sessionStorage.setItem(LOGIN_KEY, JSON.stringify({ state: 'S1', nonce: 'N1', codeVerifier: 'V'.repeat(43), redirectUri: `${SITE}/` }));
    const m = tab.create({});
    await assert.rejects(m.getTokens(), { code: 'access_denied' });
    assert.equal(exchanges(world).length, 0);
  });

  test('reAuthenticate(): the site\'s, then getTokens; without one, the built-in login', async () => {
    const world = makeWorld();
    const steps = [];
    const tab = openTab(world);
    const m = tab.create({
      reAuthenticate: async () => { steps.push('site login'); },
      getAuthCode: async (args) => { steps.push(`code ${args.forceUpdate}`); return { authCode: 'c', redirectUri: `${SITE}/cb` }; },
    });
    await m.reAuthenticate();
    assert.deepEqual(steps, ['site login', 'code false']);
    assert.equal(m.token, 'jwt-1');
    const plainTab = openTab(world);
    await plainTab.create({}).reAuthenticate();
    assert.equal(new URL(plainTab.assigned[0]).origin, 'https://idp.example');
  });
});

describe('housekeeping', () => {
  test('destroy stops timers, listeners, sockets and the channel', async () => {
    const world = makeWorld();
    const { tab, m } = await loggedIn(world);
    m.connect('wss://chat.example/');
    await flush();
    world.sockets[0].accept();
    assert.ok(world.clock.timers.size > 0);
    assert.ok(tab.window.count() > 0 && tab.document.count() > 0);
    m.destroy();
    await flush();
    assert.equal(world.clock.timers.size, 0);
    assert.equal(tab.window.count(), 0);
    assert.equal(tab.document.count(), 0);
    assert.equal(world.channels.get(`portcullis:${DEP}`).size, 0);
    assert.equal(world.sockets[0].closedWith.code, 1000);
    await world.clock.advance(3600_000);
    assert.equal(world.requests.length, 1, 'the exchange only');
    assert.equal(world.sockets.length, 1);
  });

  test('tokens never reach the console, even when a handler throws', async () => {
    const world = makeWorld();
    const { m } = await loggedIn(world);
    m.on('authenticated', () => { throw new Error('handler bug'); });
    m.on('ready', () => { throw new Error('handler bug'); });
    await m.refreshToken();
    await world.clock.advance(900_000);
    const s = m.connect('wss://chat.example/');
    await flush();
    world.sockets[0].accept();
    world.sockets[0].drop(4001);
    await world.clock.advance(1000);
    await m.logout();
    await flush();
    assert.ok(world.logs.some((line) => line.includes('handler bug')), 'the console is captured');
    assert.ok(!world.logs.some((line) => /jwt-|rt-/.test(line)), world.logs.join('\n'));
    assert.equal(s.readyState, 3);
  });
});

describe('sdk.d.ts', () => {
  test('tsc --strict accepts typical use and rejects misuse', (t) => {
    const tsc = path.join(E2E_DIR, 'node_modules/typescript/bin/tsc');
    if (!existsSync(tsc)) {
      t.skip('typescript is not installed: run npm ci in tests/e2e');
      return;
    }
    const dir = mkdtempSync(path.join(tmpdir(), 'portcullis-dts-'));
    try {
      const usage = path.join(dir, 'usage.ts');
      writeFileSync(usage, `/// <reference path=${JSON.stringify(DTS_PATH)} />
const version: string = Portcullis.version;
const m: Portcullis.Client = Portcullis.create({
  deploymentId: "dep-1",
  storage: "local",
  refreshMargin: 30,
  protocols: ["chat.v1"],
  getAuthCode: async ({ forceUpdate }) => forceUpdate
    ? { idToken: "x", nonce: "n" }
    : { authCode: "c", redirectUri: "https://shop.example/", nonce: "n", maxAge: 60 },
  reAuthenticate: async () => {},
  fetch: window.fetch,
  WebSocket: window.WebSocket,
});
m.on("authenticated", ({ expiresAt }) => { const n: number = expiresAt; void n; });
m.on("loggedOut", ({ reason }) => { const r: string = reason; void r; });
m.on("ready", ({ authenticated }) => { const b: boolean = authenticated; void b; });
const h = (e: { error: Portcullis.PortcullisError }) => { const c: string = e.error.code; const s: number = e.error.status; void c; void s; };
m.on("tokenError", h).on("authError", h).on("error", h);
m.off("tokenError", h);
async function flow(): Promise<void> {
  const info = await m.getTokens();
  const at: number = info.expiresAt;
  await m.refreshToken();
  await m.reAuthenticate();
  await m.login();
  const token: string | null = m.token;
  const ok: boolean = m.authenticated;
  const s = m.connect(undefined, { protocols: ["chat.v2"] });
  s.onmessage = (e) => { const d: unknown = e.data; void d; };
  s.addEventListener("close", (e) => { const c: number = e.code; void c; });
  s.addEventListener("reconnecting", (e) => { const d: number = e.delay; void d; });
  if (s.readyState === 1) s.send("hi");
  s.close(1000, "bye");
  m.connect("wss://chat.example/").close();
  await m.logout();
  m.destroy();
  void at; void token; void ok; void version;
  if (new Error() instanceof Portcullis.PortcullisError) return;
}
void flow;
// @ts-expect-error: deploymentId is required
Portcullis.create({});
// @ts-expect-error: not a storage
Portcullis.create({ deploymentId: "d", storage: "cookie" });
// @ts-expect-error: not an event
m.on("authenticatd", () => {});
// @ts-expect-error: getAuthCode must resolve with a code
Portcullis.create({ deploymentId: "d", getAuthCode: async () => ({ redirectUri: "x" }) });
// @ts-expect-error: the token is read-only
m.token = "x";
`);
      const run = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--target', 'es2020', '--lib', 'es2020,dom', usage], { encoding: 'utf8' });
      assert.equal(run.status, 0, `tsc failed:\n${run.stdout}${run.stderr}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
