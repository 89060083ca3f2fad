//! `replay` and `verify` against a synced database: verify finds no drift after a clean sync and
//! names every damaged row after deliberate damage (through the library and through the binary,
//! for the exit status); replay restores the damaged tables exactly.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use redis_postgres_sync::domain::Tables;
use redis_postgres_sync::ingest::publish::PublishOptions;
use redis_postgres_sync::store::rebuild;
use redis_postgres_sync::verify::{verify, Report};
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
    assert!(steps
        .iter()
        .any(|s| matches!(s, rebuild::Step::Loading { .. })));
    assert!(steps.iter().any(|s| matches!(
        s,
        rebuild::Step::Writing {
            table: "subject_predicate",
            ..
        }
    )));
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

    let (code, out) = run_binary(&env, &["replay"]).await;
    assert_eq!(code, Some(0), "replay: {out}");
    assert!(out.contains("replayed"), "{out}");
    let (code, out) = run_binary(&env, &["verify"]).await;
    assert_eq!(code, Some(0), "after replay: {out}");
}
