// One browser login through a proxy at the benchmark's provider (idp.mjs),
// scripted over plain HTTP: GET START_URL on the proxy, follow every
// redirect, fill in the provider's devInteractions login and consent forms,
// until the proxy answers something other than a redirect. Prints the
// cookies the proxy set as one `Cookie:` header line.
//
//   node login.mjs START_URL [USER]
//
// Cookies are kept per origin (host and port): the proxy and the provider
// are both on 127.0.0.1, and only the proxy's belong in the output.
import { request as httpRequest } from 'node:http';

import { parseForm } from '../../tests/e2e/lib/tokens.mjs';

const [start, user = 'alice'] = process.argv.slice(2);
if (!start) {
  console.error('usage: node login.mjs START_URL [USER]');
  process.exit(2);
}
const proxy = new URL(start).origin;
const jars = new Map();
const jar = (url) => {
  const key = new URL(url).origin;
  if (!jars.has(key)) jars.set(key, new Map());
  return jars.get(key);
};
const cookieHeader = (url) => [...jar(url)].map(([k, v]) => `${k}=${v}`).join('; ');
const store = (res, url) => {
  for (const line of res.setCookies) {
    const [pair, ...attributes] = line.split(';').map((s) => s.trim());
    const eq = pair.indexOf('=');
    const [name, value] = [pair.slice(0, eq), pair.slice(eq + 1)];
    const expired = attributes.some((a) => /^max-age=0$/i.test(a)) || value === '';
    if (expired) jar(url).delete(name);
    else jar(url).set(name, value);
  }
};

// A browser's top-level navigation: mod_auth_openidc answers what looks like
// a script's request (`Sec-Fetch-Mode` other than navigate, no text/html in
// Accept) with 401 instead of sending it to the provider. Node's fetch
// always sends `Sec-Fetch-Mode: cors`, hence node:http.
const NAVIGATION = {
  accept: 'text/html,application/xhtml+xml',
  'sec-fetch-mode': 'navigate',
  'sec-fetch-dest': 'document',
};

// One request, redirects not followed: status, headers, Set-Cookie lines, body.
function send(url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, headers, timeout: 10_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode,
        location: res.headers.location,
        setCookies: res.headers['set-cookie'] ?? [],
        text: Buffer.concat(chunks).toString(),
      }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer within 10 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

let url = start;
let request = { method: 'GET' };
for (let step = 0; step < 20; step += 1) {
  const res = await send(url, {
    ...request,
    headers: { ...request.headers, ...NAVIGATION, cookie: cookieHeader(url) },
  });
  store(res, url);
  const { location } = res;
  if (res.status >= 300 && res.status < 400 && location) {
    url = new URL(location, url).href;
    request = { method: 'GET' };
    continue;
  }
  const body = res.text;
  if (new URL(url).origin === proxy) {
    if (jar(proxy).size === 0) {
      console.error(`login: the proxy answered ${res.status} and set no cookie: ${body.slice(0, 300)}`);
      process.exit(1);
    }
    console.log(`Cookie: ${cookieHeader(proxy)}`);
    process.exit(0);
  }
  const form = res.status === 200 ? parseForm(body, url) : undefined;
  if (!form) {
    console.error(`login: ${url} answered ${res.status}: ${body.slice(0, 300)}`);
    process.exit(1);
  }
  if (form.fields.get('prompt') === 'login') {
    form.fields.set('login', user);
    form.fields.set('password', 'any');
  }
  url = form.action;
  request = {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: form.fields.toString(),
  };
}
console.error('login: no end after 20 steps');
process.exit(1);
