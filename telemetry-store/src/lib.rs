//! telemetry-store (being written).
