//! The store contract's conformance suite, on PostgreSQL (a fresh schema per test).

use std::sync::Arc;

use telemetry_store::Backend;
use telemetry_store_pg::testing;

fn fresh() -> Option<Arc<dyn Backend>> {
    testing::fresh_backend("conformance").map(|b| Arc::new(b) as Arc<dyn Backend>)
}

telemetry_store::conformance_tests!(optional: fresh);
