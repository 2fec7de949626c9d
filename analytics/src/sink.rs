//! Where findings go: stdout (NDJSON), a file (NDJSON, appended), an HTTP endpoint (one JSON
//! object per POST, retried with backoff). Delivery runs on its own thread behind a bounded
//! queue, so a slow endpoint slows the detectors (and, behind them, archiving) rather than
//! dropping findings.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use crate::finding::Finding;

/// One destination of findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// NDJSON on standard output.
    Stdout,
    /// NDJSON appended to a file.
    File(PathBuf),
    /// `POST` of each finding as JSON.
    Http(String),
}

impl FromStr for SinkTarget {
    type Err = String;

    /// `stdout` (or `-`), an `http://`/`https://` URL, or a file path (`file:` prefix optional).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty findings target: use stdout, a file path or an http(s) URL".into());
        }
        Ok(match s {
            "stdout" | "-" => Self::Stdout,
            _ if s.starts_with("http://") || s.starts_with("https://") => Self::Http(s.into()),
            _ => Self::File(PathBuf::from(s.strip_prefix("file:").unwrap_or(s))),
        })
    }
}

/// What the delivery thread did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Findings handed over.
    pub findings: u64,
    /// Deliveries that failed for good (after retries), over all targets.
    pub failed: u64,
}

/// Findings queued to a delivery thread; dropping it delivers what is queued and stops.
pub struct FindingSinks {
    tx: Option<SyncSender<Finding>>,
    worker: Option<std::thread::JoinHandle<SinkStats>>,
}

/// Why sinks could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A findings file could not be opened.
    #[error("opening findings file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP client or its runtime could not be built.
    #[error("findings HTTP client: {0}")]
    Http(String),
}

enum Out {
    Stdout,
    File(std::fs::File, PathBuf),
    Http(String),
}

/// HTTP attempts per finding and the first backoff (doubled after each failure).
const HTTP_ATTEMPTS: u32 = 5;
const HTTP_BACKOFF: Duration = Duration::from_millis(500);

impl FindingSinks {
    /// Opens every target (files are created or appended) and starts the delivery thread.
    pub fn start(targets: &[SinkTarget]) -> Result<Self, SinkError> {
        let mut outs = Vec::new();
        for t in targets {
            outs.push(match t {
                SinkTarget::Stdout => Out::Stdout,
                SinkTarget::File(p) => Out::File(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|source| SinkError::File {
                            path: p.clone(),
                            source,
                        })?,
                    p.clone(),
                ),
                SinkTarget::Http(url) => Out::Http(url.clone()),
            });
        }
        let http = if outs.iter().any(|o| matches!(o, Out::Http(_))) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| SinkError::Http(e.to_string()))?;
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| SinkError::Http(e.to_string()))?;
            Some((runtime, client))
        } else {
            None
        };
        let (tx, rx) = sync_channel::<Finding>(1024);
        let worker = std::thread::Builder::new()
            .name("auditlake-findings".into())
            .spawn(move || deliver(rx, outs, http))
            .map_err(|e| SinkError::Http(format!("spawning the delivery thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// Queues a finding (waits while the queue is full).
    pub fn send(&self, finding: Finding) {
        if let Some(tx) = &self.tx
            && tx.send(finding).is_err()
        {
            tracing::error!("the findings delivery thread stopped; a finding was not delivered");
        }
    }

    /// Delivers what is queued and stops; returns the counts.
    pub fn close(mut self) -> SinkStats {
        self.shutdown()
    }

    fn shutdown(&mut self) -> SinkStats {
        self.tx.take();
        self.worker
            .take()
            .and_then(|w| w.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for FindingSinks {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn deliver(
    rx: Receiver<Finding>,
    mut outs: Vec<Out>,
    http: Option<(tokio::runtime::Runtime, reqwest::Client)>,
) -> SinkStats {
    let mut stats = SinkStats::default();
    for finding in rx {
        stats.findings += 1;
        let json = match serde_json::to_string(&finding) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(rule = %finding.rule_id, error = %e, "cannot serialise a finding");
                stats.failed += 1;
                continue;
            }
        };
        tracing::info!(
            rule = %finding.rule_id,
            severity = %finding.severity,
            principal = finding.principal.as_deref().unwrap_or(""),
            object = %finding.object.display(),
            count = finding.count,
            "finding"
        );
        for out in &mut outs {
            let ok = match out {
                Out::Stdout => {
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{json}")
                        .and_then(|()| stdout.flush())
                        .is_ok()
                }
                Out::File(f, path) => match writeln!(f, "{json}").and_then(|()| f.flush()) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "writing a finding");
                        false
                    }
                },
                Out::Http(url) => match &http {
                    Some((runtime, client)) => runtime.block_on(post(client, url, &json)),
                    None => false,
                },
            };
            if !ok {
                stats.failed += 1;
            }
        }
    }
    stats
}

async fn post(client: &reqwest::Client, url: &str, json: &str) -> bool {
    let mut backoff = HTTP_BACKOFF;
    for attempt in 1..=HTTP_ATTEMPTS {
        let sent = client
            .post(url)
            .header("Content-Type", "application/json")
            .body(json.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                tracing::warn!(
                    url,
                    attempt,
                    status = r.status().as_u16(),
                    "findings endpoint refused a finding"
                )
            }
            Err(e) => tracing::warn!(url, attempt, error = %e, "findings endpoint unreachable"),
        }
        if attempt < HTTP_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(
        url,
        attempts = HTTP_ATTEMPTS,
        "a finding could not be delivered"
    );
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_parse_from_flags() {
        assert_eq!("stdout".parse(), Ok(SinkTarget::Stdout));
        assert_eq!(
            "https://hooks.example/alert".parse(),
            Ok(SinkTarget::Http("https://hooks.example/alert".into()))
        );
        assert_eq!(
            "file:/var/log/f.ndjson".parse(),
            Ok(SinkTarget::File("/var/log/f.ndjson".into()))
        );
        assert!("".parse::<SinkTarget>().is_err());
    }

    /// Reads one HTTP/1.1 request from `stream`, answers `status` and returns the body.
    fn answer(mut stream: std::net::TcpStream, status: &str) -> String {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, length) = loop {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed before the request ended");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                break (end + 4, length);
            }
        };
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap()
    }

    #[test]
    fn an_http_endpoint_that_refuses_once_gets_the_finding_on_the_retry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alert", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let first = answer(listener.accept().unwrap().0, "503 Service Unavailable");
            let second = answer(listener.accept().unwrap().0, "200 OK");
            (first, second)
        });
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("findings.ndjson");
        let sinks =
            FindingSinks::start(&[SinkTarget::Http(url), SinkTarget::File(file.clone())]).unwrap();
        sinks.send(Finding {
            rule_id: "K8S-RBAC-001".into(),
            severity: crate::rule::Severity::High,
            title: "Binding to a powerful role".into(),
            outcome: crate::finding::Outcome::Done,
            cluster: "prod".into(),
            time: "2026-11-01T10:00:00.000000Z".into(),
            last_time: "2026-11-01T10:00:00.000000Z".into(),
            principal: Some("mallory".into()),
            impersonated: None,
            source_ip: Some("10.0.0.1".into()),
            verb: Some("create".into()),
            object: crate::finding::ObjectRef::default(),
            details: None,
            response_code: Some(201),
            evidence: vec!["crb-1".into()],
            count: 1,
            mitre: vec!["T1098".into()],
            remediation: String::new(),
            time_micros: 0,
        });
        let stats = sinks.close();
        assert_eq!(
            stats,
            SinkStats {
                findings: 1,
                failed: 0
            }
        );
        let (first, second) = server.join().unwrap();
        assert_eq!(first, second, "the retry sends the same finding");
        let posted: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(posted["rule_id"], "K8S-RBAC-001");
        assert_eq!(posted["principal"], "mallory");
        assert_eq!(posted["evidence"], serde_json::json!(["crb-1"]));
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written.lines().count(), 1);
        let line: serde_json::Value = serde_json::from_str(written.trim()).unwrap();
        assert_eq!(line, posted, "the file gets the same JSON as the endpoint");
    }
}
