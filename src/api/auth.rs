//! Authentication of API requests: a bearer token (`Authorization: Bearer mat_…`), a JWT from
//! the configured identity provider, or a TLS client certificate names a principal. No
//! credential, an unknown one or a revoked one is 401. Failures are counted per source address
//! (an IPv6 /64); an address with too many in a minute gets 429 until the minute is over for
//! every failure and every JWT, while a principal's own token or certificate still gets in (a
//! proxy's other clients are not locked out; tokens are 256 random bits, so the limit is about
//! keeping the log quiet and JWT checks bounded, not about guessing). An authenticated principal
//! may also be held to a request rate (`Budgets`): every read is anchored as an access event, so
//! one leaked or runaway credential must not be able to grow the log without bound.

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
        if !map.contains_key(&addr) {
            // Full of live windows: an attacker with many addresses; each forgotten one is
            // limited again after 20 more failures.
            make_room(&mut map, |(since, _)| now.duration_since(*since) < WINDOW);
        }
        let e = map.entry(addr).or_insert((now, 0));
        if now.duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

/// Before a new entry goes into a table bounded by `MAX_TRACKED`: when it is full, the entries
/// no longer `live` are dropped; if it is still full, all are, rather than let it grow.
fn make_room<K, V>(map: &mut HashMap<K, V>, live: impl Fn(&V) -> bool) {
    if map.len() >= MAX_TRACKED {
        map.retain(|_, v| live(v));
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
    }
}

/// Requests per principal: a rate with a burst of one second's worth (as many requests at once
/// as the rate allows in a second), kept as each principal's theoretical arrival time (GCRA:
/// one instant per principal, no timer). A request is allowed while that time is at most a
/// second less one interval ahead of now; each allowed request moves it on by one interval.
pub struct Budgets {
    /// Time between requests at the configured rate; `None`: no limit.
    interval: Option<Duration>,
    by_principal: Mutex<HashMap<String, Instant>>,
}

/// The burst: one second of requests.
const BURST: Duration = Duration::from_secs(1);
/// The highest rate honoured (a higher one is held to it): an interval stays above zero.
const MAX_PER_SECOND: u32 = 1_000_000;

impl Budgets {
    /// `per_second` requests a second per principal (0: no limit; at most 1,000,000).
    pub fn new(per_second: u32) -> Budgets {
        Budgets {
            interval: (per_second > 0)
                .then(|| Duration::from_secs(1) / per_second.min(MAX_PER_SECOND)),
            by_principal: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `principal`'s budget; `Err` holds the seconds until one is free.
    pub fn take(&self, principal: &str, now: Instant) -> Result<(), u64> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let mut map = self.by_principal.lock().expect("lock");
        if let Some(tat) = map.get_mut(principal) {
            let start = (*tat).max(now);
            let tolerance = BURST - interval;
            if start.duration_since(now) > tolerance {
                // Whole seconds, rounded up, at least one.
                let wait = start.duration_since(now) - tolerance;
                return Err((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1));
            }
            *tat = start + interval;
            return Ok(());
        }
        // Principals whose time has passed are as good as new.
        make_room(&mut map, |tat| *tat > now);
        map.insert(principal.to_string(), now + interval);
        Ok(())
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

    /// A principal gets its burst (one second's worth), then one request per interval; others
    /// are not affected; no limit configured, none applies.
    #[test]
    fn a_principal_gets_its_rate_and_a_second_of_burst_and_no_more() {
        let b = Budgets::new(10);
        let t0 = Instant::now();
        let allowed = (0..30).filter(|_| b.take("dr-a", t0).is_ok()).count();
        assert_eq!(allowed, 10, "a second's worth at once");
        assert_eq!(b.take("dr-a", t0), Err(1));
        assert!(b.take("dr-b", t0).is_ok(), "per principal");
        assert!(b.take("dr-a", t0 + Duration::from_millis(99)).is_err());
        assert!(
            b.take("dr-a", t0 + Duration::from_millis(100)).is_ok(),
            "one interval on"
        );
        assert!(b.take("dr-a", t0 + Duration::from_millis(100)).is_err());
        // Idle for long: the full burst again, not an accumulation beyond it.
        let later = t0 + Duration::from_secs(60);
        let allowed = (0..30).filter(|_| b.take("dr-a", later).is_ok()).count();
        assert_eq!(allowed, 10);
        let off = Budgets::new(0);
        assert!((0..10_000).all(|_| off.take("dr-a", t0).is_ok()));
        let one = Budgets::new(1);
        assert!(one.take("dr-a", t0).is_ok());
        assert_eq!(one.take("dr-a", t0), Err(1));
        assert!(one.take("dr-a", t0 + Duration::from_secs(1)).is_ok());
        let most = Budgets::new(u32::MAX);
        assert_eq!(
            (0..2_000_000)
                .filter(|_| most.take("dr-a", t0).is_ok())
                .count(),
            1_000_000
        );
    }

    /// The table stays bounded when many principals pass through: those whose time has passed
    /// are forgotten first and a busy one is kept; a table full of busy ones is emptied.
    #[test]
    fn the_budget_table_is_bounded() {
        let b = Budgets::new(1);
        let t0 = Instant::now();
        let busy_at = t0 + Duration::from_millis(900);
        assert!(b.take("busy", busy_at).is_ok());
        assert!(b.take("busy", busy_at).is_err());
        for i in 0..MAX_TRACKED - 1 {
            b.take(&format!("p{i}"), t0).unwrap();
        }
        assert_eq!(b.by_principal.lock().unwrap().len(), MAX_TRACKED);
        // 1.5 s on: the others' time (t0 + 1 s) has passed, the busy one's (t0 + 1.9 s) has not.
        let later = t0 + Duration::from_millis(1500);
        assert!(b.take("new", later).is_ok());
        {
            let map = b.by_principal.lock().unwrap();
            assert_eq!(map.len(), 2);
            assert!(map.contains_key("busy") && map.contains_key("new"));
        }
        for i in 0..MAX_TRACKED - 2 {
            b.take(&format!("q{i}"), later).unwrap();
        }
        assert!(b.take("one more", later).is_ok());
        assert_eq!(b.by_principal.lock().unwrap().len(), 1);
    }

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
