// Bearer authentication end to end: the real portcullis binary between a
// `ws` client and a small WebSocket backend, with tokens from the real test
// IdP (lib/idp.mjs, oidc-provider). Every server is on 127.0.0.1 and stops in
// after(); the process exits by itself.
//
// SPEC §4 (credential carriers, 401/403, identity headers, X-Auth-Assertion,
// credentials staying at the edge) and §7 (algorithms, no token in logs, a
// bad signature on a known kid never triggers a JWKS fetch).
//
// E2E_SHOW_LOG=1 prints portcullis's log (JSON lines) when the suite ends.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';

import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader } from 'jose';
import WebSocket from 'ws';

import { openSocket, startBackend } from '../lib/backend.mjs';
import { startIdp } from '../lib/idp.mjs';
import {
  freePort, metricSum, startPortcullis,
} from '../lib/portcullis.mjs';
import { clientCredentialsToken, codeLogin } from '../lib/tokens.mjs';

const UPSTREAM = 'chat';

describe('bearer authentication through portcullis', () => {
  let idp;
  let backend;
  let proxy;
  let proxyPort;
  let adminPort;
  let origin;
  const sentTokens = new Set(); // every token a client sent, for the log check
  const openSockets = new Set();

  const metricsText = async () => {
    const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
    assert.equal(res.status, 200);
    return res.text();
  };

  const chatUrl = (deployment, extra = '') => `ws://127.0.0.1:${proxyPort}/v1/chat?deploymentId=${deployment}${extra}`;

  // Opens a WebSocket through portcullis (lib/backend.mjs), from our own
  // origin unless `headers` say otherwise, noting the token it carries.
  async function connect(url, { headers = {}, protocols = [], token } = {}) {
    if (token) sentTokens.add(token);
    const res = await openSocket(url, { headers: { origin, ...headers }, protocols });
    if (res.ws) openSockets.add(res.ws);
    return res;
  }

  async function closeSocket(ws) {
    if (ws.readyState === WebSocket.CLOSED) return;
    const closed = once(ws, 'close');
    ws.close(1000);
    await closed;
    openSockets.delete(ws);
  }

  // One echo round trip through portcullis.
  async function echo(ws, text) {
    const reply = once(ws, 'message');
    ws.send(text);
    const [data] = await reply;
    return data.toString();
  }

  before(async () => {
    idp = await startIdp();
    backend = await startBackend({ upstream: UPSTREAM });
    proxyPort = await freePort();
    adminPort = await freePort();
    origin = `http://127.0.0.1:${proxyPort}`;
    backend.assertionIssuer = origin;
    backend.assertionKeys = createRemoteJWKSet(new URL(`${origin}/.auth/jwks.json`));

    // Up, then both providers discovered with their keys.
    proxy = await startPortcullis({
      adminPort,
      providers: ['idp', 'idp-es'],
      env: {
        E2E_CLIENT_SECRET: idp.clientSecret,
        E2E_ES_CLIENT_SECRET: idp.esClientSecret,
      },
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
    audiences: ["api://messaging"]
    algorithms: [RS256, ES256]
  idp-es:
    issuer: "${idp.issuer}"
    client_id: ${idp.esClientId}
    client_secret: {env: E2E_ES_CLIENT_SECRET}
    audiences: ["api://messaging"]
    algorithms: [ES256]
messengers:
  support:
    # ID tokens as bearer credentials are an opt-in (they outlive sessions).
    authentication: {enabled: true, provider: idp, accept_id_tokens: true}
    assertion: true
    # X-Auth-Email-Verified is portcullis's own header; this maps the raw claim.
    identity_headers: {X-Auth-Verified: email_verified}
  support-es:
    authentication: {enabled: true, provider: idp-es, accept_id_tokens: true}
  customers-only:
    authentication:
      enabled: true
      provider: idp
      accept_id_tokens: true
      require: {groups_any: [customers], claims: {email_verified: true}}
upstreams:
  ${UPSTREAM}: {servers: ["127.0.0.1:${backend.port}"]}
deployments:
  - {id: support-web, messenger: support, upstream: ${UPSTREAM}, allowed_origins: ["${origin}"], access_token_query: true}
  - {id: support-es, messenger: support-es, upstream: ${UPSTREAM}, allowed_origins: ["${origin}"]}
  - {id: customers, messenger: customers-only, upstream: ${UPSTREAM}, allowed_origins: ["${origin}"]}
routes: [{path_prefix: /v1}]
logging: {format: json, level: info}
`,
    });
  });

  after(async () => {
    for (const ws of openSockets) ws.terminate();
    await proxy?.stop();
    if (process.env.E2E_SHOW_LOG && proxy) process.stderr.write(`portcullis log:\n${proxy.log()}`);
    await backend?.close();
    await idp?.close();
  });

  // The last upgrade the backend saw.
  const lastUpgrade = () => backend.seen.at(-1);

  test('RS256 access token in Authorization: identity headers and a verified assertion', async () => {
    const token = await clientCredentialsToken(idp);
    assert.equal(decodeProtectedHeader(token).alg, 'RS256');
    const claims = decodeJwt(token);
    assert.ok(claims.sub, 'the access token has a subject');

    const seenBefore = backend.seen.length;
    const res = await connect(chatUrl('support-web'), {
      token,
      headers: {
        authorization: `Bearer ${token}`,
        // Forged identity headers must not reach the backend.
        'x-auth-subject': 'mallory',
        'X_Auth_Email': 'mallory@evil.example',
        'x-auth-assertion': 'forged',
      },
    });
    assert.equal(res.status, 101, JSON.stringify(res.body));
    assert.equal(backend.seen.length, seenBefore + 1);
    const { headers, assertion } = res.welcome;
    assert.equal(headers['x-auth-subject'], claims.sub);
    assert.equal(headers['x-auth-issuer'], idp.issuer);
    assert.equal(headers['x-auth-deployment'], 'support-web');
    assert.match(headers['x-auth-session'] ?? '', /^t-[0-9a-f]{24}$/);
    assert.equal(headers['x-auth-email'], undefined, 'no email claim, no forged email');
    assert.equal(headers.x_auth_email, undefined);
    assert.equal(headers.authorization, undefined, 'the bearer token stays at the edge');
    // Not the token, nor its signature alone, in anything the backend saw.
    assert.ok(!JSON.stringify(backend.seen.at(-1)).includes(token.split('.')[2]), 'the token reached the backend');

    assert.ok(assertion?.verified, `assertion: ${JSON.stringify(assertion)}`);
    assert.equal(assertion.payload.sub, claims.sub);
    assert.equal(assertion.payload.aud, UPSTREAM);
    assert.equal(assertion.payload.iss, origin);
    assert.equal(assertion.payload.deployment, 'support-web');
    assert.ok(assertion.payload.exp > assertion.payload.iat);
    const jwks = await (await fetch(`${origin}/.auth/jwks.json`)).json();
    assert.ok(
      jwks.keys.some((k) => k.kid === assertion.header.kid),
      'the assertion is signed with a published key',
    );

    assert.equal(await echo(res.ws, 'hello through portcullis'), 'hello through portcullis');
    await closeSocket(res.ws);

    // The session id names the token: the same on its next request, another
    // for another token (of the same client and subject).
    const again = await connect(chatUrl('support-web'), {
      token, headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(again.status, 101, JSON.stringify(again.body));
    assert.equal(again.welcome.headers['x-auth-session'], headers['x-auth-session']);
    await closeSocket(again.ws);
    const other = await clientCredentialsToken(idp);
    assert.notEqual(other, token);
    assert.equal(decodeJwt(other).sub, claims.sub);
    const second = await connect(chatUrl('support-web'), {
      token: other, headers: { authorization: `Bearer ${other}` },
    });
    assert.equal(second.status, 101, JSON.stringify(second.body));
    assert.match(second.welcome.headers['x-auth-session'] ?? '', /^t-[0-9a-f]{24}$/);
    assert.notEqual(second.welcome.headers['x-auth-session'], headers['x-auth-session'], 'two tokens, two ids');
    await closeSocket(second.ws);
  });

  test('ES256 access token in the Sec-WebSocket-Protocol carrier: removed, chat.v1 chosen', async () => {
    const token = await clientCredentialsToken(idp, {
      clientId: idp.esClientId, clientSecret: idp.esClientSecret,
    });
    assert.equal(decodeProtectedHeader(token).alg, 'ES256');
    const res = await connect(chatUrl('support-web'), {
      token,
      // Token first: a backend that saw it would choose it.
      protocols: [`authorization.bearer.${token}`, 'chat.v1'],
    });
    assert.equal(res.status, 101, JSON.stringify(res.body));
    const { headers } = res.welcome;
    assert.equal(headers['sec-websocket-protocol'], 'chat.v1');
    assert.equal(res.welcome.protocol, 'chat.v1');
    assert.equal(res.protocol, 'chat.v1', 'the 101 chose chat.v1');
    assert.equal(res.headers['sec-websocket-protocol'], 'chat.v1');
    assert.equal(headers['x-auth-subject'], decodeJwt(token).sub);
    assert.equal(headers.authorization, undefined, 'not forwarded as a header either');
    assert.ok(res.welcome.assertion?.verified, JSON.stringify(res.welcome.assertion));
    await closeSocket(res.ws);
  });

  test('RS256 ID token of alice: email, name, groups and the mapped claim header', async () => {
    const { idToken } = await codeLogin(idp, { scope: 'openid email profile groups' });
    assert.equal(decodeProtectedHeader(idToken).alg, 'RS256');
    const res = await connect(chatUrl('support-web'), {
      token: idToken, headers: { authorization: `Bearer ${idToken}` },
    });
    assert.equal(res.status, 101, JSON.stringify(res.body));
    const { headers, assertion } = res.welcome;
    assert.equal(headers['x-auth-subject'], 'alice');
    assert.equal(headers['x-auth-email'], 'alice@example.com');
    assert.equal(headers['x-auth-name'], 'Alice Example');
    // A list: split at commas, percent-decode each element.
    assert.ok(headers['x-auth-groups']?.split(',').map(decodeURIComponent).includes('customers'), headers['x-auth-groups']);
    assert.equal(headers['x-auth-email-verified'], 'true');
    assert.equal(headers['x-auth-verified'], 'true');
    assert.equal(headers['x-auth-issuer'], idp.issuer);
    assert.equal(headers.authorization, undefined);
    assert.ok(assertion?.verified, JSON.stringify(assertion));
    assert.equal(assertion.payload.email, 'alice@example.com');
    assert.deepEqual(assertion.payload.groups, ['customers']);
    await closeSocket(res.ws);
  });

  test('ES256 ID token through the provider entry of its client (idp-es)', async () => {
    const { idToken } = await codeLogin(idp, {
      clientId: idp.esClientId, clientSecret: idp.esClientSecret,
    });
    assert.equal(decodeProtectedHeader(idToken).alg, 'ES256');
    const res = await connect(chatUrl('support-es'), {
      token: idToken, headers: { authorization: `Bearer ${idToken}` },
    });
    assert.equal(res.status, 101, JSON.stringify(res.body));
    const { headers } = res.welcome;
    assert.equal(headers['x-auth-subject'], 'alice');
    assert.equal(headers['x-auth-deployment'], 'support-es');
    assert.equal(headers['x-auth-email'], 'alice@example.com');
    assert.equal(headers['x-auth-assertion'], undefined, 'this messenger sends no assertion');
    assert.equal(headers.authorization, undefined);
    await closeSocket(res.ws);
  });

  test('access_token query: accepted where opted in and removed; elsewhere 401', async () => {
    const token = await clientCredentialsToken(idp);
    const query = `&access_token=${encodeURIComponent(token)}&lang=en`;
    const res = await connect(chatUrl('support-web', query), { token });
    assert.equal(res.status, 101, JSON.stringify(res.body));
    assert.equal(res.welcome.headers['x-auth-subject'], decodeJwt(token).sub);
    assert.equal(res.welcome.url, '/v1/chat?deploymentId=support-web&lang=en');
    assert.ok(!lastUpgrade().url.includes('access_token'));
    assert.equal(res.welcome.headers.authorization, undefined, 'nor moved to a header');
    await closeSocket(res.ws);

    const seenBefore = backend.seen.length;
    const refused = await connect(chatUrl('customers', query), { token });
    assert.equal(refused.status, 401);
    assert.equal(refused.body.reason, 'no_credentials');
    assert.equal(backend.seen.length, seenBefore, 'the backend never saw it');
  });

  test('refusals: 401 without or with a bad credential, 403 by policy', async () => {
    const seenBefore = backend.seen.length;

    const none = await connect(chatUrl('support-web'));
    assert.equal(none.status, 401);
    assert.match(none.headers['www-authenticate'] ?? '', /^Bearer\b/);
    assert.match(none.headers['content-type'], /^application\/json/);
    assert.equal(none.body.reason, 'no_credentials');
    assert.equal(typeof none.body.error, 'string');
    assert.equal(typeof none.body.error_description, 'string');

    // A valid token whose payload is changed in one character of `sub`:
    // well-formed, known kid, signature no longer matching.
    const good = await clientCredentialsToken(idp);
    const [h, p, s] = good.split('.');
    const payload = JSON.parse(Buffer.from(p, 'base64url'));
    payload.sub = `${payload.sub.slice(0, -1)}${payload.sub.endsWith('x') ? 'y' : 'x'}`;
    const tampered = [h, Buffer.from(JSON.stringify(payload)).toString('base64url'), s].join('.');
    const before = await metricsText();
    const bad = await connect(chatUrl('support-web'), {
      token: tampered, headers: { authorization: `Bearer ${tampered}` },
    });
    assert.equal(bad.status, 401);
    assert.equal(bad.body.reason, 'bad_signature');
    assert.match(bad.headers['www-authenticate'] ?? '', /^Bearer\b.*error="invalid_token"/);
    assert.ok(!JSON.stringify(bad.body).includes(tampered));
    const afterBad = await metricsText();
    assert.equal(
      metricSum(afterBad, 'portcullis_jwks_fetches_total', { provider: 'idp' }),
      metricSum(before, 'portcullis_jwks_fetches_total', { provider: 'idp' }),
      'a bad signature on a known kid triggers no JWKS fetch (SPEC §7)',
    );

    // An ID token of the other client: aud portcullis-es, which the `idp`
    // entry (client portcullis, audience api://messaging) does not accept.
    const { idToken: esIdToken } = await codeLogin(idp, {
      clientId: idp.esClientId, clientSecret: idp.esClientSecret,
    });
    const wrongAud = await connect(chatUrl('support-web'), {
      token: esIdToken, headers: { authorization: `Bearer ${esIdToken}` },
    });
    assert.equal(wrongAud.status, 401);
    assert.equal(wrongAud.body.reason, 'wrong_audience');

    // An RS256 token (valid, audience accepted) at the ES256-only entry.
    const rsOnEs = await connect(chatUrl('support-es'), {
      token: good, headers: { authorization: `Bearer ${good}` },
    });
    assert.equal(rsOnEs.status, 401);
    assert.equal(rsOnEs.body.reason, 'algorithm_not_allowed');

    const scope = 'openid email profile groups';
    const { idToken: bobToken } = await codeLogin(idp, { login: 'bob', scope });
    const bob = await connect(chatUrl('customers'), {
      token: bobToken, headers: { authorization: `Bearer ${bobToken}` },
    });
    assert.equal(bob.status, 403);
    // bob fails both rules; the claims are checked before the groups.
    assert.equal(bob.body.reason, 'claim_mismatch');
    assert.equal(bob.headers['www-authenticate'], undefined, 'a policy refusal is no challenge');
    assert.equal(backend.seen.length, seenBefore, 'no refused request reached the backend');

    const { idToken: aliceToken } = await codeLogin(idp, { login: 'alice', scope });
    const alice = await connect(chatUrl('customers'), {
      token: aliceToken, headers: { authorization: `Bearer ${aliceToken}` },
    });
    assert.equal(alice.status, 101, JSON.stringify(alice.body));
    assert.equal(alice.welcome.headers['x-auth-subject'], 'alice');
    assert.equal(alice.welcome.headers['x-auth-deployment'], 'customers');
    assert.equal(alice.welcome.assertion, null, 'customers-only sends no assertion');
    await closeSocket(alice.ws);
  });

  test('GET /.auth/jwks.json publishes public ES256 keys only', async () => {
    const res = await fetch(`${origin}/.auth/jwks.json`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^application\/json/);
    const { keys } = await res.json();
    assert.ok(Array.isArray(keys) && keys.length >= 1);
    const es = keys.filter((k) => k.kty === 'EC' && k.alg === 'ES256' && k.kid);
    assert.ok(es.length >= 1, JSON.stringify(keys));
    for (const key of keys) assert.equal(key.d, undefined, 'no private key material');
  });

  test('metrics count the decisions and the JWKS fetches', async () => {
    const text = await metricsText();
    const decisions = (labels) => metricSum(text, 'portcullis_auth_decisions_total', labels);
    assert.ok(decisions({ outcome: 'allowed' }) >= 6, 'allowed');
    assert.ok(decisions({ outcome: 'allowed', method: 'bearer_header' }) >= 1);
    assert.ok(decisions({ outcome: 'allowed', method: 'subprotocol' }) >= 1);
    assert.ok(decisions({ outcome: 'allowed', method: 'query' }) >= 1);
    assert.equal(decisions({ outcome: 'bad_signature' }), 1);
    assert.equal(decisions({ outcome: 'wrong_audience' }), 1);
    assert.equal(decisions({ outcome: 'algorithm_not_allowed', deployment: 'support-es' }), 1);
    assert.ok(decisions({ outcome: 'no_credentials' }) >= 2);
    assert.ok(
      metricSum(text, 'portcullis_jwks_fetches_total', { provider: 'idp', result: 'ok' }) >= 1,
      'idp keys fetched',
    );
  });

  test('portcullis logged none of the tokens it was sent', async () => {
    assert.ok(sentTokens.size >= 8);
    // Stopped, so that every line it would write is in (after() stops it
    // again, which does nothing).
    await proxy.stop();
    const log = proxy.log();
    assert.ok(log.length > 0, 'portcullis logged something');
    for (const token of sentTokens) {
      assert.ok(!log.includes(token), 'a token in the log');
      // Not even its signature alone.
      assert.ok(!log.includes(token.split('.')[2]), 'a token signature in the log');
    }
  });
});
