/*!
 * Portcullis web SDK 1.0.0: browser client for authenticated web messaging
 * through a portcullis edge proxy. Plain ES2020, no dependencies, no build.
 *
 *   <script src="https://EDGE/sdk.js"></script>   → window.Portcullis
 *   (node: module.exports = Portcullis; types: sdk.d.ts)
 *
 * It re-creates the Auth / AuthProvider contract of the hosted messenger SDK
 * (getAuthCode, reAuthenticate, getTokens, refreshToken, logout, the Auth.*
 * events) and, unlike it, keeps the JWT fresh by itself: a timer refreshes it
 * `refreshMargin` seconds before expiry (at half its life when it is short),
 * and waking up (visibilitychange, online) refreshes at once when due.
 *
 * const m = Portcullis.create({
 *   deploymentId,    // required
 *   baseUrl,         // default: origin of this <script src>, else location.origin
 *   getAuthCode,     // async ({forceUpdate}) => ({authCode, redirectUri, nonce?,
 *                    //   maxAge?, codeVerifier?, iss?}) or ({idToken, nonce})
 *   reAuthenticate,  // async () => void: the site re-runs its login
 *   redirectUri,     // built-in login; default location.origin + location.pathname
 *   storage,         // refresh token in "session" (default) | "local" | "memory";
 *                    //   the JWT is only ever kept in memory
 *   refreshMargin,   // seconds before expiry to refresh (default 60)
 *   protocols,       // subprotocols offered besides the token (default ["chat.v1"])
 *   fetch, WebSocket // injectable; default: the globals
 * });
 * m.on(event, fn) / m.off(event, fn)   events: ready {authenticated},
 *   authenticating {}, authenticated {expiresAt}, loggedOut {reason},
 *   tokenError {error}, authError {error}, error {error}. "authenticated"
 *   fires on a login and when a session is restored or recovered, not on the
 *   routine refreshes (nor the reconnections) of a running session.
 *   "ready" fires once, after start-up (a stored refresh token is refreshed,
 *   a built-in login redirect completed); later subscribers still get it.
 * await m.getTokens()      completes a built-in login redirect (?code&state), else
 *                          exchanges the code from getAuthCode; → {expiresAt}
 * await m.refreshToken()   refresh (the refresh token rotates); when it is dead:
 *                          getAuthCode({forceUpdate:true}), else reAuthenticate
 * await m.logout()         revoke everywhere; loggedOut in every tab of the site
 * await m.reAuthenticate() the site's reAuthenticate (then getTokens), else login()
 * m.login()                built-in redirect login (authorization code + PKCE S256)
 * m.token, m.authenticated the current JWT (or null) / whether there is one
 * m.connect(url?, {protocols}?) → a WebSocket-like wrapper: send, close,
 *   readyState, protocol, binaryType, addEventListener/removeEventListener and
 *   onopen, onmessage, onclose, onerror, onreconnecting. The token travels as the
 *   subprotocol "authorization.bearer.<jwt>". Close 4001: fresh token, reconnect;
 *   4002: logged out, no reconnect; others (1001, 1006, ...): reconnect with
 *   capped exponential backoff and jitter. "open" fires on every (re)connection,
 *   "close" once, when the wrapper is done (close(), logout, 4002, no token).
 * m.destroy()              stops timers, listeners, sockets and the channel.
 *
 * Errors are PortcullisError: err.code (the server's `error`, or one of
 * network_error, invalid_state, login_required, invalid_auth_code, ...),
 * err.status (HTTP status, 0 without one), err.retryAfter (seconds, 429/503).
 * Tokens are never logged.
 */
(function (g) {
  "use strict";
  const VERSION = "1.0.0";
  const RETRY_AFTER_MAX = 120; // seconds: a longer Retry-After is not waited for
  const STABLE_MS = 10000; // a connection open this long resets the backoff
  const EXPIRED = 4001; // close codes of the proxy
  const ENDED = 4002;

  // Read now: document.currentScript is only set while this file runs.
  const SCRIPT_ORIGIN = (() => {
    const s = g.document && g.document.currentScript;
    try { return s && s.src ? new URL(s.src).origin : null; } catch (_) { return null; }
  })();

  class PortcullisError extends Error {
    constructor(code, message, status = 0) {
      super(message || code);
      this.name = "PortcullisError";
      this.code = code;
      this.status = status;
    }
  }
  const fail = (code, message, status) => new PortcullisError(code, message, status);
  const asError = (e, code) => (e instanceof PortcullisError ? e : fail(code, (e && e.message) || String(e)));
  // Worth trying again later (no answer, overload), not a verdict.
  const transient = (e) => e.code === "network_error" || e.status === 429 || e.status >= 500;

  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  function base64url(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 3) {
      const n = (bytes[i] << 16) | ((bytes[i + 1] || 0) << 8) | (bytes[i + 2] || 0);
      s += B64[(n >> 18) & 63] + B64[(n >> 12) & 63];
      if (i + 1 < bytes.length) s += B64[(n >> 6) & 63];
      if (i + 2 < bytes.length) s += B64[n & 63];
    }
    return s;
  }
  const randomString = (n) => base64url(g.crypto.getRandomValues(new Uint8Array(n)));
  async function s256(verifier) {
    if (!g.crypto || !g.crypto.subtle) throw fail("insecure_context", "PKCE needs crypto.subtle (https)");
    const digest = await g.crypto.subtle.digest("SHA-256", Uint8Array.from(verifier, (c) => c.charCodeAt(0)));
    return base64url(new Uint8Array(digest));
  }
  function webStorage(name) {
    try { return g[name] || null; } catch (_) { return null; } // blocked storage throws
  }

  class Client {
    constructor(opts) {
      if (!opts || !opts.deploymentId) throw new TypeError("Portcullis.create: deploymentId is required");
      const storage = opts.storage || "session";
      if (!["session", "local", "memory"].includes(storage)) throw new TypeError("Portcullis.create: storage must be session, local or memory");
      this._o = opts;
      this._id = String(opts.deploymentId);
      this._base = String(opts.baseUrl || SCRIPT_ORIGIN || (g.location && g.location.origin) || "").replace(/\/+$/, "");
      this._storage = storage;
      this._margin = (opts.refreshMargin === undefined ? 60 : Number(opts.refreshMargin)) * 1000;
      this._protocols = opts.protocols || ["chat.v1"];
      this._key = "portcullis:" + this._id; // storage keys, channel and lock names
      this._jwt = this._rtMemory = null;
      this._expiresAt = this._refreshAt = 0;
      this._failures = 0; // refreshes failed in a row, for the retry delay
      this._handlers = new Map();
      this._timers = new Map(); // every pending timer: id → reject (of a sleep) or null
      this._refreshTimer = null;
      this._sockets = new Set();
      this._ready = null; // the ready payload, once fired

      // Another tab logged out (fallback for browsers without BroadcastChannel).
      this._onStorage = (e) => {
        if (e.key !== this._key + ":logout" || !e.newValue) return;
        try { this._localLogout(JSON.parse(e.newValue).reason || "logout", false); } catch (_) { /* not ours */ }
      };
      // Timers do not run while the machine sleeps: on waking, refresh when due.
      this._onWake = () => {
        if (g.document && g.document.visibilityState === "hidden") return;
        if (this._readRT() && Date.now() >= this._refreshAt) this.refreshToken().catch(() => {});
      };
      if (g.addEventListener) {
        g.addEventListener("storage", this._onStorage);
        g.addEventListener("online", this._onWake);
      }
      if (g.document && g.document.addEventListener) g.document.addEventListener("visibilitychange", this._onWake);
      if (typeof g.BroadcastChannel === "function") {
        this._channel = new g.BroadcastChannel(this._key);
        this._channel.onmessage = (e) => {
          if (e.data && e.data.type === "loggedOut") this._localLogout(e.data.reason || "logout", false);
        };
      }
      // Start-up waits a microtask, so that handlers added right after create()
      // see every event.
      this._started = Promise.resolve().then(() => this._init());
    }

    async _init() {
      try {
        if (this._tokensP || this._redirectReturn()) await this.getTokens();
        else if (this._readRT()) await this._refresh(false);
      } catch (_) { /* reported through the events already */ }
      if (this._destroyed) return;
      this._ready = { authenticated: this.authenticated };
      this._emit("ready", this._ready);
    }

    // ---- events ----
    on(event, handler) {
      if (!this._handlers.has(event)) this._handlers.set(event, new Set());
      this._handlers.get(event).add(handler);
      if (event === "ready" && this._ready) {
        const payload = this._ready; // re-published to a late subscriber
        Promise.resolve().then(() => this._handlers.get("ready").has(handler) && this._call(handler, payload));
      }
      return this;
    }
    off(event, handler) {
      if (this._handlers.has(event)) this._handlers.get(event).delete(handler);
      return this;
    }
    _emit(event, payload) {
      for (const h of [...(this._handlers.get(event) || [])]) this._call(h, payload);
    }
    _call(handler, payload) {
      try { handler(payload); } catch (e) { if (g.console) g.console.error("portcullis: an event handler threw", e); }
    }

    get token() {
      return this.authenticated ? this._jwt : null;
    }
    get authenticated() {
      return !!this._jwt && Date.now() < this._expiresAt;
    }

    // ---- the refresh token's storage (the JWT is never stored) ----
    _readRT() {
      const st = this._storage !== "memory" && webStorage(this._storage + "Storage");
      return st ? st.getItem(this._key + ":refreshToken") : this._rtMemory;
    }
    _writeRT(value) {
      const st = this._storage !== "memory" && webStorage(this._storage + "Storage");
      if (!st) this._rtMemory = value;
      else if (value) st.setItem(this._key + ":refreshToken", value);
      else st.removeItem(this._key + ":refreshToken");
    }

    // ---- timers, all cleared by destroy() ----
    _later(fn, ms) {
      const id = setTimeout(() => { this._timers.delete(id); fn(); }, Math.min(Math.max(0, ms), 2147483647));
      this._timers.set(id, null);
      return id;
    }
    _cancel(id) {
      clearTimeout(id);
      this._timers.delete(id);
    }
    _sleep(ms) {
      return new Promise((resolve, reject) => this._timers.set(this._later(resolve, ms), reject));
    }
    // One promise for concurrent calls of the same operation.
    _single(name, start) {
      if (!this[name]) this[name] = start().finally(() => { this[name] = null; });
      return this[name];
    }

    // ---- HTTP: JSON in and out; errors as PortcullisError; 429 waits ----
    async _request(method, path, body, headers = {}) {
      const doFetch = this._o.fetch || ((...a) => g.fetch(...a));
      for (let attempt = 0; ; attempt++) {
        if (this._destroyed) throw fail("destroyed", "the client was destroyed");
        let res;
        try {
          if (body !== undefined) headers = Object.assign({ "Content-Type": "application/json" }, headers);
          const init = { method, headers, credentials: "omit", cache: "no-store" };
          if (body !== undefined) init.body = JSON.stringify(body);
          res = await doFetch(this._base + path, init);
        } catch (e) {
          throw fail("network_error", (e && e.message) || "network error");
        }
        const text = await res.text().catch(() => "");
        let data = null;
        try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
        if (res.status >= 200 && res.status < 300) return data;
        const err = fail((data && data.error) || "http_" + res.status, (data && data.error_description) || "HTTP " + res.status, res.status);
        const header = res.headers && res.headers.get ? res.headers.get("Retry-After") : null;
        const seconds = header && !isNaN(Number(header)) ? Number(header) : null;
        if (seconds !== null && (res.status === 429 || res.status === 503)) err.retryAfter = seconds;
        // honour Retry-After (1 s when absent), twice at most
        if (res.status === 429 && attempt < 2 && (seconds === null || seconds <= RETRY_AFTER_MAX)) {
          await this._sleep((seconds === null ? 1 : seconds) * 1000);
          continue;
        }
        throw err;
      }
    }
    _config() {
      if (!this._configP) {
        this._configP = this._request("GET", "/.auth/deployments/" + encodeURIComponent(this._id) + "/config.json");
        this._configP.catch(() => { this._configP = null; }); // try again next time
      }
      return this._configP;
    }

    // ---- tokens ----
    _setTokens(r, login) {
      if (!r || typeof r.jwt !== "string") throw fail("invalid_response", "no jwt in the answer");
      const life = Number(r.expiresIn) * 1000 || 0;
      const now = Date.now();
      this._jwt = r.jwt;
      this._expiresAt = now + life;
      this._refreshAt = now + (life < 2 * this._margin ? life / 2 : life - this._margin);
      this._failures = 0;
      if (r.refreshToken) this._writeRT(r.refreshToken);
      else if (login) this._writeRT(null); // a login without one replaces the old session
      this._schedule(this._refreshAt - now);
      const info = { expiresAt: this._expiresAt };
      // A login, or a session that starts again (restored, recovered); not
      // the routine refreshes of a running session.
      const started = login || !this._session;
      this._session = true;
      this._loggedOut = false;
      if (started) this._emit("authenticated", info);
      return info;
    }
    _schedule(ms) {
      this._cancel(this._refreshTimer);
      this._refreshTimer = null;
      if (this._destroyed || !this._readRT()) return;
      this._refreshTimer = this._later(() => {
        this._refreshTimer = null;
        this.refreshToken().catch(() => {});
      }, ms);
    }
    _dropTokens(ended) {
      if (ended) this._session = false;
      this._jwt = null;
      this._expiresAt = this._refreshAt = 0;
      this._cancel(this._refreshTimer);
      this._refreshTimer = null;
    }

    getTokens() {
      return this._single("_tokensP", async () => {
        const ret = this._redirectReturn();
        if (ret) return this._completeRedirect(ret);
        if (this._o.getAuthCode) return this._codeFromSite(false);
        if (this._readRT()) return this.refreshToken();
        const err = fail("login_required", "no getAuthCode, no login redirect and no refresh token");
        this._emit("authError", { error: err });
        throw err;
      });
    }
    // The built-in login's answer in the address (?code or ?error, and state),
    // when this tab saved a login before leaving.
    _redirectReturn() {
      if (!g.location || !g.location.href) return null;
      let saved = null;
      try { saved = JSON.parse(webStorage("sessionStorage").getItem(this._key + ":login")); } catch (_) { /* none */ }
      const q = new URL(g.location.href).searchParams;
      if (!saved || !q.get("state") || !(q.get("code") || q.get("error"))) return null;
      return { saved, q };
    }
    async _completeRedirect({ saved, q }) {
      this._emit("authenticating", {});
      const url = new URL(g.location.href);
      for (const p of ["code", "state", "iss", "session_state", "error", "error_description", "error_uri"]) url.searchParams.delete(p);
      if (g.history && g.history.replaceState) g.history.replaceState(g.history.state, "", url.pathname + url.search + url.hash);
      let err = null;
      if (q.get("state") !== saved.state) err = fail("invalid_state", "the login answer's state is not the one this page sent");
      else {
        webStorage("sessionStorage").removeItem(this._key + ":login");
        if (q.get("error")) err = fail(q.get("error"), q.get("error_description") || q.get("error"));
      }
      if (err) {
        this._emit("authError", { error: err });
        throw err;
      }
      const iss = q.get("iss") || undefined;
      return this._exchange({ code: q.get("code"), redirectUri: saved.redirectUri, codeVerifier: saved.codeVerifier, nonce: saved.nonce, iss });
    }
    async _codeFromSite(forceUpdate) {
      this._emit("authenticating", {});
      let r;
      try {
        r = await this._o.getAuthCode({ forceUpdate });
        if (!r || (!(r.authCode && r.redirectUri) && !r.idToken)) {
          throw fail("invalid_auth_code", "getAuthCode must resolve with {authCode, redirectUri}");
        }
      } catch (e) {
        const err = asError(e, "auth_code_failed");
        this._emit("authError", { error: err });
        throw err;
      }
      if (r.idToken) return this._exchange({ idToken: r.idToken, nonce: r.nonce });
      const maxAge = r.maxAge === undefined || r.maxAge === null ? undefined : Number(r.maxAge);
      return this._exchange({ code: r.authCode, redirectUri: r.redirectUri, codeVerifier: r.codeVerifier, nonce: r.nonce, maxAge, iss: r.iss });
    }
    async _exchange(oauth) {
      try {
        return this._setTokens(await this._request("POST", "/.auth/token", { deploymentId: this._id, oauth }), true);
      } catch (e) {
        this._emit("error", { error: e });
        throw e;
      }
    }

    refreshToken() {
      return this._refresh(true);
    }
    _refresh(recover) {
      return this._single("_refreshP", async () => {
        try {
          return await this._locked(() => this._refreshOnce());
        } catch (e) {
          // A refresh that lost the race with this tab's own logout is not a
          // token problem: no tokenError, no re-login prompt.
          if (this._destroyed || this._loggingOut || this._loggedOut) throw e;
          this._emit("tokenError", { error: e });
          if (transient(e)) {
            // keep the tokens; try again after Retry-After, else 5 s, 10 s, ... 60 s
            this._schedule(e.retryAfter ? e.retryAfter * 1000 : Math.min(60000, 5000 * 2 ** this._failures++));
          } else if (recover) {
            const info = await this._recover();
            if (info) return info;
          }
          throw e;
        }
      });
    }
    // Tabs sharing a (local) refresh token refresh one at a time.
    _locked(fn) {
      const locks = g.navigator && g.navigator.locks;
      if (this._storage !== "local" || !locks || !locks.request) return fn();
      return locks.request(this._key + ":refresh", fn);
    }
    async _refreshOnce() {
      // Read it now: another tab may have rotated it since.
      let rt = this._readRT();
      if (!rt) throw fail("no_refresh_token", "no refresh token", 401);
      for (let again = true; ; again = false) {
        try {
          const r = await this._request("POST", "/.auth/token/refresh", { refreshToken: rt, deploymentId: this._id });
          return this._setTokens(r, false);
        } catch (e) {
          const stored = this._readRT();
          if (e.status === 401 && again && stored && stored !== rt) {
            rt = stored; // another tab rotated it meanwhile: try with the new one
            continue;
          }
          if (e.status === 401) {
            this._dropTokens(true);
            if (stored === rt) this._writeRT(null);
          }
          throw e;
        }
      }
    }
    // The refresh token is dead: a new code from the site, else its re-login.
    // Without either, nothing (the app may call login()).
    async _recover() {
      const o = this._o;
      if (o.getAuthCode) {
        try { return await this._codeFromSite(true); } catch (_) { /* then reAuthenticate */ }
      }
      if (!o.reAuthenticate) return null;
      try {
        await o.reAuthenticate();
        return o.getAuthCode ? await this.getTokens() : null;
      } catch (_) { return null; }
    }

    async reAuthenticate() {
      if (!this._o.reAuthenticate) return this.login();
      await this._o.reAuthenticate();
      if (this._o.getAuthCode) await this.getTokens();
    }

    async login() {
      const cfg = await this._config();
      if (!cfg || !cfg.oidc || !cfg.oidc.authorizationEndpoint) throw fail("login_unavailable", "this deployment has no login");
      const redirectUri = this._o.redirectUri || g.location.origin + g.location.pathname;
      const saved = { state: randomString(16), nonce: randomString(16), codeVerifier: randomString(32), redirectUri };
      const url = new URL(cfg.oidc.authorizationEndpoint);
      const params = {
        response_type: "code",
        client_id: cfg.oidc.clientId,
        redirect_uri: redirectUri,
        scope: (cfg.oidc.scopes || ["openid"]).join(" "),
        state: saved.state,
        nonce: saved.nonce,
        code_challenge: await s256(saved.codeVerifier),
        code_challenge_method: "S256",
      };
      for (const k in params) url.searchParams.set(k, params[k]);
      webStorage("sessionStorage").setItem(this._key + ":login", JSON.stringify(saved));
      g.location.assign(url.href);
    }

    async logout() {
      this._loggingOut = true; // the 4002 closes that the revocation causes are expected
      try {
        if ((!this.token || Date.now() >= this._refreshAt) && this._readRT()) {
          // a valid token is needed to revoke; a dead refresh token means logged out
          await this._refresh(false).catch((e) => { if (transient(e) && !this.token) throw e; });
        }
        const jwt = this.token;
        if (jwt) {
          await this._request("DELETE", "/.auth/token", undefined, { Authorization: "Bearer " + jwt })
            .catch((e) => { if (e.status !== 401) throw e; });
        }
      } catch (e) {
        this._emit("error", { error: e });
        throw e;
      } finally {
        this._loggingOut = false;
      }
      this._localLogout("logout", true);
    }
    _localLogout(reason, tellOthers) {
      // Once per session: a tab whose socket portcullis closed (4002) hears
      // the other tab's broadcast of the same logout right after.
      const announced = this._loggedOut;
      this._loggedOut = true;
      this._dropTokens(true);
      this._writeRT(null);
      for (const s of [...this._sockets]) s._halt(1000, "logged out");
      if (tellOthers && this._channel) this._channel.postMessage({ type: "loggedOut", reason });
      else if (tellOthers) {
        const ls = webStorage("localStorage"); // other tabs get a storage event
        try {
          ls.setItem(this._key + ":logout", JSON.stringify({ reason, at: Date.now() }));
          ls.removeItem(this._key + ":logout");
        } catch (_) { /* no other tab to tell */ }
      }
      if (!announced) this._emit("loggedOut", { reason });
    }

    // ---- messaging ----
    // A JWT good for a new connection: refreshed, or obtained anew, when due.
    async _validToken() {
      await this._started;
      if (this._destroyed) throw fail("destroyed", "the client was destroyed");
      if (this._jwt && Date.now() < this._refreshAt) return this._jwt;
      if (this._readRT()) {
        // no answer from the server: the current JWT, while it lasts, will do
        await this.refreshToken().catch((e) => { if (!transient(e) || !this.authenticated) throw e; });
      } else if (!this.authenticated && !(await this._recover())) throw fail("login_required", "not logged in", 401);
      return this._jwt;
    }
    connect(url, options) {
      if (this._destroyed) throw fail("destroyed", "the client was destroyed");
      let protocols = (options && options.protocols) || this._protocols;
      protocols = Array.isArray(protocols) ? protocols : [protocols];
      // the backend must be able to choose one besides the token
      if (!protocols.length) throw new TypeError("Portcullis connect: at least one subprotocol is needed");
      return new Socket(this, url, protocols);
    }
    async _messagingUrl() {
      const cfg = await this._config();
      if (cfg.status === "Inactive") throw fail("deployment_inactive", "the deployment is inactive");
      if (!cfg.messagingEndpoint) throw fail("no_messaging_endpoint", "the deployment has no messaging endpoint");
      return cfg.messagingEndpoint;
    }

    destroy() {
      this._destroyed = true;
      for (const s of [...this._sockets]) s._halt(1000, "destroyed");
      for (const [id, reject] of this._timers) {
        clearTimeout(id);
        if (reject) reject(fail("destroyed", "the client was destroyed"));
      }
      this._timers.clear();
      this._refreshTimer = null;
      if (g.removeEventListener) {
        g.removeEventListener("storage", this._onStorage);
        g.removeEventListener("online", this._onWake);
      }
      if (g.document && g.document.removeEventListener) g.document.removeEventListener("visibilitychange", this._onWake);
      if (this._channel) this._channel.close();
      this._channel = null;
      this._handlers.clear();
    }
  }

  // A WebSocket-like object that outlives its connections: it gets a token,
  // connects, and reconnects according to the close codes until it is done.
  class Socket {
    constructor(client, url, protocols) {
      this._c = client;
      this._url = url || null;
      this._protocols = protocols;
      this._listeners = new Map();
      this._ws = this._timer = null;
      this._attempt = this._openedAt = 0;
      this._done = false; // no more connections: close(), logout, 4002, no token
      this.readyState = 0;
      this.protocol = "";
      this.binaryType = "blob";
      this.onopen = this.onmessage = this.onclose = this.onerror = this.onreconnecting = null;
      client._sockets.add(this);
      this._run();
    }
    addEventListener(type, fn) {
      if (!this._listeners.has(type)) this._listeners.set(type, new Set());
      this._listeners.get(type).add(fn);
    }
    removeEventListener(type, fn) {
      if (this._listeners.has(type)) this._listeners.get(type).delete(fn);
    }
    _fire(type, fields) {
      const ev = Object.assign({ type, target: this }, fields);
      for (const fn of [this["on" + type], ...(this._listeners.get(type) || [])]) {
        if (typeof fn === "function") this._c._call(fn.bind(this), ev);
      }
    }
    send(data) {
      if (!this._ws || this.readyState !== 1) throw fail("not_open", "the socket is not open");
      this._ws.send(data);
    }
    close(code = 1000, reason = "") {
      this._halt(code, reason);
    }
    _halt(code, reason) {
      if (this._done) return;
      this._done = true;
      this._c._cancel(this._timer);
      this._timer = null;
      if (this._ws && this._ws.readyState < 3) {
        this.readyState = 2;
        // "close" fires from its onclose; a socket already closing (the
        // server's close frame is in) reports the server's code there.
        if (this._ws.readyState < 2) this._ws.close(code, reason);
      } else this._finish({ code, reason, wasClean: true });
    }
    _finish(ev) {
      this._c._sockets.delete(this);
      this._ws = null;
      this.readyState = 3;
      this._fire("close", { code: ev.code, reason: ev.reason || "", wasClean: !!ev.wasClean });
    }
    async _run() {
      let token, url;
      try {
        token = await this._c._validToken();
        url = this._url || (await this._c._messagingUrl());
      } catch (e) {
        if (this._done) return;
        this._fire("error", { error: e });
        if (transient(e)) return this._retry(1006, e.code, false);
        this._done = true;
        return this._finish({ code: e.status === 401 ? EXPIRED : 1006, reason: e.code, wasClean: false });
      }
      if (this._done) return;
      const WS = this._c._o.WebSocket || g.WebSocket;
      let ws;
      try {
        ws = new WS(url, ["authorization.bearer." + token, ...this._protocols]);
      } catch (e) {
        this._fire("error", { error: asError(e, "connect_failed") });
        this._done = true;
        return this._finish({ code: 1006, reason: "connect_failed", wasClean: false });
      }
      this._ws = ws;
      ws.binaryType = this.binaryType;
      ws.onopen = () => {
        if (this._ws !== ws) return;
        this.readyState = 1;
        this.protocol = ws.protocol || "";
        this._openedAt = Date.now();
        this._fire("open", {});
      };
      ws.onmessage = (e) => this._ws === ws && this._fire("message", { data: e.data });
      ws.onerror = () => this._ws === ws && this._fire("error", {});
      ws.onclose = (e) => {
        if (this._ws !== ws) return;
        this._ws = null;
        if (this._done) return this._finish(e);
        if (e.code === ENDED) {
          this._done = true;
          this._finish(e);
          return this._c._loggingOut || this._c._localLogout("revoked", false);
        }
        // the token is spent: the next connection gets another one
        if (e.code === EXPIRED && this._c._jwt === token) this._c._dropTokens();
        this._retry(e.code, e.reason, e.code === EXPIRED);
      };
    }
    _retry(code, reason, immediateFirst) {
      if (this._openedAt && Date.now() - this._openedAt >= STABLE_MS) this._attempt = 0;
      this._openedAt = 0;
      const n = this._attempt++;
      // capped exponential backoff with jitter: [base/2, base), base = 1 s · 2^n, at most 30 s
      const base = Math.min(30000, 1000 * 2 ** n);
      const delay = immediateFirst && n === 0 ? 0 : base / 2 + (Math.random() * base) / 2;
      this.readyState = 0;
      this._fire("reconnecting", { code, reason: reason || "", attempt: n + 1, delay });
      this._timer = this._c._later(() => {
        this._timer = null;
        if (!this._done) this._run();
      }, delay);
    }
  }

  const Portcullis = { version: VERSION, create: (options) => new Client(options), PortcullisError };
  const commonjs = typeof module === "object" && module && module.exports;
  if (commonjs) module.exports = Portcullis;
  if (!commonjs || typeof window !== "undefined") g.Portcullis = Portcullis;
})(typeof window !== "undefined" ? window : globalThis);
