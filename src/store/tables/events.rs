//! The event log: every event table with the event it holds and its parameter columns in ABI
//! order, each with how it is stored. `event_rows` writes the tables from it and `load` reads
//! them back from it, by column name, so the two sides cannot disagree on a column's name,
//! place or kind; `tests/it/columns.rs` checks it against the migrated schema and round-trips
//! every kind of event through it.

/// How a parameter column is stored, which is also how it travels and is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// TEXT: hex ids, checksummed addresses, names.
    Text,
    /// NUMERIC(78,0): a uint256, read back as decimal text.
    Numeric,
    /// BYTEA, read back as hex.
    Bytea,
    /// JSONB, read back as its text.
    Jsonb,
}

/// One parameter column of an event table.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub column: &'static str,
    pub stored: Stored,
    /// Whether the event's own fields include it (read back into the event). `false` for a
    /// column the store derives (`counter_term_id`) or the generic tables' `event_name`, which
    /// is read as the event's name.
    pub read: bool,
}

/// An event table: its name, the event type it holds (`None`: the generic table, whose rows
/// name their type in `event_name`), its parameter columns after the shared [`META`] ones.
#[derive(Debug)]
pub struct EventTable {
    pub table: &'static str,
    pub event: Option<&'static str>,
    pub params: &'static [Param],
}

const fn p(column: &'static str, stored: Stored) -> Param {
    Param {
        column,
        stored,
        read: true,
    }
}

const fn written(column: &'static str, stored: Stored) -> Param {
    Param {
        column,
        stored,
        read: false,
    }
}

use Stored::{Bytea, Jsonb, Numeric, Text};

use crate::domain::types::TxHash;

/// The columns every event table starts with, in table order: the event's identity and where
/// it happened.
pub const META: [&str; 9] = [
    "transaction_hash",
    "log_index",
    "block_number",
    "block_hash",
    "transaction_index",
    "block_timestamp",
    "address",
    "network",
    "chain_id",
];

/// Every event table, the generic one last.
pub const EVENT_TABLES: [EventTable; 6] = [
    EventTable {
        table: "atom_created_events",
        event: Some("AtomCreated"),
        params: &[
            p("creator", Text),
            p("term_id", Text),
            p("atom_data", Bytea),
            p("atom_wallet", Text),
        ],
    },
    EventTable {
        table: "triple_created_events",
        event: Some("TripleCreated"),
        params: &[
            p("creator", Text),
            p("term_id", Text),
            p("subject_id", Text),
            p("predicate_id", Text),
            p("object_id", Text),
            written("counter_term_id", Text),
        ],
    },
    EventTable {
        table: "deposited_events",
        event: Some("Deposited"),
        params: &[
            p("sender", Text),
            p("receiver", Text),
            p("term_id", Text),
            p("curve_id", Numeric),
            p("assets", Numeric),
            p("assets_after_fees", Numeric),
            p("shares", Numeric),
            p("total_shares", Numeric),
            p("vault_type", Text),
        ],
    },
    EventTable {
        table: "redeemed_events",
        event: Some("Redeemed"),
        params: &[
            p("sender", Text),
            p("receiver", Text),
            p("term_id", Text),
            p("curve_id", Numeric),
            p("shares", Numeric),
            p("total_shares", Numeric),
            p("assets", Numeric),
            p("fees", Numeric),
            p("vault_type", Text),
        ],
    },
    EventTable {
        table: "share_price_changed_events",
        event: Some("SharePriceChanged"),
        params: &[
            p("term_id", Text),
            p("curve_id", Numeric),
            p("share_price", Numeric),
            p("total_assets", Numeric),
            p("total_shares", Numeric),
            p("vault_type", Text),
        ],
    },
    EventTable {
        table: "generic_events",
        event: None,
        params: &[written("event_name", Text), p("payload", Jsonb)],
    },
];

/// The event tables' names, in [`EVENT_TABLES`] order.
pub const EVENT_LOG: [&str; 6] = [
    EVENT_TABLES[0].table,
    EVENT_TABLES[1].table,
    EVENT_TABLES[2].table,
    EVENT_TABLES[3].table,
    EVENT_TABLES[4].table,
    EVENT_TABLES[5].table,
];

/// The identity probe's index (migration `event_transactions`): one row per transaction the
/// event log holds an event of, keyed by [`hash_prefix`]. A superset (a key may outlive its
/// events, two transactions may share one), so a key found only means "read the event tables
/// for this transaction"; a key missing means none of its events is stored. `event_rows` writes
/// the keys of a batch's events beside the events.
pub const TRANSACTIONS: &str = "event_transactions";

/// [`TRANSACTIONS`]' one column, its key.
pub const TRANSACTION_KEY: &[&str] = &["hash_prefix"];

/// [`hash_prefix`] in SQL, of an event table's `transaction_hash` (`0x` + 64 lowercase hex
/// digits): how the keys of events stored before the table existed are computed.
pub const HASH_PREFIX_SQL: &str = "('x' || substr(transaction_hash, 3, 16))::bit(64)::bigint";

/// A transaction's key in [`TRANSACTIONS`]: the first 8 bytes of its hash, big-endian, as a
/// signed integer — what [`HASH_PREFIX_SQL`] computes from the stored text.
pub fn hash_prefix(hash: &TxHash) -> i64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.0[..8]);
    i64::from_be_bytes(first)
}

/// The bits of a key prefix: the first 15 hex digits of an id or address, always a positive
/// `BIGINT`, in the order of the ids.
pub const KEY_PREFIX_BITS: u32 = 60;

/// [`key_prefix`] in SQL, of the hex text column `column` (`0x` and at least 15 hex digits, of
/// either case: term ids and checksummed addresses). The event tables are indexed by this
/// expression (migration `key_prefix_indexes`): a reorg and a key-range read find a key's events
/// through an index of eight-byte integers instead of one of the 66-character ids, a fifth of
/// its size, and a query uses the index only if it names the expression exactly as here.
pub fn key_prefix_sql(column: &str) -> String {
    format!("(('x' || substr({column}, 3, 15))::bit(60)::bigint)")
}

/// An id's or address's key prefix: its first [`KEY_PREFIX_BITS`] bits, big-endian — what
/// [`key_prefix_sql`] computes from the stored text. Ids in order have their prefixes in order.
pub fn key_prefix(bytes: &[u8]) -> i64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(first) >> (64 - KEY_PREFIX_BITS)) as i64
}

/// The most parameters any table reads back.
pub const MAX_READ_PARAMS: usize = 9;

impl EventTable {
    /// The table holding events named `name` (the generic table for any other name).
    pub fn of_event(name: &str) -> &'static EventTable {
        EVENT_TABLES
            .iter()
            .find(|t| t.event == Some(name))
            .unwrap_or(&EVENT_TABLES[5])
    }

    /// The table named `table`.
    pub fn named(table: &str) -> Option<&'static EventTable> {
        EVENT_TABLES.iter().find(|t| t.table == table)
    }

    /// Where the parameter `column` is read back: its place among the `p0`, `p1`, … columns of
    /// [`read_sql`](Self::read_sql). `None` for a column not read back or not of the table.
    pub fn read_position(&self, column: &str) -> Option<usize> {
        self.params
            .iter()
            .filter(|p| p.read)
            .position(|p| p.column == column)
    }

    /// SQL of the event's name: a literal, or the generic table's `event_name` column.
    pub fn name_sql(&self) -> String {
        match self.event {
            Some(name) => format!("'{name}'"),
            None => "event_name".to_owned(),
        }
    }

    /// SELECT expressions of the parameters read back, as text columns `p0`, `p1`, … padded
    /// with NULL up to [`MAX_READ_PARAMS`].
    pub fn read_sql(&self) -> String {
        let mut exprs: Vec<String> = self
            .params
            .iter()
            .filter(|p| p.read)
            .map(|p| match p.stored {
                Text => p.column.to_owned(),
                Numeric | Jsonb => format!("{}::text", p.column),
                Bytea => format!("encode({}, 'hex')", p.column),
            })
            .collect();
        while exprs.len() < MAX_READ_PARAMS {
            exprs.push("NULL::text".to_owned());
        }
        exprs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} AS p{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_reads_at_most_the_padded_parameters_and_writes_distinct_columns() {
        for t in &EVENT_TABLES {
            assert!(t.params.iter().filter(|p| p.read).count() <= MAX_READ_PARAMS);
            let mut names: Vec<&str> = META.to_vec();
            names.extend(t.params.iter().map(|p| p.column));
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), n, "{}: a column twice", t.table);
        }
        assert_eq!(EventTable::of_event("Deposited").table, "deposited_events");
        assert_eq!(
            EventTable::of_event("ProtocolFeeAccrued").table,
            "generic_events"
        );
        assert_eq!(
            EventTable::named("redeemed_events").map(|t| t.event),
            Some(Some("Redeemed"))
        );
        let triple = EventTable::of_event("TripleCreated");
        assert_eq!(triple.read_position("subject_id"), Some(2));
        assert_eq!(
            triple.read_position("counter_term_id"),
            None,
            "derived, not read"
        );
        assert_eq!(EVENT_TABLES[5].read_position("payload"), Some(0));
    }

    #[test]
    fn a_key_prefix_is_the_first_sixty_bits_in_order() {
        let id = |first: [u8; 8]| {
            let mut h = [0xff; 32];
            h[..8].copy_from_slice(&first);
            h
        };
        assert_eq!(key_prefix(&id([0; 8])), 0);
        assert_eq!(key_prefix(&id([0, 0, 0, 0, 0, 0, 0, 0x10])), 1);
        assert_eq!(key_prefix(&id([0xff; 8])), (1 << 60) - 1);
        assert_eq!(
            key_prefix(&id([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0])),
            0x0123_4567_89ab_cdef
        );
        assert!(
            key_prefix(&id([0x7f, 0xff, 0, 0, 0, 0, 0, 0]))
                < key_prefix(&id([0x80, 0, 0, 0, 0, 0, 0, 0]))
        );
        assert_eq!(
            key_prefix_sql("term_id"),
            "(('x' || substr(term_id, 3, 15))::bit(60)::bigint)"
        );
    }

    #[test]
    fn a_transaction_key_is_the_hash_first_eight_bytes_big_endian_signed() {
        let hash = |first: [u8; 8], rest: u8| {
            let mut h = [rest; 32];
            h[..8].copy_from_slice(&first);
            crate::domain::Bytes32(h)
        };
        assert_eq!(hash_prefix(&hash([0, 0, 0, 0, 0, 0, 0, 1], 0xff)), 1);
        assert_eq!(hash_prefix(&hash([0x80, 0, 0, 0, 0, 0, 0, 0], 0)), i64::MIN);
        assert_eq!(hash_prefix(&hash([0xff; 8], 0)), -1);
        assert_eq!(
            hash_prefix(&hash([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0], 7)),
            0x1234_5678_9abc_def0
        );
    }
}
