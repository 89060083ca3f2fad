//! redis-postgres-sync: keeps PostgreSQL in step with Intuition MultiVault events that rindexer
//! publishes to Redis streams.
//!
//! Data flows stream → [`ingest`] (decode) → [`domain`] (fold) → store → publish → analytics.
//! See ARCHITECTURE.md for the code map and the invariants.

pub mod analytics;
pub mod app;
pub mod bench;
pub mod breaker;
pub mod config;
pub mod domain;
pub mod fixture;
pub mod health;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod store;
pub mod sync;
pub mod tls;
pub mod verify;
