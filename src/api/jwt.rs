//! JWT access tokens from a hospital's identity provider (RS256 or ES256), checked against its
//! JWKS, with SMART on FHIR scopes.
//!
//! A token is accepted when: its header's `alg` is RS256 or ES256 and matches the key's type
//! (no `none`, no HMAC: a public key is never used as a shared secret); its key is in the JWKS
//! (by `kid`, or the only key of its type); the signature verifies (ring); `iss` is the
//! configured issuer; `aud` holds the configured audience; `exp` is
//! present and not past, `nbf` not in the future (both with `leeway_secs`). The claim
//! `principal_claim` (default `sub`) names a principal, which must exist and not be revoked:
//! the principal's role and patients still decide what it may see, and the token's scopes can
//! only narrow that.
//!
//! The JWKS comes from a file or an `http://` URL (an identity provider on the hospital
//! network), is cached, and is read again when a token names a key it does not hold (at most
//! once every 10 s), so the provider's key rotation needs no restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `[jwt]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must carry (this gateway's name at the identity provider): tokens issued
    /// for other applications are refused.
    pub audience: String,
    /// The JWKS as a file…
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// …or at an `https://` URL (`http://` only on a loopback address: keys fetched in the
    /// clear could be swapped by anyone on the path, and would then sign any token).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// CA certificates (PEM) the JWKS URL's server certificate must chain to; unset, the
    /// system's roots.
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    /// The claim whose value is a principal id.
    #[serde(default = "default_claim")]
    pub principal_claim: String,
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_claim() -> String {
    "sub".into()
}

fn default_leeway() -> u64 {
    60
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT")]
    Malformed,
    #[error("algorithm {0:?} is not accepted (RS256, ES256)")]
    Algorithm(String),
    #[error("no key in the JWKS for this token")]
    UnknownKey,
    #[error("signature does not verify")]
    Signature,
    #[error("claim {0}: {1}")]
    Claim(&'static str, &'static str),
    #[error("JWKS: {0}")]
    Jwks(String),
}

/// One verification key.
#[derive(Debug, Clone)]
enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed P-256 point (0x04 ‖ x ‖ y).
    P256(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    key: Key,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Parses a JWKS, keeping the RSA and P-256 keys meant for signatures.
fn parse_jwks(text: &str) -> Result<Vec<Jwk>, JwtError> {
    let v: Value = serde_json::from_str(text).map_err(|e| JwtError::Jwks(e.to_string()))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| JwtError::Jwks("no \"keys\" array".into()))?;
    let mut out = Vec::new();
    for k in keys {
        let s = |name: &str| k.get(name).and_then(Value::as_str);
        if s("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let key = match s("kty") {
            Some("RSA") => match (s("n").and_then(b64), s("e").and_then(b64)) {
                (Some(n), Some(e)) => Key::Rsa { n, e },
                _ => continue,
            },
            Some("EC") if s("crv") == Some("P-256") => {
                match (s("x").and_then(b64), s("y").and_then(b64)) {
                    (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                        let mut p = vec![4u8];
                        p.extend_from_slice(&x);
                        p.extend_from_slice(&y);
                        Key::P256(p)
                    }
                    _ => continue,
                }
            }
            _ => continue,
        };
        out.push(Jwk {
            kid: s("kid").map(str::to_string),
            key,
        });
    }
    Ok(out)
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub principal: String,
    pub scopes: Scopes,
}

/// What a token's SMART on FHIR scopes allow, per resource type (or all, `*`): v2 permission
/// strings (`patient/*.rs`, `user/Observation.rs`, `user/Consent.cud`, `system/*.cruds`) and
/// v1 (`patient/*.read`, `.write`, `.*`). A principal's own credential (token, certificate) is
/// `full`: no scope narrows it, and only it may do admin work.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes {
    full: bool,
    /// Permissions (`c r u d s`) on every type.
    all: Vec<u8>,
    types: HashMap<String, Vec<u8>>,
}

/// The permissions a scope's suffix grants, or `None` when it is not a valid one.
fn permissions(perms: &str) -> Option<Vec<u8>> {
    match perms {
        "read" => return Some(b"rs".to_vec()),
        "write" => return Some(b"cud".to_vec()),
        "*" => return Some(b"cruds".to_vec()),
        _ => {}
    }
    let order = |c: u8| b"cruds".iter().position(|x| *x == c);
    let ok = !perms.is_empty()
        && perms.bytes().all(|b| order(b).is_some())
        && perms
            .bytes()
            .zip(perms.bytes().skip(1))
            .all(|(a, b)| order(a) < order(b));
    ok.then(|| perms.as_bytes().to_vec())
}

impl Scopes {
    pub fn parse(scope: &str) -> Scopes {
        let mut s = Scopes::default();
        for item in scope.split_whitespace() {
            let Some((context, rest)) = item.split_once('/') else {
                continue;
            };
            if !matches!(context, "patient" | "user" | "system") {
                continue;
            }
            let Some((kind, perms)) = rest.split_once('.') else {
                continue;
            };
            let Some(perms) = permissions(perms) else {
                continue;
            };
            let into = if kind == "*" {
                &mut s.all
            } else if !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphabetic()) {
                s.types.entry(kind.to_string()).or_default()
            } else {
                continue;
            };
            for p in perms {
                if !into.contains(&p) {
                    into.push(p);
                }
            }
        }
        s
    }

    /// Whether the scopes grant permission `perm` (`b'c'`, `b'r'`, `b'u'`, `b'd'`, `b's'`) on
    /// resources of this type.
    pub fn permits(&self, kind: &str, perm: u8) -> bool {
        self.full
            || self.all.contains(&perm)
            || self.types.get(kind).is_some_and(|p| p.contains(&perm))
    }

    /// Whether a resource of this type may be read under these scopes.
    pub fn allows(&self, kind: &str) -> bool {
        self.permits(kind, b'r')
    }

    /// Reading every resource type (needed for the original message, which cannot be filtered).
    pub fn allows_everything(&self) -> bool {
        self.full || self.all.contains(&b'r')
    }

    /// No read scope at all.
    pub fn none(&self) -> bool {
        !self.full && !self.all.contains(&b'r') && !self.types.values().any(|p| p.contains(&b'r'))
    }

    /// A principal's own credential: nothing narrows it.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// For principals' own credentials (bearer tokens, client certificates).
    pub fn everything() -> Scopes {
        Scopes {
            full: true,
            ..Scopes::default()
        }
    }
}

pub struct JwtVerifier {
    config: JwtConfig,
    /// Where the JWKS is fetched from, when it is a URL.
    source: Option<Arc<JwksUrl>>,
    keys: Arc<RwLock<Vec<Jwk>>>,
    /// A fetch from the URL is running (in the background; at most one).
    fetching: Arc<AtomicBool>,
    last_reload: Mutex<Option<Instant>>,
}

const RELOAD_EVERY: Duration = Duration::from_secs(10);

impl JwtVerifier {
    /// Loads the JWKS; fails when it cannot be read (the gateway then does not start).
    pub fn new(config: JwtConfig) -> Result<JwtVerifier, JwtError> {
        if config.jwks_file.is_some() == config.jwks_url.is_some() {
            return Err(JwtError::Jwks(
                "set exactly one of jwt.jwks_file and jwt.jwks_url".into(),
            ));
        }
        if config.jwks_ca.is_some() && config.jwks_url.is_none() {
            return Err(JwtError::Jwks(
                "jwt.jwks_ca applies to an https:// jwt.jwks_url only".into(),
            ));
        }
        let source = match &config.jwks_url {
            Some(url) => Some(Arc::new(JwksUrl::parse(url, config.jwks_ca.as_deref())?)),
            None => None,
        };
        let v = JwtVerifier {
            config,
            source,
            keys: Arc::new(RwLock::new(Vec::new())),
            fetching: Arc::new(AtomicBool::new(false)),
            last_reload: Mutex::new(None),
        };
        let keys = v.fetch()?;
        *v.keys.write().expect("lock") = keys;
        Ok(v)
    }

    fn fetch(&self) -> Result<Vec<Jwk>, JwtError> {
        let text = match (&self.config.jwks_file, &self.source) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| JwtError::Jwks(format!("{}: {e}", path.display())))?,
            (None, Some(url)) => url.get()?,
            (None, None) => return Err(JwtError::Jwks("no JWKS configured".into())),
        };
        parse_jwks(&text)
    }

    /// Reads the JWKS again, at most once every 10 s. A file is read at once; a URL is fetched
    /// on a thread of its own, so that a slow or hostile server (anyone can send a token naming
    /// an unknown key) holds no request handler: the token that asked is refused, and the keys
    /// are there for the next one.
    fn reload(&self) {
        {
            let mut last = self.last_reload.lock().expect("lock");
            if last.is_some_and(|t| t.elapsed() < RELOAD_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Some(url) = &self.source else {
            keep(&self.keys, self.fetch());
            return;
        };
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let (url, keys, fetching) = (url.clone(), self.keys.clone(), self.fetching.clone());
        let spawned = std::thread::Builder::new()
            .name("jwks-fetch".into())
            .spawn(move || {
                keep(&keys, url.get().and_then(|text| parse_jwks(&text)));
                fetching.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.fetching.store(false, Ordering::Release);
            tracing::warn!(error = %e, "reloading the JWKS: no thread");
        }
    }

    /// Waits until no background fetch is running (tests).
    #[cfg(test)]
    fn settle(&self) {
        while self.fetching.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn key_for(&self, kid: Option<&str>, rsa: bool) -> Option<Key> {
        let keys = self.keys.read().expect("lock");
        let of_type = |k: &&Jwk| {
            matches!(
                (&k.key, rsa),
                (Key::Rsa { .. }, true) | (Key::P256(_), false)
            )
        };
        match kid {
            Some(kid) => keys
                .iter()
                .filter(of_type)
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| k.key.clone()),
            None => {
                let mut it = keys.iter().filter(of_type);
                match (it.next(), it.next()) {
                    (Some(k), None) => Some(k.key.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Verifies a token at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Value = b64(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let rsa = match alg {
            "RS256" => true,
            "ES256" => false,
            other => return Err(JwtError::Algorithm(other.to_string())),
        };
        let kid = header.get("kid").and_then(Value::as_str);
        let key = match self.key_for(kid, rsa) {
            Some(k) => k,
            None => {
                self.reload();
                self.key_for(kid, rsa).ok_or(JwtError::UnknownKey)?
            }
        };
        let signature = b64(sig).ok_or(JwtError::Malformed)?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let ok = match &key {
            Key::Rsa { n, e } => ring::signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    signed,
                    &signature,
                )
                .is_ok(),
            Key::P256(point) => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(signed, &signature)
            .is_ok(),
        };
        if !ok {
            return Err(JwtError::Signature);
        }
        let claims: Value = b64(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        self.check_claims(&claims, now)
    }

    fn check_claims(&self, c: &Value, now: u64) -> Result<Verified, JwtError> {
        let leeway = self.config.leeway_secs;
        if c.get("iss").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            return Err(JwtError::Claim("iss", "not the configured issuer"));
        }
        let aud = &self.config.audience;
        let ok = match c.get("aud") {
            Some(Value::String(a)) => a == aud,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(aud.as_str())),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Claim("aud", "does not name this gateway"));
        }
        let exp = c
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(JwtError::Claim("exp", "required"))?;
        if now > exp.saturating_add(leeway) {
            return Err(JwtError::Claim("exp", "expired"));
        }
        if let Some(nbf) = c.get("nbf").and_then(Value::as_u64) {
            if nbf > now.saturating_add(leeway) {
                return Err(JwtError::Claim("nbf", "not yet valid"));
            }
        }
        let principal = c
            .get(&self.config.principal_claim)
            .and_then(Value::as_str)
            .filter(|p| crate::consent::principal::is_principal_id(p))
            .ok_or(JwtError::Claim(
                "principal",
                "missing or not a principal id",
            ))?;
        let scopes = Scopes::parse(c.get("scope").and_then(Value::as_str).unwrap_or(""));
        Ok(Verified {
            principal: principal.to_string(),
            scopes,
        })
    }
}

/// A JWKS read again: its keys replace the ones held; a failure keeps them and is logged.
fn keep(keys: &RwLock<Vec<Jwk>>, fetched: Result<Vec<Jwk>, JwtError>) {
    match fetched {
        Ok(k) => *keys.write().expect("lock") = k,
        Err(e) => tracing::warn!(error = %e, "reloading the JWKS"),
    }
}

/// The identity provider's JWKS URL: where it is, and TLS unless it is a loopback `http://`
/// URL. The host is resolved at each fetch (an identity provider may move), every address
/// tried in turn.
struct JwksUrl {
    url: String,
    /// The name (or IP literal, without brackets) and port to connect to.
    name: String,
    port: u16,
    /// The `Host` header: the URL's authority as written.
    host: String,
    path: String,
    tls: Option<crate::http1::Tls>,
}

impl JwksUrl {
    fn parse(url: &str, ca: Option<&std::path::Path>) -> Result<JwksUrl, JwtError> {
        let err = |what: &str| JwtError::Jwks(format!("jwt.jwks_url {url}: {what}"));
        let (rest, tls) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (rest, true),
            (None, Some(rest)) => (rest, false),
            _ => return Err(err("an https:// URL (or jwt.jwks_file)")),
        };
        if ca.is_some() && !tls {
            return Err(err("jwt.jwks_ca applies to an https:// URL only"));
        }
        if rest.contains(['@', '#']) {
            return Err(err("no user name, password or fragment in the URL"));
        }
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        // `host`, `host:port`, `[v6]`, `[v6]:port`.
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) if !p.contains(']') => (
                n,
                p.parse::<u16>()
                    .map_err(|_| err("the port is not a number"))?,
            ),
            _ => (host, if tls { 443 } else { 80 }),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name.is_empty() {
            return Err(err("no host"));
        }
        let tls = if tls {
            Some(crate::http1::Tls {
                config: crate::tls::client_config(ca)
                    .map_err(|e| err(&format!("{e} (jwt.jwks_ca)")))?,
                name: rustls_pki_types::ServerName::try_from(name.to_string())
                    .map_err(|_| err("the host is not a DNS name or an IP address"))?,
            })
        } else {
            None
        };
        let u = JwksUrl {
            url: url.to_string(),
            name: name.to_string(),
            port,
            host: host.to_string(),
            path,
            tls,
        };
        u.addresses()?;
        Ok(u)
    }

    /// The host's addresses now; for `http://`, every one must be a loopback address, since
    /// keys fetched in the clear could be swapped on the path.
    fn addresses(&self) -> Result<Vec<std::net::SocketAddr>, JwtError> {
        let err = |what: &str| JwtError::Jwks(format!("jwt.jwks_url {}: {what}", self.url));
        let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&(&*self.name, self.port))
            .map_err(|e| err(&e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(err("the host has no address"));
        }
        if self.tls.is_none() && !addrs.iter().all(|a| a.ip().is_loopback()) {
            return Err(err(
                "http:// only on a loopback address; keys fetched in the clear could be swapped",
            ));
        }
        Ok(addrs)
    }

    /// The JWKS, from the first address that answers; 2 s at most for each.
    fn get(&self) -> Result<String, JwtError> {
        let err = |what: &str| JwtError::Jwks(format!("{}: {what}", self.url));
        let mut last = String::new();
        for addr in self.addresses()? {
            let get = crate::http1::Request {
                addr,
                host: &self.host,
                method: "GET",
                path: &self.path,
                headers: &[("Accept", "application/json")],
                body: b"",
            };
            let (timeout, max) = (Duration::from_secs(2), 1 << 20);
            match crate::http1::request(&get, self.tls.as_ref(), timeout, max) {
                Ok(a) if a.status == 200 => return Ok(a.body),
                Ok(a) => return Err(err(&format!("answered {}, not 200", a.status))),
                Err(e) => last = e.to_string(),
            }
        }
        Err(err(&last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    struct Idp {
        key: EcdsaKeyPair,
        jwks: String,
    }

    fn idp(kid: &str) -> Idp {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let p = key.public_key().as_ref();
        let jwks =
            serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])}]})
            .to_string();
        Idp { key, jwks }
    }

    fn mint(idp: &Idp, header: Value, claims: Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{h}.{c}");
        let sig = idp
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn verifier(dir: &std::path::Path, jwks: &str) -> JwtVerifier {
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks).unwrap();
        JwtVerifier::new(JwtConfig {
            issuer: "https://idp.test".into(),
            audience: "medanchor".into(),
            jwks_file: Some(path),
            jwks_url: None,
            jwks_ca: None,
            principal_claim: "sub".into(),
            leeway_secs: 60,
        })
        .unwrap()
    }

    const NOW: u64 = 1_764_460_800;

    fn claims() -> Value {
        serde_json::json!({"iss": "https://idp.test", "aud": ["medanchor"], "sub": "dr-a",
            "exp": NOW + 300, "scope": "user/Observation.rs patient/Patient.read launch"})
    }

    #[test]
    fn a_good_token_verifies_and_each_named_fault_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = idp("k1");
        let v = verifier(dir.path(), &a.jwks);
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let ok = v.verify(&mint(&a, header.clone(), claims()), NOW).unwrap();
        assert_eq!(ok.principal, "dr-a");
        assert!(ok.scopes.allows("Observation") && ok.scopes.allows("Patient"));
        assert!(!ok.scopes.allows("Condition"));

        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            v.verify(&mint(&a, header.clone(), c), NOW)
        };
        assert_eq!(
            with(&|c| c["exp"] = (NOW - 61).into()),
            Err(JwtError::Claim("exp", "expired"))
        );
        assert!(
            with(&|c| c["exp"] = (NOW - 59).into()).is_ok(),
            "within the leeway"
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            Err(JwtError::Claim("exp", "required"))
        );
        assert_eq!(
            with(&|c| c["nbf"] = (NOW + 3600).into()),
            Err(JwtError::Claim("nbf", "not yet valid"))
        );
        assert_eq!(
            with(&|c| c["iss"] = "https://evil.test".into()),
            Err(JwtError::Claim("iss", "not the configured issuer"))
        );
        assert_eq!(
            with(&|c| c["aud"] = "other".into()),
            Err(JwtError::Claim("aud", "does not name this gateway"))
        );
        assert!(matches!(
            with(&|c| c["sub"] = "a b".into()),
            Err(JwtError::Claim("principal", _))
        ));

        // Another issuer's key, a tampered payload, alg none and HS256, an unknown kid.
        let b = idp("k1");
        assert_eq!(
            v.verify(&mint(&b, header.clone(), claims()), NOW),
            Err(JwtError::Signature)
        );
        let good = mint(&a, header.clone(), claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut c = claims();
        c["sub"] = "admin".into();
        let forged = URL_SAFE_NO_PAD.encode(c.to_string());
        parts[1] = &forged;
        assert_eq!(v.verify(&parts.join("."), NOW), Err(JwtError::Signature));
        for alg in ["none", "HS256", "RS384"] {
            let t = mint(&a, serde_json::json!({"alg": alg, "kid": "k1"}), claims());
            assert_eq!(v.verify(&t, NOW), Err(JwtError::Algorithm(alg.into())));
        }
        // An RS256 header over an EC key: no RSA key to use.
        let t = mint(
            &a,
            serde_json::json!({"alg": "RS256", "kid": "k1"}),
            claims(),
        );
        assert_eq!(v.verify(&t, NOW), Err(JwtError::UnknownKey));
        assert_eq!(v.verify("a.b", NOW), Err(JwtError::Malformed));
        assert_eq!(v.verify("a.b.c.d", NOW), Err(JwtError::Malformed));
    }

    #[test]
    fn a_rotated_key_is_picked_up_from_the_jwks_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let old = idp("old");
        let v = verifier(dir.path(), &old.jwks);
        let new = idp("new");
        let t = mint(
            &new,
            serde_json::json!({"alg": "ES256", "kid": "new"}),
            claims(),
        );
        std::fs::write(dir.path().join("jwks.json"), &new.jwks).unwrap();
        assert_eq!(v.verify(&t, NOW).unwrap().principal, "dr-a");
        // The old key is gone with the rotation.
        let t = mint(
            &old,
            serde_json::json!({"alg": "ES256", "kid": "old"}),
            claims(),
        );
        assert_eq!(v.verify(&t, NOW), Err(JwtError::UnknownKey));
    }

    /// Serves `bodies` as JWKS answers on loopback, one connection each, checking each request
    /// asks for `/keys.json`; the last answer waits for `gate`, when there is one.
    fn serve_jwks(
        bodies: Vec<String>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    ) -> (u16, std::thread::JoinHandle<()>) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let last = bodies.len().saturating_sub(1);
            for (i, body) in bodies.into_iter().enumerate() {
                let (mut c, _) = listener.accept().unwrap();
                let req = crate::http1::read_request_head(&mut c);
                assert!(req.starts_with(b"GET /keys.json HTTP/1.1\r\n"));
                if let (true, Some(gate)) = (i == last, &gate) {
                    gate.recv().unwrap();
                }
                write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        (port, server)
    }

    fn url_verifier(port: u16) -> JwtVerifier {
        JwtVerifier::new(JwtConfig {
            issuer: "https://idp.test".into(),
            audience: "medanchor".into(),
            jwks_file: None,
            jwks_url: Some(format!("http://127.0.0.1:{port}/keys.json")),
            jwks_ca: None,
            principal_claim: "sub".into(),
            leeway_secs: 60,
        })
        .unwrap()
    }

    /// The JWKS from an `http://` URL on loopback (a local proxy in front of the provider).
    #[test]
    fn the_jwks_is_fetched_from_an_http_url() {
        let a = idp("k1");
        let (port, server) = serve_jwks(vec![a.jwks.clone()], None);
        let v = url_verifier(port);
        server.join().unwrap();
        let t = mint(
            &a,
            serde_json::json!({"alg": "ES256", "kid": "k1"}),
            claims(),
        );
        assert_eq!(v.verify(&t, NOW).unwrap().principal, "dr-a");
    }

    /// `http://` is refused but on a loopback address (keys in the clear could be swapped on
    /// the path); other schemes and malformed URLs are refused naming the setting.
    #[test]
    fn a_jwks_url_is_https_or_loopback_http() {
        let refused = |url: &str| match JwksUrl::parse(url, None) {
            Err(JwtError::Jwks(m)) => m,
            Ok(_) => panic!("{url} accepted"),
            Err(e) => panic!("{url}: {e}"),
        };
        assert!(refused("http://192.0.2.1/jwks").contains("loopback"));
        assert!(refused("ftp://idp/jwks").contains("https://"));
        assert!(refused("https://idp:notaport/jwks").contains("port"));
        assert!(refused("https:///jwks").contains("jwt.jwks_url"));
        assert!(refused("https://user:pw@idp/jwks").contains("password"));
        assert!(refused("https://idp/jwks#k").contains("fragment"));
        assert!(JwksUrl::parse("http://127.0.0.1:9/jwks", None).is_ok_and(|u| u.tls.is_none()));
        assert!(JwksUrl::parse("http://[::1]:9/jwks", None).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        match JwksUrl::parse("https://127.0.0.1:9/jwks", Some(&empty)) {
            Err(JwtError::Jwks(m)) => assert!(m.contains("no certificate"), "{m}"),
            _ => panic!("an empty CA file is an error"),
        }
    }

    /// A rotated key at a URL: the token naming it starts a fetch in the background and is
    /// refused without waiting for the identity provider, which here holds its answer until
    /// then (a verify that waited on the fetch would time it out, and the key would never
    /// arrive); once the fetch is done the same token verifies.
    #[test]
    fn a_rotated_key_at_a_url_is_fetched_in_the_background() {
        let (old, new) = (idp("old"), idp("new"));
        let (open, gate) = std::sync::mpsc::channel();
        let (port, server) = serve_jwks(vec![old.jwks.clone(), new.jwks.clone()], Some(gate));
        let v = url_verifier(port);
        let t = mint(
            &new,
            serde_json::json!({"alg": "ES256", "kid": "new"}),
            claims(),
        );
        assert_eq!(v.verify(&t, NOW), Err(JwtError::UnknownKey));
        open.send(()).unwrap();
        v.settle();
        server.join().unwrap();
        assert_eq!(v.verify(&t, NOW).unwrap().principal, "dr-a");
    }

    #[test]
    fn smart_scopes_read_permissions() {
        let s = Scopes::parse("patient/*.rs");
        assert!(s.allows("Observation") && !s.none());
        let s = Scopes::parse("user/Observation.cruds user/Condition.c system/Patient.sr openid");
        assert!(s.allows("Observation"));
        assert!(!s.allows("Condition"), "create only");
        assert!(!s.allows("Patient"), "permissions out of order are not v2");
        assert!(Scopes::parse("launch openid fhirUser").none());
        assert!(Scopes::parse("patient/*.read").allows("Encounter"));
        let s = Scopes::parse("patient/Consent.cud patient/AuditEvent.rs");
        assert!(s.permits("Consent", b'c') && s.permits("Consent", b'd'));
        assert!(!s.permits("Consent", b'r') && s.allows("AuditEvent"));
        assert!(!s.is_full() && Scopes::everything().is_full());
        assert!(Scopes::parse("user/*.write").permits("Consent", b'c'));
    }
}
