//! The apiserver's own audit counters, scraped from its metrics endpoint for each heartbeat
//! record, so an evidence report can reconcile what the apiserver audited (and failed to)
//! with what the archive holds.

use std::path::PathBuf;
use std::time::Duration;

use auditlake_archive::ApiserverAuditCounters;

use crate::serve::ServeError;
use crate::serve_config::ServeConfig;

/// A scrape must answer within this long: a heartbeat is not held up by a slow apiserver.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Larger metrics pages are refused (an apiserver's is a few MB).
const MAX_METRICS_BYTES: usize = 64 << 20;

/// Scrapes `apiserver_audit_event_total` and `apiserver_audit_error_total` from one
/// apiserver's `/metrics`.
pub(crate) struct ApiserverMetrics {
    client: reqwest::Client,
    url: String,
    token_file: Option<PathBuf>,
    cluster: String,
}

impl ApiserverMetrics {
    /// The scraper `serve`'s `apiserver_metrics_*` keys ask for, if any.
    pub(crate) fn from_config(config: &ServeConfig) -> Result<Option<Self>, ServeError> {
        config
            .apiserver_metrics_url
            .as_deref()
            .map(|url| {
                Self::new(
                    url,
                    config.apiserver_metrics_token_file.clone(),
                    config.apiserver_metrics_ca_file.as_deref(),
                    &config.cluster,
                )
            })
            .transpose()
    }

    /// A scraper of `url` for `cluster`, authenticating with the bearer token in
    /// `token_file` (read at every scrape: projected tokens rotate) and trusting `ca_file`
    /// (PEM) besides the system's roots.
    pub(crate) fn new(
        url: &str,
        token_file: Option<PathBuf>,
        ca_file: Option<&std::path::Path>,
        cluster: &str,
    ) -> Result<Self, ServeError> {
        let bad = |message: String| ServeError::Config(format!("apiserver_metrics_url: {message}"));
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(bad(format!("{url:?} is not an http(s) URL")));
        }
        let mut builder = reqwest::Client::builder().timeout(SCRAPE_TIMEOUT);
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                ServeError::Config(format!("apiserver_metrics_ca_file {}: {e}", ca.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                ServeError::Config(format!("apiserver_metrics_ca_file {}: {e}", ca.display()))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| bad(e.to_string()))?;
        Ok(ApiserverMetrics {
            client,
            url: url.to_string(),
            token_file,
            cluster: cluster.to_string(),
        })
    }

    /// The counters now, or why they could not be read.
    pub(crate) async fn scrape(&self) -> Result<ApiserverAuditCounters, String> {
        let mut request = self.client.get(&self.url);
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path)
                .map_err(|e| format!("reading the token {}: {e}", path.display()))?;
            request = request.bearer_auth(token.trim());
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {}: HTTP {status}", self.url));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_METRICS_BYTES as u64)
        {
            return Err(format!(
                "GET {}: more than {MAX_METRICS_BYTES} bytes",
                self.url
            ));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| format!("GET {}: the metrics are not UTF-8", self.url))?;
        let (audit_event_total, audit_error_total) =
            parse_audit_counters(text).map_err(|e| format!("GET {}: {e}", self.url))?;
        Ok(ApiserverAuditCounters {
            cluster: self.cluster.clone(),
            audit_event_total,
            audit_error_total,
        })
    }
}

/// `apiserver_audit_event_total` and `apiserver_audit_error_total` (summed over their
/// label sets) from a Prometheus text page. The event counter must be there (an
/// apiserver with auditing on always exports it); the error counter only appears once an
/// error happened, so its absence is 0.
pub(crate) fn parse_audit_counters(text: &str) -> Result<(u64, u64), String> {
    let (mut events, mut errors) = (None::<f64>, 0f64);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = split_name(line) else {
            continue;
        };
        let target = match name {
            "apiserver_audit_event_total" => 0,
            "apiserver_audit_error_total" => 1,
            _ => continue,
        };
        // After the name: optional {labels}, the value, an optional timestamp.
        let rest = match rest.strip_prefix('{') {
            Some(labels) => match labels.rfind('}') {
                Some(end) => &labels[end + 1..],
                None => return Err(format!("unterminated labels in {line:?}")),
            },
            None => rest,
        };
        let value: f64 = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("no counter value in {line:?}"))?;
        if target == 0 {
            *events.get_or_insert(0.0) += value;
        } else {
            errors += value;
        }
    }
    let events = events.ok_or("no apiserver_audit_event_total (is auditing on?)")?;
    // Counters are integers written as floats; they stay far below 2^53.
    Ok((events as u64, errors as u64))
}

/// The metric name at the start of a sample line, and what follows it.
fn split_name(line: &str) -> Option<(&str, &str)> {
    let end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    Some((&line[..end], line[end..].trim_start_matches(' ')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_counters_summing_label_sets() {
        let page = "# HELP apiserver_audit_event_total [ALPHA] Counter of audit events generated and sent to the audit backend.\n\
                    # TYPE apiserver_audit_event_total counter\n\
                    apiserver_audit_event_total 1.234567e+06\n\
                    apiserver_audit_error_total{plugin=\"webhook\"} 12\n\
                    apiserver_audit_error_total{plugin=\"log\"} 3 1700000000000\n\
                    apiserver_audit_requests_rejected_total 0\n";
        assert_eq!(parse_audit_counters(page), Ok((1_234_567, 15)));
    }

    #[test]
    fn errors_absent_are_zero_but_events_absent_is_an_error() {
        assert_eq!(
            parse_audit_counters("apiserver_audit_event_total 7\n"),
            Ok((7, 0))
        );
        let e = parse_audit_counters("process_cpu_seconds_total 3\n").unwrap_err();
        assert!(e.contains("apiserver_audit_event_total"), "{e}");
        let e = parse_audit_counters("apiserver_audit_event_total{x=\"1\" 7\n").unwrap_err();
        assert!(e.contains("unterminated"), "{e}");
        let e = parse_audit_counters("apiserver_audit_event_total NaN\n").unwrap_err();
        assert!(e.contains("no counter value"), "{e}");
    }
}
