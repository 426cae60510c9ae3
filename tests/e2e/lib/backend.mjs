// The chat backend behind portcullis in the end-to-end tests, and the `ws`
// client that opens a WebSocket to it through portcullis: a Node HTTP +
// WebSocket server on 127.0.0.1 that records what reached it and verifies
// X-Auth-Assertion, and a handshake that reports a refusal as data.
import { once } from 'node:events';
import { createServer } from 'node:http';

import { jwtVerify } from 'jose';
import WebSocket, { WebSocketServer } from 'ws';

// The chat backend: records every request's URL and headers (`seen`) and
// answers an HTTP request with them as JSON; on an upgrade it verifies
// X-Auth-Assertion against `assertionKeys` (audience: `upstream`, the
// upstream's name in portcullis's config; issuer: `assertionIssuer`) and
// sends a JSON welcome (what it received, the protocol chosen, the verified
// assertion, and the demo backend's `user` and `identity`: the name it
// greets, the X-Auth-* headers), then echoes. Returns `seen`, `port` and `close()`.
export async function startBackend({ upstream }) {
  const seen = [];
  const backend = {
    seen,
    // Set once portcullis's address is known.
    assertionKeys: undefined,
    assertionIssuer: undefined,
  };
  const server = createServer((req, res) => {
    seen.push({ url: req.url, headers: req.headers });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ url: req.url, headers: req.headers }));
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => {
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  wss.on('connection', async (ws, req) => {
    seen.push({ url: req.url, headers: req.headers });
    let assertion = null;
    const token = req.headers['x-auth-assertion'];
    if (token !== undefined) {
      try {
        const { payload, protectedHeader } = await jwtVerify(token, backend.assertionKeys, {
          audience: upstream,
          issuer: backend.assertionIssuer,
        });
        assertion = { verified: true, payload, header: protectedHeader };
      } catch (error) {
        assertion = { verified: false, error: `${error.code ?? ''} ${error.message}` };
      }
    }
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    // `user` and `identity` as the demo's chat backend (src/demo/backend.rs)
    // names them, which the demo pages show.
    const user = ['x-auth-name', 'x-auth-email', 'x-auth-subject']
      .map((h) => req.headers[h]).find((v) => v !== undefined) ?? 'anonymous';
    const identity = Object.fromEntries(Object.entries(req.headers)
      .filter(([name]) => name.startsWith('x-auth-')));
    ws.send(JSON.stringify({
      type: 'welcome', url: req.url, headers: req.headers, protocol: ws.protocol, assertion, user, identity,
    }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  backend.port = server.address().port;
  backend.close = async () => {
    for (const client of wss.clients) client.terminate();
    const closed = new Promise((resolve) => { server.close(resolve); });
    server.closeAllConnections();
    await closed;
  };
  return backend;
}

// Opens a WebSocket with exactly `headers` and offering `protocols`.
// Resolves with the open socket (`ws`), the protocol and headers of the 101
// and the backend's welcome (its first message), or with the refused
// handshake's status, headers and body (parsed when it is JSON).
export function openSocket(url, { headers = {}, protocols = [] } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, { headers });
    let upgradeHeaders;
    ws.on('error', reject);
    ws.once('upgrade', (res) => { upgradeHeaders = res.headers; });
    ws.once('unexpected-response', (req, res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        req.destroy();
        const text = Buffer.concat(chunks).toString();
        let body;
        try { body = JSON.parse(text); } catch { body = text; }
        resolve({ status: res.statusCode, headers: res.headers, body });
      });
    });
    ws.once('message', (data) => {
      resolve({
        status: 101, ws, protocol: ws.protocol, headers: upgradeHeaders, welcome: JSON.parse(data),
      });
    });
  });
}
