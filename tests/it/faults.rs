//! The fault-injection suite (issue 8): kill -9 under load ten times, Postgres backends
//! terminated and Redis connections dropped mid-run, and a storm of malformed entries mixed into
//! good traffic. After each: the tables equal the fold of the accepted events (nothing lost,
//! nothing counted twice) and every rejected entry is in the dead-letter stream.
//!
//! Redelivery and whole-stream republishing are in `sync.rs`; the analytics consumer killed while
//! sync runs is in `analytics.rs`.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use redis_postgres_sync::domain::fold;
use redis_postgres_sync::ingest::publish::PublishOptions;
use redis_postgres_sync::ingest::stream::dlq_stream;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kills_under_load() {
    let text = generated_fixture(30_000, 81);
    let env = TestEnv::new("tenkills").await;
    let sent = env
        .publish(
            &fixture_lines(&text),
            &PublishOptions {
                shuffle: true,
                duplicate_share: 0.05,
                seed: 9,
            },
        )
        .await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(81);
    let run_env = env.env(2, 15);
    let mut kills = 0;
    for _ in 0..10 {
        let mut child = spawn_binary(&run_env, "sync");
        tokio::time::sleep(Duration::from_millis(rng.random_range(600..2_000))).await;
        if child.try_wait().expect("status").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        let _ = child.wait();
    }
    let service = InProcess::start(env.settings(2, 300));
    env.wait_all_drained(Duration::from_secs(300)).await;
    service.stop().await;
    eprintln!("faults: {kills} SIGKILLs; entries sent {sent}");
    assert_eq!(kills, 10);
    env.assert_all_tables(&expected_tables(&text)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backends_terminated_mid_run() {
    let text = generated_fixture(15_000, 82);
    let env = TestEnv::new("pgkill").await;
    env.publish(&fixture_lines(&text), &PublishOptions::default())
        .await;
    let service = InProcess::start(env.settings(2, 40));
    let mut admin = env.pg().await;
    let mut terminated = 0usize;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let n: N = diesel::sql_query(format!(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            env.name
        ))
        .get_result(&mut admin)
        .await
        .expect("terminate");
        terminated += n.n as usize;
    }
    env.wait_all_drained(Duration::from_secs(240)).await;
    service.stop().await;
    eprintln!("faults: {terminated} Postgres backends terminated");
    assert!(terminated >= 5, "connections were cut: {terminated}");
    env.assert_all_tables(&expected_tables(&text)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connections_dropped_mid_run() {
    let text = generated_fixture(15_000, 83);
    let env = TestEnv::new("redisdrop").await;
    env.publish(&fixture_lines(&text), &PublishOptions::default())
        .await;
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let mut settings = env.settings(2, 40);
    settings.connections.redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let service = InProcess::start(settings);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.restore();
    }
    env.wait_all_drained(Duration::from_secs(240)).await;
    let restarts = service.stats.health.metrics.restarts("sync");
    service.stop().await;
    eprintln!("faults: 3 Redis outages, {restarts} pipeline restarts");
    env.assert_all_tables(&expected_tables(&text)).await;
}

const TX_BASE: u64 = 0xfa17;

fn tx(n: u64) -> String {
    format!("0x{:064x}", TX_BASE * 1_000_000 + n)
}

/// A Deposited item of a term and account of its own.
fn deposit(n: u64, log_index: Value) -> Value {
    json!({
        "sender": format!("0x{:040x}", 0xbeef_0000u64 + n), "receiver": format!("0x{:040x}", 0xbeef_0000u64 + n),
        "termId": format!("{:064x}", 0xdead_0000u64 + n), "curveId": "1", "assets": "1000", "assetsAfterFees": "900",
        "shares": "900", "totalShares": "900", "vaultType": 0,
        "transaction_information": {"block_number": 5_000_000 + n, "transaction_hash": tx(n), "log_index": log_index, "network": "intuition"}
    })
}

fn envelope(name: &str, items: Value) -> String {
    json!({"event_name": name, "event_data": items, "network": "intuition"}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_malformed_entries_mixed_into_good_traffic() {
    let good_text = generated_fixture(6_000, 84);
    let env = TestEnv::new("storm").await;
    // Good but unusual: extra fields, uint256 max, a log index near 2^32, NUL bytes and invalid
    // UTF-8 in atom data.
    let mut extra = deposit(1, json!("0x1"));
    extra["unexpected"] = json!({"nested": [1, 2, 3]});
    let mut max = deposit(2, json!(4_294_967_295u64));
    max["assets"] =
        json!("115792089237316195423570985008687907853269984665640564039457584007913129639935");
    let atom = |n: u64, data: &str| {
        json!({"creator": format!("0x{:040x}", 0xabcdu64), "termId": format!("{:064x}", 0xa70_0000u64 + n), "atomData": data,
               "atomWallet": format!("0x{:040x}", 0xabceu64),
               "transaction_information": {"block_number": 5_100_000 + n, "transaction_hash": tx(100 + n), "log_index": "0x0", "network": "intuition"}})
    };
    let odd_good = vec![
        envelope("Deposited", json!([extra])),
        envelope("Deposited", json!([max])),
        envelope("AtomCreated", json!([atom(1, "00616200")])),
        envelope("AtomCreated", json!([atom(2, "fffe61")])),
    ];
    // Bad: every entry below is rejected whole or in part.
    let mut beyond = deposit(3, json!("0x3"));
    beyond["assets"] =
        json!("115792089237316195423570985008687907853269984665640564039457584007913129639936");
    let mut missing = deposit(4, json!("0x4"));
    missing.as_object_mut().expect("object").remove("receiver");
    let mut log_over = deposit(5, json!("9223372036854775808"));
    log_over["termId"] = json!(format!("{:064x}", 0xdead_0005u64));
    let huge = envelope(
        "Deposited",
        json!([{"padding": "x".repeat(200_000), "transaction_information": {}}]),
    );
    let deep = format!(
        "{{\"event_name\":\"Deposited\",\"event_data\":{}{}}}",
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    // Issue 12: a reorg notice with a NUL in its network, generic parameters JSONB cannot hold.
    let nul_reorg = json!({"event_name": "__rindexer_reorg", "network": "intuition",
        "event_data": [{"type": "reorg", "network": "a\u{0}b", "fork_block": 1, "depth": 1}]})
    .to_string();
    let huge_number = format!(
        r#"{{"event_name":"ProtocolFeeAccrued","event_data":[{{"amount":1e1000000,"transaction_information":{{"block_number":5200000,"transaction_hash":"{}","log_index":"0x0"}}}}]}}"#,
        tx(300)
    );
    let nul_text = envelope(
        "ProtocolFeeAccrued",
        json!([{"memo": "x\u{0}", "transaction_information": {"block_number": 5_200_001, "transaction_hash": tx(301), "log_index": "0x0"}}]),
    );
    let bad: Vec<String> = vec![
        nul_reorg,
        huge_number,
        nul_text,
        "{\"event_name\": \"Deposited\", \"event_data\": [".to_owned(),
        envelope("Deposited", json!([beyond])),
        envelope("Deposited", json!([missing])),
        envelope("Deposited", json!([log_over])),
        huge,
        deep,
        "\"just a string\"".to_owned(),
        json!({"event_name": "Deposited", "event_data": 42}).to_string(),
    ];
    let mut lines: Vec<String> = fixture_lines(&good_text)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(84);
    for b in bad.iter().chain(&odd_good) {
        let at = rng.random_range(0..lines.len());
        lines.insert(at, b.clone());
    }
    // Last, a conflicting reuse of an accepted identity (another event type, another term): the
    // first delivery stays; it is counted, not dead-lettered.
    let first = events_of(fixture_lines(&good_text)[0]).remove(0);
    let mut reuse = deposit(9, json!(first.meta.log_index));
    reuse["transaction_information"]["transaction_hash"] =
        json!(first.meta.transaction_hash.to_string());
    lines.push(envelope("Deposited", json!([reuse])));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    env.publish(&refs, &PublishOptions::default()).await;
    // Invalid UTF-8 and NUL bytes in the raw payload.
    let mut redis = env.redis().await;
    let _: String = redis
        .xadd(&env.stream, "*", &[("payload", &b"\xff\xfe\x00{"[..])])
        .await
        .expect("xadd");
    let mut settings = env.settings(2, 100);
    settings.max_entry_bytes = 65_536;
    let service = InProcess::start(settings);
    env.wait_all_drained(Duration::from_secs(180)).await;
    let stats = &service.stats;
    let m = &stats.health.metrics;
    let (conflicts, restarts) = (m.events_conflicting.get(), m.restarts("sync"));
    service.stop().await;
    assert_eq!(
        (conflicts, restarts),
        (1, 0),
        "one conflict counted, no restart"
    );

    let dead: usize = redis.xlen(dlq_stream(&env.stream)).await.expect("xlen");
    let rejected = bad.len() + 1;
    let lines_good = lines.len() - bad.len() - 1;
    eprintln!(
        "faults: {rejected} malformed entries among {lines_good} good ones; {dead} dead-lettered"
    );
    assert_eq!(
        dead, rejected,
        "every rejected entry is dead-lettered, once"
    );
    let mut accepted = events_of(&good_text);
    accepted.extend(odd_good.iter().flat_map(|l| events_of(l)));
    env.assert_all_tables(&fold(&accepted).tables()).await;
    // The NUL and invalid UTF-8 atom data are kept as bytes, with no text.
    let mut conn = env.pg().await;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query(format!("SELECT count(*) AS n FROM atom WHERE data IS NULL AND term_id IN ('0x{:064x}', '0x{:064x}')", 0xa70_0001u64, 0xa70_0002u64))
        .get_result(&mut conn)
        .await
        .expect("atoms");
    assert_eq!(n.n, 2);
}
