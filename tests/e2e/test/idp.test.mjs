// Tests of the harness itself: the test IdP (lib/idp.mjs) and the token
// helpers (lib/tokens.mjs). Later tests trust these tokens, so each property
// they rely on is checked here against the provider's own published keys.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';

import { MESSAGING_API, startIdp } from '../lib/idp.mjs';
import {
  clientCredentialsToken, codeLogin, loginForCode, redeemCode,
} from '../lib/tokens.mjs';

const getJson = async (url) => {
  const res = await fetch(url);
  assert.equal(res.status, 200, `GET ${url}`);
  return res.json();
};

describe('test IdP', () => {
  let idp;
  let discovery;
  let keys; // the key set as published at jwks_uri, not as startIdp says

  before(async () => {
    idp = await startIdp();
    discovery = await getJson(`${idp.issuer}/.well-known/openid-configuration`);
    keys = createLocalJWKSet(await getJson(discovery.jwks_uri));
  });
  after(() => idp?.close());

  // Verifies a token against the published keys, pinning the algorithm.
  const verify = (token, alg, audience) => jwtVerify(token, keys, {
    issuer: idp.issuer, audience, algorithms: [alg],
  });

  test('listens on loopback with a matching issuer', () => {
    assert.equal(idp.issuer, `http://127.0.0.1:${idp.port}`);
    assert.notEqual(idp.port, 0);
  });

  test('discovery names the issuer, the key set and the code flow with PKCE', () => {
    assert.equal(discovery.issuer, idp.issuer);
    assert.equal(discovery.jwks_uri, `${idp.issuer}/jwks`);
    assert.deepEqual(discovery.response_types_supported, ['code']);
    assert.deepEqual(discovery.code_challenge_methods_supported, ['S256']);
    assert.deepEqual(discovery.id_token_signing_alg_values_supported, ['RS256', 'ES256']);
    assert.ok(discovery.token_endpoint_auth_methods_supported.includes('client_secret_basic'));
    for (const scope of ['openid', 'email', 'profile', 'groups', 'offline_access']) {
      assert.ok(discovery.scopes_supported.includes(scope), scope);
    }
  });

  test('the key set is one RS256 RSA key and one ES256 P-256 key, public only', async () => {
    const { keys: published } = await getJson(discovery.jwks_uri);
    assert.equal(published.length, 2);
    const rsa = published.find((k) => k.kty === 'RSA');
    const ec = published.find((k) => k.kty === 'EC');
    assert.equal(rsa?.alg, 'RS256');
    assert.equal(ec?.alg, 'ES256');
    assert.equal(ec.crv, 'P-256');
    assert.ok(rsa.kid && ec.kid && rsa.kid !== ec.kid);
    for (const key of published) assert.equal(key.d, undefined, 'no private key material');
    assert.deepEqual(
      published.map((k) => k.kid).sort(),
      idp.jwks.keys.map((k) => k.kid).sort(),
    );
  });

  for (const [name, alg, client] of [
    ['portcullis', 'RS256', (i) => ({ clientId: i.clientId, clientSecret: i.clientSecret })],
    ['portcullis-es', 'ES256', (i) => ({ clientId: i.esClientId, clientSecret: i.esClientSecret })],
  ]) {
    test(`client_credentials for ${name}: a ${alg} JWT for the messaging API`, async () => {
      const token = await clientCredentialsToken(idp, { resource: MESSAGING_API, ...client(idp) });
      const header = decodeProtectedHeader(token);
      assert.equal(header.alg, alg);
      assert.equal(header.typ, 'at+jwt');
      const { payload } = await verify(token, alg, MESSAGING_API);
      assert.equal(payload.aud, MESSAGING_API);
      assert.equal(payload.iss, idp.issuer);
      assert.equal(payload.client_id, name);
    });

    test(`code login for ${name}: a ${alg} ID token for alice with the nonce`, async () => {
      const nonce = `nonce-${name}`;
      const { idToken } = await codeLogin(idp, { ...client(idp), nonce });
      assert.equal(decodeProtectedHeader(idToken).alg, alg);
      const { payload } = await verify(idToken, alg, name);
      assert.equal(payload.sub, 'alice');
      assert.equal(payload.nonce, nonce);
      assert.equal(payload.email, 'alice@example.com');
      assert.equal(payload.email_verified, true);
      assert.equal(payload.name, 'Alice Example');
      assert.equal(payload.groups, undefined, 'groups scope not requested');
    });
  }

  test('an ES256 token does not verify as RS256 (the algorithm pin works)', async () => {
    const token = await clientCredentialsToken(idp, {
      clientId: idp.esClientId, clientSecret: idp.esClientSecret,
    });
    await assert.rejects(verify(token, 'RS256', MESSAGING_API), { code: 'ERR_JOSE_ALG_NOT_ALLOWED' });
  });

  test('an unknown resource is refused', async () => {
    await assert.rejects(
      clientCredentialsToken(idp, { resource: 'api://elsewhere' }),
      /400: invalid_target/,
    );
  });

  test('groups and offline_access: groups claim and a refresh token', async () => {
    const { idToken, refreshToken } = await codeLogin(idp, {
      login: 'bob', scope: 'openid email groups offline_access',
    });
    const { payload } = await verify(idToken, 'RS256', idp.clientId);
    assert.equal(payload.sub, 'bob');
    assert.equal(payload.email, 'bob@other.example');
    assert.equal(payload.email_verified, false);
    assert.deepEqual(payload.groups, []);
    assert.equal(typeof refreshToken, 'string');
  });

  test('code login with a resource: the user gets a JWT access token for the API', async () => {
    const { accessToken, refreshToken } = await codeLogin(idp, { resource: MESSAGING_API });
    const { payload } = await verify(accessToken, 'RS256', MESSAGING_API);
    assert.equal(payload.sub, 'alice');
    assert.equal(payload.client_id, idp.clientId);
    assert.equal(refreshToken, undefined, 'no offline_access, no refresh token');
  });

  test('loginForCode stops at the redirect_uri; the code redeems once, with its verifier', async () => {
    const authorization = await loginForCode(idp);
    assert.equal(authorization.iss, idp.issuer, 'RFC 9207 iss in the authorization response');
    assert.equal(authorization.redirectUri, idp.redirectUris[0]);
    await assert.rejects(
      redeemCode(idp, { ...authorization, codeVerifier: `${authorization.codeVerifier}x` }),
      /400: invalid_grant/,
    );

    const fresh = await loginForCode(idp);
    const tokens = await redeemCode(idp, fresh);
    assert.equal(typeof tokens.id_token, 'string');
    await assert.rejects(redeemCode(idp, fresh), /400: invalid_grant/);
  });

  test('a wrong password or an unknown login gets no code', async () => {
    await assert.rejects(
      loginForCode(idp, { password: 'wrong' }),
      /answered 401: invalid login or password/,
    );
    await assert.rejects(
      loginForCode(idp, { login: 'mallory', password: 'anything' }),
      /answered 401: invalid login or password/,
    );
  });

  test('an unknown client or redirect_uri is refused at the authorization endpoint', async () => {
    await assert.rejects(loginForCode(idp, { clientId: 'nobody' }), /answered 400: invalid_client/);
    await assert.rejects(
      loginForCode(idp, { redirectUri: 'http://127.0.0.1:2/elsewhere' }),
      /answered 400: invalid_redirect_uri/,
    );
  });

  test('a wrong client secret is refused at the token endpoint', async () => {
    await assert.rejects(
      clientCredentialsToken(idp, { clientSecret: idp.esClientSecret }),
      /401: invalid_client/,
    );
    const authorization = await loginForCode(idp);
    await assert.rejects(
      redeemCode(idp, { ...authorization, clientSecret: 'wrong' }),
      /401: invalid_client/,
    );
  });
});

describe('test IdP lifecycle', () => {
  let idp;
  after(() => idp?.close());

  test('redirectUris are registered, and close() stops the server', async () => {
    const redirectUri = 'http://127.0.0.1:9/chat/callback';
    idp = await startIdp({ redirectUris: [redirectUri] });
    const { code } = await loginForCode(idp, { redirectUri });
    assert.ok(code);

    await idp.close();
    await assert.rejects(fetch(`${idp.issuer}/.well-known/openid-configuration`));
    idp = undefined;
  });
});
