//! The integration-test binary: one binary, one module per area (STYLE: one integration-test
//! binary keeps link time down). Tests that need Postgres and Redis expect them on 127.0.0.1.

mod analytics;
mod boundaries;
mod columns;
mod faults;
mod hostile;
mod lease;
mod ops;
mod prometheus;
mod reorg;
mod replay_verify;
mod retention;
mod support;
mod sync;
mod tidy;
mod tls;
