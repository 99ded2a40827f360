//! Authentication of API requests: a bearer token (`Authorization: Bearer mat_…`), a JWT from
//! the configured identity provider, or a TLS client certificate names a principal. No
//! credential, an unknown one or a revoked one is 401. Failures are counted per source address
//! (an IPv6 /64); an address with too many in a minute gets 429 until the minute is over for
//! every failure and every JWT, while a principal's own token or certificate still gets in (a
//! proxy's other clients are not locked out; tokens are 256 random bits, so the limit is about
//! keeping the log quiet and JWT checks bounded, not about guessing).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};

use super::jwt::{JwtVerifier, Scopes};
use super::Problem;
use crate::consent::{Principal, Principals};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond, the oldest windows are dropped first.
const MAX_TRACKED: usize = 65_536;

/// Failed authentications per source address, per one-minute window.
pub struct Failures {
    /// Failures an address may have in one window before it is refused (0: no limit).
    limit: u32,
    by_addr: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Failures {
    pub fn new(limit: u32) -> Failures {
        Failures {
            limit,
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `addr` is over the limit now.
    fn limited(&self, addr: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let map = self.by_addr.lock().expect("lock");
        map.get(&addr)
            .is_some_and(|(since, n)| now.duration_since(*since) < WINDOW && *n >= self.limit)
    }

    fn fail(&self, addr: IpAddr, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut map = self.by_addr.lock().expect("lock");
        if map.len() >= MAX_TRACKED && !map.contains_key(&addr) {
            map.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
            if map.len() >= MAX_TRACKED {
                // Still full of live windows: an attacker with many addresses. Forget them all
                // rather than grow; each is limited again after 20 more failures.
                map.clear();
            }
        }
        let e = map.entry(addr).or_insert((now, 0));
        if now.duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

/// The address failures are counted for: an IPv4 address, or an IPv6 address's /64 (one host
/// commonly holds a whole /64).
fn bucket(ip: IpAddr) -> IpAddr {
    // On a dual-stack listener an IPv4 client arrives as ::ffff:a.b.c.d: count it as itself.
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

fn unauthorized(detail: &str) -> Problem {
    Problem {
        challenge: Some("Bearer"),
        ..Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
}

/// The principal of a request and what its token's scopes let it read (everything, for a
/// principal's own token), or the problem refusing it.
pub fn authenticate(
    principals: &Principals,
    jwt: Option<&JwtVerifier>,
    failures: &Failures,
    headers: &HeaderMap,
    peer: IpAddr,
    metrics: &crate::metrics::Metrics,
) -> Result<(Arc<Principal>, Scopes), Problem> {
    let now = Instant::now();
    let peer = bucket(peer);
    // An address over the limit still gets in with a principal's own token or certificate
    // (cheap to check, and 256 bits no one guesses): behind a proxy or NAT one client's bad
    // tokens must not lock everyone else out. Only what costs more to check, or fails, is
    // answered 429.
    let limited = failures.limited(peer, now);
    let too_many = || {
        metrics.auth_failures.with_label_values(&["limited"]).inc();
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentications",
            "this address failed to authenticate too often; wait a minute",
        )
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        // No token: a TLS client certificate mapped to a principal (mutual TLS) will do.
        let cert = headers
            .get(super::server::CLIENT_CERT)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| principals.by_certificate(c));
        if let Some(p) = cert {
            return Ok((p, Scopes::everything()));
        }
        if limited {
            return Err(too_many());
        }
        metrics.auth_failures.with_label_values(&["missing"]).inc();
        failures.fail(peer, now);
        return Err(unauthorized("send Authorization: Bearer <token>"));
    };
    let found = if token.starts_with(crate::consent::principal::TOKEN_PREFIX) {
        principals
            .authenticate(token)
            .map(|p| (p, Scopes::everything()))
    } else if limited {
        // A JWT costs a signature check (and maybe a JWKS fetch): not for an address over
        // the limit.
        return Err(too_many());
    } else if let Some(jwt) = jwt {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match jwt.verify(token, now) {
            Ok(v) => principals
                .get(&v.principal)
                .filter(|p| p.revoked_ms.is_none())
                .map(|p| (p, v.scopes)),
            Err(e) => {
                // Why names the rule, never the token.
                tracing::debug!(reason = %e, "JWT refused");
                None
            }
        }
    } else {
        None
    };
    match found {
        Some(found) => Ok(found),
        None if limited => Err(too_many()),
        None => {
            metrics.auth_failures.with_label_values(&["invalid"]).inc();
            failures.fail(peer, now);
            Err(unauthorized("the token is unknown, revoked or expired"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_limited_after_its_failures_for_the_rest_of_the_window_only() {
        let f = Failures::new(20);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(!f.limited(a, t0));
            f.fail(a, t0);
        }
        assert!(f.limited(a, t0));
        assert!(!f.limited(b, t0), "per address");
        assert!(!f.limited(a, t0 + WINDOW), "the window ends");
        f.fail(a, t0 + WINDOW);
        assert!(!f.limited(a, t0 + WINDOW), "and counting starts again");
        let off = Failures::new(0);
        for _ in 0..100 {
            off.fail(a, t0);
        }
        assert!(!off.limited(a, t0));
        let v6 = |s: &str| bucket(s.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"), "one /64");
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(
            v6("::ffff:10.0.0.1"),
            a,
            "an IPv4 client on a dual-stack listener"
        );
        assert_ne!(v6("::ffff:10.0.0.1"), v6("::ffff:10.0.0.2"));
    }
}
