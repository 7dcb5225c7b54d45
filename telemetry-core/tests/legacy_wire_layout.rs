//! The predecessor's `gymgui.trainer` messages decode bytes built field by field with the
//! predecessor's field numbers and wire types (not through our generated encoders), so a
//! renumbered or retyped field in `proto/gymgui/trainer/trainer.proto` fails here.
#![allow(clippy::unwrap_used, clippy::float_cmp)]

use prost::Message;
use telemetry_core::pb::legacy::{
    CancelRunRequest, HealthCheckRequest, HealthCheckResponse, HeartbeatRequest, ListRunsRequest,
    PublishTelemetryResponse, RunEpisode, RunRecord, RunStatus, RunStep, StreamEpisodesRequest,
    StreamStepsRequest, SubmitRunRequest, SubmitRunResponse, WatchRunsRequest,
};

/// Hand-built protobuf bytes.
#[derive(Default)]
struct Wire(Vec<u8>);

impl Wire {
    fn varint_raw(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint_raw((u64::from(field) << 3) | u64::from(wire_type));
    }
    fn varint(mut self, field: u32, v: u64) -> Self {
        self.key(field, 0);
        self.varint_raw(v);
        self
    }
    fn double(mut self, field: u32, v: f64) -> Self {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, field: u32, v: &[u8]) -> Self {
        self.key(field, 2);
        self.varint_raw(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
    fn string(self, field: u32, v: &str) -> Self {
        self.bytes(field, v.as_bytes())
    }
    /// A google.protobuf.Timestamp {seconds = 1, nanos = 2} (zero nanos left out, as proto3
    /// writers do).
    fn timestamp(self, field: u32, seconds: u64, nanos: u64) -> Self {
        let mut ts = Wire::default().varint(1, seconds);
        if nanos != 0 {
            ts = ts.varint(2, nanos);
        }
        self.bytes(field, &ts.0)
    }
}

#[test]
fn health_check_layout() {
    assert_eq!(
        HealthCheckRequest::decode(&[][..]).unwrap(),
        HealthCheckRequest {}
    );
    let b = Wire::default()
        .varint(1, 4242)
        .timestamp(2, 1_760_709_780, 5)
        .string(3, "127.0.0.1:50055")
        .varint(4, 1);
    let m = HealthCheckResponse::decode(b.0.as_slice()).unwrap();
    assert_eq!(m.pid, 4242);
    let ts = m.started_at.unwrap();
    assert_eq!((ts.seconds, ts.nanos), (1_760_709_780, 5));
    assert_eq!(m.listen_address, "127.0.0.1:50055");
    assert!(m.healthy);
    // And our encoding is byte for byte the hand-built one.
    assert_eq!(m.encode_to_vec(), b.0);
}

#[test]
fn submit_run_layout() {
    let b = Wire::default()
        .string(1, "run-7")
        .string(2, r#"{"run_name":"x"}"#);
    let m = SubmitRunRequest::decode(b.0.as_slice()).unwrap();
    assert_eq!(m.run_id, "run-7");
    assert_eq!(m.config_json, r#"{"run_name":"x"}"#);
    assert_eq!(m.encode_to_vec(), b.0);

    let b = Wire::default().string(1, "run-7").string(2, "abc123");
    let m = SubmitRunResponse::decode(b.0.as_slice()).unwrap();
    assert_eq!((m.run_id.as_str(), m.digest.as_str()), ("run-7", "abc123"));
}

#[test]
fn run_record_layout() {
    let b = Wire::default()
        .string(1, "r")
        .varint(2, 3) // RUN_STATUS_RUNNING
        .string(3, "d1g")
        .timestamp(4, 10, 0)
        .timestamp(5, 11, 0)
        .timestamp(6, 12, 0)
        .varint(7, 1) // optional int32 gpu_slot
        .string(8, "why")
        .bytes(9, &[1, 2]) // repeated int32 gpu_slots, packed
        .varint(10, 99);
    let m = RunRecord::decode(b.0.as_slice()).unwrap();
    assert_eq!(m.run_id, "r");
    assert_eq!(m.status, RunStatus::Running as i32);
    assert_eq!(m.digest, "d1g");
    assert_eq!(m.created_at.unwrap().seconds, 10);
    assert_eq!(m.updated_at.unwrap().seconds, 11);
    assert_eq!(m.last_heartbeat.unwrap().seconds, 12);
    assert_eq!(m.gpu_slot, Some(1));
    assert_eq!(m.failure_reason.as_deref(), Some("why"));
    assert_eq!(m.gpu_slots, vec![1, 2]);
    assert_eq!(m.seq_id, 99);
    assert_eq!(m.encode_to_vec(), b.0);
    let names: Vec<(i32, &str)> = (0..=6)
        .map(|i| (i, RunStatus::try_from(i).unwrap().as_str_name()))
        .collect();
    assert_eq!(
        names,
        vec![
            (0, "RUN_STATUS_UNSPECIFIED"),
            (1, "RUN_STATUS_PENDING"),
            (2, "RUN_STATUS_DISPATCHING"),
            (3, "RUN_STATUS_RUNNING"),
            (4, "RUN_STATUS_COMPLETED"),
            (5, "RUN_STATUS_FAILED"),
            (6, "RUN_STATUS_CANCELLED"),
        ]
    );
}

#[test]
fn run_step_layout() {
    let b = Wire::default()
        .string(1, "r")
        .varint(2, 1)
        .varint(3, 2)
        .string(4, "3")
        .string(5, "{}")
        .double(6, 0.5)
        .varint(7, 1)
        .varint(8, 1)
        .timestamp(9, 20, 0)
        .string(10, "pol")
        .string(11, "be")
        .varint(12, 7)
        .string(13, "agent")
        .string(14, "{\"h\":1}")
        .string(15, "frame://1")
        .varint(16, 2);
    let m = RunStep::decode(b.0.as_slice()).unwrap();
    assert_eq!(
        (m.run_id.as_str(), m.episode_index, m.step_index),
        ("r", 1, 2)
    );
    assert_eq!(
        (m.action_json.as_str(), m.observation_json.as_str()),
        ("3", "{}")
    );
    assert_eq!(m.reward, 0.5);
    assert!(m.terminated && m.truncated);
    assert_eq!(m.timestamp.unwrap().seconds, 20);
    assert_eq!((m.policy_label.as_str(), m.backend.as_str()), ("pol", "be"));
    assert_eq!(m.seq_id, 7);
    assert_eq!(m.agent_id, "agent");
    assert_eq!(m.render_hint_json, "{\"h\":1}");
    assert_eq!(m.frame_ref, "frame://1");
    assert_eq!(m.payload_version, 2);
    assert_eq!(m.encode_to_vec(), b.0);
}

#[test]
fn run_episode_layout() {
    let b = Wire::default()
        .string(1, "r")
        .varint(2, 4)
        .double(3, 1.5)
        .varint(4, 30)
        .varint(5, 1)
        .varint(6, 1)
        .string(7, "{\"seed\":1}")
        .timestamp(8, 21, 0)
        .varint(9, 8)
        .string(10, "agent");
    let m = RunEpisode::decode(b.0.as_slice()).unwrap();
    assert_eq!((m.run_id.as_str(), m.episode_index), ("r", 4));
    assert_eq!((m.total_reward, m.steps), (1.5, 30));
    assert!(m.terminated && m.truncated);
    assert_eq!(m.metadata_json, "{\"seed\":1}");
    assert_eq!(m.timestamp.unwrap().seconds, 21);
    assert_eq!((m.seq_id, m.agent_id.as_str()), (8, "agent"));
    assert_eq!(m.encode_to_vec(), b.0);
}

#[test]
fn request_layouts() {
    let m = CancelRunRequest::decode(Wire::default().string(1, "r").0.as_slice()).unwrap();
    assert_eq!(m.run_id, "r");
    let m = HeartbeatRequest::decode(Wire::default().string(1, "r").0.as_slice()).unwrap();
    assert_eq!(m.run_id, "r");
    // repeated enum, packed (proto3 default) and unpacked both decode.
    let m = ListRunsRequest::decode(Wire::default().bytes(1, &[4, 6]).0.as_slice()).unwrap();
    assert_eq!(m.status_filter, vec![4, 6]);
    let m =
        ListRunsRequest::decode(Wire::default().varint(1, 4).varint(1, 6).0.as_slice()).unwrap();
    assert_eq!(m.status_filter, vec![4, 6]);
    let m = WatchRunsRequest::decode(Wire::default().bytes(1, &[3]).varint(2, 17).0.as_slice())
        .unwrap();
    assert_eq!((m.status_filter, m.since_seq), (vec![3], 17));
    let m = StreamStepsRequest::decode(Wire::default().string(1, "r").varint(2, 5).0.as_slice())
        .unwrap();
    assert_eq!((m.run_id.as_str(), m.since_seq), ("r", 5));
    let m = StreamEpisodesRequest::decode(Wire::default().string(1, "r").varint(2, 6).0.as_slice())
        .unwrap();
    assert_eq!((m.run_id.as_str(), m.since_seq), ("r", 6));
    let m =
        PublishTelemetryResponse::decode(Wire::default().varint(1, 1000).varint(2, 3).0.as_slice())
            .unwrap();
    assert_eq!((m.accepted, m.dropped), (1000, 3));
}
