//! gym-telemetry-daemon (being written).
