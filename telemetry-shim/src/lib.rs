//! telemetry-shim (being written).
