//! Reconnect delays: exponential, capped, with jitter.
//!
//! Many workers lose the same daemon at the same moment; without jitter they would all come
//! back at the same moment too. The delay doubles per failed attempt up to a cap, and each
//! delay is drawn uniformly from its upper half so no two workers stay in lock-step.

use std::time::Duration;

/// The delay before reconnect attempt number `attempt` (0 = first retry).
pub(crate) fn delay(initial: Duration, max: Duration, attempt: u32, unit_random: f64) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.min(20));
    let ceiling = exp.min(max);
    let jitter = unit_random.clamp(0.0, 1.0);
    ceiling.mul_f64(0.5 + 0.5 * jitter)
}

/// [`delay`] with a fresh random draw.
pub(crate) fn next(initial: Duration, max: Duration, attempt: u32) -> Duration {
    delay(initial, max, attempt, fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps_and_jitter_stays_in_the_upper_half() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(delay(i, m, 0, 1.0), Duration::from_millis(100));
        assert_eq!(delay(i, m, 0, 0.0), Duration::from_millis(50));
        assert_eq!(delay(i, m, 3, 1.0), Duration::from_millis(800));
        assert_eq!(delay(i, m, 10, 1.0), m);
        assert_eq!(delay(i, m, u32::MAX, 0.0), m / 2);
        for attempt in 0..40 {
            let d = next(i, m, attempt);
            assert!(d <= m && d >= i / 2, "{d:?}");
        }
    }
}
