//! One definition per table: [`events`] for the event log (each event table, its event and its
//! parameter columns), [`derived`] for the nine derived tables (each table's key and its columns,
//! with how each is stored and read off the fold's row). Writing, reading back, rebuilds and
//! `verify` all go through these definitions; `tests/it/columns.rs` checks them against the
//! migrated schema.

pub mod derived;
pub mod events;

pub use events::{
    hash_prefix, EventTable, Param, Stored, EVENT_LOG, EVENT_TABLES, HASH_PREFIX_SQL,
    MAX_READ_PARAMS, META, TRANSACTIONS, TRANSACTION_KEY,
};
