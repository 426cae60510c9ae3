// A real OpenID provider for the end-to-end tests: oidc-provider (an
// OpenID-certified implementation nobody here wrote) on 127.0.0.1, so that
// portcullis is tested against someone else's reading of the specifications
// rather than against our own.
import { once } from 'node:events';
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';

import { Provider, errors } from 'oidc-provider';
import { calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';

// The resource (RFC 8707) whose access tokens portcullis accepts as bearer
// tokens: the `audiences` entry of its provider config.
export const MESSAGING_API = 'api://messaging';

// The fixed accounts. The login form of devInteractions takes any login and
// ignores the password; the check in startIdp makes these passwords count.
export const USERS = {
  alice: {
    password: 'alice-password',
    claims: {
      email: 'alice@example.com',
      email_verified: true,
      name: 'Alice Example',
      groups: ['customers'],
    },
  },
  bob: {
    password: 'bob-password',
    claims: {
      email: 'bob@other.example',
      email_verified: false,
      name: 'Bob Other',
      groups: [],
    },
  },
};

// One signing key of the given algorithm: the private JWK for the provider's
// keystore and the public JWK a relying party sees. The kid is the key's
// RFC 7638 thumbprint, so the two keys' kids differ.
async function signingKey(alg) {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const pub = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(pub);
  return {
    private: { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' },
    public: { ...pub, kid, alg, use: 'sig' },
  };
}

// Reads a request body that the provider's own parser will then take as
// already parsed (it accepts `req.body` when the stream has been consumed).
async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

// Where RP-initiated logout may send the browser back to by default: the
// root of each redirect URI's origin (`http://127.0.0.1:<proxy>/` for
// portcullis's callback). The provider compares post_logout_redirect_uri
// exactly, so another path must be listed in `postLogoutRedirectUris`.
function originRoots(uris) {
  return [...new Set(uris.map((uri) => `${new URL(uri).origin}/`))];
}

export async function startIdp({
  port = 0,
  redirectUris = ['http://127.0.0.1:1/.auth/callback'],
  postLogoutRedirectUris = originRoots(redirectUris),
  // Where the provider POSTs a logout token when the user logs out at it
  // (OpenID Connect Back-Channel Logout, with `sid`); none by default.
  backchannelLogoutUri,
} = {}) {
  // The issuer contains the port, so the socket is bound before the provider
  // exists; the provider then serves the already listening server.
  const server = createServer();
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  const actualPort = server.address().port;
  const issuer = `http://127.0.0.1:${actualPort}`;

  const rsa = await signingKey('RS256');
  const ec = await signingKey('ES256');
  const secret = () => randomBytes(32).toString('base64url');
  const clientSecret = secret();
  const esClientSecret = secret();

  // Both clients are what a portcullis provider entry registers: confidential
  // (client_secret_basic), code flow (PKCE S256 accepted, required only for
  // public clients by the provider's default policy), refresh tokens, and
  // client_credentials so tests can get API access tokens without a login.
  const client = (clientId, secretValue, alg) => ({
    client_id: clientId,
    client_secret: secretValue,
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogoutRedirectUris,
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: alg,
    ...(backchannelLogoutUri && {
      backchannel_logout_uri: backchannelLogoutUri,
      backchannel_logout_session_required: true,
    }),
  });

  const provider = new Provider(issuer, {
    clients: [
      client('portcullis', clientSecret, 'RS256'),
      client('portcullis-es', esClientSecret, 'ES256'),
    ],
    jwks: { keys: [rsa.private, ec.private] },
    cookies: { keys: [secret()] },
    async findAccount(_ctx, sub) {
      const user = USERS[sub];
      if (!user) return undefined;
      return { accountId: sub, claims: async () => ({ sub, ...user.claims }) };
    },
    // Scope -> claims; each key also becomes a supported scope.
    claims: {
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    // Put the scope's claims in the ID token itself (the default keeps them
    // for the userinfo endpoint in the code flow): portcullis reads identity
    // and its `require` rules from the ID token, as most real IdPs allow.
    conformIdTokenClaims: false,
    responseTypes: ['code'],
    // Advertise only the algorithms there are keys for.
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256'] },
    features: {
      devInteractions: { enabled: true },
      backchannelLogout: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Only the messaging API is a known resource. Its access tokens are
        // JWTs (RFC 9068) signed with the algorithm of the requesting client's
        // ID tokens: `portcullis` gets RS256, `portcullis-es` ES256.
        async getResourceServerInfo(_ctx, indicator, requester) {
          if (indicator !== MESSAGING_API) throw new errors.InvalidTarget();
          return {
            scope: 'messaging',
            audience: MESSAGING_API,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: requester.idTokenSignedResponseAlg } },
          };
        },
      },
    },
    // Explicit lifetimes (seconds); also keeps the provider from printing a
    // notice for each default it would otherwise use.
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      ClientCredentials: 600,
      IdToken: 3600,
      RefreshToken: 24 * 3600,
      Interaction: 600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
    },
    // The provider's own outgoing requests (back-channel logout deliveries)
    // go to portcullis on loopback, which its SSRF guard refuses as a
    // special-use address: on this all-loopback test bench the guard's
    // dispatcher is dropped.
    fetch: (url, { dispatcher: _ssrfGuard, ...options }) => fetch(url, options),
    // portcullis talks to the provider from the server side; browsers only
    // navigate to it, so no cross-origin calls are allowed.
    clientBasedCORS: () => false,
    // Errors the provider cannot send back to a redirect_uri (unknown client,
    // unregistered redirect_uri, ...) as one plain line a test can match.
    renderError(ctx, out) {
      ctx.type = 'text/plain';
      ctx.body = `${out.error}: ${out.error_description}`;
    },
  });

  // Password check in front of the devInteractions login submit: a wrong
  // password or an unknown login gets 401 instead of a session.
  provider.use(async (ctx, next) => {
    if (ctx.method === 'POST' && /^\/interaction\/[^/]+$/.test(ctx.path)) {
      const body = await readBody(ctx.req);
      ctx.req.body = body;
      const form = new URLSearchParams(body.toString());
      if (form.get('prompt') === 'login') {
        const user = USERS[form.get('login')];
        if (!user || user.password !== form.get('password')) {
          ctx.status = 401;
          ctx.type = 'text/plain';
          ctx.body = 'invalid login or password';
          return;
        }
      }
    }
    await next();
  });

  server.on('request', provider.callback());

  return {
    issuer,
    port: actualPort,
    redirectUris,
    postLogoutRedirectUris,
    // The oidc-provider instance, for tests that listen to its events
    // (`grant.success`, `end_session.success`, ...).
    provider,
    clientId: 'portcullis',
    clientSecret,
    esClientId: 'portcullis-es',
    esClientSecret,
    jwks: { keys: [rsa.public, ec.public] },
    close: async () => {
      const closed = new Promise((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
      });
      // Idle keep-alive connections end with close(); busy ones (a browser's
      // page, say) would hold it, and the test process, open.
      server.closeAllConnections();
      await closed;
    },
  };
}
