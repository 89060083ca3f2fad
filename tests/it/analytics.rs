//! End-to-end tests of the analytics consumer: once the input and `term_updates` are drained, the
//! four triple-level tables equal the pure fold row by row, whatever the delivery history and
//! even when the consumer is killed mid-run.

use std::time::Duration;

use redis_postgres_sync::domain::Tables;
use redis_postgres_sync::ingest::publish::PublishOptions;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_tables_equal_the_fold() {
    let env = TestEnv::new("analytics").await;
    env.publish(&fixture_lines(SMALL_FIXTURE), &PublishOptions::default())
        .await;
    let service = InProcess::start(env.settings(2, 100));
    env.wait_all_drained(Duration::from_secs(120)).await;
    let analytics = service.analytics.clone();
    service.stop().await;
    env.assert_all_tables(&expected_tables(SMALL_FIXTURE)).await;
    assert!(
        analytics.health.metrics.analytics_batches.get() > 1,
        "updates were batched, over several transactions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_after_shuffled_duplicated_delivery() {
    let text = generated_fixture(8_000, 44);
    let env = TestEnv::new("analytics_shuffle").await;
    env.publish(
        &fixture_lines(&text),
        &PublishOptions {
            shuffle: true,
            duplicate_share: 0.25,
            seed: 4,
        },
    )
    .await;
    let service = InProcess::start(env.settings(3, 60));
    env.wait_all_drained(Duration::from_secs(180)).await;
    service.stop().await;
    env.assert_all_tables(&expected_tables(&text)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_killed_and_restarted_mid_run() {
    let text = generated_fixture(15_000, 55);
    let env = TestEnv::new("analytics_kill").await;
    env.publish(
        &fixture_lines(&text),
        &PublishOptions {
            shuffle: true,
            duplicate_share: 0.05,
            seed: 6,
        },
    )
    .await;
    // sync in-process without analytics; the analytics consumer as a child process, killed twice.
    let mut settings = env.settings(2, 40);
    settings.no_analytics = true;
    let sync = InProcess::start(settings);
    let mut run_env = env.env(2, 40);
    run_env.push(("ANALYTICS_BATCH_SIZE", "3".to_owned()));
    for _ in 0..2 {
        let mut child = spawn_binary(&run_env, "analytics");
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(
            child.try_wait().expect("status").is_none(),
            "analytics still running when killed"
        );
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }
    let mut child = spawn_binary(&run_env, "analytics");
    env.wait_all_drained(Duration::from_secs(240)).await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(
        child.wait().expect("wait").success(),
        "graceful stop exits 0"
    );
    sync.stop().await;
    env.assert_all_tables(&expected_tables(&text)).await;
}

// ---- hostile input: saturated pair aggregates (issue 12, fault 5) ---------------------------

/// 2²⁵⁶−1, the largest uint256.
const MAX: &str = "115792089237316195423570985008687907853269984665640564039457584007913129639935";

/// A 32-byte id as 64 hex digits: `tag`, `i`, then filler.
fn id(tag: u8, i: u8) -> String {
    format!("{tag:02x}{i:02x}{}", "5a".repeat(30))
}

/// A rindexer envelope of one event type in one block; item `n` gets log index `n` of a
/// transaction unique to (`block`, `event`).
fn envelope(event: &str, block: u64, items: Vec<serde_json::Value>) -> String {
    let tx = format!("0x{:016x}{}{:08x}", block, "00".repeat(20), event.len());
    let items: Vec<serde_json::Value> = items
        .into_iter()
        .enumerate()
        .map(|(n, mut item)| {
            item["transaction_information"] = serde_json::json!({
                "address": "0x6E35cF57A41fA15eA0EaE9C33e751b01A784Fe7e",
                "block_hash": format!("0x{}", "ab".repeat(32)),
                "block_number": block,
                "block_timestamp": format!("0x{:x}", 1_756_000_000 + block),
                "chain_id": 1155,
                "log_index": format!("0x{n:x}"),
                "network": "intuition",
                "transaction_hash": tx,
                "transaction_index": 0,
            });
            item
        })
        .collect();
    serde_json::json!({
        "block_number": block,
        "event_data": items,
        "event_name": event,
        "network": "intuition",
    })
    .to_string()
}

const CREATOR: &str = "0x35928D4949447Af73DBB1fF2AF8c101B91a5d0e1";

/// `SharePriceChanged` of vault (`term`, curve 1) of a triple.
fn price(block: u64, term: &str, share_price: &str, total_shares: &str) -> String {
    envelope(
        "SharePriceChanged",
        block,
        vec![serde_json::json!({
            "curveId": "1", "sharePrice": share_price, "termId": term,
            "totalAssets": "1000", "totalShares": total_shares, "vaultType": 1,
        })],
    )
}

/// Publishes `lines`, waits until sync and analytics have consumed them, and checks all nine
/// tables against the fold of everything published so far and that `verify` is clean.
async fn stage(env: &TestEnv, published: &mut Vec<String>, lines: Vec<String>) -> Tables {
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    env.publish(&refs, &PublishOptions::default()).await;
    published.extend(lines);
    env.wait_all_drained(Duration::from_secs(30)).await;
    let expected = expected_tables(&published.join("\n"));
    env.assert_all_tables(&expected).await;
    let mut conn = env.pg().await;
    let report = redis_postgres_sync::verify::verify(&mut conn, &[], 3, &mut |_| {})
        .await
        .expect("verify runs");
    assert!(report.clean, "verify reports drift:\n{}", report.render());
    expected
}

/// The stored visible and exact market caps of the pair (predicate, object).
async fn pair_caps(env: &TestEnv, predicate: &str, object: &str) -> (String, String) {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Caps {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        exact: String,
    }
    let mut conn = env.pg().await;
    let c: Caps = diesel::sql_query(format!(
        "SELECT total_market_cap::text AS value, total_market_cap_sum::text AS exact \
         FROM predicate_object WHERE predicate_id = '0x{predicate}' AND object_id = '0x{object}'"
    ))
    .get_result(&mut conn)
    .await
    .expect("the pair row");
    (c.value, c.exact)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_triples_one_per_batch_never_wedge_and_removal_stays_exact() {
    let env = TestEnv::new("analytics_saturated").await;
    let service = InProcess::start(env.settings(2, 100));
    let (predicate, object) = (id(0xa0, 0), id(0xa0, 1));
    let triple = |i: u8| id(0xb0, i);
    let mut published = Vec::new();
    // Atoms for the predicate and the object, and a position on the first triple.
    let atoms = envelope(
        "AtomCreated",
        10,
        [&predicate, &object]
            .iter()
            .map(|t| {
                serde_json::json!({"creator": CREATOR, "termId": t, "atomData": "6869", "atomWallet": CREATOR})
            })
            .collect(),
    );
    let deposit = envelope(
        "Deposited",
        11,
        vec![serde_json::json!({
            "sender": CREATOR, "receiver": CREATOR, "termId": triple(0), "curveId": "1",
            "assets": "5", "assetsAfterFees": "5", "shares": "5", "totalShares": "5", "vaultType": 1,
        })],
    );
    let mut first = vec![atoms, deposit];
    // Ten triples on one (predicate, object), each vault at sharePrice = totalShares = 2^256−1
    // (market cap saturated at 2^256−1), one per analytics batch. Subjects repeat, so
    // subject_predicate saturates too.
    for i in 0..10u8 {
        let created = envelope(
            "TripleCreated",
            100 + u64::from(i),
            vec![serde_json::json!({
                "creator": CREATOR, "termId": triple(i), "subjectId": id(0xc0, i % 3),
                "predicateId": predicate, "objectId": object,
            })],
        );
        let mut lines = std::mem::take(&mut first);
        lines.extend([created, price(200 + u64::from(i), &triple(i), MAX, MAX)]);
        let expected = stage(&env, &mut published, lines).await;
        assert_eq!(
            expected.predicate_object.len(),
            1,
            "all triples on one (predicate, object)"
        );
    }
    assert_eq!(pair_caps(&env, &predicate, &object).await.0, MAX);
    // Nine vaults fall to a market cap of 5e18: the exact sum loses nine saturated terms, the
    // visible value stays saturated.
    let low = |i: u8| {
        price(
            300 + u64::from(i),
            &triple(i),
            "1000000000000000000",
            "5000000000000000000",
        )
    };
    stage(&env, &mut published, (1..10).map(low).collect()).await;
    let (value, exact) = pair_caps(&env, &predicate, &object).await;
    assert_eq!(value, MAX);
    let max = primitive_types::U512::from_dec_str(MAX).expect("max");
    let nine = primitive_types::U512::from(45_000_000_000_000_000_000u128);
    assert_eq!(exact, (max + nine).to_string());
    // The last one falls too: exactly ten times 5e18, as if the pair had never saturated.
    stage(&env, &mut published, vec![low(0)]).await;
    assert_eq!(
        pair_caps(&env, &predicate, &object).await,
        (
            "50000000000000000000".to_owned(),
            "50000000000000000000".to_owned()
        )
    );
    let restarts = service.analytics.health.metrics.restarts("analytics");
    service.stop().await;
    assert_eq!(restarts, 0, "the analytics consumer never failed");
}

/// A second TripleCreated of a triple id naming another subject, predicate and object (hostile
/// input; the newest creation is the triple's row) moves the triple between pair rows: the batch
/// that changes the row takes the triple out of the pairs it was counted in, and the consumer
/// counts it into the new ones, as the fold does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triple_created_again_with_other_ids_moves_between_pairs() {
    let env = TestEnv::new("analytics_moved_triple").await;
    let service = InProcess::start(env.settings(2, 100));
    let triple = id(0xd0, 0);
    let created = |block: u64, ids: u8| {
        envelope(
            "TripleCreated",
            block,
            vec![serde_json::json!({
                "creator": CREATOR, "termId": triple, "subjectId": id(0xe0, ids),
                "predicateId": id(0xe1, ids), "objectId": id(0xe2, ids),
            })],
        )
    };
    let deposit = envelope(
        "Deposited",
        11,
        vec![serde_json::json!({
            "sender": CREATOR, "receiver": CREATOR, "termId": triple, "curveId": "1",
            "assets": "5", "assetsAfterFees": "5", "shares": "5", "totalShares": "5", "vaultType": 1,
        })],
    );
    // An atom, so that no table is empty.
    let atom = envelope(
        "AtomCreated",
        9,
        vec![serde_json::json!({
            "creator": CREATOR, "termId": id(0xe0, 0), "atomData": "6869", "atomWallet": CREATOR,
        })],
    );
    let mut published = Vec::new();
    let lines = vec![
        atom,
        created(10, 0),
        deposit,
        price(12, &triple, "1000", "5"),
    ];
    let before = stage(&env, &mut published, lines).await;
    let pair = |t: &Tables| t.predicate_object.keys().map(|k| k.0).collect::<Vec<_>>();
    assert_eq!(pair(&before).len(), 1);
    let after = stage(&env, &mut published, vec![created(20, 1)]).await;
    assert_eq!(pair(&after).len(), 1, "one pair row, the new one");
    assert_ne!(pair(&after), pair(&before));
    service.stop().await;
}

/// The analytics advisory lock (`store::analytics::lock`): held by a test, it stalls every
/// analytics transaction until PROCESSING_TIMEOUT_MS fails it — a transient failure of
/// analytics alone.
const ANALYTICS_LOCK: &str = "7310411862190233169";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_failures_leave_the_sync_breaker_closed() {
    use diesel_async::RunQueryDsl;
    use redis_postgres_sync::breaker::BreakerState;
    use redis_postgres_sync::health::Breaker;

    let env = TestEnv::new("analytics_breaker").await;
    let mut holder = env.pg().await;
    diesel::sql_query(format!("SELECT pg_advisory_lock({ANALYTICS_LOCK})"))
        .execute(&mut holder)
        .await
        .expect("take the analytics lock");
    // One Health for both pipelines, as in production: threshold 2, open for 3 s.
    let mut settings = env.settings(2, 200);
    settings.max_retries = 1;
    settings.ops.circuit_breaker_threshold = 2;
    settings.ops.circuit_breaker_timeout_ms = 3_000;
    let app = redis_postgres_sync::app::App::new(&settings);
    let (health, stats, analytics) = (app.health.clone(), app.sync.clone(), app.analytics.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(async move {
        app.run(settings, None, async move {
            let _ = rx.await;
        })
        .await
    });
    env.publish(&fixture_lines(SMALL_FIXTURE), &PublishOptions::default())
        .await;
    // Sync drains its input while every analytics batch times out.
    env.wait_drained(Duration::from_secs(120)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while analytics.health.metrics.restarts("analytics") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "analytics never failed twice"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        health.breaker_state(),
        BreakerState::Closed,
        "analytics failures must not open sync's breaker"
    );
    assert_eq!(health.breaker_wait(), Duration::ZERO);
    assert_eq!(
        stats.health.metrics.restarts("sync"),
        0,
        "sync never failed"
    );
    let metrics = health.metrics.encode();
    assert!(
        metrics.lines().any(|l| l == "circuit_breaker_state 0"),
        "{metrics}"
    );
    assert_ne!(health.state_of(Breaker::Analytics), BreakerState::Closed);
    assert!(
        metrics
            .lines()
            .any(|l| l == "analytics_circuit_breaker_state 1"
                || l == "analytics_circuit_breaker_state 2"),
        "{metrics}"
    );
    // Postgres lets analytics through again: it waits out its breaker and catches up.
    diesel::sql_query(format!("SELECT pg_advisory_unlock({ANALYTICS_LOCK})"))
        .execute(&mut holder)
        .await
        .expect("release the analytics lock");
    env.wait_all_drained(Duration::from_secs(120)).await;
    assert_eq!(health.state_of(Breaker::Analytics), BreakerState::Closed);
    assert_eq!(health.breaker_state(), BreakerState::Closed);
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("Ok");
    env.assert_all_tables(&expected_tables(SMALL_FIXTURE)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_postgres_refuses_are_isolated_and_acknowledged() {
    use diesel_async::RunQueryDsl;

    let env = TestEnv::new("analytics_refused").await;
    let service = InProcess::start(env.settings(2, 200));
    // Once the schema is there, make Postgres refuse any triple_term market cap of 10^30 or
    // more: a stand-in for any data Postgres rejects.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env
        .count("SELECT count(*) AS n FROM pg_tables WHERE tablename = 'triple_term'")
        .await
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "no schema");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut conn = env.pg().await;
    diesel::sql_query(
        "ALTER TABLE triple_term ADD CONSTRAINT test_refuses_big_caps \
         CHECK (total_market_cap < 1000000000000000000000000000000)",
    )
    .execute(&mut conn)
    .await
    .expect("add the check");
    let (predicate, object) = (id(0xa0, 0), id(0xa0, 1));
    let triple = |i: u8| id(0xb0, i);
    let mut lines = vec![envelope(
        "AtomCreated",
        10,
        [&predicate, &object]
            .iter()
            .map(|t| {
                serde_json::json!({"creator": CREATOR, "termId": t, "atomData": "6869", "atomWallet": CREATOR})
            })
            .collect(),
    )];
    lines.push(envelope(
        "Deposited",
        11,
        vec![serde_json::json!({
            "sender": CREATOR, "receiver": CREATOR, "termId": triple(0), "curveId": "1",
            "assets": "5", "assetsAfterFees": "5", "shares": "5", "totalShares": "5", "vaultType": 1,
        })],
    ));
    // Six triples on one pair; 2 and 4 have saturated market caps, which the check refuses.
    for i in 0..6u8 {
        lines.push(envelope(
            "TripleCreated",
            100 + u64::from(i),
            vec![serde_json::json!({
                "creator": CREATOR, "termId": triple(i), "subjectId": id(0xc0, i),
                "predicateId": predicate, "objectId": object,
            })],
        ));
        let big = i == 2 || i == 4;
        let p = if big { MAX } else { "1000000000000000000" };
        lines.push(price(
            200 + u64::from(i),
            &triple(i),
            p,
            if big { MAX } else { "7" },
        ));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    env.publish(&refs, &PublishOptions::default()).await;
    // Nothing wedges: every term update is acknowledged.
    env.wait_all_drained(Duration::from_secs(60)).await;
    assert_eq!(
        service.analytics.health.metrics.restarts("analytics"),
        0,
        "no restart"
    );
    let refused = service
        .analytics
        .health
        .metrics
        .analytics_rejected_terms
        .get();
    assert_eq!(
        refused, 4,
        "the pro and counter terms of triples 2 and 4 are refused"
    );
    assert_eq!(
        service.stats.health.breaker_state(),
        redis_postgres_sync::breaker::BreakerState::Closed
    );
    assert!(service
        .analytics
        .health
        .metrics
        .encode()
        .lines()
        .any(|l| l == format!("analytics_rejected_terms_total {refused}")));
    // The other four triples committed; pair rows count exactly the triples that did.
    let stored = env.count("SELECT count(*) AS n FROM triple_term").await;
    assert_eq!(stored, 4);
    assert_eq!(
        env.count(&format!(
            "SELECT triple_count AS n FROM predicate_object WHERE predicate_id = '0x{predicate}'"
        ))
        .await,
        4
    );
    // Postgres takes them again and the refused triples change: all tables equal the fold.
    diesel::sql_query("ALTER TABLE triple_term DROP CONSTRAINT test_refuses_big_caps")
        .execute(&mut conn)
        .await
        .expect("drop the check");
    let later = vec![
        price(300, &triple(2), "1000000000000000000", "9"),
        price(301, &triple(4), MAX, MAX),
    ];
    let refs: Vec<&str> = later.iter().map(String::as_str).collect();
    env.publish(&refs, &PublishOptions::default()).await;
    lines.extend(later);
    env.wait_all_drained(Duration::from_secs(60)).await;
    service.stop().await;
    env.assert_all_tables(&expected_tables(&lines.join("\n")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_backfills_the_exact_pair_sums() {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

    let env = TestEnv::new("analytics_backfill").await;
    redis_postgres_sync::store::migrate(&env.database_url)
        .await
        .expect("migrate");
    let mut conn = env.pg().await;
    // The schema as it was before the migration, with rows the old code wrote.
    conn.batch_execute(include_str!(
        "../../migrations/2026-12-08-000002_pair_exact_totals/down.sql"
    ))
    .await
    .expect("down");
    let (p, s) = (format!("0x{}", id(0xa0, 0)), format!("0x{}", id(0xc0, 0)));
    let o = |i: u8| format!("0x{}", id(0xa1, i));
    let mut sql = format!(
        "INSERT INTO predicate_object VALUES ('{p}', '{o1}', 1, 1, 33), \
         ('{p}', '{o2}', 2, 0, 2 * {MAX}::numeric), ('{p}', '{o3}', 3, 0, {MAX}); \
         INSERT INTO subject_predicate VALUES ('{s}', '{p}', 3, 0, {MAX});",
        o1 = o(1),
        o2 = o(2),
        o3 = o(3)
    );
    for i in 0..3u8 {
        let t = format!("0x{}", id(0xb0, i));
        sql.push_str(&format!(
            "INSERT INTO triple VALUES ('{t}', '{t}', '{CREATOR}', '{s}', '{p}', '{o3}', 1, {i}, '{t}', NULL); \
             INSERT INTO triple_term VALUES ('{t}', '{t}', 0, {MAX}, 0);",
            o3 = o(3)
        ));
    }
    conn.batch_execute(&sql).await.expect("old rows");
    conn.batch_execute(include_str!(
        "../../migrations/2026-12-08-000002_pair_exact_totals/up.sql"
    ))
    .await
    .expect("up");
    #[derive(diesel::QueryableByName, Debug, PartialEq)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        exact: String,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT total_market_cap::text AS value, total_market_cap_sum::text AS exact FROM \
         (SELECT * FROM predicate_object ORDER BY object_id) t \
         UNION ALL SELECT total_market_cap::text, total_market_cap_sum::text FROM subject_predicate",
    )
    .load(&mut conn)
    .await
    .expect("read back");
    let max = primitive_types::U512::from_dec_str(MAX).expect("max");
    let row = |value: &str, exact: primitive_types::U512| Row {
        value: value.to_owned(),
        exact: exact.to_string(),
    };
    assert_eq!(
        rows,
        vec![
            row("33", 33u64.into()),
            row(MAX, max * 2),
            row(MAX, max * 3),
            row(MAX, max * 3),
        ]
    );
}
