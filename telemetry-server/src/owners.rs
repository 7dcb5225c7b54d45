//! Producer ids bound to the credential that first wrote under them.
//!
//! Producer ids are visible to any reader (they are in every record), and a write under
//! another producer's id could move its watermark and make its real records duplicates. So the
//! first credential to publish under a producer id owns it; records under it from any other
//! credential are rejected (reason `producer_owned`) and do not move its watermark.
//!
//! Bounds: [`MAX_OWNERS`] bindings in memory, the oldest forgotten first (counted); bindings are
//! not persisted, so after a restart the first writer binds again.

use std::collections::{HashMap, VecDeque};

/// Bindings kept at most.
pub const MAX_OWNERS: usize = 100_000;

/// The bindings.
#[derive(Debug, Default)]
pub struct Owners {
    map: HashMap<String, String>,
    order: VecDeque<String>,
    /// Bindings forgotten because the map was full.
    pub evicted: u64,
}

impl Owners {
    /// Whether `owner` may write under `producer`, binding it if no one has.
    pub fn check_or_bind(&mut self, producer: &str, owner: &str) -> bool {
        if let Some(o) = self.map.get(producer) {
            return o == owner;
        }
        if self.map.len() >= MAX_OWNERS {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
                self.evicted += 1;
            }
        }
        self.map.insert(producer.to_owned(), owner.to_owned());
        self.order.push_back(producer.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_writer_owns_a_producer_id() {
        let mut o = Owners::default();
        assert!(o.check_or_bind("p", "worker:a"));
        assert!(o.check_or_bind("p", "worker:a"));
        assert!(!o.check_or_bind("p", "worker:b"));
        assert!(!o.check_or_bind("p", "operator"));
        assert!(o.check_or_bind("q", "worker:b"));
    }
}
