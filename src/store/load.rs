//! Reading back: the event log as domain [`Event`]s — whole, filtered by SQL, or one key range
//! of term ids for the range-by-range fold (`store::partition`) — and the derived tables in a
//! canonical JSON form, whole or one key range, to compare with the fold (tests, `verify`).
//!
//! Key ranges are text bounds on a term id ([`KeyFilter`]): the indexes on the event tables and
//! on the derived tables lead with the term id (or, for the pair tables, the first id of the
//! key), so each range is an index range scan.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::TryStreamExt;
use primitive_types::U256;
use serde_json::Value;

use super::partition::Ranges;
use super::text::{self, hex_n};
use crate::domain::rows::Tables;
use crate::domain::{Address, Bytes32, Event, EventKind, EventMeta, TermId, VaultType};

#[derive(QueryableByName)]
struct EventRecord {
    #[diesel(sql_type = Text)]
    event_name: String,
    #[diesel(sql_type = Text)]
    transaction_hash: String,
    #[diesel(sql_type = BigInt)]
    log_index: i64,
    #[diesel(sql_type = BigInt)]
    block_number: i64,
    #[diesel(sql_type = Nullable<Text>)]
    block_hash: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    transaction_index: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    block_timestamp: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    address: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    network: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    chain_id: Option<i64>,
    /// The event's parameters as a JSON array of strings, in ABI order.
    #[diesel(sql_type = Text)]
    params: String,
}

const META_SELECT: &str =
    "transaction_hash, log_index, block_number, block_hash, transaction_index, \
    extract(epoch from block_timestamp)::int8 AS block_timestamp, address, network, chain_id";

/// The event log: one table per event type, primary key the event identity.
pub const EVENT_LOG: [&str; 6] = [
    "atom_created_events",
    "triple_created_events",
    "deposited_events",
    "redeemed_events",
    "share_price_changed_events",
    "generic_events",
];

/// `(event table, SQL of event_name, SQL of the parameters array)`.
const EVENT_TABLES: [(&str, &str, &str); 6] = [
    (EVENT_LOG[0], "'AtomCreated'", "json_build_array(creator, term_id, encode(atom_data, 'hex'), atom_wallet)"),
    (EVENT_LOG[1], "'TripleCreated'", "json_build_array(creator, term_id, subject_id, predicate_id, object_id)"),
    (
        EVENT_LOG[2],
        "'Deposited'",
        "json_build_array(sender, receiver, term_id, curve_id::text, assets::text, assets_after_fees::text, shares::text, total_shares::text, vault_type)",
    ),
    (
        EVENT_LOG[3],
        "'Redeemed'",
        "json_build_array(sender, receiver, term_id, curve_id::text, shares::text, total_shares::text, assets::text, fees::text, vault_type)",
    ),
    (
        EVENT_LOG[4],
        "'SharePriceChanged'",
        "json_build_array(term_id, curve_id::text, share_price::text, total_assets::text, total_shares::text, vault_type)",
    ),
    (EVENT_LOG[5], "event_name", "json_build_array(payload::text)"),
];

/// The event tables of the derived tables' event types (all but `generic_events`).
const CORE_EVENT_TABLES: [&str; 5] = [
    EVENT_LOG[0],
    EVENT_LOG[1],
    EVENT_LOG[2],
    EVENT_LOG[3],
    EVENT_LOG[4],
];

/// The event tables of the events that decide vault figures.
const VAULT_EVENT_TABLES: [&str; 3] = [EVENT_LOG[2], EVENT_LOG[3], EVENT_LOG[4]];

/// Term ids per `= ANY(…)` read of vault events.
const TERMS_PER_READ: usize = 10_000;

/// How SQL compares a term id with a key range's bounds.
///
/// The bounds are `'0x'` and four lowercase hex digits; ids are `'0x'` and 64. Under the C
/// collation that is byte order, which is what [`Ranges::of`](super::partition::Ranges::of)
/// computes. The indexes are built with the database's collation, and a comparison can use an
/// index only under the index's collation: so the filter compares in the database's collation
/// when that orders hex text as C does ([`probe`](Self::probe)), and adds `COLLATE "C"` (correct,
/// but without the index) when it does not. Either way the fold checks that every event it was
/// given is in the range it was read for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFilter {
    collate: &'static str,
}

impl KeyFilter {
    /// Compares in the database's collation (it orders hex text bytewise).
    pub const DATABASE: KeyFilter = KeyFilter { collate: "" };
    /// Compares under `COLLATE "C"`.
    pub const C: KeyFilter = KeyFilter {
        collate: " COLLATE \"C\"",
    };

    /// The filter for this database: [`DATABASE`](Self::DATABASE) if its collation sorts a
    /// sample of hex ids and bounds as bytes sort them, else [`C`](Self::C).
    pub async fn probe(conn: &mut AsyncPgConnection) -> anyhow::Result<Self> {
        #[derive(QueryableByName)]
        struct Sorted {
            #[diesel(sql_type = Array<Text>)]
            sorted: Vec<String>,
        }
        let mut sample: Vec<String> = [
            "", "0", "00", "09", "0a", "0f", "10", "9", "9f", "a", "a0", "af", "f", "ff", "fff0",
        ]
        .iter()
        .map(|h| format!("0x{h}"))
        .collect();
        let r: Sorted =
            diesel::sql_query("SELECT array_agg(s ORDER BY s) AS sorted FROM unnest($1::text[]) s")
                .bind::<Array<Text>, _>(&sample)
                .get_result(conn)
                .await
                .context("probing how the database collation orders term ids")?;
        sample.sort_unstable();
        Ok(if r.sorted == sample {
            Self::DATABASE
        } else {
            Self::C
        })
    }

    /// The SQL condition that `column` is in range `range` of `ranges` (`TRUE` for one range).
    pub fn condition(&self, column: &str, ranges: Ranges, range: usize) -> String {
        let (lo, hi) = ranges.bounds(range);
        let mut parts = Vec::new();
        if let Some(lo) = lo {
            parts.push(format!("{column}{} >= '{lo}'", self.collate));
        }
        if let Some(hi) = hi {
            parts.push(format!("{column}{} < '{hi}'", self.collate));
        }
        if parts.is_empty() {
            "TRUE".to_owned()
        } else {
            parts.join(" AND ")
        }
    }
}

/// The events of the derived tables' event types whose term id is in range `range`.
pub async fn load_range_events(
    conn: &mut AsyncPgConnection,
    filter: KeyFilter,
    ranges: Ranges,
    range: usize,
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let mut networks = BTreeMap::new();
    let condition = filter.condition("term_id", ranges, range);
    for table in CORE_EVENT_TABLES {
        let from = format!("{table} WHERE {condition}");
        read_table(conn, table, &from, &mut networks, &mut events).await?;
    }
    Ok(events)
}

/// The SharePriceChanged, Deposited and Redeemed events of `terms`.
pub async fn load_vault_events(
    conn: &mut AsyncPgConnection,
    terms: &[TermId],
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let mut networks = BTreeMap::new();
    for chunk in terms.chunks(TERMS_PER_READ) {
        // Ids print as '0x' + hex: safe to inline.
        let list: Vec<String> = chunk.iter().map(|t| t.to_string()).collect();
        let any = format!("term_id = ANY('{{{}}}'::text[])", list.join(","));
        for table in VAULT_EVENT_TABLES {
            let from = format!("{table} WHERE {any}");
            read_table(conn, table, &from, &mut networks, &mut events).await?;
        }
    }
    Ok(events)
}

/// The term id of every TripleCreated in the event log (repeats included).
pub async fn load_triple_ids(conn: &mut AsyncPgConnection) -> anyhow::Result<Vec<TermId>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Text)]
        term_id: String,
    }
    let ids: Vec<Id> = diesel::sql_query(format!("SELECT term_id FROM {}", EVENT_LOG[1]))
        .load(conn)
        .await
        .context("reading the triple ids of the event log")?;
    ids.iter()
        .map(|r| Ok(Bytes32(hex_n::<32>(&r.term_id)?)))
        .collect()
}

/// Rows of the event tables: `(of the derived tables' event types, generic)`.
pub async fn count_events(conn: &mut AsyncPgConnection) -> anyhow::Result<(u64, u64)> {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        core: i64,
        #[diesel(sql_type = BigInt)]
        generic: i64,
    }
    let core: Vec<String> = CORE_EVENT_TABLES
        .iter()
        .map(|t| format!("(SELECT count(*) FROM {t})"))
        .collect();
    let c: Counts = diesel::sql_query(format!(
        "SELECT {} AS core, (SELECT count(*) FROM {}) AS generic",
        core.join(" + "),
        EVENT_LOG[5]
    ))
    .get_result(conn)
    .await
    .context("counting the event log")?;
    Ok((c.core.max(0) as u64, c.generic.max(0) as u64))
}

/// Every event of the event log, optionally only those matching the SQL condition `filter`.
pub async fn load_events(
    conn: &mut AsyncPgConnection,
    filter: Option<&str>,
) -> anyhow::Result<Vec<Event>> {
    load_events_with(conn, filter, &mut |_, _| {}).await
}

/// [`load_events`], calling `loaded(table, events so far)` after each event table is read.
pub async fn load_events_with(
    conn: &mut AsyncPgConnection,
    filter: Option<&str>,
    loaded: &mut (dyn FnMut(&'static str, usize) + Send),
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let mut networks: BTreeMap<String, Arc<str>> = BTreeMap::new();
    for (table, _, _) in EVENT_TABLES {
        let from = format!(
            "{table}{}",
            filter.map(|f| format!(" WHERE {f}")).unwrap_or_default()
        );
        read_table(conn, table, &from, &mut networks, &mut events).await?;
        loaded(table, events.len());
    }
    Ok(events)
}

/// The events of event table `table` that the SQL `from` (what follows `FROM`: the table or
/// any relation with its columns, and conditions) yields.
pub async fn load_events_from(
    conn: &mut AsyncPgConnection,
    table: &str,
    from: &str,
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    read_table(conn, table, from, &mut BTreeMap::new(), &mut events).await?;
    Ok(events)
}

async fn read_table(
    conn: &mut AsyncPgConnection,
    table: &str,
    from: &str,
    networks: &mut BTreeMap<String, Arc<str>>,
    events: &mut Vec<Event>,
) -> anyhow::Result<()> {
    let (_, name, params) = EVENT_TABLES
        .iter()
        .find(|(t, _, _)| *t == table)
        .ok_or_else(|| anyhow!("{table} is not an event table"))?;
    let sql =
        format!("SELECT {name} AS event_name, {META_SELECT}, {params}::text AS params FROM {from}");
    let reading = || format!("reading the event log table {table}");
    // Row by row off the wire: only the decoded events are held, not every row's text too.
    let mut records = std::pin::pin!(diesel::sql_query(sql)
        .load_stream::<EventRecord>(conn)
        .await
        .with_context(reading)?);
    while let Some(r) = records.try_next().await.with_context(reading)? {
        // The identity is formatted only if the row does not decode (not once per row).
        let transaction_hash =
            text::bytes32(&r.transaction_hash).with_context(|| format!("an event of {table}"))?;
        let log_index = r.log_index;
        events.push(
            record_to_event(r, transaction_hash, networks)
                .with_context(|| format!("event {transaction_hash}:{log_index} of {table}"))?,
        );
    }
    Ok(())
}

fn record_to_event(
    r: EventRecord,
    transaction_hash: Bytes32,
    networks: &mut BTreeMap<String, Arc<str>>,
) -> anyhow::Result<Event> {
    let params: Vec<String> = serde_json::from_str(&r.params).context("parameters")?;
    let p = |i: usize| {
        params
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("parameter {i} missing"))
    };
    let b32 = |i: usize| -> anyhow::Result<Bytes32> { Ok(Bytes32(hex_n::<32>(p(i)?)?)) };
    let addr = |i: usize| -> anyhow::Result<Address> { Ok(Address(hex_n::<20>(p(i)?)?)) };
    let num = |i: usize| -> anyhow::Result<U256> {
        U256::from_dec_str(p(i)?).map_err(|e| anyhow!("parameter {i}: {e:?}"))
    };
    let vt = |i: usize| -> anyhow::Result<VaultType> { text::vault_type(p(i)?) };
    let kind = match r.event_name.as_str() {
        "AtomCreated" => EventKind::AtomCreated {
            creator: addr(0)?,
            term_id: b32(1)?,
            atom_data: hex::decode(p(2)?).context("atom_data")?,
            atom_wallet: addr(3)?,
        },
        "TripleCreated" => EventKind::TripleCreated {
            creator: addr(0)?,
            term_id: b32(1)?,
            subject_id: b32(2)?,
            predicate_id: b32(3)?,
            object_id: b32(4)?,
        },
        "Deposited" => EventKind::Deposited {
            sender: addr(0)?,
            receiver: addr(1)?,
            term_id: b32(2)?,
            curve_id: num(3)?,
            assets: num(4)?,
            assets_after_fees: num(5)?,
            shares: num(6)?,
            total_shares: num(7)?,
            vault_type: vt(8)?,
        },
        "Redeemed" => EventKind::Redeemed {
            sender: addr(0)?,
            receiver: addr(1)?,
            term_id: b32(2)?,
            curve_id: num(3)?,
            shares: num(4)?,
            total_shares: num(5)?,
            assets: num(6)?,
            fees: num(7)?,
            vault_type: vt(8)?,
        },
        "SharePriceChanged" => EventKind::SharePriceChanged {
            term_id: b32(0)?,
            curve_id: num(1)?,
            share_price: num(2)?,
            total_assets: num(3)?,
            total_shares: num(4)?,
            vault_type: vt(5)?,
        },
        other => EventKind::Generic {
            event_name: other.to_owned(),
            // The text the decoder made of it (JSONB reorders keys and rewrites numbers).
            payload: crate::ingest::json::canonical(
                &serde_json::from_str::<Value>(p(0)?).context("payload")?,
            )
            .context("payload")?,
        },
    };
    let network = r.network.map(|n| {
        networks
            .entry(n.clone())
            .or_insert_with(|| Arc::from(n.as_str()))
            .clone()
    });
    Ok(Event {
        meta: EventMeta {
            transaction_hash,
            log_index: r.log_index,
            block_number: r.block_number,
            block_timestamp: r.block_timestamp,
            block_hash: r
                .block_hash
                .as_deref()
                .map(hex_n::<32>)
                .transpose()?
                .map(Bytes32),
            transaction_index: r.transaction_index,
            address: r
                .address
                .as_deref()
                .map(hex_n::<20>)
                .transpose()?
                .map(Address),
            network,
            chain_id: r.chain_id,
        },
        kind,
    })
}

// ---- derived tables in canonical form ------------------------------------------------------

/// A derived table: its name, the number of key columns, and the SELECT expressions of its
/// columns in canonical form (numbers as text, times as Unix seconds, bytes as hex).
#[derive(Debug)]
pub struct TableShape {
    pub name: &'static str,
    pub key_len: usize,
    /// The id column that key ranges cut (the term id; for a pair table, its first id): the
    /// leading column of an index of the table.
    pub range_column: &'static str,
    pub select: &'static [&'static str],
}

pub const DERIVED: [TableShape; 9] = [
    TableShape {
        name: "atom",
        key_len: 1,
        range_column: "term_id",
        select: &[
            "term_id",
            "creator_id",
            "wallet_id",
            "data",
            "encode(raw_data, 'hex')",
            "block_number",
            "log_index",
            "transaction_hash",
            "extract(epoch from created_at)::int8",
        ],
    },
    TableShape {
        name: "triple",
        key_len: 1,
        range_column: "term_id",
        select: &[
            "term_id",
            "counter_term_id",
            "creator_id",
            "subject_id",
            "predicate_id",
            "object_id",
            "block_number",
            "log_index",
            "transaction_hash",
            "extract(epoch from created_at)::int8",
        ],
    },
    TableShape {
        name: "position",
        key_len: 3,
        range_column: "term_id",
        select: &[
            "account_id",
            "term_id",
            "curve_id::text",
            "shares::text",
            "total_deposit_assets_after_total_fees::text",
            "total_redeem_assets_for_receiver::text",
            "extract(epoch from created_at)::int8",
            "extract(epoch from updated_at)::int8",
            "first_block_number",
            "first_log_index",
            "first_transaction_hash",
            "last_block_number",
            "last_log_index",
            "last_transaction_hash",
        ],
    },
    TableShape {
        name: "vault",
        key_len: 2,
        range_column: "term_id",
        select: &[
            "term_id",
            "curve_id::text",
            "total_shares::text",
            "current_share_price::text",
            "total_assets::text",
            "market_cap::text",
            "position_count",
            "vault_type",
            "price_block_number",
            "price_log_index",
            "price_transaction_hash",
            "type_block_number",
            "type_log_index",
            "type_transaction_hash",
        ],
    },
    TableShape {
        name: "term",
        key_len: 1,
        range_column: "id",
        select: &[
            "id",
            "type",
            "atom_id",
            "triple_id",
            "total_assets::text",
            "total_market_cap::text",
            "is_atom",
            "is_triple",
            "counter_of",
        ],
    },
    TableShape {
        name: "triple_vault",
        key_len: 3,
        range_column: "term_id",
        select: &[
            "term_id",
            "counter_term_id",
            "curve_id::text",
            "total_shares::text",
            "total_assets::text",
            "position_count",
            "market_cap::text",
        ],
    },
    TableShape {
        name: "triple_term",
        key_len: 2,
        range_column: "term_id",
        select: &[
            "term_id",
            "counter_term_id",
            "total_assets::text",
            "total_market_cap::text",
            "total_position_count",
        ],
    },
    TableShape {
        name: "predicate_object",
        key_len: 2,
        range_column: "predicate_id",
        select: &[
            "predicate_id",
            "object_id",
            "triple_count",
            "total_position_count",
            "total_market_cap::text",
            "total_market_cap_sum::text",
        ],
    },
    TableShape {
        name: "subject_predicate",
        key_len: 2,
        range_column: "subject_id",
        select: &[
            "subject_id",
            "predicate_id",
            "triple_count",
            "total_position_count",
            "total_market_cap::text",
            "total_market_cap_sum::text",
        ],
    },
];

impl TableShape {
    /// The column names, in `select` order (each expression names the column it reads).
    pub fn columns(&self) -> Vec<&'static str> {
        self.select.iter().map(|e| column_of(e)).collect()
    }

    /// Whether the table is one of the four the analytics consumer keeps (eventually consistent).
    pub fn is_analytics(&self) -> bool {
        ANALYTICS_TABLES.contains(&self.name)
    }
}

/// The triple-level tables, written by the analytics consumer (SPEC §2: eventually consistent).
pub const ANALYTICS_TABLES: [&str; 4] = [
    "triple_vault",
    "triple_term",
    "predicate_object",
    "subject_predicate",
];

/// The column a canonical SELECT expression reads: `x`, `x::text`, `encode(x, 'hex')`,
/// `extract(epoch from x)::int8`.
fn column_of(expr: &'static str) -> &'static str {
    let inner = if let Some(rest) = expr.strip_prefix("encode(") {
        rest.split(',').next().unwrap_or(rest)
    } else if let Some(rest) = expr.strip_prefix("extract(epoch from ") {
        rest.split(')').next().unwrap_or(rest)
    } else {
        expr.split("::").next().unwrap_or(expr)
    };
    inner.trim()
}

/// Rows of one table in canonical form: key (JSON array text) → whole row.
pub type CanonicalTable = BTreeMap<String, Vec<Value>>;

#[derive(QueryableByName)]
struct RowText {
    #[diesel(sql_type = Text)]
    row: String,
}

/// Reads one derived table in canonical form.
pub async fn load_table(
    conn: &mut AsyncPgConnection,
    shape: &TableShape,
) -> anyhow::Result<CanonicalTable> {
    load_table_where(conn, shape, "TRUE").await
}

/// Reads the rows of one derived table whose [`range_column`](TableShape::range_column) is in
/// range `range`, in canonical form.
pub async fn load_table_range(
    conn: &mut AsyncPgConnection,
    shape: &TableShape,
    filter: KeyFilter,
    ranges: Ranges,
    range: usize,
) -> anyhow::Result<CanonicalTable> {
    let condition = filter.condition(shape.range_column, ranges, range);
    load_table_where(conn, shape, &condition).await
}

/// Reads the rows of one derived table that match the SQL `condition`, in canonical form.
async fn load_table_where(
    conn: &mut AsyncPgConnection,
    shape: &TableShape,
    condition: &str,
) -> anyhow::Result<CanonicalTable> {
    let sql = format!(
        "SELECT json_build_array({})::text AS row FROM {} WHERE {condition}",
        shape.select.join(", "),
        shape.name
    );
    let rows: Vec<RowText> = diesel::sql_query(sql)
        .load(conn)
        .await
        .with_context(|| format!("reading table {}", shape.name))?;
    rows.into_iter()
        .map(|r| {
            let row: Vec<Value> =
                serde_json::from_str(&r.row).with_context(|| format!("a row of {}", shape.name))?;
            Ok((Value::Array(row[..shape.key_len].to_vec()).to_string(), row))
        })
        .collect()
}

/// The fold's tables in the same canonical form, table by table in [`DERIVED`] order.
pub fn canonical(tables: &Tables) -> Vec<CanonicalTable> {
    fn s<T: ToString>(v: T) -> Value {
        Value::String(v.to_string())
    }
    fn n(v: i64) -> Value {
        Value::from(v)
    }
    fn t(v: Option<i64>) -> Value {
        v.map_or(Value::Null, Value::from)
    }
    fn on(v: Option<i64>) -> Value {
        v.map_or(Value::Null, Value::from)
    }
    fn o<T: ToString>(v: Option<T>) -> Value {
        v.map_or(Value::Null, |x| s(x))
    }
    fn keyed(shape: &TableShape, rows: impl Iterator<Item = Vec<Value>>) -> CanonicalTable {
        rows.map(|row| (Value::Array(row[..shape.key_len].to_vec()).to_string(), row))
            .collect()
    }
    let a = |addr: &Address| Value::String(addr.to_checksum());
    vec![
        keyed(
            &DERIVED[0],
            tables.atom.values().map(|r| {
                vec![
                    s(r.term_id),
                    a(&r.creator_id),
                    a(&r.wallet_id),
                    o(r.data.as_ref()),
                    s(hex::encode(&r.raw_data)),
                    n(r.block_number),
                    n(r.log_index),
                    s(r.transaction_hash),
                    t(r.created_at),
                ]
            }),
        ),
        keyed(
            &DERIVED[1],
            tables.triple.values().map(|r| {
                vec![
                    s(r.term_id),
                    s(r.counter_term_id),
                    a(&r.creator_id),
                    s(r.subject_id),
                    s(r.predicate_id),
                    s(r.object_id),
                    n(r.block_number),
                    n(r.log_index),
                    s(r.transaction_hash),
                    t(r.created_at),
                ]
            }),
        ),
        keyed(
            &DERIVED[2],
            tables.position.values().map(|r| {
                vec![
                    a(&r.account_id),
                    s(r.term_id),
                    s(r.curve_id),
                    s(r.shares),
                    s(r.total_deposit_assets_after_total_fees),
                    s(r.total_redeem_assets_for_receiver),
                    t(r.created_at),
                    t(r.updated_at),
                    n(r.first_at.block_number),
                    n(r.first_at.log_index),
                    s(r.first_at.transaction_hash),
                    n(r.last_at.block_number),
                    n(r.last_at.log_index),
                    s(r.last_at.transaction_hash),
                ]
            }),
        ),
        keyed(
            &DERIVED[3],
            tables.vault.values().map(|r| {
                vec![
                    s(r.term_id),
                    s(r.curve_id),
                    s(r.total_shares),
                    s(r.current_share_price),
                    s(r.total_assets),
                    s(r.market_cap),
                    n(r.position_count),
                    s(r.vault_type.as_str()),
                    on(r.price_at.map(|o| o.block_number)),
                    on(r.price_at.map(|o| o.log_index)),
                    o(r.price_at.map(|o| o.transaction_hash)),
                    n(r.type_at.block_number),
                    n(r.type_at.log_index),
                    s(r.type_at.transaction_hash),
                ]
            }),
        ),
        keyed(
            &DERIVED[4],
            tables.term.values().map(|r| {
                vec![
                    s(r.id),
                    s(r.term_type.as_str()),
                    o(r.atom_id),
                    o(r.triple_id),
                    s(r.total_assets),
                    s(r.total_market_cap),
                    Value::Bool(r.is_atom),
                    Value::Bool(r.is_triple),
                    o(r.counter_of),
                ]
            }),
        ),
        keyed(
            &DERIVED[5],
            tables.triple_vault.values().map(|r| {
                vec![
                    s(r.term_id),
                    s(r.counter_term_id),
                    s(r.curve_id),
                    s(r.total_shares),
                    s(r.total_assets),
                    n(r.position_count),
                    s(r.market_cap),
                ]
            }),
        ),
        keyed(
            &DERIVED[6],
            tables.triple_term.values().map(|r| {
                vec![
                    s(r.term_id),
                    s(r.counter_term_id),
                    s(r.total_assets),
                    s(r.total_market_cap),
                    n(r.total_position_count),
                ]
            }),
        ),
        keyed(
            &DERIVED[7],
            tables.predicate_object.values().map(|r| {
                vec![
                    s(r.key.0),
                    s(r.key.1),
                    n(r.triple_count),
                    n(r.total_position_count),
                    s(r.total_market_cap),
                    s(r.total_market_cap_sum),
                ]
            }),
        ),
        keyed(
            &DERIVED[8],
            tables.subject_predicate.values().map(|r| {
                vec![
                    s(r.key.0),
                    s(r.key.1),
                    n(r.triple_count),
                    n(r.total_position_count),
                    s(r.total_market_cap),
                    s(r.total_market_cap_sum),
                ]
            }),
        ),
    ]
}

/// How a stored table differs from the expected one.
#[derive(Debug, Default, Clone)]
pub struct TableDiff {
    pub table: &'static str,
    pub checked: usize,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub differing: Vec<(Vec<Value>, Vec<Value>)>,
}

impl TableDiff {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }
}

/// Compares `stored` with `expected`, row by row.
pub fn diff(table: &'static str, expected: &CanonicalTable, stored: &CanonicalTable) -> TableDiff {
    let mut d = TableDiff {
        table,
        checked: expected.len().max(stored.len()),
        ..TableDiff::default()
    };
    for (k, row) in expected {
        match stored.get(k) {
            None => d.missing.push(k.clone()),
            Some(s) if s != row => d.differing.push((row.clone(), s.clone())),
            Some(_) => {}
        }
    }
    d.extra = stored
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    d
}

/// Compares every derived table (or only those named in `only`) with `expected`.
pub async fn compare(
    conn: &mut AsyncPgConnection,
    expected: &Tables,
    only: &[&str],
) -> anyhow::Result<Vec<TableDiff>> {
    let want = canonical(expected);
    let mut out = Vec::new();
    for (shape, expected) in DERIVED.iter().zip(&want) {
        if !only.is_empty() && !only.contains(&shape.name) {
            continue;
        }
        let stored = load_table(conn, shape).await?;
        out.push(diff(shape.name, expected, &stored));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_canonical_expression_names_its_column() {
        assert_eq!(
            DERIVED[0].columns(),
            [
                "term_id",
                "creator_id",
                "wallet_id",
                "data",
                "raw_data",
                "block_number",
                "log_index",
                "transaction_hash",
                "created_at"
            ]
        );
        assert_eq!(
            &DERIVED[2].columns()[..4],
            ["account_id", "term_id", "curve_id", "shares"]
        );
        for shape in &DERIVED {
            for c in shape.columns() {
                assert!(
                    c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{}: {c:?}",
                    shape.name
                );
            }
        }
        let analytics: Vec<_> = DERIVED
            .iter()
            .filter(|s| s.is_analytics())
            .map(|s| s.name)
            .collect();
        assert_eq!(analytics, ANALYTICS_TABLES);
    }

    #[test]
    fn diff_names_missing_extra_and_differing_keys() {
        let row = |k: &str, v: i64| (format!("[\"{k}\"]"), vec![Value::from(k), Value::from(v)]);
        let expected: CanonicalTable = [row("a", 1), row("b", 2), row("c", 3)].into();
        let stored: CanonicalTable = [row("a", 1), row("b", 5), row("d", 4)].into();
        let d = diff("atom", &expected, &stored);
        assert_eq!(d.missing, ["[\"c\"]"]);
        assert_eq!(d.extra, ["[\"d\"]"]);
        assert_eq!(d.differing.len(), 1);
        assert_eq!(d.differing[0].1[1], Value::from(5));
        assert!(!d.is_clean());
    }
}
