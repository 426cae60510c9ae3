// The hosted product's official JavaScript client (npm
// `purecloud-platform-client-v2`, its WebDeploymentsApi) against portcullis
// with `compat.hosted_paths: true` (SPEC §3): an existing integration,
// pointed at portcullis through the client's own public configuration,
// exchanges a code, refreshes, and revokes unchanged; the messenger token it
// gets opens a WebSocket through portcullis, and the revoke closes that
// socket with 4002 (SPEC §5).
//
// The client builds its URLs as `https://api.<environment>` (setEnvironment
// strips any scheme and forces https on an `api.` host), so a plain-http
// loopback origin is reached with its documented gateway option instead:
// `setGateway({ host, protocol: 'http', port })`, which replaces the
// region's origin for API calls.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';

import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';
import platformClient from 'purecloud-platform-client-v2';
import WebSocket from 'ws';

import { openSocket, startBackend } from '../lib/backend.mjs';
import { startIdp } from '../lib/idp.mjs';
import { freePort, metricSum, startPortcullis } from '../lib/portcullis.mjs';
import { loginForCode } from '../lib/tokens.mjs';

const UPSTREAM = 'chat';
// The hosted product's deployment ids are UUIDs; portcullis takes them as they are.
const DEPLOYMENT = '9b0c4f7e-3d52-4a8e-b1c6-5f2e8a7d9c31';
// The brand's page: where the provider sends the code back, and the Origin of
// its chat socket. The client itself (a server or an app) sends no Origin.
const SITE = 'https://www.example.com';
const REDIRECT_URI = `${SITE}/messenger/callback`;
const PATHS = {
  exchange: '/api/v2/webdeployments/token/oauthcodegrantjwtexchange',
  refresh: '/api/v2/webdeployments/token/refresh',
  revoke: '/api/v2/webdeployments/token/revoke',
};

describe('the official hosted-product client against portcullis (compat.hosted_paths)', () => {
  let idp;
  let backend;
  let proxy;
  let proxyPort;
  let origin;
  let keys;
  let client;
  let api;
  // Every request the client sent, as its HTTP layer had it (a pre-hook).
  const sent = [];
  const openSockets = new Set();
  // What the flow hands from one step to the next.
  const flow = {};
  // Tokens portcullis was given or gave out, none of which it may log.
  const secrets = new Set();

  const tokenCalls = async (labels) => metricSum(
    await proxy.metrics(),
    'portcullis_token_api_requests_total',
    labels,
  ) ?? 0;

  // The chat WebSocket of the brand's page, with the messenger token as a
  // bearer credential.
  async function chat(jwt) {
    const res = await openSocket(`ws://127.0.0.1:${proxyPort}/v1/chat?deploymentId=${DEPLOYMENT}`, {
      headers: { origin: SITE, authorization: `Bearer ${jwt}` },
    });
    if (res.ws) openSockets.add(res.ws);
    return res;
  }

  // A call of the client: resolves with what it resolved with, or with
  // `{ rejected }` (what it rejected with: the error body it received).
  const settle = (promise) => promise.then(
    (value) => ({ value }),
    (rejected) => ({ rejected }),
  );

  before(async () => {
    proxyPort = await freePort();
    const adminPort = await freePort();
    origin = `http://127.0.0.1:${proxyPort}`;
    idp = await startIdp({ redirectUris: [REDIRECT_URI] });
    backend = await startBackend({ upstream: UPSTREAM });
    backend.assertionIssuer = origin;
    backend.assertionKeys = createRemoteJWKSet(new URL(`${origin}/.auth/jwks.json`));
    keys = createRemoteJWKSet(new URL(`${origin}/.auth/jwks.json`));

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
upstreams:
  ${UPSTREAM}: {servers: ["127.0.0.1:${backend.port}"]}
deployments:
  - id: "${DEPLOYMENT}"
    messenger: support
    upstream: ${UPSTREAM}
    allowed_origins: ["${SITE}"]
    redirect_uris: ["${REDIRECT_URI}"]
routes: [{path_prefix: /v1}]
compat: {hosted_paths: true}
logging: {format: json, level: info}
`,
    });

    // The client as its README sets it up: the shared ApiClient instance,
    // no watching of ~/.genesyscloudjavascript/config (its advice for test
    // runners), and the gateway option in place of a region.
    client = platformClient.ApiClient.instance;
    client.config.live_reload_config = false;
    client.setGateway({ host: '127.0.0.1', protocol: 'http', port: proxyPort });
    client.setPreHook(async (config) => {
      sent.push({
        method: config.method.toUpperCase(),
        url: config.url,
        headers: { ...config.headers },
        data: config.data,
      });
      return config;
    });
    api = new platformClient.WebDeploymentsApi();
  });

  after(async () => {
    for (const ws of openSockets) ws.terminate();
    client?.setGateway();
    await proxy?.stop();
    if (process.env.E2E_SHOW_LOG && proxy) process.stderr.write(`portcullis log:\n${proxy.log()}`);
    await backend?.close();
    await idp?.close();
  });

  test('the package has the three token methods, and the gateway points it at portcullis', () => {
    for (const method of [
      'postWebdeploymentsTokenOauthcodegrantjwtexchange',
      'postWebdeploymentsTokenRefresh',
      'deleteWebdeploymentsTokenRevoke',
    ]) {
      assert.equal(typeof api[method], 'function', method);
    }
    assert.equal(api.apiClient, client, 'the API uses the configured client');
  });

  test('code exchange: the SDK model in, {jwt, refreshToken} out, a portcullis token', async () => {
    const authorization = await loginForCode(idp, { redirectUri: REDIRECT_URI, login: 'alice' });
    assert.ok(authorization.iss, 'the provider names its issuer (RFC 9207)');
    // Models.WebDeploymentsOAuthExchangeRequest with every field it has
    // for a PKCE code flow, journey tracking included (accepted, unused).
    const body = {
      deploymentId: DEPLOYMENT,
      journeyContext: {
        customer: { id: 'c0ffee00-0000-4000-8000-000000000001', idType: 'cookie' },
        customerSession: { id: 'c0ffee00-0000-4000-8000-000000000002', type: 'web' },
      },
      oauth: {
        code: authorization.code,
        redirectUri: authorization.redirectUri,
        codeVerifier: authorization.codeVerifier,
        nonce: authorization.nonce,
        iss: authorization.iss,
      },
    };
    const before = await tokenCalls({ deployment: DEPLOYMENT, operation: 'exchange', result: 'ok' });
    const sentBefore = sent.length;
    const answer = await api.postWebdeploymentsTokenOauthcodegrantjwtexchange(body);

    // What went over the wire: one POST to the hosted path on portcullis,
    // JSON, no Authorization (the exchange needs no permission).
    assert.equal(sent.length, sentBefore + 1);
    const request = sent.at(-1);
    assert.equal(request.method, 'POST');
    assert.equal(request.url, `${origin}${PATHS.exchange}`);
    assert.equal(request.headers['Content-Type'], 'application/json');
    assert.equal(request.headers.Authorization, undefined);
    assert.deepEqual(request.data, body);

    // Models.WebDeploymentsAuthorizationResponse: exactly jwt and refreshToken.
    assert.deepEqual(Object.keys(answer).sort(), ['jwt', 'refreshToken'], JSON.stringify(answer));
    assert.equal(typeof answer.refreshToken, 'string');
    const { payload } = await jwtVerify(answer.jwt, keys, { issuer: origin, audience: DEPLOYMENT });
    assert.equal(payload.sub, 'alice');
    assert.ok(payload.sid, 'the token names its session');
    assert.equal(
      await tokenCalls({ deployment: DEPLOYMENT, operation: 'exchange', result: 'ok' }),
      before + 1,
    );
    Object.assign(flow, { jwt: answer.jwt, refreshToken: answer.refreshToken, sid: payload.sid });
    secrets.add(answer.jwt).add(answer.refreshToken).add(authorization.code);
  });

  test('the jwt opens the chat WebSocket through portcullis', async () => {
    assert.ok(flow.jwt, 'the exchange gave a jwt');
    const res = await chat(flow.jwt);
    assert.equal(res.status, 101, JSON.stringify(res.body));
    const { headers } = res.welcome;
    assert.equal(headers['x-auth-subject'], 'alice');
    assert.equal(headers['x-auth-deployment'], DEPLOYMENT);
    assert.equal(headers.authorization, undefined, 'the token stays at the edge');
    assert.ok(res.welcome.assertion?.verified, JSON.stringify(res.welcome.assertion));
    const echoed = once(res.ws, 'message');
    res.ws.send('hello from the hosted client');
    assert.equal((await echoed)[0].toString(), 'hello from the hosted client');
    flow.firstSocket = res.ws;
  });

  test('refresh twice with the first refresh token: {jwt} each time, no rotation', async () => {
    assert.ok(flow.refreshToken, 'the exchange gave a refresh token');
    const before = await tokenCalls({ deployment: DEPLOYMENT, operation: 'refresh', result: 'ok' });
    const jwts = [];
    for (let i = 0; i < 2; i += 1) {
      // Models.WebDeploymentsRefreshJWTRequest (both fields required there),
      // the same refresh token both times, as the hosted mobile SDK keeps it.
      const body = { refreshToken: flow.refreshToken, deploymentId: DEPLOYMENT };
      const answer = await api.postWebdeploymentsTokenRefresh({ body });
      const request = sent.at(-1);
      assert.equal(request.method, 'POST');
      assert.equal(request.url, `${origin}${PATHS.refresh}`);
      assert.deepEqual(request.data, body);
      // Models.SignedData: the jwt alone, no new refresh token.
      assert.deepEqual(Object.keys(answer), ['jwt'], JSON.stringify(answer));
      const { payload } = await jwtVerify(answer.jwt, keys, { issuer: origin, audience: DEPLOYMENT });
      assert.equal(payload.sub, 'alice');
      assert.equal(payload.sid, flow.sid, 'the same session');
      jwts.push(answer.jwt);
      secrets.add(answer.jwt);
    }
    assert.notEqual(jwts[0], jwts[1], 'each refresh signs a new token');
    assert.equal(
      await tokenCalls({ deployment: DEPLOYMENT, operation: 'refresh', result: 'ok' }),
      before + 2,
    );
    assert.equal((await tokenCalls({ operation: 'refresh' })) - before, 2, 'no refusal either');

    // The refreshed token opens a socket too.
    const res = await chat(jwts[1]);
    assert.equal(res.status, 101, JSON.stringify(res.body));
    assert.equal(res.welcome.headers['x-auth-subject'], 'alice');
    flow.latestJwt = jwts[1];
    flow.secondSocket = res.ws;
  });

  test('revoke with the jwt as the client\'s access token: sockets close with 4002, the tokens are dead', async () => {
    assert.ok(flow.latestJwt && flow.firstSocket && flow.secondSocket, 'the earlier steps ran');
    const closes = [flow.firstSocket, flow.secondSocket].map((ws) => once(ws, 'close'));
    const before = await tokenCalls({ deployment: DEPLOYMENT, operation: 'revoke', result: 'ok' });

    // How the client authenticates an API call: its OAuth access token,
    // here the messenger token.
    // The journey headers of its options pass and are ignored.
    client.setAccessToken(flow.latestJwt);
    const revoked = await settle(api.deleteWebdeploymentsTokenRevoke({
      xJourneySessionId: 'c0ffee00-0000-4000-8000-000000000002',
      xJourneySessionType: 'web',
    }));
    assert.equal(revoked.rejected, undefined, `revoke refused: ${JSON.stringify(revoked.rejected)}`);
    const request = sent.at(-1);
    assert.equal(request.method, 'DELETE');
    assert.equal(request.url, `${origin}${PATHS.revoke}`);
    assert.equal(request.headers.Authorization, `Bearer ${flow.latestJwt}`);
    assert.equal(request.headers['X-Journey-Session-Type'], 'web');
    assert.equal(request.data, undefined, 'no body');
    assert.equal(
      await tokenCalls({ deployment: DEPLOYMENT, operation: 'revoke', result: 'ok' }),
      before + 1,
    );

    // Both live connections of the session end as revoked (SPEC §5).
    for (const [code, reason] of await Promise.all(closes)) {
      assert.equal(code, 4002);
      assert.equal(reason.toString(), 'logged out');
    }
    for (const ws of [flow.firstSocket, flow.secondSocket]) {
      assert.equal(ws.readyState, WebSocket.CLOSED);
      openSockets.delete(ws);
    }

    // Neither the exchanged nor the refreshed token opens a socket any more.
    const seenBefore = backend.seen.length;
    for (const jwt of [flow.jwt, flow.latestJwt]) {
      const refused = await chat(jwt);
      assert.equal(refused.status, 401, JSON.stringify(refused.body));
      assert.match(refused.headers['www-authenticate'] ?? '', /^Bearer\b/);
    }
    assert.equal(backend.seen.length, seenBefore, 'no refused handshake reached the backend');

    // The refresh token ended with the session; a second revoke is a 401,
    // which the hosted mobile SDK reads as "already logged out".
    const refresh = await settle(api.postWebdeploymentsTokenRefresh({
      body: { refreshToken: flow.refreshToken, deploymentId: DEPLOYMENT },
    }));
    assert.equal(refresh.value, undefined, 'refresh after revoke succeeded');
    assert.equal(refresh.rejected?.error, 'invalid_grant', JSON.stringify(refresh.rejected));
    const again = await settle(api.deleteWebdeploymentsTokenRevoke());
    assert.equal(again.value, undefined, 'a second revoke succeeded');
    assert.equal(again.rejected?.error, 'invalid_token', JSON.stringify(again.rejected));
    assert.equal(await tokenCalls({ operation: 'refresh', result: 'invalid_grant' }), 1);
    assert.equal(await tokenCalls({ operation: 'revoke', result: 'invalid_token' }), 1);
    assert.equal(await tokenCalls({ result: 'invalid_request' }), 0, 'no request was malformed');
    assert.equal(
      metricSum(await proxy.metrics(), 'portcullis_session_ends_total', { reason: 'logout' }),
      1,
    );
  });

  test('portcullis logged none of the codes and tokens', () => {
    assert.ok(secrets.size >= 4);
    const log = proxy.log();
    assert.ok(log.length > 0, 'portcullis logged something');
    for (const secret of secrets) {
      assert.ok(!log.includes(secret), 'a code or token in the log');
    }
    // The decoded jwt is what the client holds; its signature alone neither.
    assert.ok(!log.includes(flow.jwt.split('.')[2]));
    assert.equal(decodeJwt(flow.jwt).aud, DEPLOYMENT);
  });
});
