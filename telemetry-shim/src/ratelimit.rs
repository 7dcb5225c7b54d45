//! Logging that cannot flood: a daemon down for an hour must not produce a million log lines.
//!
//! [`RateLimited::allow`] lets one event through per interval and says how many were held back
//! since the last one, so the line that is logged still tells the whole count.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// One log site's budget.
#[derive(Debug)]
pub struct RateLimited {
    origin: Instant,
    interval_ms: u64,
    /// Milliseconds since `origin` of the last event let through, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimited {
    /// A budget of one event per `interval`.
    pub fn new(interval: Duration) -> Self {
        RateLimited {
            origin: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last allowed event)` when this event may be logged.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let now_ms = u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX)
            + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_with_the_held_back_count() {
        let r = RateLimited::new(Duration::from_secs(10));
        let t0 = r.origin;
        assert_eq!(r.allow_at(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(r.allow_at(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(r.allow_at(t0 + Duration::from_secs(11)), Some(5));
        assert_eq!(r.allow_at(t0 + Duration::from_secs(12)), None);
    }
}
