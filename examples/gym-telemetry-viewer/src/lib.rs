//! gym-telemetry-viewer (being written).
