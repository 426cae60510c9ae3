// Getting tokens from the test IdP (lib/idp.mjs) with plain HTTP, the way a
// relying party and a user's browser would: discovery, the token endpoint
// with client_secret_basic, and a scripted authorization-code login through
// the provider's own login and consent forms.
import { createHash, randomBytes } from 'node:crypto';

import { MESSAGING_API, USERS } from './idp.mjs';

const random = () => randomBytes(32).toString('base64url');

async function discover(idp) {
  const res = await fetch(`${idp.issuer}/.well-known/openid-configuration`);
  if (!res.ok) throw new Error(`discovery answered ${res.status}`);
  return res.json();
}

// POST to the token endpoint, authenticating as the client with HTTP Basic
// (RFC 6749 section 2.3.1: id and secret form-encoded before base64).
async function tokenRequest(idp, { clientId, clientSecret }, params) {
  const { token_endpoint: endpoint } = await discover(idp);
  const basic = Buffer.from(
    `${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`,
  ).toString('base64');
  const res = await fetch(endpoint, {
    method: 'POST',
    headers: {
      authorization: `Basic ${basic}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams(params),
  });
  const body = await res.json();
  if (!res.ok) {
    throw new Error(`token endpoint answered ${res.status}: ${body.error}: ${body.error_description}`);
  }
  return body;
}

// An access token (a JWT, see getResourceServerInfo in idp.mjs) for the given
// resource, issued to the client itself.
export async function clientCredentialsToken(idp, {
  resource = MESSAGING_API,
  clientId = idp.clientId,
  clientSecret = idp.clientSecret,
} = {}) {
  const body = await tokenRequest(idp, { clientId, clientSecret }, {
    grant_type: 'client_credentials',
    resource,
  });
  return body.access_token;
}

// Cookies by name and path, enough for one host over plain http: the
// provider scopes its interaction cookies to /interaction/<uid> and /auth/<uid>.
// Like a browser's, it ignores the port (RFC 6265 section 8.5): on
// 127.0.0.1 the provider and portcullis see each other's cookies.
export class CookieJar {
  #cookies = new Map();

  // A cookie set by someone else (the site's own scripts, say).
  set(name, value, path = '/') {
    this.#cookies.set(`${path} ${name}`, { name, value, path });
  }

  // The value of the cookie `name` (any path), if the jar holds one.
  get(name) {
    return [...this.#cookies.values()].find((c) => c.name === name)?.value;
  }

  names() {
    return [...this.#cookies.values()].map((c) => c.name);
  }

  store(res, url) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      const attr = (key) => attributes
        .find((a) => a.toLowerCase().startsWith(`${key}=`))?.slice(key.length + 1);
      // RFC 6265 default path: the request path up to its last '/'.
      const path = attr('path') || new URL(url).pathname.replace(/\/[^/]*$/, '') || '/';
      const expires = attr('expires');
      const expired = attr('max-age') === '0' || (expires && Date.parse(expires) <= Date.now());
      const key = `${path} ${name}`;
      if (expired || value === '') this.#cookies.delete(key);
      else this.#cookies.set(key, { name, value, path });
    }
  }

  header(url) {
    const { pathname } = new URL(url);
    return [...this.#cookies.values()]
      .filter(({ path }) => pathname === path || pathname.startsWith(path.endsWith('/') ? path : `${path}/`))
      .map(({ name, value }) => `${name}=${value}`)
      .join('; ');
  }
}

// The first POST form of a provider page: its action and hidden fields
// (devInteractions' login and consent pages each have exactly one).
export function parseForm(html, base) {
  const form = /<form[^>]*\baction="([^"]*)"[^>]*\bmethod="post"[^>]*>([\s\S]*?)<\/form>/i.exec(html);
  if (!form) return undefined;
  const fields = new URLSearchParams();
  for (const [, name, value] of form[2].matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)"/g)) {
    fields.append(name, value);
  }
  return { action: new URL(form[1].replaceAll('&amp;', '&'), base).href, fields };
}

// Logs `login` in through the provider's forms and stops at the redirect to
// `redirectUri` without fetching it: returns the authorization response
// (`code`, RFC 9207 `iss`) with what redeeming the code needs.
export async function loginForCode(idp, {
  clientId = idp.clientId,
  redirectUri = idp.redirectUris[0],
  login = 'alice',
  password = USERS[login]?.password ?? '',
  scope = 'openid email profile',
  // OpenID Connect Core 11: offline_access (a refresh token) needs consent
  // to be prompted for; the provider drops the scope otherwise.
  prompt = scope.split(' ').includes('offline_access') ? 'consent' : undefined,
  resource,
  nonce = random(),
  codeVerifier = random(),
} = {}) {
  const { authorization_endpoint: endpoint } = await discover(idp);
  const state = random();
  const query = new URLSearchParams({
    client_id: clientId,
    response_type: 'code',
    redirect_uri: redirectUri,
    scope,
    state,
    nonce,
    code_challenge: createHash('sha256').update(codeVerifier).digest('base64url'),
    code_challenge_method: 'S256',
    ...(prompt && { prompt }),
    ...(resource && { resource }),
  });
  const target = new URL(redirectUri);
  const jar = new CookieJar();
  let url = `${endpoint}?${query}`;
  let request = { method: 'GET' };

  // Authorization endpoint -> login form -> resume -> consent form -> resume
  // -> redirect_uri: a handful of steps; the bound stops a redirect loop.
  for (let step = 0; step < 12; step += 1) {
    const res = await fetch(url, {
      ...request,
      redirect: 'manual',
      headers: { ...request.headers, cookie: jar.header(url) },
    });
    jar.store(res, url);
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      const next = new URL(location, url);
      if (next.origin === target.origin && next.pathname === target.pathname) {
        const params = next.searchParams;
        if (params.has('error')) {
          throw new Error(`authorization failed: ${params.get('error')}: ${params.get('error_description')}`);
        }
        if (params.get('state') !== state) throw new Error('authorization response state mismatch');
        return {
          code: params.get('code'),
          iss: params.get('iss'),
          state,
          nonce,
          codeVerifier,
          redirectUri,
        };
      }
      url = next.href;
      request = { method: 'GET' };
      continue;
    }
    const body = await res.text();
    const submission = res.status === 200 ? submitProviderForm(body, url, { login, password }) : undefined;
    if (!submission) {
      throw new Error(`${request.method} ${new URL(url).pathname} answered ${res.status}: ${body.slice(0, 300)}`);
    }
    ({ url, request } = submission);
  }
  throw new Error('login did not reach the redirect_uri');
}

// What a user does on one of the provider's interaction pages (`html`,
// served at `url`): on the login form, types `login` and `password`; on the
// consent form, accepts. Returns the form's POST (`url` and fetch `request`),
// or undefined when the page has no form.
export function submitProviderForm(html, url, { login, password = USERS[login]?.password ?? '' }) {
  const form = parseForm(html, url);
  if (!form) return undefined;
  if (form.fields.get('prompt') === 'login') {
    form.fields.set('login', login);
    form.fields.set('password', password);
  }
  return {
    url: form.action,
    request: {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: form.fields.toString(),
    },
  };
}

// Redeems an authorization code at the token endpoint (client_secret_basic,
// PKCE). Returns the provider's token response as is.
export async function redeemCode(idp, {
  clientId = idp.clientId,
  clientSecret = idp.clientSecret,
  code,
  redirectUri,
  codeVerifier,
  resource,
}) {
  return tokenRequest(idp, { clientId, clientSecret }, {
    grant_type: 'authorization_code',
    code,
    redirect_uri: redirectUri,
    code_verifier: codeVerifier,
    ...(resource && { resource }),
  });
}

// The whole code flow: login, then redemption. The access token is a JWT for
// `resource` when one is given (else the provider's opaque userinfo token);
// a refresh token comes with the `offline_access` scope.
export async function codeLogin(idp, options = {}) {
  const {
    clientId = idp.clientId, clientSecret = idp.clientSecret, resource,
  } = options;
  const authorization = await loginForCode(idp, options);
  const tokens = await redeemCode(idp, {
    ...authorization, clientId, clientSecret, resource,
  });
  return {
    idToken: tokens.id_token,
    accessToken: tokens.access_token,
    refreshToken: tokens.refresh_token,
    code: authorization.code,
  };
}
