// Running the portcullis binary from a test: free loopback ports, the binary
// itself (PORTCULLIS_BIN, else the debug build), a config written to a
// temporary folder, readiness (health, then providers' keys), the log, and a
// clean stop; for `portcullis run` (startPortcullis) and for any other
// command (launchPortcullis with waitUntilReady, as `portcullis demo` is).
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = path.resolve(E2E_DIR, '../..');

export const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// A loopback port nobody listens on right now: bound, read, released.
export async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((resolve) => { server.close(resolve); });
  return port;
}

// The portcullis binary: PORTCULLIS_BIN (scripts/test.sh), else the debug
// build, built here when it is missing.
export function portcullisBinary() {
  const bin = process.env.PORTCULLIS_BIN
    ?? path.resolve(REPO_ROOT, 'target/debug/portcullis');
  if (!existsSync(bin)) {
    if (process.env.PORTCULLIS_BIN) throw new Error(`PORTCULLIS_BIN=${bin} does not exist`);
    execFileSync('cargo', ['build', '--bin', 'portcullis', '--features', 'demo'], { cwd: REPO_ROOT, stdio: 'pipe' });
  }
  return bin;
}

// Parses Prometheus text: the sum of the series of `name` whose labels
// include every pair of `labels`; undefined when there is none.
export function metricSum(text, name, labels = {}) {
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries(
      [...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)]
        .map(([, k, v]) => [k, v]),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) {
      sum += Number(m[3]);
      found = true;
    }
  }
  return found ? sum : undefined;
}

// Writes `config` (YAML text) to `fileName` in a new temporary folder whose
// name starts with `prefix`, and starts `portcullis <command> -c <file>`
// with exactly the environment `env`. Returns `log()` (stdout and stderr so far),
// `exitCode()` (undefined while it runs: the code, else the signal),
// `stop()` (SIGINT, SIGKILL after 5 s; resolves once its output is all in
// `log()`; removes the temporary folder) and
// `pid`.
export async function launchPortcullis(command, config, {
  env = process.env, prefix = 'portcullis-e2e-', fileName = 'portcullis.yaml',
} = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  const file = path.join(dir, fileName);
  await writeFile(file, config);
  const proc = spawn(portcullisBinary(), [command, '-c', file], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  proc.stdout.on('data', (c) => { log += c; });
  proc.stderr.on('data', (c) => { log += c; });
  const exited = once(proc, 'exit');
  // After 'exit' the pipes may still hold output; 'close' comes once both
  // are drained, so a log read after stop() is complete.
  const closed = once(proc, 'close');
  let exitCode;
  exited.then(([code, signal]) => { exitCode = code ?? signal; });

  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGINT');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    await closed;
    await rm(dir, { recursive: true, force: true });
  };
  return {
    log: () => log, exitCode: () => exitCode, stop, pid: proc.pid,
  };
}

// Calls `ready()` every 100 ms (a throw counts as not ready yet) until it
// answers true. When `running` (what launchPortcullis returns, or an object
// with its `exitCode()`, `stop()` and `log()`) exits first, or `timeoutMs`
// pass, stops it and throws with its log; `name` names it in the error.
export async function waitUntilReady(running, ready, { timeoutMs, name = 'portcullis' }) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const exitCode = running.exitCode();
    if (exitCode !== undefined) {
      await running.stop();
      throw new Error(`${name} exited (${exitCode}):\n${running.log()}`);
    }
    if (Date.now() > deadline) {
      await running.stop();
      throw new Error(`${name} not ready after ${timeoutMs} ms:\n${running.log()}`);
    }
    try {
      if (await ready()) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
}

// Starts portcullis with `config` (YAML text) and extra environment
// variables; resolves once /healthz answers and every provider in
// `providers` reports `portcullis_provider_ready 1`. Returns `metrics()`,
// `log()` (stdout and stderr so far) and `stop()` (SIGINT, SIGKILL after
// 5 s; removes the temporary folder).
export async function startPortcullis({
  config, env = {}, adminPort, providers = [], timeoutMs = 15_000,
}) {
  const running = await launchPortcullis('run', config, { env: { ...process.env, ...env } });
  const metrics = async () => {
    const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
    if (!res.ok) throw new Error(`/metrics answered ${res.status}`);
    return res.text();
  };
  await waitUntilReady(running, async () => {
    const health = await fetch(`http://127.0.0.1:${adminPort}/healthz`);
    if (!health.ok) return false;
    const text = await metrics();
    return providers.every((p) => metricSum(text, 'portcullis_provider_ready', { provider: p }) === 1);
  }, { timeoutMs });
  return {
    metrics, stop: running.stop, log: running.log, pid: running.pid,
  };
}
