//! C2SP signed notes (`c2sp.org/signed-note`) with Ed25519 keys, and witness cosignatures
//! (`c2sp.org/tlog-cosignature`, `cosignature/v1`): the signatures on the log's
//! checkpoints, in the formats Go's `golang.org/x/mod/sumdb/note` and the transparency-dev
//! tools read, so a third party can check them with their own tools.
//!
//! Key encodings: a verifier key (vkey) is `<name>+<key id, 8 hex>+<base64(type || public
//! key)>`; a signer key is `PRIVATE+KEY+<name>+<key id>+<base64(type || seed)>`, type 0x01
//! for a log key (Ed25519 over the note text) and 0x04 for a witness (Ed25519 over
//! `cosignature/v1\ntime <t>\n` and the note text).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// Signature type of an Ed25519 signed-note key.
const TYPE_ED25519: u8 = 0x01;
/// Signature type of a `cosignature/v1` witness key.
const TYPE_COSIGNATURE: u8 = 0x04;
/// What starts every signature line.
const SIG_PREFIX: &str = "\u{2014} ";

/// A signed-note error: a key or note that is not well formed.
#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    /// A key could not be parsed.
    #[error("key: {0}")]
    Key(String),
    /// A note could not be parsed.
    #[error("signed note: {0}")]
    Malformed(String),
    /// A signature by a key the reader trusts does not verify: the note was altered or
    /// signed by someone else under that key's name.
    #[error("signed note: the signature of {name} does not verify")]
    BadSignature {
        /// The key's name.
        name: String,
    },
}

/// The kind of a key: the log's own, or a witness's cosignature key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Signs checkpoints as the log (signed-note Ed25519).
    Log,
    /// Cosigns checkpoints as a witness (`cosignature/v1`).
    Witness,
}

impl KeyKind {
    fn type_byte(self) -> u8 {
        match self {
            KeyKind::Log => TYPE_ED25519,
            KeyKind::Witness => TYPE_COSIGNATURE,
        }
    }

    fn of(byte: u8) -> Result<Self, NoteError> {
        match byte {
            TYPE_ED25519 => Ok(KeyKind::Log),
            TYPE_COSIGNATURE => Ok(KeyKind::Witness),
            other => Err(NoteError::Key(format!(
                "signature type 0x{other:02x} is not Ed25519 (0x01) or cosignature/v1 (0x04)"
            ))),
        }
    }
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::Key(format!(
            "key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

fn key_id(name: &str, kind: KeyKind, public: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([kind.type_byte()]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A public key that checks signatures on notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    kind: KeyKind,
    id: u32,
    public: [u8; 32],
}

impl Verifier {
    /// Parses a vkey (`<name>+<id>+<base64>`), checking that its id matches its key.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let vkey = vkey.trim();
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key(format!(
                "{vkey:?} is not a verifier key <name>+<id>+<key>"
            )));
        };
        check_name(name)?;
        let raw = B64
            .decode(key)
            .map_err(|e| NoteError::Key(format!("verifier key of {name}: {e}")))?;
        let (&ty, public) = raw
            .split_first()
            .ok_or_else(|| NoteError::Key(format!("verifier key of {name} is empty")))?;
        let kind = KeyKind::of(ty)?;
        let public: [u8; 32] = public.try_into().map_err(|_| {
            NoteError::Key(format!("verifier key of {name} is not 32 bytes of Ed25519"))
        })?;
        let v = Verifier {
            name: name.to_string(),
            kind,
            id: key_id(name, kind, &public),
            public,
        };
        if format!("{:08x}", v.id) != id {
            return Err(NoteError::Key(format!(
                "verifier key of {name}: id {id} does not match its key ({:08x})",
                v.id
            )));
        }
        Ok(v)
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is a log key or a witness key.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The vkey text.
    pub fn vkey(&self) -> String {
        let mut raw = vec![self.kind.type_byte()];
        raw.extend_from_slice(&self.public);
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }

    /// Whether `sig` (the bytes of a signature line after the key id) signs `text`.
    fn verifies(&self, text: &str, sig: &[u8]) -> bool {
        let key = UnparsedPublicKey::new(&ED25519, &self.public);
        match self.kind {
            KeyKind::Log => key.verify(text.as_bytes(), sig).is_ok(),
            KeyKind::Witness => {
                let Some((time, sig)) = sig.split_first_chunk::<8>() else {
                    return false;
                };
                let msg = cosigned_message(u64::from_be_bytes(*time), text);
                key.verify(msg.as_bytes(), sig).is_ok()
            }
        }
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.vkey())
    }
}

fn cosigned_message(time: u64, text: &str) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// A private key that signs notes.
pub struct Signer {
    verifier: Verifier,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the seed.
        f.debug_struct("Signer")
            .field("verifier", &self.verifier)
            .finish()
    }
}

impl Signer {
    /// A new random key named `name`.
    pub fn generate(name: &str, kind: KeyKind) -> Result<Self, NoteError> {
        use ring::rand::SecureRandom;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| NoteError::Key("the system's random source failed".into()))?;
        Self::from_seed(name, kind, seed)
    }

    fn from_seed(name: &str, kind: KeyKind, seed: [u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| NoteError::Key(format!("Ed25519 seed of {name}: {e}")))?;
        let public: [u8; 32] =
            pair.public_key().as_ref().try_into().map_err(|_| {
                NoteError::Key(format!("Ed25519 public key of {name} is not 32 bytes"))
            })?;
        Ok(Signer {
            verifier: Verifier {
                name: name.to_string(),
                kind,
                id: key_id(name, kind, &public),
                public,
            },
            seed,
            pair,
        })
    }

    /// Parses a signer key (`PRIVATE+KEY+<name>+<id>+<base64>`).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let rest = text.strip_prefix("PRIVATE+KEY+").ok_or_else(|| {
            NoteError::Key("a signing key starts with PRIVATE+KEY+ (is this a vkey?)".into())
        })?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key(
                "a signing key is PRIVATE+KEY+<name>+<id>+<key>".into(),
            ));
        };
        let raw = B64
            .decode(key)
            .map_err(|e| NoteError::Key(format!("signing key of {name}: {e}")))?;
        let (&ty, seed) = raw
            .split_first()
            .ok_or_else(|| NoteError::Key(format!("signing key of {name} is empty")))?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| {
            NoteError::Key(format!(
                "signing key of {name} is not a 32-byte Ed25519 seed"
            ))
        })?;
        let signer = Self::from_seed(name, KeyKind::of(ty)?, seed)?;
        if format!("{:08x}", signer.verifier.id) != id {
            return Err(NoteError::Key(format!(
                "signing key of {name}: id {id} does not match its key"
            )));
        }
        Ok(signer)
    }

    /// The signer key text (secret: write it with owner-only permissions).
    pub fn encode(&self) -> String {
        let mut raw = vec![self.verifier.kind.type_byte()];
        raw.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.verifier.name,
            self.verifier.id,
            B64.encode(raw)
        )
    }

    /// The matching public key.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The signature line this key puts under `text` (the note text, ending in a newline);
    /// `time` (seconds since the epoch) is what a witness attests it saw the note at.
    pub fn signature_line(&self, text: &str, time: u64) -> String {
        let mut sig = self.verifier.id.to_be_bytes().to_vec();
        match self.verifier.kind {
            KeyKind::Log => sig.extend_from_slice(self.pair.sign(text.as_bytes()).as_ref()),
            KeyKind::Witness => {
                sig.extend_from_slice(&time.to_be_bytes());
                let msg = cosigned_message(time, text);
                sig.extend_from_slice(self.pair.sign(msg.as_bytes()).as_ref());
            }
        }
        format!("{SIG_PREFIX}{} {}\n", self.verifier.name, B64.encode(sig))
    }
}

/// A note and its signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    /// The text that is signed (ends in a newline).
    pub text: String,
    /// The signature lines, each `(key name, key id, signature bytes after the id)`.
    pub signatures: Vec<(String, u32, Vec<u8>)>,
}

impl SignedNote {
    /// Signs `text` (which must end in a newline) with every signer.
    pub fn sign(text: &str, signers: &[&Signer], time: u64) -> String {
        let mut out = String::from(text);
        out.push('\n');
        for s in signers {
            out.push_str(&s.signature_line(text, time));
        }
        out
    }

    /// Parses a signed note without checking any signature.
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        let bad = |m: &str| NoteError::Malformed(m.to_string());
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let text = &note[..split + 1];
        let sigs = &note[split + 2..];
        if !sigs.ends_with('\n') {
            return Err(bad("the last signature line does not end in a newline"));
        }
        let mut signatures = Vec::new();
        for line in sigs.lines() {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| bad("a signature line does not start with an em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("a signature line has no key name"))?;
            let raw = B64
                .decode(b64)
                .map_err(|e| NoteError::Malformed(format!("signature of {name}: {e}")))?;
            let (id, sig) = raw
                .split_first_chunk::<4>()
                .ok_or_else(|| NoteError::Malformed(format!("signature of {name} is short")))?;
            signatures.push((name.to_string(), u32::from_be_bytes(*id), sig.to_vec()));
        }
        if signatures.is_empty() {
            return Err(bad("no signature"));
        }
        Ok(SignedNote {
            text: text.to_string(),
            signatures,
        })
    }

    /// The keys among `trusted` whose signatures are on the note and verify. A signature
    /// claiming a trusted key (its name and id) that does not verify is an error: the note
    /// was altered. Signatures by keys not in `trusted` are ignored, as the spec says.
    pub fn verified_by<'a>(&self, trusted: &'a [Verifier]) -> Result<Vec<&'a Verifier>, NoteError> {
        let mut ok: Vec<&Verifier> = Vec::new();
        for (name, id, sig) in &self.signatures {
            let Some(v) = trusted.iter().find(|v| &v.name == name && v.id == *id) else {
                continue;
            };
            if !v.verifies(&self.text, sig) {
                return Err(NoteError::BadSignature { name: name.clone() });
            }
            if !ok.contains(&v) {
                ok.push(v);
            }
        }
        Ok(ok)
    }

    /// The time a witness's cosignature attests, if `v`'s cosignature is on the note.
    pub fn cosigned_at(&self, v: &Verifier) -> Option<u64> {
        self.signatures
            .iter()
            .find(|(n, id, _)| *n == v.name && *id == v.id)
            .and_then(|(_, _, sig)| sig.split_first_chunk::<8>())
            .map(|(t, _)| u64::from_be_bytes(*t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_text() {
        let s = Signer::generate("example.com/log", KeyKind::Log).expect("key");
        let again = Signer::parse(&s.encode()).expect("parse");
        assert_eq!(again.verifier(), s.verifier());
        let v = Verifier::parse(&s.verifier().vkey()).expect("vkey");
        assert_eq!(&v, s.verifier());
        // A vkey whose id does not match its key is refused.
        let vk = s.verifier().vkey();
        let tampered = vk.replacen(&format!("{:08x}", v.id), "00000000", 1);
        assert!(Verifier::parse(&tampered).is_err());
        assert!(Signer::parse(&vk).is_err(), "a vkey is not a signing key");
    }

    /// Go's `golang.org/x/mod/sumdb/note` documentation example: this key and note are
    /// published there, so matching them shows the encoding is the one other tools read.
    #[test]
    fn verifies_the_go_note_documentation_example() {
        let v =
            Verifier::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .expect("vkey");
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let parsed = SignedNote::parse(note).expect("parse");
        let trusted = [v];
        assert_eq!(parsed.verified_by(&trusted).expect("verify").len(), 1);
        // The same document's signing key signs the same bytes (Ed25519 is deterministic).
        let signer = Signer::parse(
            "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        )
        .expect("skey");
        assert_eq!(SignedNote::sign(&parsed.text, &[&signer], 0), note);
        let altered = note.replace("cryptography", "Cryptography");
        assert!(matches!(
            SignedNote::parse(&altered)
                .expect("parse")
                .verified_by(&trusted),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn log_and_witness_signatures_verify_and_others_are_ignored() {
        let log = Signer::generate("log", KeyKind::Log).expect("key");
        let witness = Signer::generate("witness", KeyKind::Witness).expect("key");
        let stranger = Signer::generate("stranger", KeyKind::Log).expect("key");
        let text = "origin\n3\nAAAA\n";
        let note = SignedNote::sign(text, &[&log, &witness, &stranger], 1_700_000_000);
        let parsed = SignedNote::parse(&note).expect("parse");
        assert_eq!(parsed.text, text);
        let trusted = [log.verifier().clone(), witness.verifier().clone()];
        let ok = parsed.verified_by(&trusted).expect("verify");
        assert_eq!(ok.len(), 2);
        assert_eq!(parsed.cosigned_at(witness.verifier()), Some(1_700_000_000));
        // Signed by another key under the log's name: a bad signature, not an unknown one.
        let impostor = Signer::from_seed("log", KeyKind::Log, [7u8; 32]).expect("key");
        let forged = SignedNote::sign(text, &[&impostor], 0);
        let forged = forged.replace(
            &forged[forged.find("\u{2014} log ").expect("sig")..],
            &log.signature_line("origin\n3\nBBBB\n", 0),
        );
        assert!(
            SignedNote::parse(&forged)
                .expect("parse")
                .verified_by(&trusted)
                .is_err()
        );
    }
}
