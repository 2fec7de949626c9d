//! Bearer tokens the webhook accepts, kept only as SHA-256 digests and compared in constant
//! time.
//!
//! File format, one token per line, blank lines and `#` comments skipped:
//!
//! ```text
//! <token> [<name>] [clusters=<cluster>[,<cluster>...]]
//! ```
//!
//! The name is recorded as the sender's identity (default `token-line-N`). A token that
//! names clusters may post events of those clusters only; with one cluster it is also the
//! cluster of requests whose path names none. Tokens must be at least
//! [`MIN_TOKEN_CHARS`] characters: a short token can be guessed.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest token accepted (128 bits of a random hex or base64 token is 22-32 characters).
pub const MIN_TOKEN_CHARS: usize = 20;

/// One accepted token.
#[derive(Clone)]
struct Token {
    digest: [u8; 32],
    name: String,
    clusters: Option<Vec<String>>,
}

/// The tokens a webhook accepts.
#[derive(Clone, Default)]
pub struct BearerTokens {
    tokens: Vec<Token>,
}

/// Who a token says the sender is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity<'a> {
    /// The token's name.
    pub name: &'a str,
    /// The clusters it may post for; `None` for any.
    pub clusters: Option<&'a [String]>,
}

impl std::fmt::Debug for BearerTokens {
    /// Names only, never digests.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.tokens.iter().map(|t| &t.name))
            .finish()
    }
}

impl BearerTokens {
    /// Reads a tokens file (see the module documentation); errors name the line.
    pub fn load(path: &Path) -> Result<Self, std::io::Error> {
        let text = std::fs::read_to_string(path)?;
        Self::parse(&text).map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidData, m))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let token = parts.next().unwrap_or_default();
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(format!(
                    "line {}: the token has {} characters; use at least {MIN_TOKEN_CHARS} \
                     random characters (e.g. `openssl rand -hex 32`)",
                    i + 1,
                    token.chars().count()
                ));
            }
            let mut name = None;
            let mut clusters = None;
            for part in parts {
                if let Some(list) = part.strip_prefix("clusters=") {
                    let list: Vec<String> = list
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect();
                    if let Some(bad) = list
                        .iter()
                        .find_map(|c| auditlake_archive::cluster_name_error(c))
                    {
                        return Err(format!("line {}: {bad}", i + 1));
                    }
                    if list.is_empty() {
                        return Err(format!("line {}: clusters= names no cluster", i + 1));
                    }
                    clusters = Some(list);
                } else if name.is_none() {
                    name = Some(part.to_string());
                } else {
                    return Err(format!(
                        "line {}: unexpected {part:?} (expected `<token> [<name>] [clusters=a,b]`)",
                        i + 1
                    ));
                }
            }
            tokens.push(Token {
                digest: Sha256::digest(token.as_bytes()).into(),
                name: name.unwrap_or_else(|| format!("token-line-{}", i + 1)),
                clusters,
            });
        }
        if tokens.is_empty() {
            return Err("no token in the file".into());
        }
        Ok(Self { tokens })
    }

    /// Who the presented token belongs to, comparing against every token in constant time.
    pub fn check(&self, presented: &[u8]) -> Option<TokenIdentity<'_>> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.digest.ct_eq(&digest)) {
                found = Some(TokenIdentity {
                    name: &t.name,
                    clusters: t.clusters.as_deref(),
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_sender_and_may_bind_clusters() {
        let t = BearerTokens::parse(
            "# apiservers\n\
             0123456789abcdef0123 prod-apiserver clusters=prod-eu\n\
             abcdefabcdefabcdefabcdef\n\
             ffffffffffffffffffff ops clusters=a,b\n",
        )
        .unwrap();
        let id = t.check(b"0123456789abcdef0123").unwrap();
        assert_eq!(id.name, "prod-apiserver");
        assert_eq!(id.clusters, Some(&["prod-eu".to_string()][..]));
        let id = t.check(b"abcdefabcdefabcdefabcdef").unwrap();
        assert_eq!((id.name, id.clusters), ("token-line-3", None));
        assert_eq!(
            t.check(b"ffffffffffffffffffff")
                .unwrap()
                .clusters
                .unwrap()
                .len(),
            2
        );
        assert!(t.check(b"wrong-token-wrong-token").is_none());
    }

    #[test]
    fn short_tokens_and_bad_lines_are_refused_with_their_line() {
        let e = BearerTokens::parse("# x\ns3cret prod\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("at least 20"), "{e}");
        let e = BearerTokens::parse("0123456789abcdef0123 a b\n").unwrap_err();
        assert!(e.contains("unexpected \"b\""), "{e}");
        let e = BearerTokens::parse("0123456789abcdef0123 a clusters=..\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(BearerTokens::parse("# only comments\n").is_err());
    }
}
