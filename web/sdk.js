/*!
 * Portcullis web SDK 1.0.0: browser client for authenticated web messaging
 * through a portcullis edge proxy. Plain ES2020, no dependencies, no build.
 *
 *   <script src="https://EDGE/sdk.js"></script>   → window.Portcullis
 *   (node: module.exports = Portcullis)
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
 *   tokenError {error}, authError {error}, error {error}.
 *   "ready" fires once, after start-up; later subscribers still get it.
 * await m.getTokens()      completes a built-in login redirect (?code&state), else
 *                          exchanges the code from getAuthCode; → {expiresAt}
 * await m.refreshToken()   refresh (rotating refresh token); when it is dead:
 *                          getAuthCode({forceUpdate:true}), else reAuthenticate
 * await m.logout()         revoke everywhere; loggedOut in every tab of the site
 * await m.reAuthenticate() the site's reAuthenticate (then getTokens), else login()
 * m.login()                built-in redirect login (authorization code + PKCE S256)
 * m.token, m.authenticated current JWT (or null) / whether it is valid
 * m.connect(url?, {protocols}?) → socket wrapper (send, close, readyState,
 *   protocol, binaryType, addEventListener and the onopen-style properties for
 *   open, message, close, error, reconnecting). The token travels as subprotocol "authorization.bearer.<jwt>".
 *   Close 4001: fresh token, reconnect; 4002: logged out, no reconnect; others
 *   (1001, 1006, ...): reconnect with capped exponential backoff and jitter.
 *   "close" fires once, when the wrapper is done; "open" on every (re)connect.
 * m.destroy()              stops timers, listeners, sockets and the channel.
 *
 * Errors are PortcullisError: err.code (the server's `error`, or one of
 * network_error, invalid_state, login_required, invalid_auth_code, ...),
 * err.status (HTTP status, 0 without one), err.retryAfter (seconds, on 429).
 * Tokens are never logged.
 */
(function (g) {
  "use strict";
  const VERSION = "1.0.0";
  const RETRY_AFTER_MAX = 120; // seconds: a longer Retry-After is not waited for
  const STABLE_MS = 10000; // a connection open this long resets the backoff
  const ENDED = 4002;
  const EXPIRED = 4001;

  // Captured now: document.currentScript is only set while this file runs.
  const SCRIPT_ORIGIN = (() => {
    try {
      const s = g.document && g.document.currentScript;
      return s && s.src ? new URL(s.src).origin : null;
    } catch (_) {
      return null;
    }
  })();

  class PortcullisError extends Error {
    constructor(code, message, status = 0, retryAfter) {
      super(message || code);
      this.name = "PortcullisError";
      this.code = code;
      this.status = status;
      if (retryAfter !== undefined) this.retryAfter = retryAfter;
    }
  }
  const fail = (code, message, status) => new PortcullisError(code, message, status);
  const asError = (e, code) =>
    e instanceof PortcullisError ? e : new PortcullisError(code, (e && e.message) || String(e));
  // Worth trying again later (no answer, overload) rather than a verdict.
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
  // Seconds to the `exp` of a JWT, for a server that sends no expiresIn.
  function jwtLifetime(jwt) {
    try {
      const p = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(g.atob(p)).exp - Date.now() / 1000;
    } catch (_) {
      return 0;
    }
  }
  function webStorage(name) {
    try {
      return g[name] || null; // reading it can throw when storage is blocked
    } catch (_) {
      return null;
    }
  }

  class Client {
    constructor(opts) {
      if (!opts || !opts.deploymentId) throw new TypeError("Portcullis.create: deploymentId is required");
      const storage = opts.storage || "session";
      if (!["session", "local", "memory"].includes(storage)) throw new TypeError("Portcullis.create: storage must be session, local or memory");
      const loc = g.location || {};
      this._o = opts;
      this._id = String(opts.deploymentId);
      this._base = String(opts.baseUrl || SCRIPT_ORIGIN || loc.origin || "").replace(/\/+$/, "");
      this._storage = storage;
      this._margin = (opts.refreshMargin === undefined ? 60 : Number(opts.refreshMargin)) * 1000;
      this._protocols = opts.protocols || ["chat.v1"];
      this._key = "portcullis:" + this._id;
      this._jwt = null;
      this._expiresAt = 0;
      this._refreshAt = 0;
      this._rtMemory = null;
      this._failures = 0; // refreshes failed in a row, for the retry delay
      this._handlers = new Map();
      this._timers = new Map(); // id → reject (of a sleep) or null
      this._refreshTimer = null;
      this._sockets = new Set();
      this._ready = null; // the ready payload, once fired
      this._destroyed = false;

      this._onStorage = (e) => {
        if (e.key === this._key + ":logout" && e.newValue) {
          let reason = "logout";
          try { reason = JSON.parse(e.newValue).reason || reason; } catch (_) { /* keep */ }
          this._localLogout(reason, false);
        }
      };
      // Timers do not run while the machine sleeps: on waking, refresh when due.
      this._onWake = (e) => {
        const doc = g.document;
        if (doc && doc.visibilityState === "hidden") return;
        if (this._readRT() && Date.now() >= this._refreshAt) this.refreshToken().catch(() => {});
        if (e && e.type === "online") for (const s of this._sockets) s._kick();
      };
      if (g.addEventListener) {
        g.addEventListener("storage", this._onStorage);
        g.addEventListener("online", this._onWake);
      }
      if (g.document && g.document.addEventListener) g.document.addEventListener("visibilitychange", this._onWake);
      if (typeof g.BroadcastChannel === "function") {
        this._channel = new g.BroadcastChannel(this._key);
        this._channel.onmessage = (e) => {
          const d = e && e.data;
          if (d && d.type === "loggedOut") this._localLogout(d.reason || "logout", false);
        };
      }
      // Start-up waits a microtask, so that handlers attached right after
      // create() see every event.
      this._started = Promise.resolve().then(() => this._init());
    }

    async _init() {
      try {
        if (this._redirectReturn()) await this.getTokens();
        else if (this._readRT()) await this._refresh(false);
      } catch (_) {
        // reported through the events already
      }
      if (this._destroyed) return;
      this._ready = { authenticated: this.authenticated };
      this._emit("ready", this._ready);
    }

    // ---- events ----
    on(event, handler) {
      if (!this._handlers.has(event)) this._handlers.set(event, new Set());
      this._handlers.get(event).add(handler);
      if (event === "ready" && this._ready) {
        const payload = this._ready;
        Promise.resolve().then(() => this._handlers.get("ready").has(handler) && this._call(handler, payload));
      }
      return this;
    }
    off(event, handler) {
      const set = this._handlers.get(event);
      if (set) set.delete(handler);
      return this;
    }
    _emit(event, payload) {
      for (const h of [...(this._handlers.get(event) || [])]) this._call(h, payload);
    }
    _call(handler, payload) {
      try {
        handler(payload);
      } catch (e) {
        if (g.console) g.console.error("portcullis: an event handler threw", e);
      }
    }

    get token() {
      return this.authenticated ? this._jwt : null;
    }
    get authenticated() {
      return !!this._jwt && Date.now() < this._expiresAt;
    }

    // ---- refresh-token storage (the JWT is never stored) ----
    _store() {
      return this._storage === "memory" ? null : webStorage(this._storage === "local" ? "localStorage" : "sessionStorage");
    }
    _readRT() {
      const st = this._store();
      try {
        if (st) return st.getItem(this._key + ":refreshToken");
      } catch (_) { /* fall back to memory */ }
      return this._rtMemory;
    }
    _writeRT(value) {
      this._rtMemory = value;
      const st = this._store();
      try {
        if (st && value) st.setItem(this._key + ":refreshToken", value);
        else if (st) st.removeItem(this._key + ":refreshToken");
        if (st) this._rtMemory = null;
      } catch (_) { /* kept in memory */ }
    }

    // ---- timers (all cleared by destroy) ----
    _later(fn, ms) {
      const id = setTimeout(() => {
        this._timers.delete(id);
        fn();
      }, Math.min(Math.max(0, ms), 2147483647));
      this._timers.set(id, null);
      return id;
    }
    _cancel(id) {
      if (id === null || id === undefined) return;
      clearTimeout(id);
      this._timers.delete(id);
    }
    _sleep(ms) {
      return new Promise((resolve, reject) => {
        const id = this._later(resolve, ms);
        this._timers.set(id, reject);
      });
    }

    // ---- HTTP ----
    async _request(method, path, body, headers = {}) {
      const doFetch = this._o.fetch || ((...a) => g.fetch(...a));
      for (let attempt = 0; ; attempt++) {
        if (this._destroyed) throw fail("destroyed", "the client was destroyed");
        let res;
        try {
          res = await doFetch(this._base + path, {
            method,
            headers: body === undefined ? headers : Object.assign({ "Content-Type": "application/json" }, headers),
            body: body === undefined ? undefined : JSON.stringify(body),
            credentials: "omit",
            cache: "no-store",
          });
        } catch (e) {
          throw fail("network_error", (e && e.message) || "network error", 0);
        }
        const text = await res.text().catch(() => "");
        let data = null;
        try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
        if (res.status >= 200 && res.status < 300) return data;
        const err = fail((data && data.error) || "http_" + res.status, (data && data.error_description) || "HTTP " + res.status, res.status);
        if (res.status === 429 || res.status === 503) {
          const header = res.headers && res.headers.get ? res.headers.get("Retry-After") : null;
          const seconds = header === null || header === "" || isNaN(Number(header)) ? null : Number(header);
          if (seconds !== null) err.retryAfter = seconds;
          // honour Retry-After (1 s when absent), twice at most
          if (res.status === 429 && attempt < 2 && (seconds === null || seconds <= RETRY_AFTER_MAX)) {
            await this._sleep((seconds === null ? 1 : seconds) * 1000);
            continue;
          }
        }
        throw err;
      }
    }
    _config() {
      if (!this._configP) {
        this._configP = this._request("GET", "/.auth/deployments/" + encodeURIComponent(this._id) + "/config.json");
        this._configP.catch(() => { this._configP = null; });
      }
      return this._configP;
    }

    // ---- tokens ----
    _setTokens(r, login) {
      if (!r || typeof r.jwt !== "string") throw fail("invalid_response", "no jwt in the answer");
      const life = (r.expiresIn !== undefined ? Number(r.expiresIn) : jwtLifetime(r.jwt)) * 1000 || 0;
      const now = Date.now();
      this._jwt = r.jwt;
      this._expiresAt = now + life;
      this._refreshAt = now + (life < 2 * this._margin ? life / 2 : life - this._margin);
      this._failures = 0;
      if (r.refreshToken) this._writeRT(r.refreshToken);
      else if (login) this._writeRT(null); // a login without one replaces the old session
      this._schedule(this._refreshAt - now);
      const info = { expiresAt: this._expiresAt };
      this._emit("authenticated", info);
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
    _dropTokens() {
      this._jwt = null;
      this._expiresAt = this._refreshAt = 0;
      this._cancel(this._refreshTimer);
      this._refreshTimer = null;
    }

    getTokens() {
      if (!this._tokensP) {
        this._tokensP = this._getTokens().finally(() => { this._tokensP = null; });
      }
      return this._tokensP;
    }
    async _getTokens() {
      const ret = this._redirectReturn();
      if (ret) return this._completeRedirect(ret);
      if (this._o.getAuthCode) return this._codeFromSite(false);
      if (this._readRT()) return this.refreshToken();
      const err = fail("login_required", "no getAuthCode, no login redirect and no refresh token");
      this._emit("authError", { error: err });
      throw err;
    }
    // The built-in login's answer in the address: ?code|error & state, with
    // the state this tab saved before leaving.
    _redirectReturn() {
      const loc = g.location;
      if (!loc || !loc.href) return null;
      let saved = null;
      try { saved = JSON.parse(webStorage("sessionStorage").getItem(this._key + ":login")); } catch (_) { /* none */ }
      const q = new URL(loc.href).searchParams;
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
      return this._exchange({
        code: q.get("code"),
        redirectUri: saved.redirectUri,
        codeVerifier: saved.codeVerifier,
        nonce: saved.nonce,
        iss: q.get("iss") || undefined,
      });
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
      return this._exchange({
        code: r.authCode,
        redirectUri: r.redirectUri,
        codeVerifier: r.codeVerifier,
        nonce: r.nonce,
        maxAge: r.maxAge === undefined || r.maxAge === null ? undefined : Number(r.maxAge),
        iss: r.iss,
      });
    }
    async _exchange(oauth) {
      try {
        const r = await this._request("POST", "/.auth/token", { deploymentId: this._id, oauth });
        return this._setTokens(r, true);
      } catch (e) {
        this._emit("error", { error: e });
        throw e;
      }
    }

    refreshToken() {
      return this._refresh(true);
    }
    _refresh(recover) {
      if (!this._refreshP) {
        this._refreshP = this._refreshFlow(recover).finally(() => { this._refreshP = null; });
      }
      return this._refreshP;
    }
    async _refreshFlow(recover) {
      try {
        return await this._locked(() => this._refreshOnce());
      } catch (e) {
        if (this._destroyed) throw e;
        this._emit("tokenError", { error: e });
        if (transient(e)) {
          // keep the tokens; try again (Retry-After, else 5 s, 10 s, ... 60 s)
          const wait = e.retryAfter ? e.retryAfter * 1000 : Math.min(60000, 5000 * 2 ** this._failures++);
          this._schedule(wait);
        } else if (recover) {
          const info = await this._recover();
          if (info) return info;
        }
        throw e;
      }
    }
    // One tab at a time refreshes a shared (local) refresh token.
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
          return this._setTokens(await this._request("POST", "/.auth/token/refresh", { refreshToken: rt, deploymentId: this._id }), false);
        } catch (e) {
          const now = this._readRT();
          if (e.status === 401 && again && now && now !== rt) {
            rt = now; // rotated by another tab during ours: use the new one
            continue;
          }
          if (e.status === 401) {
            this._dropTokens();
            if (now === rt) this._writeRT(null);
          }
          throw e;
        }
      }
    }
    // The refresh token is dead: a new code from the site, else its re-login.
    async _recover() {
      const o = this._o;
      if (o.getAuthCode) {
        try {
          return await this._codeFromSite(true);
        } catch (_) { /* then reAuthenticate */ }
      }
      if (!o.reAuthenticate) return null;
      try {
        await o.reAuthenticate();
        return o.getAuthCode ? await this.getTokens() : null;
      } catch (_) {
        return null;
      }
    }

    async reAuthenticate() {
      if (!this._o.reAuthenticate) return this.login();
      await this._o.reAuthenticate();
      if (this._o.getAuthCode) await this.getTokens();
    }

    async login() {
      const cfg = await this._config();
      if (!cfg || !cfg.oidc || !cfg.oidc.authorizationEndpoint) throw fail("login_unavailable", "this deployment has no login");
      const loc = g.location;
      const redirectUri = this._o.redirectUri || loc.origin + loc.pathname;
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
      loc.assign(url.href);
    }

    async logout() {
      if ((!this.token || Date.now() >= this._refreshAt) && this._readRT()) {
        // a valid token is needed to revoke; a dead refresh token means logged out
        try {
          await this._refresh(false);
        } catch (e) {
          if (transient(e) && !this.token) {
            this._emit("error", { error: e });
            throw e;
          }
        }
      }
      const jwt = this.token;
      if (jwt) {
        try {
          await this._request("DELETE", "/.auth/token", undefined, { Authorization: "Bearer " + jwt });
        } catch (e) {
          if (e.status !== 401) {
            this._emit("error", { error: e });
            throw e;
          }
        }
      }
      this._localLogout("logout", true);
    }
    _localLogout(reason, tellOthers) {
      this._dropTokens();
      this._writeRT(null);
      for (const s of [...this._sockets]) s._halt(1000, "logged out");
      if (tellOthers) {
        const message = { type: "loggedOut", reason };
        if (this._channel) this._channel.postMessage(message);
        else {
          const ls = webStorage("localStorage"); // other tabs get a storage event
          try {
            ls.setItem(this._key + ":logout", JSON.stringify(Object.assign({ at: Date.now() }, message)));
            ls.removeItem(this._key + ":logout");
          } catch (_) { /* no other tab to tell */ }
        }
      }
      this._emit("loggedOut", { reason });
    }

    // ---- messaging ----
    // A JWT good for a new connection, refreshed (or re-obtained) when due.
    async _validToken() {
      await this._started;
      if (this._destroyed) throw fail("destroyed", "the client was destroyed");
      if (this._jwt && Date.now() < this._refreshAt) return this._jwt;
      if (this._readRT()) await this.refreshToken();
      else if (!this.authenticated && !(await this._recover())) throw fail("login_required", "not logged in", 401);
      return this._jwt;
    }
    connect(url, options) {
      if (this._destroyed) throw fail("destroyed", "the client was destroyed");
      const protocols = (options && options.protocols) || this._protocols;
      return new Socket(this, url, Array.isArray(protocols) ? protocols : [protocols]);
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
  // connects, and reconnects according to the close codes until close().
  class Socket {
    constructor(client, url, protocols) {
      this._c = client;
      this._url = url || null;
      this._protocols = protocols;
      this._listeners = new Map();
      this._ws = null;
      this._timer = null;
      this._attempt = 0;
      this._openedAt = 0;
      this._done = false; // no more connections (app close, logout, 4002)
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
      const set = this._listeners.get(type);
      if (set) set.delete(fn);
    }
    _fire(type, extra) {
      const ev = Object.assign({ type, target: this }, extra);
      const fns = [this["on" + type], ...(this._listeners.get(type) || [])];
      for (const fn of fns) {
        if (typeof fn === "function") this._c._call(fn.bind(this), ev);
        else if (fn && typeof fn.handleEvent === "function") this._c._call((e) => fn.handleEvent(e), ev);
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
      if (this._ws && this._ws.readyState < 2) {
        this.readyState = 2;
        this._ws.close(code, reason); // "close" fires from its onclose
      } else this._finish({ code, reason, wasClean: true });
    }
    _finish(ev) {
      this._c._sockets.delete(this);
      this._ws = null;
      this.readyState = 3;
      this._fire("close", { code: ev.code, reason: ev.reason || "", wasClean: !!ev.wasClean });
    }
    // Back online or visible again: reconnect now rather than after the wait.
    _kick() {
      if (this._timer === null || this._done) return;
      this._c._cancel(this._timer);
      this._timer = null;
      this._run();
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
        return this._finish({ code: EXPIRED, reason: e.code, wasClean: false });
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
          return this._c._localLogout("revoked", false);
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
      // capped exponential backoff with jitter: [base/2, base), base = 1 s · 2^n ≤ 30 s
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

  const Portcullis = {
    version: VERSION,
    create: (options) => new Client(options),
    PortcullisError,
  };
  const commonjs = typeof module === "object" && module && module.exports;
  if (commonjs) module.exports = Portcullis;
  if (!commonjs || typeof window !== "undefined") g.Portcullis = Portcullis;
})(typeof window !== "undefined" ? window : globalThis);
