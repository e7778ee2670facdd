//! Process signals (security review L13), end to end: the real `augur` binary, spawned with a
//! minimal config, signalled with `kill`. A second SIGTERM / ctrl-c during the drain exits at
//! once; SIGHUP does not kill the process. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{get, TestUpstream};

/// A hard bound for one step: past it the test fails, it never hangs.
const BOUND: Duration = Duration::from_secs(10);

/// The running binary, its log lines (JSON, one per line) and its proxy address. Killed on
/// drop if a test failed before it exited.
struct Augur {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
    addr: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl Augur {
    /// Start `augur` on 127.0.0.1:0 with one route to `upstream` and a 30 s drain, and wait
    /// until it logs that it is serving.
    fn start(upstream: SocketAddr) -> Augur {
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            config.path(),
            format!(
                r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "30s"
log_format = "json"
log_level = "info"

[upstream]
timeout = "60s"

[[route]]
name = "api"
upstream = "http://{upstream}"
"#
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_augur"))
            .arg("--config")
            .arg(config.path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut augur = Augur {
            child,
            lines,
            addr: "0.0.0.0:0".parse().unwrap(),
            _config: config,
        };
        let serving = augur.wait_for_log("augur serving");
        augur.addr = serving["fields"]["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        augur
    }

    /// The first log line (from now on) whose message contains `what`; fails the test when
    /// the process closes its stderr (it exited) or after [`BOUND`].
    fn wait_for_log(&self, what: &str) -> serde_json::Value {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if message(&v).contains(what) => return v,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("no log {what:?} within {BOUND:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("augur exited before logging {what:?}")
                }
            }
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} failed");
    }

    /// The exit status, once the process has exited within `within`; `None` if still running.
    async fn exited_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Augur {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        v => v["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The first SIGTERM starts the drain, which waits for a request in flight; a second signal
/// (here ctrl-c's SIGINT) ends the process at once, with a failure status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once() {
    let up = TestUpstream::start().await;
    let mut augur = Augur::start(up.addr);
    let slow = "/slow?delay_ms=25000";
    let url = format!("http://{}{slow}", augur.addr);
    let in_flight = tokio::spawn(async move { get(&url).await });
    assert!(
        up.wait_count(slow, 1).await,
        "the request reached the upstream"
    );

    augur.signal("TERM");
    augur.wait_for_log("shutting down");
    assert!(
        augur
            .exited_within(Duration::from_millis(500))
            .await
            .is_none(),
        "the drain waits for the request in flight"
    );
    let sent = Instant::now();
    augur.signal("INT");
    let status = augur
        .exited_within(BOUND)
        .await
        .unwrap_or_else(|| panic!("still draining {BOUND:?} after the second signal"));
    assert!(sent.elapsed() < BOUND);
    assert_eq!(
        status.code(),
        Some(1),
        "a cut drain is a failure: {status:?}"
    );
    in_flight.abort();
}

/// SIGHUP (a closed terminal, or an operator expecting a reload) is logged and ignored: the
/// process keeps serving, and SIGTERM still ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_kill_the_process() {
    let up = TestUpstream::start().await;
    let mut augur = Augur::start(up.addr);
    augur.signal("HUP");
    augur.wait_for_log("reload is not supported");
    assert!(augur
        .exited_within(Duration::from_millis(200))
        .await
        .is_none());
    let got = get(&format!("http://{}/after-hup", augur.addr)).await;
    assert_eq!(got.status, 200);

    augur.signal("TERM");
    let status = augur
        .exited_within(BOUND)
        .await
        .unwrap_or_else(|| panic!("no exit {BOUND:?} after SIGTERM"));
    assert_eq!(status.code(), Some(0), "{status:?}");
}
