//! Integration tests of the odl-ps library, one binary (links once): the local store,
//! checkpoints, and the gRPC server with its remote client.

mod checkpoint;
mod server;
mod store;
mod util;
