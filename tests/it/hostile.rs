//! Hostile input (issue 12): no entry, of any content, stops a stream; a conflicting identity is
//! applied once whatever `WORKERS` and the batch cuts; what PostgreSQL refuses is isolated and
//! dead-lettered while the rest commits; a dead letter appears once across crashes; a plain
//! redelivery after a restart is a duplicate. Each test names the fault it covers.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use redis_postgres_sync::domain::{fold, Event, Tables};
use redis_postgres_sync::ingest::publish::PublishOptions;
use redis_postgres_sync::ingest::stream::dlq_stream;
use redis_postgres_sync::store;
use redis_postgres_sync::verify::verify;
use serde_json::{json, Value};

use crate::support::*;

fn hex64(n: u64) -> String {
    format!("{n:064x}")
}

/// A term id whose first byte is `n`: the sharded fold routes it to shard `n % WORKERS`, so the
/// conflicting pairs below land in different shards.
fn term_id(n: u64) -> String {
    format!("{:02x}{:062x}", n & 0xff, 0xd0_0000 + n)
}

fn tx(n: u64) -> String {
    format!("0x{}", hex64(0x4057_11e0_0000 + n))
}

fn info(block: u64, tx_n: u64, log_index: u64) -> Value {
    json!({"block_number": block, "transaction_hash": tx(tx_n), "log_index": format!("0x{log_index:x}"),
           "network": "intuition", "block_timestamp": format!("0x{:x}", 1_700_000_000 + block)})
}

fn deposit(term: u64, who: u64, assets: u64, meta: Value) -> Value {
    json!({"sender": format!("0x{:040x}", who), "receiver": format!("0x{:040x}", who), "termId": term_id(term),
           "curveId": "1", "assets": assets.to_string(), "assetsAfterFees": assets.to_string(), "shares": "900",
           "totalShares": "900", "vaultType": 0, "transaction_information": meta})
}

fn price(term: u64, total: u64, meta: Value) -> Value {
    json!({"termId": term_id(term), "curveId": "1", "sharePrice": "1000000000000000000",
           "totalAssets": total.to_string(), "totalShares": total.to_string(), "vaultType": 0,
           "transaction_information": meta})
}

fn envelope(name: &str, items: Value) -> String {
    json!({"event_name": name, "event_data": items, "network": "intuition"}).to_string()
}

/// The events of `lines` in delivery order, first delivery of each identity only: what the
/// tables must be the fold of.
fn first_accepted(lines: &[String]) -> Vec<Event> {
    let mut seen = std::collections::HashSet::new();
    lines
        .iter()
        .flat_map(|l| events_of(l))
        .filter(|e| seen.insert((e.meta.transaction_hash, e.meta.log_index)))
        .collect()
}

/// Every derived table of `only` equals `expected` (empty tables allowed).
async fn assert_equal(env: &TestEnv, expected: &Tables, only: &[&str]) {
    env.assert_tables_equal(expected, only).await;
}

async fn assert_verify_clean(env: &TestEnv) {
    let mut conn = env.pg().await;
    let report = verify(&mut conn, &[], 3, &mut |_| {})
        .await
        .expect("verify");
    assert!(report.clean, "{}", report.render());
}

/// Rows in the six event tables, and distinct identities among them.
async fn event_log_identities(env: &TestEnv) -> (i64, i64) {
    let union = "SELECT transaction_hash, log_index FROM atom_created_events UNION ALL \
                 SELECT transaction_hash, log_index FROM triple_created_events UNION ALL \
                 SELECT transaction_hash, log_index FROM deposited_events UNION ALL \
                 SELECT transaction_hash, log_index FROM redeemed_events UNION ALL \
                 SELECT transaction_hash, log_index FROM share_price_changed_events UNION ALL \
                 SELECT transaction_hash, log_index FROM generic_events";
    let rows = env
        .count(&format!("SELECT count(*) AS n FROM ({union}) u"))
        .await;
    let distinct = env
        .count(&format!(
            "SELECT count(*) AS n FROM (SELECT DISTINCT * FROM ({union}) u) d"
        ))
        .await;
    (rows, distinct)
}

async fn dlq_errors(env: &TestEnv) -> Vec<String> {
    let mut redis = env.redis().await;
    let reply: redis::streams::StreamRangeReply = redis
        .xrange_all(dlq_stream(&env.stream))
        .await
        .expect("dlq");
    reply
        .ids
        .iter()
        .map(|s| match s.map.get("error") {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

async fn run_until_drained(env: &TestEnv, workers: u32, batch: u32) -> (u64, u64, u64) {
    let service = InProcess::start(env.settings(workers, batch));
    env.wait_all_drained(Duration::from_secs(60)).await;
    let s = &service.stats;
    let counts = (
        s.health.metrics.events_conflicting.get(),
        s.health.metrics.events_duplicate.get(),
        s.health.metrics.restarts("sync"),
    );
    service.stop().await;
    counts
}

/// Fault 1: one entry with two Deposited items under one identity (other terms), a Deposited and
/// a SharePriceChanged under one identity in one batch and in two batches, and conflicts with
/// identities committed before a restart, with WORKERS 1 and 4: the first accepted stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_identity_is_applied_once_whatever_the_workers_and_batches() {
    for workers in [1, 4] {
        let env = TestEnv::new(&format!("conflict{workers}")).await;
        let x = || info(10, 1, 1);
        let y = || info(11, 2, 1);
        let w = || info(12, 3, 2);
        // Phase 1, one batch: conflicts inside an entry and between entries of the batch.
        let phase1 = vec![
            envelope(
                "Deposited",
                json!([deposit(1, 0xa1, 100, x()), deposit(2, 0xa2, 200, x())]),
            ),
            envelope("Deposited", json!([deposit(3, 0xa3, 300, y())])),
            envelope("SharePriceChanged", json!([price(5, 5_000, y())])),
            envelope(
                "SharePriceChanged",
                json!([price(6, 6_000, info(13, 4, 0))]),
            ),
        ];
        let refs: Vec<&str> = phase1.iter().map(String::as_str).collect();
        env.publish(&refs, &PublishOptions::default()).await;
        let (conflicts, _, _) = run_until_drained(&env, workers, 50).await;
        assert_eq!(conflicts, 2, "workers {workers}");
        // Phase 2, after a restart, one entry per batch: conflicts with committed identities
        // and between batches.
        let phase2 = vec![
            envelope("SharePriceChanged", json!([price(7, 7_000, x())])),
            envelope("SharePriceChanged", json!([price(8, 8_000, w())])),
            envelope("Deposited", json!([deposit(9, 0xa9, 900, w())])),
            envelope(
                "Redeemed",
                json!([{"sender": format!("0x{:040x}", 0xa3), "receiver": format!("0x{:040x}", 0xa3),
                "termId": term_id(3), "curveId": "1", "shares": "1", "totalShares": "0", "assets": "1", "fees": "0",
                "vaultType": 0, "transaction_information": y()}]),
            ),
        ];
        let refs: Vec<&str> = phase2.iter().map(String::as_str).collect();
        env.publish(&refs, &PublishOptions::default()).await;
        let (conflicts, _, _) = run_until_drained(&env, workers, 1).await;
        assert_eq!(conflicts, 3, "workers {workers}");

        let all: Vec<String> = phase1.into_iter().chain(phase2).collect();
        let accepted = first_accepted(&all);
        assert_eq!(accepted.len(), 4);
        assert_equal(&env, &fold(&accepted).tables(), &[]).await;
        assert_eq!(
            event_log_identities(&env).await,
            (4, 4),
            "one event-log row per identity"
        );
        assert_verify_clean(&env).await;
    }
}

/// Faults 2 and 3: a reorg notice whose `network` holds a NUL, and generic events holding a
/// number JSONB cannot hold or a NUL in a string, are dead-lettered with their reason; the good
/// entry published after them is applied, and the pipeline never restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_network_notice_and_unstorable_parameters_are_dead_lettered_and_the_stream_goes_on() {
    let env = TestEnv::new("unstorable").await;
    let mut huge = info(20, 10, 0).to_string();
    huge = format!(r#"{{"x":1e1000000,"transaction_information":{huge}}}"#);
    let lines = [
        json!({"event_name": "__rindexer_reorg", "network": "intuition",
               "event_data": [{"type": "reorg", "network": "intu\u{0}ition", "fork_block": 5, "depth": 1}]})
        .to_string(),
        format!(r#"{{"event_name":"ProtocolFeeAccrued","event_data":[{huge}]}}"#),
        envelope("ProtocolFeeAccrued", json!([{"note": "a\u{0}b", "transaction_information": info(21, 11, 0)}])),
        envelope("Deposited", json!([deposit(1, 0xb1, 100, info(22, 12, 0))])),
    ];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    env.publish(&refs, &PublishOptions::default()).await;
    let service = InProcess::start(env.settings(4, 100));
    // Applied within seconds: the wait is a bound, not a measurement.
    env.wait_all_drained(Duration::from_secs(30)).await;
    let restarts = service.stats.health.metrics.restarts("sync");
    service.stop().await;
    assert_eq!(restarts, 0, "no restart for bad input");
    let errors = dlq_errors(&env).await;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].contains("network") && errors[0].contains("NUL"),
        "{errors:?}"
    );
    assert!(errors[1].contains("is the number 1e"), "{errors:?}");
    assert!(errors[2].contains("`$.note` contains a NUL"), "{errors:?}");
    assert_eq!(env.count("SELECT count(*) AS n FROM reorgs").await, 0);
    assert_equal(
        &env,
        &fold(&events_of(&lines[3])).tables(),
        &["position", "vault", "term"],
    )
    .await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM dead_letters WHERE published_at IS NOT NULL")
            .await,
        3
    );
}

/// The text `\u0000` (a backslash, not a NUL) is an ordinary string: stored as given, nothing
/// dead-lettered. (Storing used to double the backslash's escape, which made it a NUL JSONB
/// refuses.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_of_a_nul_escape_is_stored_as_given() {
    let env = TestEnv::new("nul_text").await;
    let lines = [envelope(
        "ProtocolFeeAccrued",
        json!([{"note": "a\\u0000b", "transaction_information": info(30, 20, 0)}]),
    )];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    env.publish(&refs, &PublishOptions::default()).await;
    let service = InProcess::start(env.settings(2, 100));
    // Applied within seconds: the wait is a bound, not a measurement.
    env.wait_all_drained(Duration::from_secs(30)).await;
    service.stop().await;
    assert_eq!(dlq_errors(&env).await, Vec::<String>::new());
    assert_eq!(
        env.count(r"SELECT count(*) AS n FROM generic_events WHERE payload->>'note' = 'a\u0000b'")
            .await,
        1
    );
    assert_verify_clean(&env).await;
}

/// The safety net for what no one foresaw: rows PostgreSQL refuses (here made refusable with
/// CHECK constraints of the test database) are isolated — refused generic events by bisection,
/// a refused core event by retrying its batch's entries one by one, a refused reorg notice — and
/// dead-lettered with PostgreSQL's reason; everything else commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_postgres_refuses_are_isolated_and_dead_lettered() {
    use diesel_async::RunQueryDsl;
    let env = TestEnv::new("refused").await;
    store::migrate(&env.database_url).await.expect("migrate");
    let mut conn = env.pg().await;
    for check in [
        "ALTER TABLE generic_events ADD CONSTRAINT test_poison CHECK (NOT payload ? 'poison')",
        "ALTER TABLE deposited_events ADD CONSTRAINT test_poison CHECK (assets <> 4242)",
        "ALTER TABLE reorgs ADD CONSTRAINT test_poison CHECK (fork_block <> 999999999)",
    ] {
        diesel::sql_query(check)
            .execute(&mut conn)
            .await
            .expect("constraint");
    }
    let generic = |n: u64, poison: bool| {
        let mut item =
            json!({"amount": n.to_string(), "transaction_information": info(30, 100 + n, n)});
        if poison {
            item["poison"] = json!(true);
        }
        item
    };
    let items: Vec<Value> = (0..40).map(|n| generic(n, n % 13 == 5)).collect();
    let mut lines: Vec<String> = fixture_lines(SMALL_FIXTURE)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let good_tail = lines.split_off(lines.len() / 2);
    lines.push(envelope("ProtocolFeeAccrued", Value::Array(items.clone())));
    let poison_entry = envelope(
        "Deposited",
        json!([
            deposit(1, 0xc1, 100, info(40, 200, 0)),
            deposit(2, 0xc2, 4242, info(40, 200, 1))
        ]),
    );
    lines.push(poison_entry.clone());
    lines.push(
        json!({"event_name": "__rindexer_reorg", "network": "intuition",
               "event_data": [{"type": "reorg", "fork_block": 999_999_999u64, "depth": 1}]})
        .to_string(),
    );
    lines.extend(good_tail);
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    env.publish(&refs, &PublishOptions::default()).await;
    let service = InProcess::start(env.settings(2, 200));
    env.wait_all_drained(Duration::from_secs(90)).await;
    service.stop().await;

    let errors = dlq_errors(&env).await;
    let poisoned = items.iter().filter(|i| i.get("poison").is_some()).count();
    assert_eq!(errors.len(), poisoned + 2, "{errors:#?}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("rejected by PostgreSQL") && e.contains("test_poison")),
        "{errors:#?}"
    );
    let accepted: Vec<Event> = lines
        .iter()
        .filter(|l| **l != poison_entry && !l.contains("__rindexer_reorg"))
        .flat_map(|l| events_of(l))
        .filter(|e| !matches!(&e.kind, redis_postgres_sync::domain::EventKind::Generic { payload, .. } if payload.contains("poison")))
        .collect();
    env.assert_all_tables(&fold(&accepted).tables()).await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM generic_events WHERE payload ? 'poison'")
            .await,
        0
    );
    assert_eq!(env.count("SELECT count(*) AS n FROM reorgs").await, 0);
    assert_verify_clean(&env).await;
}

/// Fault 4: two instances, the writer killed twice while bad entries flow: each bad entry is in
/// the dead-letter stream exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_written_once_across_kills_and_takeovers() {
    let text = generated_fixture(8_000, 121);
    let env = TestEnv::new("dlqonce").await;
    let mut lines: Vec<String> = fixture_lines(&text)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(121);
    let bad = 12;
    for n in 0..bad {
        let at = rng.random_range(0..lines.len());
        lines.insert(
            at,
            format!("{{\"event_name\": \"Deposited\", \"broken\": {n}"),
        );
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    env.publish(&refs, &PublishOptions::default()).await;
    let spawn = |name: &str| {
        let mut vars = env.env(2, 2);
        vars.push(("CONSUMER_NAME", name.to_owned()));
        vars.push(("NO_ANALYTICS", "true".to_owned()));
        vars.push(("HTTP_PORT", "0".to_owned()));
        spawn_binary(&vars, "sync")
    };
    let mut children = vec![
        ("a0".to_owned(), spawn("a0")),
        ("b0".to_owned(), spawn("b0")),
    ];
    let mut kills = 0;
    for round in 1..=2 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_500..3_000))).await;
        // The writer: the lease holder among the live children (after a kill, the standby
        // takes over within LEASE_TTL_MS).
        let holder = loop {
            #[derive(diesel::QueryableByName)]
            struct H {
                #[diesel(sql_type = diesel::sql_types::Text)]
                holder: String,
            }
            use diesel_async::RunQueryDsl;
            let mut conn = env.pg().await;
            if let Ok(h) = diesel::sql_query("SELECT holder FROM writer_lease")
                .get_result::<H>(&mut conn)
                .await
            {
                if children.iter().any(|(n, _)| *n == h.holder) {
                    break h.holder;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Some(i) = children.iter().position(|(n, _)| *n == holder) {
            let (_, mut child) = children.remove(i);
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            kills += 1;
            let name = format!("r{round}");
            children.push((name.clone(), spawn(&name)));
        }
    }
    env.wait_drained(Duration::from_secs(240)).await;
    for (_, mut child) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(kills, 2, "the writer was killed twice");
    let mut redis = env.redis().await;
    let dead: usize = redis.xlen(dlq_stream(&env.stream)).await.expect("xlen");
    assert_eq!(dead, bad, "one dead letter per bad entry");
    assert_eq!(
        env.count("SELECT count(*) AS n FROM dead_letters").await,
        bad as i64
    );
    env.assert_base_tables(&expected_tables(&text)).await;
}

/// A plain redelivery after a restart is a duplicate, not a conflict — generic payloads whose
/// numbers JSONB rewrites included (`1E2` is read back as `100`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_restart_is_a_duplicate() {
    let env = TestEnv::new("redeliver").await;
    let mut lines: Vec<String> = fixture_lines(SMALL_FIXTURE)
        .into_iter()
        .map(str::to_owned)
        .collect();
    lines.push(format!(
        r#"{{"event_name":"Odd","event_data":[{{"b":1E2,"a":-0,"c":[1.50,0.1e1],"z":"é","transaction_information":{}}}]}}"#,
        info(50, 300, 0)
    ));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    env.publish(&refs, &PublishOptions::default()).await;
    let (conflicts, _, _) = run_until_drained(&env, 4, 500).await;
    assert_eq!(conflicts, 0);
    env.publish(&refs, &PublishOptions::default()).await;
    let (conflicts, duplicates, _) = run_until_drained(&env, 4, 500).await;
    let events: usize = lines.iter().map(|l| events_of(l).len()).sum();
    assert_eq!((conflicts, duplicates), (0, events as u64));
}

/// Byte-level mutation: flip, insert or delete a few bytes.
fn mutate_bytes(line: &str, rng: &mut impl Rng) -> Vec<u8> {
    let mut b = line.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..4) {
        if b.is_empty() {
            break;
        }
        let at = rng.random_range(0..b.len());
        match rng.random_range(0..3) {
            0 => b[at] = rng.random(),
            1 => b.insert(at, rng.random()),
            _ => {
                b.remove(at);
            }
        }
    }
    b
}

/// Field-level mutation: one value somewhere in the envelope replaced by a hostile one, or a key
/// removed.
fn mutate_fields(line: &str, rng: &mut impl Rng) -> String {
    let mut v: Value = serde_json::from_str(line).expect("fixture line is JSON");
    let hostile = [
        json!(null),
        json!(-1),
        json!("0x"),
        json!("zz"),
        json!("a\u{0}b"),
        json!({}),
        json!([]),
        json!("115792089237316195423570985008687907853269984665640564039457584007913129639936"),
        json!("x".repeat(3_000)),
        json!(u64::MAX),
        json!(1.5),
        json!(true),
    ];
    let mut node = &mut v;
    loop {
        let keys: Vec<String> = match node {
            Value::Object(o) if !o.is_empty() => o.keys().cloned().collect(),
            Value::Array(a) if !a.is_empty() => (0..a.len()).map(|i| i.to_string()).collect(),
            _ => break,
        };
        let key = &keys[rng.random_range(0..keys.len())];
        let stop = rng.random_bool(0.35);
        if stop {
            match node {
                Value::Object(o) if rng.random_bool(0.3) => {
                    o.remove(key);
                }
                Value::Object(o) => {
                    o.insert(
                        key.clone(),
                        hostile[rng.random_range(0..hostile.len())].clone(),
                    );
                }
                Value::Array(a) => {
                    let i: usize = key.parse().expect("index");
                    a[i] = hostile[rng.random_range(0..hostile.len())].clone();
                }
                _ => {}
            }
            break;
        }
        node = match node {
            Value::Object(o) => o.get_mut(key).expect("key"),
            Value::Array(a) => &mut a[key.parse::<usize>().expect("index")],
            _ => unreachable!(),
        };
    }
    let mut text = v.to_string();
    // Numbers serde_json cannot write: put one in as text.
    if rng.random_bool(0.1) {
        text = text.replacen("\"0x1\"", "1e1000000", 1);
    }
    text
}

/// The integration fuzz test: byte- and field-mutated copies of recorded envelopes, mixed into
/// the recorded fixture, through the running service. Afterwards every entry is applied or
/// dead-lettered (nothing pending), the pipeline never restarted, each dead letter is published
/// once, the event log holds one row per identity, and `verify` is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_envelopes_are_applied_or_dead_lettered_and_nothing_stops() {
    let cases: usize = std::env::var("FUZZ_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let env = TestEnv::new("fuzz").await;
    let good = fixture_lines(SMALL_FIXTURE);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let mut payloads: Vec<Vec<u8>> = good.iter().map(|l| l.as_bytes().to_vec()).collect();
    for _ in 0..cases {
        let line = good[rng.random_range(0..good.len())];
        let mutated = if rng.random_bool(0.4) {
            mutate_bytes(line, &mut rng)
        } else {
            mutate_fields(line, &mut rng).into_bytes()
        };
        let at = rng.random_range(0..payloads.len());
        payloads.insert(at, mutated);
    }
    let mut redis = env.redis().await;
    for chunk in payloads.chunks(200) {
        let mut pipe = redis::pipe();
        for p in chunk {
            pipe.xadd(&env.stream, "*", &[("payload", p.as_slice())])
                .ignore();
        }
        let () = pipe.query_async(&mut redis).await.expect("xadd");
    }
    let service = InProcess::start(env.settings(4, 100));
    env.wait_all_drained(Duration::from_secs(180)).await;
    let restarts = service.stats.health.metrics.restarts("sync");
    let dead = service.stats.health.metrics.dead_lettered_events.get();
    service.stop().await;
    eprintln!(
        "fuzz: {cases} mutated entries among {} recorded ones; {dead} dead letters",
        good.len()
    );
    assert_eq!(
        restarts, 0,
        "the pipeline never restarted for a data rejection"
    );
    assert!(dead > 0, "the mutations produced bad input");
    let xlen: usize = redis.xlen(dlq_stream(&env.stream)).await.expect("xlen");
    assert_eq!(xlen as u64, dead, "each dead letter published once");
    let (rows, distinct) = event_log_identities(&env).await;
    assert_eq!(rows, distinct, "one event-log row per identity");
    assert_verify_clean(&env).await;
}
