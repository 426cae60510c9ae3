//! Real Redis servers for the tests: Debian's `redis-server` and
//! `redis-sentinel` (scripts/setup.sh installs both), each on a free
//! loopback port with its own temporary directory, no persistence, and
//! killed when its handle is dropped. A missing binary fails the test with
//! a message naming the fix; nothing is skipped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The path of `binary`, or a panic telling how to install it.
fn require(binary: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(binary))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("{binary} is not installed: run scripts/setup.sh (it installs Debian's redis-server and redis-sentinel)")
    })
}

/// Sends one inline command and returns the first line of the answer.
pub fn command(port: u16, line: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).to_string())
}

/// Polls `ready` every 50 ms until it holds or `within` passes.
pub fn wait_for(within: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `redis-server` on 127.0.0.1.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    replica_of: Option<u16>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A primary on a free port, answering PING.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A replica of the primary on `primary_port`.
    pub fn replica_of(primary_port: u16) -> Self {
        Self::launch(Some(primary_port))
    }

    fn launch(replica_of: Option<u16>) -> Self {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            replica_of,
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new(require("redis-server"));
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(primary) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        self.child = Some(command.spawn().expect("redis-server starts"));
        let port = self.port;
        assert!(
            wait_for(Duration::from_secs(10), || command_ok(
                port, "PING", "+PONG"
            )),
            "redis-server on port {port} did not answer PING"
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A synchronous client, for looking at what the store wrote.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("a connection to the test redis")
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut self.client())
            .expect("KEYS");
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn command_ok(port: u16, line: &str, expect: &str) -> bool {
    command(port, line).is_some_and(|answer| answer.starts_with(expect))
}

/// One `redis-sentinel` watching the primary `master` as `m`, quick to
/// decide it is down and to fail over.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub const MASTER: &'static str = "m";

    pub fn start(primary_port: u16) -> Self {
        let binary = require("redis-sentinel");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {m} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {m} 500\n\
                 sentinel failover-timeout {m} 2000\n\
                 sentinel parallel-syncs {m} 1\n",
                dir = dir.path().display(),
                m = Self::MASTER,
            ),
        )
        .expect("sentinel.conf written");
        let child = Command::new(binary)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel starts");
        assert!(
            wait_for(Duration::from_secs(10), || command_ok(
                port, "PING", "+PONG"
            )),
            "redis-sentinel on port {port} did not answer PING"
        );
        Sentinel {
            child,
            port,
            _dir: dir,
        }
    }

    /// The port of the primary the sentinel names now.
    pub fn primary_port(&self) -> Option<u16> {
        let answer = command(
            self.port,
            &format!("SENTINEL get-master-addr-by-name {}", Self::MASTER),
        )?;
        // *2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n
        answer.lines().nth(4)?.trim().parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
