//! Logging a repeated error once per interval, with how many times it happened, instead of once
//! per occurrence (a full disk fails every append and every proof until space is back).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts occurrences of one kind of event and says when to log them.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    logged_at: Option<Instant>,
    /// Occurrences since the last one logged.
    unlogged: u64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            state: Mutex::new(State {
                logged_at: None,
                unlogged: 0,
            }),
        }
    }

    /// Counts one occurrence. `Some(n)` means log it now: `n` occurrences (this one included)
    /// since the last one logged. The first occurrence is always logged.
    pub fn hit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.unlogged += 1;
        let due = s.logged_at.is_none_or(|at| at.elapsed() >= self.interval);
        if !due {
            return None;
        }
        s.logged_at = Some(Instant::now());
        Some(std::mem::take(&mut s.unlogged))
    }

    /// The event stopped happening: returns the occurrences not logged yet (to say them with the
    /// recovery) and logs the next occurrence at once. `None` when nothing happened since the
    /// last [`Throttle::clear`].
    pub fn clear(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let seen = s.logged_at.take().is_some();
        let unlogged = std::mem::take(&mut s.unlogged);
        seen.then_some(unlogged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_hit_is_logged_then_hits_are_counted_until_the_interval_passes() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.clear(), None, "nothing happened");
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        assert_eq!(t.clear(), Some(2), "two not logged yet");
        assert_eq!(
            t.hit(),
            Some(1),
            "after a clear the next one is logged at once"
        );
        let t = Throttle::new(Duration::ZERO);
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), Some(1), "an interval of zero logs every one");
    }
}
