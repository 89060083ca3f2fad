//! The tables as the store writes and reads them, against the migrated schema (the one
//! definition that counts: `migrations/`). Every row set the store builds — the event log's
//! from one event of each kind, each derived table's from a fold — names only columns the table
//! has, includes every NOT NULL column without a default, and holds one value per row in every
//! column (a value left out would shift the later columns of the row, since `UNNEST` pads with
//! NULL). Then the row sets are written and read back: the event-log reader gives the same
//! events, `verify`'s comparison finds every derived table equal to the fold, the state cache's
//! reader gives the fold's base rows, and the batch's identity check finds exactly the
//! identities asked for.

use std::collections::{BTreeMap, BTreeSet};

use diesel::sql_types::{Bool, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use redis_postgres_sync::domain::{fold, Event, Keys};
use redis_postgres_sync::fixture;
use redis_postgres_sync::store::rowset::RowSet;
use redis_postgres_sync::store::{self, compare, event_rows, load, rows};

use crate::support::*;

#[derive(QueryableByName)]
struct SchemaColumn {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Bool)]
    required: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_sets_and_reads_match_the_migrated_schema() {
    let env = TestEnv::new("columns").await;
    store::migrate(&env.database_url).await.expect("migrate");
    let mut conn = store::connect::connect(&env.database_url)
        .await
        .expect("connect");
    let found: Vec<SchemaColumn> = diesel::sql_query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name, \
         (is_nullable = 'NO' AND column_default IS NULL) AS required \
         FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .load(&mut conn)
    .await
    .expect("information_schema");
    let mut schema: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
    for c in found {
        schema
            .entry(c.table_name)
            .or_default()
            .insert(c.column_name, c.required);
    }

    let events = fixture::read_events(include_str!("../fixtures/small.jsonl")).expect("fixture");
    let tables = fold(&events).tables();
    let mut sets: Vec<RowSet> = event_rows::event_rows(&events);
    sets.push(rows::atom_rows(tables.atom.values().cloned()));
    sets.push(rows::triple_rows(tables.triple.values().cloned()));
    sets.push(rows::position_rows(tables.position.values().cloned()));
    sets.push(rows::vault_rows(tables.vault.values().cloned()));
    sets.push(rows::term_rows(tables.term.values().cloned()));
    let triple_vaults: Vec<_> = tables.triple_vault.values().cloned().collect();
    sets.push(rows::triple_vault_rows(&triple_vaults));
    let triple_terms: Vec<_> = tables.triple_term.values().cloned().collect();
    sets.push(rows::triple_term_rows(&triple_terms));
    sets.push(rows::predicate_object_rows(
        tables.predicate_object.values().cloned(),
    ));
    sets.push(rows::subject_predicate_rows(
        tables.subject_predicate.values().cloned(),
    ));

    let written: BTreeSet<&str> = sets.iter().map(|s| s.table).collect();
    for table in load::EVENT_LOG.iter().chain(&compare::DERIVED_NAMES) {
        assert!(written.contains(table), "no row set of {table} was built");
    }
    let mut problems = Vec::new();
    for set in &sets {
        let Some(columns) = schema.get(set.table) else {
            problems.push(format!("{}: no such table", set.table));
            continue;
        };
        assert!(!set.is_empty(), "{}: the fixture gives rows", set.table);
        let names: BTreeSet<&str> = set.columns.iter().map(|(n, _)| *n).collect();
        for (name, column) in &set.columns {
            if !columns.contains_key(*name) {
                problems.push(format!("{}.{name}: no such column", set.table));
            }
            if column.len() != set.len() {
                problems.push(format!(
                    "{}.{name}: {} values for {} rows",
                    set.table,
                    column.len(),
                    set.len()
                ));
            }
        }
        for (name, required) in columns {
            if *required && !names.contains(name.as_str()) {
                problems.push(format!("{}.{name}: NOT NULL and never written", set.table));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Written and read back, every value survives: the event log as the same events, each
    // derived table as the fold's rows (types, casts and column order included).
    for set in &sets {
        set.write(&conn)
            .await
            .unwrap_or_else(|e| panic!("writing {}: {e}", set.table));
    }
    let mut stored = load::load_events(&mut conn, None)
        .await
        .expect("the event-log reader");
    let mut given = events.clone();
    let identity = |e: &Event| (e.meta.transaction_hash, e.meta.log_index);
    stored.sort_by_key(identity);
    given.sort_by_key(identity);
    assert_eq!(stored.len(), given.len(), "one stored event per event");
    assert!(stored == given, "the event log reads back what was written");
    let diffs = compare::compare(&mut conn, &tables, &[])
        .await
        .expect("compare");
    assert_eq!(diffs.len(), compare::DERIVED.len());
    for d in &diffs {
        assert!(d.checked > 0, "{}: rows compared", d.table);
        assert!(d.is_clean(), "{}: {d:?}", d.table);
    }
    // The state cache's reader names each column itself: it reads back the fold's base rows,
    // which `verify`'s comparison (built from the same definitions as the writer) could not
    // tell from a definition that put a value in the wrong column of the same type.
    let keys = Keys::of_events(&events);
    let mut base = store::prior::load_base(&mut conn, &keys)
        .await
        .expect("the state cache's reader");
    base.atoms.sort_by_key(|r| r.term_id);
    base.triples.sort_by_key(|r| r.term_id);
    base.terms.sort_by_key(|r| r.id);
    base.vaults.sort_by_key(|r| (r.term_id, r.curve_id));
    base.positions
        .sort_by_key(|r| (r.term_id, r.curve_id, r.account_id));
    fn values<K, R: Clone>(m: &BTreeMap<K, R>) -> Vec<R> {
        m.values().cloned().collect()
    }
    assert!(base.atoms == values(&tables.atom), "atom rows read back");
    assert!(
        base.triples == values(&tables.triple),
        "triple rows read back"
    );
    assert!(base.terms == values(&tables.term), "term rows read back");
    let mut vaults = values(&tables.vault);
    vaults.sort_by_key(|r| (r.term_id, r.curve_id));
    assert!(base.vaults == vaults, "vault rows read back");
    let mut positions = values(&tables.position);
    positions.sort_by_key(|r| (r.term_id, r.curve_id, r.account_id));
    assert_eq!(base.positions.len(), positions.len());
    assert!(base.positions == positions, "position rows read back");

    // The batch's identity check reads exactly the stored events asked for: of a transaction
    // with several events, only the one asked; an identity never stored, nothing.
    let (tx, logs) = {
        let mut by_tx: BTreeMap<_, Vec<i64>> = BTreeMap::new();
        for e in &events {
            by_tx
                .entry(e.meta.transaction_hash)
                .or_default()
                .push(e.meta.log_index);
        }
        by_tx
            .into_iter()
            .find(|(_, logs)| logs.len() > 1)
            .expect("a transaction with several events")
    };
    let unknown = (tx, logs.iter().max().expect("a log") + 1_000);
    let found = store::prior::load_identities(&mut conn, &[(tx, logs[0]), unknown])
        .await
        .expect("identities");
    assert_eq!(
        found.iter().map(identity).collect::<Vec<_>>(),
        vec![(tx, logs[0])]
    );
    let never = redis_postgres_sync::domain::Bytes32([0xa5; 32]);
    let found = store::prior::load_identities(&mut conn, &[(never, 0)])
        .await
        .expect("identities");
    assert!(found.is_empty(), "a transaction never stored has no event");

    // The probe's index holds the key of every stored event's transaction, and the store's key
    // (`hash_prefix`, written with the events) is what `HASH_PREFIX_SQL` computes for the
    // events stored before the table existed. Then the same from the writer-side backfill alone.
    let key_sql = store::tables::HASH_PREFIX_SQL;
    let union: Vec<String> = load::EVENT_LOG
        .iter()
        .map(|t| format!("SELECT DISTINCT {key_sql} AS k FROM {t}"))
        .collect();
    let unmatched = format!(
        "SELECT count(*) AS n FROM ({}) e FULL JOIN event_transactions t ON t.hash_prefix = e.k \
         WHERE t.hash_prefix IS NULL OR e.k IS NULL",
        union.join(" UNION ")
    );
    assert_eq!(
        count(&mut conn, &unmatched).await,
        0,
        "event_transactions keys = the event log's transactions"
    );
    let lease = store::lease::acquire(
        &mut conn,
        "columns",
        "test",
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("lease")
    .expect("a free lease");
    diesel::sql_query("DELETE FROM event_transactions")
        .execute(&mut conn)
        .await
        .expect("empty event_transactions");
    let added = store::prior::backfill_transaction_keys(&mut conn, &lease)
        .await
        .expect("backfill");
    let transactions: BTreeSet<_> = events.iter().map(|e| e.meta.transaction_hash).collect();
    assert_eq!(
        added,
        Some(transactions.len()),
        "one key per stored transaction"
    );
    assert_eq!(
        count(&mut conn, &unmatched).await,
        0,
        "the backfill adds the key of every stored transaction"
    );
    let again = store::prior::backfill_transaction_keys(&mut conn, &lease)
        .await
        .expect("backfill");
    assert_eq!(again, None, "the backfill runs once");
    let negative = count(
        &mut conn,
        "SELECT count(*) AS n FROM event_transactions WHERE hash_prefix < 0",
    )
    .await;
    assert!(negative > 0, "hashes with the high bit set are among them");

    // The key indexes' expression (`key_prefix_sql`) computes, from every stored term id and
    // receiver (checksummed: both cases of hex), the key prefix the reorg and range reads bind
    // (`key_prefix`).
    {
        use redis_postgres_sync::domain::EventKind;
        use redis_postgres_sync::store::partition::term_of;
        use redis_postgres_sync::store::tables::events::{key_prefix, key_prefix_sql};
        let mut expected: BTreeMap<String, i64> = BTreeMap::new();
        for e in &events {
            if let Some(term) = term_of(e) {
                expected.insert(term.to_string(), key_prefix(&term.0));
            }
            if let EventKind::Deposited { receiver, .. } | EventKind::Redeemed { receiver, .. } =
                &e.kind
            {
                expected.insert(receiver.to_checksum(), key_prefix(&receiver.0));
            }
        }
        let mut columns: Vec<String> = load::EVENT_LOG[..5]
            .iter()
            .map(|t| format!("SELECT term_id AS t FROM {t}"))
            .collect();
        columns.push("SELECT receiver FROM deposited_events".to_owned());
        columns.push("SELECT receiver FROM redeemed_events".to_owned());
        #[derive(QueryableByName)]
        struct Prefixed {
            #[diesel(sql_type = Text)]
            t: String,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            p: i64,
        }
        let stored: Vec<Prefixed> = diesel::sql_query(format!(
            "SELECT t, {} AS p FROM ({}) s",
            key_prefix_sql("t"),
            columns.join(" UNION ")
        ))
        .load(&mut conn)
        .await
        .expect("key prefixes");
        let stored: BTreeMap<String, i64> = stored.into_iter().map(|r| (r.t, r.p)).collect();
        assert!(
            stored
                .keys()
                .any(|t| t.bytes().any(|b| b.is_ascii_uppercase())),
            "checksummed addresses among them"
        );
        assert!(
            stored == expected,
            "key_prefix_sql = key_prefix on every stored id"
        );
    }

    // What `sync` start and `bench` read of the buffer cache: the event log's indexes, summed
    // here through `pg_index` instead of `pg_indexes_size`.
    let cache = store::measure::buffer_cache(&mut conn)
        .await
        .expect("buffer cache");
    let indexes = count(
        &mut conn,
        "SELECT sum(pg_relation_size(indexrelid))::bigint AS n FROM pg_index WHERE indrelid IN \
         ('atom_created_events'::regclass, 'triple_created_events'::regclass, \
          'deposited_events'::regclass, 'redeemed_events'::regclass, \
          'share_price_changed_events'::regclass, 'generic_events'::regclass, \
          'event_transactions'::regclass)",
    )
    .await;
    assert_eq!(cache.event_log_indexes, indexes);
    assert!(cache.shared_buffers > 0 && indexes > 0, "{cache:?}");
    let max_wal_bytes = count(
        &mut conn,
        "SELECT setting::bigint * 1024 * 1024 AS n FROM pg_settings WHERE name = 'max_wal_size' \
         AND unit = 'MB'",
    )
    .await;
    assert_eq!(cache.max_wal_bytes, max_wal_bytes, "{cache:?}");
    assert_eq!(
        cache.advice().is_some(),
        indexes > cache.shared_buffers
            || max_wal_bytes < store::measure::WAL_PER_INDEX_BYTE * indexes,
        "{cache:?}"
    );
}

/// The one `n` an SQL count gives.
async fn count(conn: &mut diesel_async::AsyncPgConnection, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let Count { n } = diesel::sql_query(sql)
        .get_result(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    n
}
