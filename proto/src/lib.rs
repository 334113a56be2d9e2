//! What crosses a process boundary in odl, in one place: the gRPC definitions and their
//! generated code, the event and sample records, parameter versions, feature hashing,
//! the record-stream trait every service reads and writes through, and the
//! parameter-store trait that file mode, `odl run` and the cluster share.
//!
//! Services depend on this crate and never on each other's internals, so a change of
//! wire format shows up here and nowhere else.

pub mod config;
pub mod event;
pub mod hashing;
pub mod params;
pub mod sample;
pub mod stream;
pub mod version;
pub mod wire;

/// Generated gRPC code (tonic + prost) for the parameter server.
pub mod ps_rpc {
    tonic::include_proto!("odl.ps");
}

/// Generated gRPC code (tonic + prost) for publishing and serving.
pub mod publish_rpc {
    tonic::include_proto!("odl.publish");
}
