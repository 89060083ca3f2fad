//! `replay` and `verify` against a synced database: verify finds no drift after a clean sync and
//! names every damaged row after deliberate damage (through the library and through the binary,
//! for the exit status); replay restores the damaged tables exactly; both give the same rows and
//! findings whatever the number of key ranges they fold the event log in, and their key-range
//! reads are index range scans.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use redis_postgres_sync::domain::Tables;
use redis_postgres_sync::ingest::publish::PublishOptions;
use redis_postgres_sync::store::compare::{self, DERIVED};
use redis_postgres_sync::store::load::{self, KeyFilter, EVENT_LOG};
use redis_postgres_sync::store::partition::Ranges;
use redis_postgres_sync::store::rebuild::{self, Step};
use redis_postgres_sync::verify::{verify, verify_in, Report};
use serde_json::Value;

use crate::support::*;

/// A database synced from the recorded fixture, analytics drained, service stopped.
async fn synced(label: &str) -> (TestEnv, Tables) {
    let env = TestEnv::new(label).await;
    env.publish(&fixture_lines(SMALL_FIXTURE), &PublishOptions::default())
        .await;
    let service = InProcess::start(env.settings(2, 200));
    env.wait_all_drained(Duration::from_secs(120)).await;
    service.stop().await;
    let expected = expected_tables(SMALL_FIXTURE);
    env.assert_all_tables(&expected).await;
    (env, expected)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Missing,
    Extra,
    /// The column that was changed.
    Differing(&'static str),
}

/// One damaged row: its table, what was done to it, and its key values in key order.
#[derive(Debug)]
struct Damage {
    table: &'static str,
    kind: Kind,
    key: Vec<String>,
}

#[derive(diesel::QueryableByName)]
struct Key {
    #[diesel(sql_type = diesel::sql_types::Text)]
    k: String,
}

/// Runs `sql`, which returns the damaged row's key columns joined by `|` as `k`.
async fn damage_one(env: &TestEnv, table: &'static str, kind: Kind, sql: &str) -> Damage {
    let mut conn = env.pg().await;
    let rows: Vec<Key> = diesel::sql_query(sql)
        .load(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("damaging {table}: {e}"));
    assert_eq!(rows.len(), 1, "one row of {table} damaged");
    Damage {
        table,
        kind,
        key: rows[0].k.split('|').map(str::to_owned).collect(),
    }
}

/// Damages one row in each of eight derived tables: updates, deletes and garbage inserts.
async fn damage(env: &TestEnv) -> Vec<Damage> {
    let garbage = format!("0x{}", "ee".repeat(32));
    vec![
        damage_one(
            env,
            "position",
            Kind::Differing("shares"),
            "UPDATE position p SET shares = p.shares + 1 FROM (SELECT account_id, term_id, curve_id \
             FROM position ORDER BY account_id, term_id, curve_id LIMIT 1) f \
             WHERE (p.account_id, p.term_id, p.curve_id) = (f.account_id, f.term_id, f.curve_id) \
             RETURNING p.account_id || '|' || p.term_id || '|' || p.curve_id::text AS k",
        )
        .await,
        damage_one(
            env,
            "vault",
            Kind::Missing,
            "DELETE FROM vault v USING (SELECT term_id, curve_id FROM vault ORDER BY term_id, curve_id LIMIT 1) f \
             WHERE (v.term_id, v.curve_id) = (f.term_id, f.curve_id) \
             RETURNING v.term_id || '|' || v.curve_id::text AS k",
        )
        .await,
        damage_one(
            env,
            "term",
            Kind::Extra,
            &format!(
                "INSERT INTO term (id, type, atom_id, triple_id, total_assets, total_market_cap) \
                 VALUES ('{garbage}', 'Atom', '{garbage}', NULL, 1, 1) RETURNING id AS k"
            ),
        )
        .await,
        damage_one(
            env,
            "atom",
            Kind::Differing("data"),
            "UPDATE atom SET data = 'garbage' WHERE term_id = (SELECT min(term_id) FROM atom) \
             RETURNING term_id AS k",
        )
        .await,
        damage_one(
            env,
            "triple_vault",
            Kind::Differing("market_cap"),
            "UPDATE triple_vault t SET market_cap = t.market_cap + 1 FROM (SELECT term_id, counter_term_id, curve_id \
             FROM triple_vault ORDER BY term_id, curve_id LIMIT 1) f \
             WHERE (t.term_id, t.counter_term_id, t.curve_id) = (f.term_id, f.counter_term_id, f.curve_id) \
             RETURNING t.term_id || '|' || t.counter_term_id || '|' || t.curve_id::text AS k",
        )
        .await,
        damage_one(
            env,
            "triple_term",
            Kind::Differing("total_position_count"),
            "UPDATE triple_term SET total_position_count = total_position_count + 7 \
             WHERE term_id = (SELECT min(term_id) FROM triple_term) \
             RETURNING term_id || '|' || counter_term_id AS k",
        )
        .await,
        damage_one(
            env,
            "predicate_object",
            Kind::Missing,
            "DELETE FROM predicate_object p USING (SELECT predicate_id, object_id FROM predicate_object \
             ORDER BY predicate_id, object_id LIMIT 1) f \
             WHERE (p.predicate_id, p.object_id) = (f.predicate_id, f.object_id) \
             RETURNING p.predicate_id || '|' || p.object_id AS k",
        )
        .await,
        damage_one(
            env,
            "subject_predicate",
            Kind::Extra,
            &format!(
                "INSERT INTO subject_predicate (subject_id, predicate_id, triple_count, total_position_count, \
                 total_market_cap) VALUES ('{garbage}', '{garbage}', 3, 3, 3) \
                 RETURNING subject_id || '|' || predicate_id AS k"
            ),
        )
        .await,
    ]
}

/// Panics unless `report` names each damaged row (and nothing else) in its table.
fn assert_names(report: &Report, damages: &[Damage]) {
    assert!(!report.clean);
    for t in &report.tables {
        let here: Vec<&Damage> = damages.iter().filter(|d| d.table == t.table).collect();
        let expected_counts = (
            here.iter().filter(|d| d.kind == Kind::Missing).count(),
            here.iter().filter(|d| d.kind == Kind::Extra).count(),
            here.iter()
                .filter(|d| matches!(d.kind, Kind::Differing(_)))
                .count(),
        );
        assert_eq!(
            (t.missing, t.extra, t.differing),
            expected_counts,
            "table {}: {t:?}",
            t.table
        );
        for d in here {
            let values = |k: &redis_postgres_sync::verify::Key| -> Vec<String> {
                k.0.iter()
                    .map(|(_, v)| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
            };
            let named = match d.kind {
                Kind::Missing => t.examples.missing.iter().any(|k| values(k) == d.key),
                Kind::Extra => t.examples.extra.iter().any(|k| values(k) == d.key),
                Kind::Differing(column) => t.examples.differing.iter().any(|x| {
                    values(&x.key) == d.key && x.columns.len() == 1 && x.columns[0].column == column
                }),
            };
            assert!(named, "{d:?} not named in {t:?}");
        }
    }
    let mut drifting = report.drifting();
    drifting.sort_unstable();
    let mut damaged: Vec<&str> = damages.iter().map(|d| d.table).collect();
    damaged.sort_unstable();
    damaged.dedup();
    assert_eq!(drifting, damaged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_no_drift_after_clean_sync_and_names_damaged_rows() {
    let (env, _) = synced("verify").await;
    let mut conn = env.pg().await;
    let clean = verify(&mut conn, &[], 3, &mut |_| {})
        .await
        .expect("verify");
    assert!(clean.clean, "{}", clean.render());
    assert_eq!(clean.tables.len(), 9, "all nine tables by default");
    assert!(clean.tables.iter().all(|t| t.checked > 0));
    assert_eq!(clean.events, events_of(SMALL_FIXTURE).len());

    let damages = damage(&env).await;
    let report = verify(&mut conn, &[], 3, &mut |_| {})
        .await
        .expect("verify");
    assert_names(&report, &damages);
    let text = report.render();
    assert!(text.contains("DRIFT"), "{text}");
    assert!(
        text.contains("note: triple_vault"),
        "analytics caveat: {text}"
    );

    let only = verify(&mut conn, &["atom", "term"], 3, &mut |_| {})
        .await
        .expect("verify some tables");
    assert_eq!(
        only.tables.iter().map(|t| t.table).collect::<Vec<_>>(),
        ["atom", "term"]
    );
    assert!(only.tables.iter().all(|t| !t.is_clean()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_restores_damaged_rows_exactly() {
    let (env, expected) = synced("replay").await;
    let damages = damage(&env).await;
    let mut conn = env.pg().await;
    let before = verify(&mut conn, &[], 3, &mut |_| {})
        .await
        .expect("verify");
    assert_names(&before, &damages);

    let mut steps = Vec::new();
    let rebuilt = rebuild::replay(&mut conn, &mut |s| steps.push(s))
        .await
        .expect("replay");
    assert_eq!(rebuilt.events, events_of(SMALL_FIXTURE).len());
    assert_eq!(
        rebuilt.rows,
        expected.row_counts().to_vec(),
        "every row of the fold written"
    );
    let total = rebuilt.ranges;
    assert!(
        steps.contains(&Step::Range {
            done: total,
            total,
            events: rebuilt.events
        }),
        "{steps:?}"
    );
    assert!(matches!(steps.last(), Some(Step::Pairs { rows }) if *rows > 0));
    env.assert_all_tables(&expected).await;
    let after = verify(&mut conn, &[], 3, &mut |_| {})
        .await
        .expect("verify");
    assert!(after.clean, "{}", after.render());
}

async fn run_binary(env: &TestEnv, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_redis-postgres-sync"))
        .args(args)
        .env("DATABASE_URL", &env.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_binary_exits_1_on_drift_and_0_once_replayed() {
    let (env, _) = synced("verify_bin").await;
    let (code, out) = run_binary(&env, &["verify"]).await;
    assert_eq!(code, Some(0), "clean database: {out}");
    assert!(out.contains("no drift"), "{out}");

    let damages = damage(&env).await;
    let (code, out) = run_binary(&env, &["verify"]).await;
    assert_eq!(code, Some(1), "drift: {out}");
    for d in &damages {
        assert!(out.contains(&d.key[0]), "{d:?} not named in:\n{out}");
    }
    let (code, json) = run_binary(&env, &["verify", "--json", "--tables", "vault,position"]).await;
    assert_eq!(code, Some(1));
    let report: Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(report["clean"], Value::Bool(false));
    assert_eq!(report["tables"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["tables"][1]["table"], "vault");
    assert_eq!(report["tables"][1]["missing"], 1);

    let (code, out) = run_binary(&env, &["verify", "--ranges", "16"]).await;
    assert_eq!(code, Some(1), "drift, 16 ranges: {out}");
    for d in &damages {
        assert!(out.contains(&d.key[0]), "{d:?} not named in:\n{out}");
    }

    let (code, out) = run_binary(&env, &["replay", "--ranges", "7"]).await;
    assert_eq!(code, Some(0), "replay: {out}");
    assert!(
        out.contains("replayed") && out.contains("(7 key ranges)"),
        "{out}"
    );
    let (code, out) = run_binary(&env, &["verify"]).await;
    assert_eq!(code, Some(0), "after replay: {out}");
    let (code, out) = run_binary(&env, &["verify", "--ranges", "0"]).await;
    assert_eq!(code, Some(2), "an invalid --ranges is a usage error: {out}");
}

/// Every derived table in canonical form.
async fn all_rows(env: &TestEnv) -> Vec<compare::CanonicalTable> {
    let mut conn = env.pg().await;
    let mut out = Vec::new();
    for shape in DERIVED {
        out.push(
            compare::load_table(&mut conn, shape)
                .await
                .expect("read table"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_verify_by_many_key_ranges_equal_one_range() {
    let (env, expected) = synced("ranges").await;
    let mut conn = env.pg().await;
    let one = Ranges::new(1).expect("1");
    let rebuilt = rebuild::replay_in(&mut conn, Some(one), &mut |_| {})
        .await
        .expect("replay in one range");
    assert_eq!(rebuilt.ranges, 1);
    assert_eq!(rebuilt.rows, expected.row_counts().to_vec());
    let reference = all_rows(&env).await;
    env.assert_all_tables(&expected).await;
    for count in [2, 16, 256] {
        let ranges = Ranges::new(count).expect("valid");
        let mut steps = Vec::new();
        let rebuilt = rebuild::replay_in(&mut conn, Some(ranges), &mut |s| steps.push(s))
            .await
            .expect("replay");
        assert_eq!(rebuilt.ranges, count as usize);
        assert_eq!(rebuilt.events, events_of(SMALL_FIXTURE).len());
        assert_eq!(
            rebuilt.rows,
            expected.row_counts().to_vec(),
            "{count} ranges"
        );
        let ranges_reported = steps
            .iter()
            .filter(|s| matches!(s, Step::Range { done, .. } if *done > 0))
            .count();
        assert_eq!(ranges_reported, count as usize);
        assert!(
            all_rows(&env).await == reference,
            "{count} ranges: other rows than one range"
        );
        for verify_count in [1, 3, count] {
            let report = verify_in(
                &mut conn,
                &[],
                3,
                Ranges::new(verify_count).ok(),
                &mut |_| {},
            )
            .await
            .expect("verify");
            assert!(
                report.clean,
                "replayed in {count}, verified in {verify_count}: {}",
                report.render()
            );
            assert_eq!(report.events, events_of(SMALL_FIXTURE).len());
            let checked: Vec<(&str, usize)> =
                report.tables.iter().map(|t| (t.table, t.checked)).collect();
            assert_eq!(checked, expected.row_counts().to_vec());
        }
    }
    env.assert_all_tables(&expected).await;

    // Drift is found and named the same way by range.
    let damages = damage(&env).await;
    for count in [1, 16, 256] {
        let report = verify_in(&mut conn, &[], 3, Ranges::new(count).ok(), &mut |_| {})
            .await
            .expect("verify");
        assert_names(&report, &damages);
    }
    let only = verify_in(
        &mut conn,
        &["vault", "subject_predicate"],
        3,
        Ranges::new(16).ok(),
        &mut |_| {},
    )
    .await
    .expect("verify two tables");
    assert_names(
        &only,
        &damages
            .into_iter()
            .filter(|d| ["vault", "subject_predicate"].contains(&d.table))
            .collect::<Vec<_>>(),
    );
    rebuild::replay_in(&mut conn, Ranges::new(16).ok(), &mut |_| {})
        .await
        .expect("replay");
    assert!(all_rows(&env).await == reference);
}

#[derive(diesel::QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

/// The plan of `sql` with sequential scans discouraged.
async fn plan(conn: &mut diesel_async::AsyncPgConnection, sql: &str) -> String {
    let lines: Vec<PlanLine> = diesel::sql_query(format!("EXPLAIN {sql}"))
        .load(conn)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"));
    lines
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_range_reads_are_index_range_scans() {
    let env = TestEnv::new("range_index").await;
    redis_postgres_sync::store::migrate(&env.database_url)
        .await
        .expect("migrate");
    let mut conn = env.pg().await;
    let filter = KeyFilter::probe(&mut conn).await.expect("probe");
    assert_eq!(
        filter,
        KeyFilter::DATABASE,
        "the test server's collation orders hex bytewise"
    );
    diesel::sql_query("SET enable_seqscan = off")
        .execute(&mut conn)
        .await
        .expect("set");
    let ranges = Ranges::new(16).expect("16");
    // The event tables, by the key prefix of their term id: an integer range of their key index.
    for table in &EVENT_LOG[..5] {
        for range in [0, 7, 15] {
            let sql = format!(
                "SELECT * FROM {table} WHERE {}",
                load::event_range_condition(ranges, range)
            );
            let database = plan(&mut conn, &sql).await;
            assert!(
                database.contains(&format!("{table}_")) && database.contains("Index Cond"),
                "the bounds are a condition of the table's key index: {sql}:\n{database}"
            );
        }
    }
    // The derived tables, by their range column's text in the database's collation.
    for shape in DERIVED {
        let (table, column) = (shape.name(), shape.range_column());
        for range in [0, 7, 15] {
            let sql = format!(
                "SELECT * FROM {table} WHERE {}",
                filter.condition(column, ranges, range)
            );
            let database = plan(&mut conn, &sql).await;
            assert!(database.contains("Index"), "{sql}:\n{database}");
            assert!(
                database.contains("Index Cond"),
                "the bounds are an index condition: {sql}:\n{database}"
            );
        }
        // Under another collation than the index's, the index cannot serve the bounds: what the
        // probe keeps the filter from doing where the database's collation orders hex bytewise.
        let sql = format!(
            "SELECT * FROM {table} WHERE {}",
            KeyFilter::C.condition(column, ranges, 7)
        );
        let c = plan(&mut conn, &sql).await;
        assert!(!c.contains("Index Cond"), "{sql}:\n{c}");
    }
}
