//! Signed checkpoints in the C2SP `tlog-checkpoint` / `signed-note` text format.
//!
//! ```text
//! medanchor.example/log        <- origin
//! 1234                         <- tree size
//! base64(root hash)            <- 32-byte root
//! timestamp 1732406400000      <- extension line: Unix time in milliseconds
//!                              <- blank line ends the signed body
//! — medanchor.example/log base64(key hash[4] || Ed25519 signature[64])
//! ```
//!
//! The signature covers the body bytes exactly (every line including its final newline). The key
//! hash is the first four bytes of SHA-256(name || 0x0A || 0x01 || public key), as in signed-note,
//! so existing note verifiers can check medanchor checkpoints.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::hasher::Hash;

const SIG_PREFIX: &str = "\u{2014} ";
const ED25519_ALG: u8 = 0x01;

/// Why a checkpoint did not parse or verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("checkpoint is malformed: {0}")]
    Malformed(&'static str),
    #[error("verifier key is malformed: {0}")]
    BadKey(&'static str),
    #[error("no signature from key {0} on the checkpoint")]
    NoSignature(String),
    #[error("signature from key {0} does not verify")]
    BadSignature(String),
}

/// The signed statement: the log `origin` had `size` leaves with root `root` at `timestamp_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub timestamp_ms: u64,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntimestamp {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.timestamp_ms
        )
    }

    fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let lines: Vec<&str> = body
            .strip_suffix('\n')
            .ok_or(CheckpointError::Malformed(
                "body does not end with a newline",
            ))?
            .split('\n')
            .collect();
        if lines.len() != 4 {
            return Err(CheckpointError::Malformed(
                "body must have origin, size, root and timestamp lines",
            ));
        }
        let origin = lines[0];
        // One token, as the signer's key name must be: an origin with a space could not name the
        // key that signs it.
        if origin.is_empty() || origin.contains(char::is_whitespace) {
            return Err(CheckpointError::Malformed(
                "origin is empty or holds whitespace",
            ));
        }
        let size = parse_decimal(lines[1]).ok_or(CheckpointError::Malformed("bad tree size"))?;
        let root: Hash = B64
            .decode(lines[2])
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(CheckpointError::Malformed("root is not 32 base64 bytes"))?;
        let timestamp_ms = lines[3]
            .strip_prefix("timestamp ")
            .and_then(parse_decimal)
            .ok_or(CheckpointError::Malformed("bad timestamp line"))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            timestamp_ms,
        })
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// First four bytes of SHA-256(name || "\n" || 0x01 || public key).
pub fn key_hash(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut d = Sha256::new();
    d.update(name.as_bytes());
    d.update(b"\n");
    d.update([ED25519_ALG]);
    d.update(key.as_bytes());
    let out = d.finalize();
    [out[0], out[1], out[2], out[3]]
}

/// Signs checkpoints under a key name (by convention the log origin).
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl NoteSigner {
    pub fn new(name: impl Into<String>, key: SigningKey) -> Result<Self, CheckpointError> {
        let name = name.into();
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
            return Err(CheckpointError::BadKey(
                "key name must be non-empty without spaces or '+'",
            ));
        }
        Ok(NoteSigner { name, key })
    }

    pub fn verifier(&self) -> NoteVerifier {
        let key = self.key.verifying_key();
        NoteVerifier {
            key_hash: key_hash(&self.name, &key),
            name: self.name.clone(),
            key,
        }
    }

    pub fn sign(&self, checkpoint: &Checkpoint) -> SignedCheckpoint {
        let body = checkpoint.body();
        let sig: Signature = self.key.sign(body.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&key_hash(&self.name, &self.key.verifying_key()));
        blob.extend_from_slice(&sig.to_bytes());
        let text = format!("{body}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob));
        SignedCheckpoint {
            checkpoint: checkpoint.clone(),
            text,
        }
    }
}

/// A public key that checks checkpoint signatures; its text form is the signed-note verifier key
/// `name+hex(key hash)+base64(0x01 || public key)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    pub name: String,
    pub key_hash: [u8; 4],
    pub key: VerifyingKey,
}

impl NoteVerifier {
    pub fn parse(vkey: &str) -> Result<Self, CheckpointError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(hash_hex), Some(key_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CheckpointError::BadKey("expected name+hash+key"));
        };
        let raw = B64
            .decode(key_b64)
            .map_err(|_| CheckpointError::BadKey("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519_ALG {
            return Err(CheckpointError::BadKey("key is not an Ed25519 key"));
        }
        let bytes: [u8; 32] = raw[1..].try_into().expect("length checked above");
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| CheckpointError::BadKey("key is not a valid Ed25519 point"))?;
        let expect = key_hash(name, &key);
        if hex::encode(expect) != hash_hex {
            return Err(CheckpointError::BadKey(
                "key hash does not match name and key",
            ));
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            key_hash: expect,
            key,
        })
    }

    pub fn to_vkey(&self) -> String {
        let mut raw = vec![ED25519_ALG];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_hash),
            B64.encode(raw)
        )
    }

    /// Short printable id of this key (`name+hash`).
    pub fn key_id(&self) -> String {
        format!("{}+{}", self.name, hex::encode(self.key_hash))
    }
}

/// A checkpoint together with its exact signed-note text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub text: String,
}

impl SignedCheckpoint {
    /// Parses `text` strictly and checks that `verifier` signed it. Any byte outside the grammar
    /// (trailing data, a missing newline, an unknown line) is an error, not something to skip.
    pub fn verify(
        text: &str,
        verifier: &NoteVerifier,
    ) -> Result<SignedCheckpoint, CheckpointError> {
        let split = text
            .find("\n\n")
            .ok_or(CheckpointError::Malformed("no blank line after the body"))?;
        let body = &text[..split + 1];
        let sigs = &text[split + 2..];
        let checkpoint = Checkpoint::parse_body(body)?;
        if !sigs.ends_with('\n') {
            return Err(CheckpointError::Malformed(
                "signature block does not end with a newline",
            ));
        }
        let mut found = false;
        for line in sigs[..sigs.len() - 1].split('\n') {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or(CheckpointError::Malformed(
                    "signature line without the em dash",
                ))?;
            let (name, b64) = rest.split_once(' ').ok_or(CheckpointError::Malformed(
                "signature line without a key name",
            ))?;
            let blob = B64
                .decode(b64)
                .map_err(|_| CheckpointError::Malformed("signature is not base64"))?;
            if blob.len() < 5 {
                return Err(CheckpointError::Malformed("signature is too short"));
            }
            if name != verifier.name || blob[..4] != verifier.key_hash {
                continue; // another witness's signature: not ours to judge
            }
            let sig = Signature::from_slice(&blob[4..])
                .map_err(|_| CheckpointError::BadSignature(verifier.key_id()))?;
            verifier
                .key
                .verify_strict(body.as_bytes(), &sig)
                .map_err(|_| CheckpointError::BadSignature(verifier.key_id()))?;
            found = true;
        }
        if !found {
            return Err(CheckpointError::NoSignature(verifier.key_id()));
        }
        Ok(SignedCheckpoint {
            checkpoint,
            text: text.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_with_whitespace_anywhere_is_refused() {
        let root = B64.encode([0u8; 32]);
        let body = |origin: &str| format!("{origin}\n5\n{root}\ntimestamp 1\n");
        assert!(Checkpoint::parse_body(&body("log.example/a")).is_ok());
        for bad in [
            "",
            "log example",
            " log.example",
            "log.example\t",
            "log\u{a0}x",
        ] {
            assert!(
                Checkpoint::parse_body(&body(bad)).is_err(),
                "origin {bad:?} accepted"
            );
        }
    }
}
