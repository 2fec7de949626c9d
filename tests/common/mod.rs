//! Helpers shared by the binary's integration tests: ports, raw HTTP, running `serve` as a
//! child process, reading its metrics and memory.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_auditlake");

pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One HTTP/1.1 request; the status code, or `None` if the connection failed.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Starts `serve` on plain HTTP with its archive and log under `dir`, signing with
/// `dir/log.key` when that key exists.
pub fn start(dir: &Path, webhook: SocketAddr, ops: SocketAddr, stderr: Stdio) -> Child {
    let key = dir.join("log.key");
    let signing: Vec<String> = if key.exists() {
        vec!["--signing-key".into(), key.to_str().unwrap().into()]
    } else {
        Vec::new()
    };
    let child = Command::new(BIN)
        .args([
            "--archive",
            dir.join("archive").to_str().unwrap(),
            "serve",
            "--insecure-plain-http",
            "--allow-unauthenticated",
        ])
        .args([
            "--listen",
            &webhook.to_string(),
            "--ops-listen",
            &ops.to_string(),
        ])
        .args([
            "--wal-dir",
            dir.join("wal").to_str().unwrap(),
            "--flush-interval-seconds",
            "1",
        ])
        .args(&signing)
        .env("AUDITLAKE_LOG", "warn")
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(ops, "GET", "/readyz", b"") != Some(200) {
        assert!(Instant::now() < deadline, "server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Runs `auditlake --archive <archive> <args>` (warnings-only log), asserts it succeeded,
/// returns its stdout.
pub fn auditlake_ok<S: AsRef<std::ffi::OsStr>>(archive: &Path, args: &[S]) -> String {
    success_stdout(auditlake_output(archive, args))
}

/// Runs `auditlake --archive <archive> <args>` (warnings-only log) and returns its output.
pub fn auditlake_output<S: AsRef<std::ffi::OsStr>>(
    archive: &Path,
    args: &[S],
) -> std::process::Output {
    Command::new(BIN)
        .arg("--archive")
        .arg(archive)
        .args(args)
        .env("AUDITLAKE_LOG", "warn")
        .output()
        .unwrap()
}

/// The stdout of a run that must have succeeded (its stderr is the failure message).
pub fn success_stdout(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `auditlake query --format csv` over the archive at `archive`: its stdout.
pub fn query_csv(archive: &Path, sql: &str) -> String {
    auditlake_ok(archive, &["query", "--format", "csv", sql])
}

/// The JSON objects of an NDJSON file.
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One HTTP/1.1 request; the status code and the body, or `None` if the connection failed.
pub fn http_text(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// `auditlake serve` as a child process on loopback (plain HTTP, no client authentication:
/// the tests that need TLS run in the library's tests).
pub struct Server {
    pub child: Child,
    pub webhook: SocketAddr,
    pub ops: SocketAddr,
}

impl Server {
    /// Starts `serve` for the archive and log under `dir` with extra `args`, wrapped in
    /// `sh -c` with `shell_prefix` (e.g. `ulimit -d 150000;`) when given.
    pub fn spawn(dir: &Path, args: &[&str], shell_prefix: Option<&str>, stderr: Stdio) -> Self {
        let (webhook, ops) = (free_port(), free_port());
        let mut argv: Vec<String> = vec![
            "--archive".into(),
            dir.join("archive").display().to_string(),
            "serve".into(),
            "--insecure-plain-http".into(),
            "--allow-unauthenticated".into(),
            "--listen".into(),
            webhook.to_string(),
            "--ops-listen".into(),
            ops.to_string(),
            "--wal-dir".into(),
            dir.join("wal").display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut cmd = match shell_prefix {
            Some(prefix) => {
                let quoted: Vec<String> = std::iter::once(BIN.to_string())
                    .chain(argv)
                    .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
                    .collect();
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{prefix} exec {}", quoted.join(" ")));
                c
            }
            None => {
                let mut c = Command::new(BIN);
                c.args(argv);
                c
            }
        };
        let child = cmd
            .env("AUDITLAKE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Self {
            child,
            webhook,
            ops,
        }
    }

    /// Waits up to `secs` for `/readyz` to answer 200.
    pub fn wait_ready(&mut self, secs: u64) {
        if let Err(why) = self.ready_within(secs) {
            panic!("{why}");
        }
    }

    /// Waits up to `secs` for `/readyz` to answer 200; else why not.
    pub fn ready_within(&mut self, secs: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while http(self.ops, "GET", "/readyz", b"") != Some(200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("serve exited before it was ready: {status}"));
            }
            if Instant::now() >= deadline {
                return Err(format!("serve not ready after {secs} s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// POSTs `body` to `/audit/webhook/{cluster}`; the status code.
    pub fn post(&self, cluster: &str, body: &[u8]) -> Option<u16> {
        http(
            self.webhook,
            "POST",
            &format!("/audit/webhook/{cluster}"),
            body,
        )
    }

    /// The value of an unlabelled metric (`auditlake_commits_total`), 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = http_text(self.ops, "GET", "/metrics", b"").unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits up to `secs` until `metric` reaches `at_least`.
    pub fn wait_metric(&self, name: &str, at_least: f64, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.metric(name) < at_least {
            assert!(
                Instant::now() < deadline,
                "{name} = {} after {secs} s, want {at_least}",
                self.metric(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// SIGTERM, then waits up to `secs` for the exit.
    pub fn terminate(mut self, secs: u64) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = wait_exit(&mut self.child, secs);
        (status, started.elapsed())
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Waits up to `secs` for `child` to exit (killing it and failing the test otherwise).
pub fn wait_exit(child: &mut Child, secs: u64) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the process did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The events of the scenario at `scenario` (relative to the checkout) as an NDJSON file in
/// `dir`, through the same completion the scenario runner uses.
/// The events of a scenario file, completed as the scenario runner completes them, one
/// JSON line each.
pub fn scenario_events(scenario: &Path) -> Vec<String> {
    let s = auditlake_analytics::Scenario::load(scenario).unwrap();
    s.events
        .iter()
        .enumerate()
        .map(|(i, e)| auditlake_analytics::complete_event(i, &s.defaults, e).to_string())
        .collect()
}

/// The cluster-admin binding scenario's two events as one EventList body, as an apiserver
/// posts them.
pub fn crb_event_list() -> String {
    let events = scenario_events(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/scenarios/rbac-crb-cluster-admin-by-stranger.yaml"
    )));
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
        events.join(",")
    )
}

/// A scenario's events (`scenario`: path from the checkout) as `dir/audit.ndjson`.
pub fn scenario_ndjson(dir: &Path, scenario: &str) -> std::path::PathBuf {
    let events = scenario_events(&auditlake_fixtures::checkout_dir().join(scenario));
    let ndjson: String = events.iter().map(|e| format!("{e}\n")).collect();
    let input = dir.join("audit.ndjson");
    std::fs::write(&input, ndjson).unwrap();
    input
}
