// Headless Chromium for the end-to-end tests: the system chromium
// (CHROMIUM_PATH, else /usr/bin/chromium; no browser is downloaded), driven
// through playwright-core. A watched context keeps the browser on loopback
// (anything else is aborted and recorded) and collects the pages' console
// and uncaught errors; steps run in order, skip after a failure, and a
// failure names a screenshot of every open tab.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { chromium } from 'playwright-core';

export const STEP_MS = 15_000; // every wait of playwright in a step

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
}

// A fresh context (a new profile: no cookies, no storage) with playwright's
// waits bounded by STEP_MS. Returns it with what it records:
// `offLoopback` ({url, from} of every request aimed off 127.0.0.1, aborted),
// `pageErrors` (uncaught exceptions) and `consoleLines`.
export async function watchedContext(browser, { viewport = { width: 900, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
  const offLoopback = [];
  const pageErrors = [];
  const consoleLines = [];
  await context.route((u) => u.hostname !== '127.0.0.1', (route) => {
    const r = route.request();
    offLoopback.push({ url: r.url(), from: r.frame()?.url() });
    return route.abort('blockedbyclient');
  });
  context.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()} (${m.page()?.url()})`));
  context.on('weberror', (e) => pageErrors.push(`${e.error().message} (${e.page()?.url()})`));
  return {
    context, offLoopback, pageErrors, consoleLines,
  };
}

// `step(name, fn)`: a test that is skipped once an earlier step failed; a
// failure carries screenshots of every tab of `watched().context`, the end
// of its console and `logTail()` (the server's log).
export function stepper({
  label, watched, logTail, timeoutMs,
}) {
  let broken;
  let shotsDir;
  return (name, fn) => test(name, { timeout: timeoutMs }, async (t) => {
    if (broken) {
      t.skip(`"${broken}" failed`);
      return;
    }
    try {
      await fn();
    } catch (error) {
      broken = name;
      const shots = [];
      for (const [i, p] of (watched()?.context.pages() ?? []).entries()) {
        try {
          shotsDir ??= await mkdtemp(path.join(tmpdir(), 'portcullis-e2e-screenshots-'));
          const file = path.join(shotsDir, `${label}-${name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}-tab${i}.png`);
          await p.screenshot({ path: file, fullPage: true, timeout: 5000 });
          shots.push(`${file} (${p.url()})`);
        } catch (e) {
          shots.push(`tab ${i}: no screenshot (${e.message.split('\n')[0]})`);
        }
      }
      throw new Error(
        `${error.message}\nscreenshots:\n  ${shots.join('\n  ') || '(no open tab)'}\n`
        + `the browser's console:\n  ${(watched()?.consoleLines ?? []).slice(-30).join('\n  ')}\n`
        + `end of the server's log:\n${logTail()}`,
        { cause: error },
      );
    }
  });
}
