//! Ferry's common crate: what the scheduler, the importer and `ferryctl` share.
//!
//! - [`config`]: validation that names every bad key at once.
//! - [`telemetry`]: log set-up.
//! - [`storage`]: the bucket abstraction ([`storage::BlobStore`]) and its drivers.
//! - [`layout`]: object keys of the old and new storage layouts.
//! - [`ids`]: validated repository paths and digests.
//! - [`step`]: the numbers of a repository's migration steps, on the wire and in the databases.
//! - [`error`]: error codes and their mapping to gRPC.
//! - [`grpc`]: serving with health checks, reflection and admission control; calling the other
//!   service.
//! - [`security`]: TLS, bearer tokens and admission limits.
//! - [`metrics`]: the Prometheus registry and `/metrics` endpoint.
//! - [`postgres`]: the connection pool both services' databases use.
//! - [`walk`]: discovering every repository of the old layout.

pub mod config;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod layout;
pub mod lifecycle;
pub mod metrics;
pub mod postgres;
pub mod security;
pub mod startup;
pub mod step;
pub mod storage;
pub mod telemetry;
pub mod walk;
