//! Reading back the event log as domain [`Event`]s — whole, filtered by SQL, or one key range
//! of term ids for the range-by-range fold (`store::partition`). The derived tables' canonical
//! form, for `verify` and the tests, is `store::compare`.
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
use super::tables::events::{key_prefix, key_prefix_sql, KEY_PREFIX_BITS};
use super::tables::{EventTable, MAX_READ_PARAMS};
use super::text::{self, hex_n};
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
    /// The event's parameters read back, in ABI order (`store::tables`), NULL past the last.
    #[diesel(sql_type = Nullable<Text>)]
    p0: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    p1: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    p2: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    p3: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    p4: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    p5: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    p6: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    p7: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    p8: Option<String>,
}

impl EventRecord {
    /// The parameters, in ABI order.
    fn params(&self) -> [Option<&str>; MAX_READ_PARAMS] {
        [
            &self.p0, &self.p1, &self.p2, &self.p3, &self.p4, &self.p5, &self.p6, &self.p7,
            &self.p8,
        ]
        .map(Option::as_deref)
    }
}

const META_SELECT: &str =
    "transaction_hash, log_index, block_number, block_hash, transaction_index, \
    extract(epoch from block_timestamp)::int8 AS block_timestamp, address, network, chain_id";

pub use super::tables::EVENT_LOG;

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
        let quote = |b: String| format!("'{b}'");
        within(
            &format!("{column}{}", self.collate),
            lo.map(quote),
            hi.map(quote),
        )
    }
}

/// The SQL condition `lo <= value < hi` (`TRUE` with neither bound).
fn within(value: &str, lo: Option<String>, hi: Option<String>) -> String {
    let parts: Vec<String> = [
        lo.map(|lo| format!("{value} >= {lo}")),
        hi.map(|hi| format!("{value} < {hi}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "TRUE".to_owned()
    } else {
        parts.join(" AND ")
    }
}

/// The SQL condition that an event table's `term_id` is in range `range` of `ranges` (`TRUE`
/// for one range): bounds on its [`key_prefix`](super::tables::events::key_prefix), which the
/// table's key index serves whatever the database's collation.
pub fn event_range_condition(ranges: Ranges, range: usize) -> String {
    // A range of the ids' first 16 bits is the range of their 60-bit prefixes shifted alike.
    let shifted = |p: u32| (u64::from(p) << (KEY_PREFIX_BITS - 16)).to_string();
    let (lo, hi) = ranges.prefixes(range);
    within(&key_prefix_sql("term_id"), lo.map(shifted), hi.map(shifted))
}

/// The events of the derived tables' event types whose term id is in range `range`.
pub async fn load_range_events(
    conn: &mut AsyncPgConnection,
    ranges: Ranges,
    range: usize,
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let mut networks = BTreeMap::new();
    let condition = event_range_condition(ranges, range);
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
    let prefix = key_prefix_sql("term_id");
    for chunk in terms.chunks(TERMS_PER_READ) {
        // Ids print as '0x' + hex: safe to inline. The prefixes find them in the key index.
        let list: Vec<String> = chunk.iter().map(|t| t.to_string()).collect();
        let prefixes: Vec<String> = chunk.iter().map(|t| key_prefix(&t.0).to_string()).collect();
        let any = format!(
            "{prefix} = ANY('{{{}}}'::bigint[]) AND term_id = ANY('{{{}}}'::text[])",
            prefixes.join(","),
            list.join(",")
        );
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
    for table in EVENT_LOG {
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
    let def = EventTable::named(table).ok_or_else(|| anyhow!("{table} is not an event table"))?;
    let sql = format!(
        "SELECT {} AS event_name, {META_SELECT}, {} FROM {from}",
        def.name_sql(),
        def.read_sql()
    );
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
            record_to_event(def, r, transaction_hash, networks)
                .with_context(|| format!("event {transaction_hash}:{log_index} of {table}"))?,
        );
    }
    Ok(())
}

fn record_to_event(
    table: &EventTable,
    r: EventRecord,
    transaction_hash: Bytes32,
    networks: &mut BTreeMap<String, Arc<str>>,
) -> anyhow::Result<Event> {
    // Parameters by column name, as the table's definition places them in `p0`, `p1`, ….
    let params = r.params();
    let p = |column: &'static str| -> anyhow::Result<&str> {
        table
            .read_position(column)
            .and_then(|i| params.get(i).copied().flatten())
            .ok_or_else(|| anyhow!("{}: column {column} missing", table.table))
    };
    let b32 = |c| -> anyhow::Result<Bytes32> { Ok(Bytes32(hex_n::<32>(p(c)?)?)) };
    let addr = |c| -> anyhow::Result<Address> { Ok(Address(hex_n::<20>(p(c)?)?)) };
    let num = |c| -> anyhow::Result<U256> {
        U256::from_dec_str(p(c)?).map_err(|e| anyhow!("{}.{c}: {e:?}", table.table))
    };
    let vt = |c| -> anyhow::Result<VaultType> { text::vault_type(p(c)?) };
    let kind = match r.event_name.as_str() {
        "AtomCreated" => EventKind::AtomCreated {
            creator: addr("creator")?,
            term_id: b32("term_id")?,
            atom_data: hex::decode(p("atom_data")?).context("atom_data")?,
            atom_wallet: addr("atom_wallet")?,
        },
        "TripleCreated" => EventKind::TripleCreated {
            creator: addr("creator")?,
            term_id: b32("term_id")?,
            subject_id: b32("subject_id")?,
            predicate_id: b32("predicate_id")?,
            object_id: b32("object_id")?,
        },
        "Deposited" => EventKind::Deposited {
            sender: addr("sender")?,
            receiver: addr("receiver")?,
            term_id: b32("term_id")?,
            curve_id: num("curve_id")?,
            assets: num("assets")?,
            assets_after_fees: num("assets_after_fees")?,
            shares: num("shares")?,
            total_shares: num("total_shares")?,
            vault_type: vt("vault_type")?,
        },
        "Redeemed" => EventKind::Redeemed {
            sender: addr("sender")?,
            receiver: addr("receiver")?,
            term_id: b32("term_id")?,
            curve_id: num("curve_id")?,
            shares: num("shares")?,
            total_shares: num("total_shares")?,
            assets: num("assets")?,
            fees: num("fees")?,
            vault_type: vt("vault_type")?,
        },
        "SharePriceChanged" => EventKind::SharePriceChanged {
            term_id: b32("term_id")?,
            curve_id: num("curve_id")?,
            share_price: num("share_price")?,
            total_assets: num("total_assets")?,
            total_shares: num("total_shares")?,
            vault_type: vt("vault_type")?,
        },
        other => EventKind::Generic {
            event_name: other.to_owned(),
            // The text the decoder made of it (JSONB reorders keys and rewrites numbers).
            payload: crate::ingest::json::canonical(
                &serde_json::from_str::<Value>(p("payload")?).context("payload")?,
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
