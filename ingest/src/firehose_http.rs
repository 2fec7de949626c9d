//! The Amazon Data Firehose HTTP endpoint delivery protocol (version 1.0): `POST /firehose`
//! (or `/firehose/{cluster}`) with `records[].data`, authenticated by the access key
//! configured on the delivery stream (`X-Amz-Firehose-Access-Key`, compared in constant
//! time). The body is stored whole, like a webhook body, and answered 200 with Firehose's
//! `{"requestId", "timestamp"}` only once durable; errors carry `errorMessage`, and
//! Firehose retries them. The archiver peels the records (base64, gzip, CloudWatch Logs
//! subscription messages) by shape.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use subtle::ConstantTimeEq;

use crate::webhook::{Peer, WebhookState, store};

/// The access key Firehose must present.
#[derive(Clone)]
pub struct FirehoseKey(Arc<Vec<u8>>);

impl FirehoseKey {
    /// Reads the key from `path` (surrounding whitespace ignored; at least 16 bytes).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = text.trim_ascii();
        if key.len() < 16 {
            return Err(format!(
                "{}: the Firehose access key must be at least 16 bytes",
                path.display()
            ));
        }
        Ok(Self(Arc::new(key.to_vec())))
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        // Equal lengths are compared in constant time; a length mismatch says only that.
        presented.len() == self.0.len() && bool::from(presented.ct_eq(&self.0))
    }
}

/// The Firehose routes.
pub fn router(state: WebhookState, key: FirehoseKey) -> Router {
    Router::new()
        .route("/firehose", post(default_cluster))
        .route("/firehose/{cluster}", post(named_cluster))
        .with_state((state, key))
}

async fn default_cluster(
    State((state, key)): State<(WebhookState, FirehoseKey)>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(state, key, peer, None, headers, body).await
}

async fn named_cluster(
    State((state, key)): State<(WebhookState, FirehoseKey)>,
    Extension(peer): Extension<Peer>,
    UrlPath(cluster): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(state, key, peer, Some(cluster), headers, body).await
}

/// Firehose's answer: `requestId` echoed, `timestamp` in milliseconds, and on failure
/// `errorMessage`.
fn answer(status: StatusCode, request_id: &str, error: Option<&str>) -> Response {
    let timestamp = crate::pipeline::now_micros() / 1000;
    let mut body = serde_json::json!({"requestId": request_id, "timestamp": timestamp});
    if let Some(e) = error {
        body["errorMessage"] = e.into();
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn receive(
    state: WebhookState,
    key: FirehoseKey,
    peer: Peer,
    cluster: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let request_id = headers
        .get("x-amz-firehose-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let presented = headers
        .get("x-amz-firehose-access-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let response = if !key.accepts(presented) {
        tracing::warn!(peer = ?peer.addr, request_id = %request_id, "Firehose request refused: access key not accepted");
        answer(
            StatusCode::UNAUTHORIZED,
            &request_id,
            Some("X-Amz-Firehose-Access-Key not accepted"),
        )
    } else {
        let source = headers
            .get("x-amz-firehose-source-arn")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown stream");
        let cluster = cluster.unwrap_or_else(|| state.settings.default_cluster.clone());
        let identity = format!("firehose {source}");
        match store(&state, cluster, identity, &headers, body).await {
            Ok(place) => {
                tracing::debug!(request_id = %request_id, "Firehose request stored {place}");
                answer(StatusCode::OK, &request_id, None)
            }
            Err(r) => {
                let mut resp = answer(r.status, &request_id, Some(&r.message));
                if let Some(secs) = r.retry_after {
                    resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
                }
                resp
            }
        }
    };
    state
        .metrics
        .answered(response.status().as_u16(), started.elapsed());
    response
}
