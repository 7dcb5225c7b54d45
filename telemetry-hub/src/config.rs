//! The hub's limits in one place.
//!
//! Every buffer the hub owns is bounded by one of these numbers, so the worst-case memory of a
//! hub can be read off its configuration (see the crate docs, "Limits"). Values come from the
//! daemon's command line, so they are checked ([`HubConfig::validate`]) rather than trusted.

use std::time::Duration;

/// Limits and tuning of a [`Hub`](crate::Hub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Records kept per run for late joiners (steps, episodes and lifecycle events together).
    /// When full, the oldest step goes first, then the oldest episode, then the oldest lifecycle
    /// event: they are all in the store. Default 2048.
    pub ring_records: usize,
    /// Bytes kept per run ([`record_footprint`](crate::record_footprint): encoded length plus
    /// struct size), same policy as `ring_records`. Default 1 MiB.
    pub ring_bytes: usize,
    /// Default records per subscriber queue; when full the oldest record is dropped and counted.
    /// Default 1024.
    pub subscriber_queue: usize,
    /// Largest queue a subscriber may ask for with `SubscribeOptions::queue_capacity` (larger
    /// requests are clamped). Default 65536.
    pub max_subscriber_queue: usize,
    /// Runs tracked at once (ring, seq chain, counters). A new run evicts a completed run
    /// first, then the least recently active run without subscribers. Runs with subscribers
    /// are never evicted, so the map can exceed this by at most `max_subscribers`. Default 256.
    pub max_runs: usize,
    /// Subscriptions alive at once; further ones are refused. Default 1024.
    pub max_subscribers: usize,
    /// Records asked of the [`CatchUpSource`](crate::CatchUpSource) per page. Default 512.
    pub catch_up_page: usize,
    /// Bytes of records one catch-up page may hold (the source ends a page early past it, with
    /// at least one record). Default 4 MiB.
    pub catch_up_page_bytes: usize,
    /// Failed catch-up reads retried before the subscription is closed. Default 3.
    pub catch_up_retries: u32,
    /// Delay before the first retry of a failed read; doubled for each further retry.
    /// Default 100 ms.
    pub catch_up_retry_delay: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            ring_records: 2048,
            ring_bytes: 1 << 20,
            subscriber_queue: 1024,
            max_subscriber_queue: 65_536,
            max_runs: 256,
            max_subscribers: 1024,
            catch_up_page: 512,
            catch_up_page_bytes: 4 << 20,
            catch_up_retries: 3,
            catch_up_retry_delay: Duration::from_millis(100),
        }
    }
}

/// A configuration value the hub cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A limit that must be at least 1 was 0.
    #[error("hub config {field} must be at least 1")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// `subscriber_queue` is larger than `max_subscriber_queue`.
    #[error("hub config subscriber_queue ({queue}) exceeds max_subscriber_queue ({max})")]
    QueueAboveMax {
        /// `subscriber_queue`.
        queue: usize,
        /// `max_subscriber_queue`.
        max: usize,
    },
}

impl HubConfig {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields = [
            ("ring_records", self.ring_records),
            ("ring_bytes", self.ring_bytes),
            ("subscriber_queue", self.subscriber_queue),
            ("max_subscriber_queue", self.max_subscriber_queue),
            ("max_runs", self.max_runs),
            ("max_subscribers", self.max_subscribers),
            ("catch_up_page", self.catch_up_page),
            ("catch_up_page_bytes", self.catch_up_page_bytes),
        ];
        for (field, value) in fields {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.subscriber_queue > self.max_subscriber_queue {
            return Err(ConfigError::QueueAboveMax {
                queue: self.subscriber_queue,
                max: self.max_subscriber_queue,
            });
        }
        Ok(())
    }

    /// The same configuration with every zero limit raised to 1 and the default queue clamped
    /// to the maximum, so that [`Hub::new`](crate::Hub::new) can never be handed a limit that
    /// disables a bound.
    pub(crate) fn normalized(mut self) -> Self {
        for v in [
            &mut self.ring_records,
            &mut self.ring_bytes,
            &mut self.subscriber_queue,
            &mut self.max_subscriber_queue,
            &mut self.max_runs,
            &mut self.max_subscribers,
            &mut self.catch_up_page,
            &mut self.catch_up_page_bytes,
        ] {
            *v = (*v).max(1);
        }
        self.subscriber_queue = self.subscriber_queue.min(self.max_subscriber_queue);
        self
    }
}
