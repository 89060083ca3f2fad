//! A dead letter: an entry, or one item of it, that the service refused, with the reason. The
//! store records it (`store::dead_letters`) in the transaction of the batch that refused it;
//! `stream::publish_dead_letters` publishes it to `<source stream>:dlq` after the commit.

/// An entry, or one item of it, that the service refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub source_stream: String,
    pub source_id: String,
    /// The item's index in `event_data`, or [`WHOLE_ENTRY`].
    pub item_index: i32,
    /// The entry's payload, or an envelope holding just the refused item.
    pub payload: Vec<u8>,
    /// Why it was refused.
    pub error: String,
}

/// `item_index` of a dead letter that is the whole entry.
pub const WHOLE_ENTRY: i32 = -1;

/// A recorded dead letter and its row id.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: i64,
    pub letter: DeadLetter,
}
