//! The Google Cloud Pub/Sub push protocol: `POST /pubsub/push` (or `/pubsub/push/{cluster}`)
//! with `{"message": {"data": <base64>, ...}, "subscription": ...}`, acknowledged by a 2xx
//! answer, which is sent only once the body is durable; anything else makes Pub/Sub
//! redeliver. Authenticated by the subscription's push-auth OIDC token (verified against a
//! JWKS file and the configured audience, [`crate::oidc`]) or, without OIDC, a shared
//! token in the endpoint URL's `token` query parameter. The archiver peels `message.data`
//! (base64 of a GKE `LogEntry`) by shape.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use subtle::ConstantTimeEq;

use crate::oidc::OidcVerifier;
use crate::webhook::{Peer, WebhookState, store};

/// How push requests prove they come from the subscription.
#[derive(Clone)]
pub enum PushAuth {
    /// Google-signed OIDC tokens (`Authorization: Bearer`).
    Oidc(Arc<OidcVerifier>),
    /// A shared secret in the URL's `token` query parameter.
    SharedToken(Arc<Vec<u8>>),
}

impl PushAuth {
    /// The shared token in the file at `path` (at least 20 bytes).
    pub fn shared_token(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let token = text.trim_ascii();
        if token.len() < 20 {
            return Err(format!(
                "{}: the Pub/Sub push token must be at least 20 bytes",
                path.display()
            ));
        }
        Ok(Self::SharedToken(Arc::new(token.to_vec())))
    }

    /// Who sent the request, or why it is refused.
    fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<String, String> {
        match self {
            PushAuth::Oidc(verifier) => {
                let token = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or("missing OIDC bearer token")?;
                let now = crate::pipeline::now_micros() / 1_000_000;
                verifier
                    .verify(token.trim(), now)
                    .map(|email| format!("pubsub {email}"))
            }
            PushAuth::SharedToken(want) => {
                let presented = uri
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("token="))
                    .ok_or("missing token query parameter")?;
                let ok =
                    presented.len() == want.len() && bool::from(presented.as_bytes().ct_eq(want));
                ok.then(|| "pubsub token".to_string())
                    .ok_or_else(|| "token not accepted".to_string())
            }
        }
    }
}

/// The Pub/Sub push routes.
pub fn router(state: WebhookState, auth: PushAuth) -> Router {
    Router::new()
        .route("/pubsub/push", post(default_cluster))
        .route("/pubsub/push/{cluster}", post(named_cluster))
        .with_state((state, auth))
}

async fn default_cluster(
    State((state, auth)): State<(WebhookState, PushAuth)>,
    Extension(peer): Extension<Peer>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(state, auth, peer, None, uri, headers, body).await
}

async fn named_cluster(
    State((state, auth)): State<(WebhookState, PushAuth)>,
    Extension(peer): Extension<Peer>,
    UrlPath(cluster): UrlPath<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(state, auth, peer, Some(cluster), uri, headers, body).await
}

fn answer(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"status": status.as_u16(), "message": message});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn receive(
    state: WebhookState,
    auth: PushAuth,
    peer: Peer,
    cluster: Option<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = match auth.check(&headers, &uri) {
        Err(why) => {
            tracing::warn!(peer = ?peer.addr, reason = %why, "Pub/Sub push request refused");
            answer(StatusCode::UNAUTHORIZED, &why)
        }
        Ok(identity) => {
            let cluster = cluster.unwrap_or_else(|| state.settings.default_cluster.clone());
            match store(&state, cluster, identity, &headers, body).await {
                // Any 2xx acknowledges the message.
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(r) => {
                    let mut resp = answer(r.status, &r.message);
                    if let Some(secs) = r.retry_after {
                        resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
                    }
                    resp
                }
            }
        }
    };
    state
        .metrics
        .answered(response.status().as_u16(), started.elapsed());
    response
}
