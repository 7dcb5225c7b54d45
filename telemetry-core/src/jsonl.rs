//! The worker JSONL contract (being written).
