//! telemetry-hub (being written).
