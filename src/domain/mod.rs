//! The pure core: typed events, the fold into derived state, and its math.
//!
//! **Architecture Invariant:** nothing in `domain` does I/O or knows tokio, diesel, redis or serde.
//! It is deterministic and total: every input yields a result, never a panic.

pub mod analytics;
pub mod identity;
pub mod math;
#[cfg(test)]
pub(crate) mod properties;
pub mod rows;
pub mod state;
pub mod types;

pub use rows::Tables;
pub use state::{fold, Applied, BaseRows, Changes, Keys, State};
pub use types::{Address, Bytes32, Event, EventId, EventKind, EventMeta, Order, TermId, VaultType};
