//! Verification of the OpenID Connect tokens Google signs for Pub/Sub push requests
//! (`Authorization: Bearer <JWT>`): an RS256 signature by a key of a JWKS file (Google's
//! `https://www.googleapis.com/oauth2/v3/certs`, saved by the operator), the audience
//! configured on the subscription, Google as issuer, not expired, and optionally the push
//! service account's e-mail. Nothing is fetched over the network: the receiver must not
//! depend on reaching Google to accept a request.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::Deserialize;

/// Issuers of Google's OIDC tokens.
const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// Clock skew tolerated on `exp` and `iat`, in seconds.
const LEEWAY_SECONDS: i64 = 60;

/// The RSA public keys of a JWKS file, by key id, and what a token must claim.
#[derive(Debug, Clone)]
pub struct OidcVerifier {
    keys: HashMap<String, (Vec<u8>, Vec<u8>)>,
    audience: String,
    email: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    alg: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<i64>,
    iat: Option<i64>,
    email: Option<String>,
    email_verified: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl OidcVerifier {
    /// Loads the RS256 keys of the JWKS file at `path`; tokens must name `audience`, and
    /// `email` (the push service account) when given.
    pub fn load(path: &Path, audience: &str, email: Option<&str>) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let jwks: Jwks = serde_json::from_slice(&text)
            .map_err(|e| format!("{}: not a JWKS document: {e}", path.display()))?;
        let mut keys = HashMap::new();
        for k in jwks.keys {
            if k.kty != "RSA" || k.alg.as_deref().is_some_and(|a| a != "RS256") {
                continue;
            }
            let (Some(kid), Some(n), Some(e)) = (k.kid, k.n, k.e) else {
                continue;
            };
            let decode = |v: &str| URL_SAFE_NO_PAD.decode(v.trim_end_matches('='));
            match (decode(&n), decode(&e)) {
                (Ok(n), Ok(e)) => {
                    keys.insert(kid, (n, e));
                }
                _ => {
                    return Err(format!(
                        "{}: key {kid:?}: n or e is not base64url",
                        path.display()
                    ));
                }
            }
        }
        if keys.is_empty() {
            return Err(format!("{}: no RS256 key with a kid", path.display()));
        }
        if audience.is_empty() {
            return Err("a push audience is required to check OIDC tokens".into());
        }
        Ok(Self {
            keys,
            audience: audience.to_string(),
            email: email.filter(|e| !e.is_empty()).map(str::to_string),
        })
    }

    /// Checks `token` at `now` (seconds since the epoch); the e-mail it names, or why it
    /// is refused.
    pub fn verify(&self, token: &str, now: i64) -> Result<String, String> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT (three dot-separated parts expected)".into());
        };
        let decode = |what: &str, v: &str| {
            URL_SAFE_NO_PAD
                .decode(v)
                .map_err(|e| format!("JWT {what}: not base64url: {e}"))
        };
        let h: Header = serde_json::from_slice(&decode("header", header)?)
            .map_err(|e| format!("JWT header: {e}"))?;
        if h.alg != "RS256" {
            return Err(format!("JWT algorithm {:?}: only RS256 is accepted", h.alg));
        }
        let kid = h.kid.ok_or("JWT header names no key (kid)")?;
        let (n, e) = self
            .keys
            .get(&kid)
            .ok_or_else(|| format!("JWT signed by key {kid:?}, not in the JWKS file"))?;
        let signed = &token[..header.len() + 1 + payload.len()];
        RsaPublicKeyComponents { n, e }
            .verify(
                &RSA_PKCS1_2048_8192_SHA256,
                signed.as_bytes(),
                &decode("signature", signature)?,
            )
            .map_err(|_| "JWT signature does not verify".to_string())?;
        let c: Claims = serde_json::from_slice(&decode("claims", payload)?)
            .map_err(|e| format!("JWT claims: {e}"))?;
        if !c
            .iss
            .as_deref()
            .is_some_and(|i| GOOGLE_ISSUERS.contains(&i))
        {
            return Err(format!("JWT issuer {:?} is not Google", c.iss));
        }
        let audience_ok = match &c.aud {
            Some(Audience::One(a)) => *a == self.audience,
            Some(Audience::Many(all)) => all.contains(&self.audience),
            None => false,
        };
        if !audience_ok {
            return Err("JWT audience is not this receiver's".into());
        }
        match c.exp {
            Some(exp) if exp + LEEWAY_SECONDS >= now => {}
            _ => return Err("JWT expired (or has no exp)".into()),
        }
        if c.iat.is_some_and(|iat| iat - LEEWAY_SECONDS > now) {
            return Err("JWT issued in the future".into());
        }
        let email = c.email.unwrap_or_default();
        if let Some(want) = &self.email
            && (email != *want || c.email_verified != Some(true))
        {
            return Err(format!(
                "JWT e-mail {email:?} is not the push service account"
            ));
        }
        Ok(email)
    }
}
