//! The Publish stream with records encoded once.
//!
//! The backlog keeps every unacked record until its ack, and the sender may send it more than
//! once (after a reconnect). Kept as a `Record`, each send cloned it (a dozen strings) and
//! encoded the clone. Kept as its protobuf bytes, a send is a reference-count increment and a
//! copy into the HTTP/2 body: [`EncodedBatch`] is written as the exact bytes of an
//! `IngestBatch` message by [`PublishCodec`], so the daemon sees no difference.

use prost::{
    bytes::{BufMut, Bytes},
    encoding::{encode_key, encode_varint, WireType},
    Message,
};
use telemetry_core::pb::{IngestAck, Record};
use tonic::{
    codec::{Codec, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
    Status, Streaming,
};

/// `IngestBatch.batch_id` and `IngestBatch.records` (proto/ingest.proto).
const BATCH_ID_FIELD: u32 = 1;
const RECORDS_FIELD: u32 = 2;

/// An `IngestBatch` whose records are already encoded (each one a `Record` message).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EncodedBatch {
    pub batch_id: u64,
    pub records: Vec<Bytes>,
}

impl EncodedBatch {
    /// The `IngestBatch` message's bytes: exactly what prost writes for the same batch.
    pub fn write(&self, buf: &mut impl BufMut) {
        if self.batch_id != 0 {
            encode_key(BATCH_ID_FIELD, WireType::Varint, buf);
            encode_varint(self.batch_id, buf);
        }
        for r in &self.records {
            encode_key(RECORDS_FIELD, WireType::LengthDelimited, buf);
            encode_varint(r.len() as u64, buf);
            buf.put_slice(r);
        }
    }
}

/// One record's bytes as they are kept in the backlog and sent.
pub(crate) fn encode(record: &Record) -> Bytes {
    Bytes::from(record.encode_to_vec())
}

/// Encodes [`EncodedBatch`]es, decodes `IngestAck`s.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PublishCodec;

#[derive(Debug, Default)]
pub(crate) struct BatchEncoder;

impl Encoder for BatchEncoder {
    type Item = EncodedBatch;
    type Error = Status;

    fn encode(&mut self, item: EncodedBatch, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.write(dst);
        Ok(())
    }
}

impl Codec for PublishCodec {
    type Encode = EncodedBatch;
    type Decode = IngestAck;
    type Encoder = BatchEncoder;
    type Decoder = tonic_prost::ProstDecoder<IngestAck>;

    fn encoder(&mut self) -> BatchEncoder {
        BatchEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Opens `Ingest.Publish` on `channel` with the records sent as they are kept.
pub(crate) async fn publish(
    channel: Channel,
    request: tonic::Request<impl tokio_stream::Stream<Item = EncodedBatch> + Send + 'static>,
) -> Result<Streaming<IngestAck>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the channel is not ready: {e}")))?;
    let path = PathAndQuery::from_static("/gym_telemetry.v1.Ingest/Publish");
    Ok(grpc
        .streaming(request, path, PublishCodec)
        .await?
        .into_inner())
}

/// An `IngestBatch` decoded from an [`EncodedBatch`]'s bytes (for tests).
#[cfg(test)]
pub(crate) fn decode(batch: &EncodedBatch) -> telemetry_core::pb::IngestBatch {
    let mut buf = Vec::new();
    batch.write(&mut buf);
    telemetry_core::pb::IngestBatch::decode(buf.as_slice()).expect("an encoded batch decodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_core::pb::{IngestBatch, RunStep, Scalar};

    fn step(seq: u64) -> Record {
        let mut r: Record = RunStep {
            run_id: "r".into(),
            observation_json: format!("[{seq}]"),
            ..RunStep::default()
        }
        .into();
        r.set_producer("p", seq);
        r
    }

    #[test]
    fn an_encoded_batch_is_byte_for_byte_the_ingest_batch_prost_writes() {
        for batch_id in [0, 1, 300, u64::MAX] {
            let records: Vec<Record> = vec![
                step(1),
                step(2),
                Scalar {
                    run_id: "r".into(),
                    tag: "losses/x".into(),
                    value: f64::NAN,
                    ..Scalar::default()
                }
                .into(),
                Record::default(),
            ];
            let ours = EncodedBatch {
                batch_id,
                records: records.iter().map(encode).collect(),
            };
            let theirs = IngestBatch { batch_id, records };
            let mut buf = Vec::new();
            ours.write(&mut buf);
            assert_eq!(buf, theirs.encode_to_vec(), "batch_id {batch_id}");
            assert_eq!(decode(&ours).batch_id, batch_id);
        }
        let empty = EncodedBatch {
            batch_id: 0,
            records: Vec::new(),
        };
        let mut buf = Vec::new();
        empty.write(&mut buf);
        assert!(buf.is_empty());
    }
}
