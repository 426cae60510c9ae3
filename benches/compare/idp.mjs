// The OpenID provider of the cross-proxy benchmark (benches/compare/run.sh):
// oidc-provider (the e2e suite's, from tests/e2e/node_modules) on loopback,
// signing with an RS256 and an ES256 key generated here and written to
// KEY_DIR, so that the load tool can mint any number of distinct access
// tokens offline that are indistinguishable from the provider's own (same
// keys, kids, issuer, audience). portcullis and Apache fetch its real
// discovery document and JWKS.
//
//   node idp.mjs PORT TLS_PORT KEY_DIR PORTCULLIS_REDIRECT_URI APACHE_REDIRECT_URI
//
// The provider also answers on TLS_PORT over HTTPS (KEY_DIR/server.crt and
// server.key, from `load certs`): mod_auth_openidc fetches a JWKS for bearer
// tokens (OIDCOAuthVerifyJwksUri) only from an https:// URL.
//
// Client secrets come from COMPARE_PORTCULLIS_SECRET and
// COMPARE_APACHE_SECRET. Writes to KEY_DIR: RS256.pem, RS256.kid,
// ES256.pem, ES256.kid (PKCS#8), issuer, audience, cached-token (an RS256
// access token the provider issued itself, client_credentials) and, last,
// ready. Stops on SIGINT or SIGTERM.
import { generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';

import { Provider, errors } from '../../tests/e2e/node_modules/oidc-provider/lib/index.js';
import { calculateJwkThumbprint } from '../../tests/e2e/node_modules/jose/dist/webapi/index.js';

const AUDIENCE = 'api://messaging';
const [port, tlsPort, keyDir, portcullisRedirect, apacheRedirect] = process.argv.slice(2);
if (!keyDir || !apacheRedirect) {
  console.error('usage: node idp.mjs PORT TLS_PORT KEY_DIR PORTCULLIS_REDIRECT_URI APACHE_REDIRECT_URI');
  process.exit(2);
}
const secrets = {
  portcullis: process.env.COMPARE_PORTCULLIS_SECRET,
  apache: process.env.COMPARE_APACHE_SECRET,
};
if (!secrets.portcullis || !secrets.apache) {
  console.error('COMPARE_PORTCULLIS_SECRET and COMPARE_APACHE_SECRET must be set');
  process.exit(2);
}

const write = (name, text) => {
  const path = join(keyDir, name);
  writeFileSync(`${path}.partial`, text, { mode: 0o600 });
  renameSync(`${path}.partial`, path);
};

// One signing key: its private JWK for the provider, PKCS#8 PEM and kid
// (the RFC 7638 thumbprint) for the load tool.
async function signingKey(alg) {
  const { privateKey, publicKey } = alg === 'RS256'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = await calculateJwkThumbprint(publicKey.export({ format: 'jwk' }));
  write(`${alg}.pem`, privateKey.export({ type: 'pkcs8', format: 'pem' }));
  write(`${alg}.kid`, kid);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

const server = createServer();
server.listen(Number(port), '127.0.0.1');
await once(server, 'listening');
const issuer = `http://127.0.0.1:${server.address().port}`;

const origin = (uri) => `${new URL(uri).origin}/`;
const client = (clientId, redirectUri) => ({
  client_id: clientId,
  client_secret: secrets[clientId],
  redirect_uris: [redirectUri],
  post_logout_redirect_uris: [origin(redirectUri)],
  response_types: ['code'],
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  token_endpoint_auth_method: 'client_secret_basic',
  id_token_signed_response_alg: 'RS256',
});

const provider = new Provider(issuer, {
  clients: [client('portcullis', portcullisRedirect), client('apache', apacheRedirect)],
  jwks: { keys: [await signingKey('RS256'), await signingKey('ES256')] },
  cookies: { keys: [Math.random().toString(36).slice(2)] },
  async findAccount(_ctx, sub) {
    return { accountId: sub, claims: async () => ({ sub, email: `${sub}@example.com`, email_verified: true }) };
  },
  claims: { email: ['email', 'email_verified'] },
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256'] },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => AUDIENCE,
      async getResourceServerInfo(_ctx, indicator) {
        if (indicator !== AUDIENCE) throw new errors.InvalidTarget();
        return {
          scope: 'messaging', audience: AUDIENCE, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  ttl: {
    AccessToken: 3600, AuthorizationCode: 60, ClientCredentials: 3600, IdToken: 3600,
    RefreshToken: 24 * 3600, Interaction: 600, Session: 24 * 3600, Grant: 24 * 3600,
  },
  clientBasedCORS: () => false,
  renderError(ctx, out) {
    ctx.type = 'text/plain';
    ctx.body = `${out.error}: ${out.error_description}`;
  },
});
server.on('request', provider.callback());
const tlsServer = createTlsServer({
  cert: readFileSync(join(keyDir, 'server.crt')),
  key: readFileSync(join(keyDir, 'server.key')),
}, provider.callback());
tlsServer.listen(Number(tlsPort), '127.0.0.1');
await once(tlsServer, 'listening');

// The cached-bearer rows' token: one the provider issued itself.
const basic = Buffer.from(`portcullis:${encodeURIComponent(secrets.portcullis)}`).toString('base64');
const res = await fetch(`${issuer}/token`, {
  method: 'POST',
  headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({ grant_type: 'client_credentials', resource: AUDIENCE, scope: 'messaging' }),
});
const body = await res.json();
if (!res.ok) {
  console.error(`the token endpoint answered ${res.status}: ${JSON.stringify(body)}`);
  process.exit(1);
}
write('cached-token', body.access_token);
write('issuer', issuer);
write('audience', AUDIENCE);
write('ready', 'yes');
console.log(`idp: listening on ${issuer}`);

const stop = () => {
  server.close();
  server.closeAllConnections();
  tlsServer.close();
  tlsServer.closeAllConnections();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
