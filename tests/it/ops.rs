//! Operations: bad input is dead-lettered with its reason while good items apply; the circuit
//! breaker and /health follow a Postgres outage and work resumes with nothing lost; SIGTERM
//! leaves consistent tables; no password leaks; the dashboard names only exported metrics.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis_postgres_sync::domain::fold;
use redis_postgres_sync::health::Health;
use redis_postgres_sync::ingest::publish::PublishOptions;
use redis_postgres_sync::ingest::stream::dlq_stream;
use redis_postgres_sync::metrics::{EventLabels, RoleLabels, StreamLabels};
use redis_postgres_sync::store::load;
use serde_json::{json, Value};

use crate::support::*;

const TX: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
const TERM: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const ADDR: &str = "0x3333333333333333333333333333333333333333";

fn item(log: u64, over: &[(&str, Value)]) -> Value {
    let mut v = json!({
        "sender": ADDR, "receiver": ADDR, "termId": TERM, "curveId": "1", "assets": "10",
        "assetsAfterFees": "9", "shares": "9", "totalShares": "9", "vaultType": 0,
        "transaction_information": {"block_number": 7, "transaction_hash": TX, "log_index": format!("0x{log:x}"), "network": "intuition"}
    });
    for (k, val) in over {
        v[*k] = val.clone();
    }
    v
}

fn envelope(items: Vec<Value>) -> String {
    json!({"event_name": "Deposited", "event_data": items, "network": "intuition"}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_is_dead_lettered_with_its_reason_and_good_items_apply() {
    let env = TestEnv::new("badinput").await;
    let good = item(1, &[]);
    let cases: Vec<(String, &str)> = vec![
        (
            "{\"event_name\": \"Deposited\", \"event_data\": [".to_owned(),
            "invalid JSON",
        ),
        (
            json!({"event_data": []}).to_string(),
            "field `event_name`: missing",
        ),
        (
            json!({"event_name": "Deposited", "event_data": "nope"}).to_string(),
            "field `event_data`: expected an array or an object",
        ),
        (
            envelope(vec![item(2, &[("termId", Value::Null)])]),
            "field `termId`: missing",
        ),
        (
            envelope(vec![item(3, &[("assets", json!("-1"))])]),
            "field `assets`",
        ),
        (
            envelope(vec![item(
                4,
                &[("shares", json!(format!("1{}", "0".repeat(78))))],
            )]),
            "out of range",
        ),
        (
            envelope(vec![item(5, &[("termId", json!("abcd"))])]),
            "expected 64 hex digits, got 4",
        ),
        (
            envelope(vec![item(6, &[("vaultType", json!(9))])]),
            "unknown vault type 9",
        ),
        // One envelope, one good item and one bad: the good one applies.
        (
            envelope(vec![good.clone(), item(8, &[("receiver", json!("0x12"))])]),
            "field `receiver`",
        ),
    ];
    let lines: Vec<&str> = cases.iter().map(|(l, _)| l.as_str()).collect();
    env.publish(&lines, &PublishOptions::default()).await;
    let mut redis = env.redis().await;
    // An entry without any payload field.
    let _: String = redis
        .xadd(&env.stream, "*", &[("other", "x")])
        .await
        .expect("xadd");
    let service = InProcess::start(env.settings(2, 100));
    env.wait_drained(Duration::from_secs(60)).await;
    service.stop().await;

    let reply: redis::streams::StreamRangeReply = redis
        .xrange_all(dlq_stream(&env.stream))
        .await
        .expect("dlq");
    let errors: Vec<String> = reply
        .ids
        .iter()
        .map(|s| match s.map.get("error") {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(
        errors.len(),
        cases.len() + 1,
        "one dead letter per bad entry or item: {errors:#?}"
    );
    for (_, reason) in &cases {
        assert!(
            errors.iter().any(|e| e.contains(reason)),
            "no dead letter says {reason:?}: {errors:#?}"
        );
    }
    assert!(
        errors.iter().any(|e| e.contains("no payload")),
        "{errors:#?}"
    );
    for s in &reply.ids {
        for f in ["payload", "error", "source_stream", "source_id"] {
            assert!(s.map.contains_key(f), "dead letter lacks {f}");
        }
    }
    // The bad item of the mixed envelope is dead-lettered alone, as an envelope holding just it.
    let mixed = reply.ids.iter().find(|s| matches!(s.map.get("error"), Some(redis::Value::BulkString(b)) if String::from_utf8_lossy(b).contains("`receiver`"))).expect("mixed");
    let payload: Value = match mixed.map.get("payload") {
        Some(redis::Value::BulkString(b)) => serde_json::from_slice(b).expect("json"),
        _ => panic!("payload"),
    };
    assert_eq!(payload["event_data"].as_array().map(Vec::len), Some(1));
    // The good item was applied: the tables equal the fold of it alone.
    let good_events =
        redis_postgres_sync::fixture::read_events(&envelope(vec![good])).expect("good");
    env.assert_tables(&fold(&good_events).tables(), &["position", "vault", "term"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_opens_the_breaker_and_work_resumes_with_nothing_lost() {
    let env = TestEnv::new("outage").await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let lines = fixture_lines(SMALL_FIXTURE);
    let (first, rest) = lines.split_at(lines.len() / 2);
    let mut settings = env.settings(2, 50);
    settings.connections.database_url = format!(
        "postgres://postgres:pw@127.0.0.1:{}/{}",
        proxy.port, env.name
    );
    settings.ops.circuit_breaker_threshold = 2;
    settings.ops.circuit_breaker_timeout_ms = 1_500;
    settings.max_retries = 1;
    settings.processing_timeout_ms = 1_000;
    let app = redis_postgres_sync::app::App::new(&settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(async move {
        app.run(settings, Some(listener), async move {
            let _ = stop_rx.await;
        })
        .await
    });

    env.publish(first, &PublishOptions::default()).await;
    env.wait_drained(Duration::from_secs(60)).await;
    assert_eq!(http_get(port, "/health").await.0, 200);

    proxy.cut();
    env.publish(rest, &PublishOptions::default()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // /health and /metrics are two requests: the breaker may move between them, so the
        // test waits for one /health answer that shows both the outage and the open breaker.
        let (status, body) = http_get(port, "/health").await;
        let metrics = http_get(port, "/metrics").await.1;
        let v: Value = serde_json::from_str(&body).expect("health json");
        if status == 503
            && metrics.contains("circuit_breaker_state 1")
            && v["postgres_healthy"] == json!(false)
            && v["circuit_breaker_closed"] == json!(false)
        {
            assert_eq!(v["healthy"], json!(false));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "breaker never opened: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing acknowledged or dead-lettered while Postgres is away.
    let mut redis = env.redis().await;
    let groups: redis::streams::StreamInfoGroupsReply =
        redis.xinfo_groups(&env.stream).await.expect("groups");
    let g = &groups.groups[0];
    assert!(
        g.pending > 0 || g.lag.unwrap_or(0) > 0,
        "the second half waits: {g:?}"
    );
    let dead: usize = redis.xlen(dlq_stream(&env.stream)).await.expect("xlen");
    assert_eq!(dead, 0);

    proxy.restore();
    env.wait_all_drained(Duration::from_secs(120)).await;
    assert_eq!(http_get(port, "/health").await.0, 200, "healthy again");
    let _ = stop_tx.send(());
    service.await.expect("join").expect("service");
    env.assert_all_tables(&expected_tables(SMALL_FIXTURE)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_zero_with_consistent_tables() {
    let text = generated_fixture(20_000, 66);
    let env = TestEnv::new("sigterm").await;
    env.publish(&fixture_lines(&text), &PublishOptions::default())
        .await;
    let mut run_env = env.env(2, 20);
    // No HTTP server: another process on this machine may hold the default port.
    run_env.push(("HTTP_PORT", "0".to_owned()));
    let child = spawn_binary(&run_env, "sync");
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "SIGTERM exits 0: {}", out.status);
    // Consistent: the base tables are the fold of exactly the committed event log.
    let mut conn = env.pg().await;
    let committed = load::load_events(&mut conn, None).await.expect("event log");
    assert!(
        !committed.is_empty(),
        "something was committed before the signal"
    );
    let mut redis = env.redis().await;
    let groups: redis::streams::StreamInfoGroupsReply =
        redis.xinfo_groups(&env.stream).await.expect("groups");
    assert!(
        groups.groups[0].lag.unwrap_or(0) > 0,
        "stopped mid-run, with input left"
    );
    env.assert_base_tables(&fold(&committed).tables()).await;
    // A restart finishes the work.
    let service = InProcess::start(env.settings(2, 200));
    env.wait_all_drained(Duration::from_secs(180)).await;
    service.stop().await;
    env.assert_all_tables(&expected_tables(&text)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_database_url_appears_in_no_log_and_no_response() {
    let env = TestEnv::new("secret").await;
    env.publish(
        &fixture_lines(SMALL_FIXTURE)[..50],
        &PublishOptions::default(),
    )
    .await;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let secret = "Sup3rS3cretPw";
    let mut run_env = env.env(1, 50);
    for (k, v) in run_env.iter_mut() {
        if *k == "DATABASE_URL" {
            *v = format!("postgres://postgres:{secret}@127.0.0.1:5432/{}", env.name);
        }
        if *k == "RUST_LOG" {
            *v = "debug".into();
        }
    }
    run_env.push(("HTTP_PORT", port.to_string()));
    run_env.push(("HTTP_BIND", "127.0.0.1".into()));
    // Logs go to a file: a pipe nobody reads while the service runs would fill up and block it.
    let log_path = std::env::temp_dir().join(format!("{}.log", env.name));
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_redis-postgres-sync"));
    cmd.arg("sync")
        .stdout(log_file.try_clone().expect("clone"))
        .stderr(log_file);
    for (k, v) in &run_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn");
    env.wait_drained(Duration::from_secs(60)).await;
    let mut bodies = String::new();
    for path in ["/health", "/ready", "/metrics"] {
        let (status, body) = http_get(port, path).await;
        assert_eq!(status, 200, "{path}");
        bodies.push_str(&body);
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let mut child = child;
    assert!(child.wait().expect("wait").success());
    let logs = std::fs::read_to_string(&log_path).expect("logs");
    let _ = std::fs::remove_file(&log_path);
    assert!(logs.contains("starting sync"), "logs were captured: {logs}");
    assert!(!logs.contains(secret), "the password leaked into the logs");
    assert!(
        !bodies.contains(secret),
        "the password leaked into an HTTP response"
    );
    // And a bad setting is rejected with exit code 2, naming the setting, without the password.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_redis-postgres-sync"))
        .args(["sync"])
        .env("DATABASE_URL", format!("mysql://u:{secret}@h/db"))
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("DATABASE_URL") && !err.contains(secret),
        "{err}"
    );
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let m = Health::default();
    // Label families appear once they have a child.
    m.metrics
        .events_processed
        .get_or_create(&EventLabels {
            event_type: "Deposited".into(),
        })
        .inc();
    m.metrics
        .events_failed
        .get_or_create(&EventLabels {
            event_type: "Deposited".into(),
        })
        .inc();
    m.metrics
        .consumer_lag_entries
        .get_or_create(&StreamLabels { stream: "s".into() })
        .set(0);
    m.metrics
        .consumer_pending_entries
        .get_or_create(&StreamLabels { stream: "s".into() })
        .set(0);
    m.metrics
        .role
        .get_or_create(&RoleLabels {
            role: "writer".into(),
        })
        .set(1);
    let exported: std::collections::BTreeSet<String> = m
        .metrics
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut used = std::collections::BTreeSet::new();
    for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("deploy/{file}: {e}"));
        // The PromQL expressions: `"expr": …` in the dashboard, `expr: …` in the rules.
        let exprs: Vec<String> = if file.ends_with(".json") {
            let dash: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
            dash["panels"]
                .as_array()
                .expect("panels")
                .iter()
                .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
                .map(|t| t["expr"].as_str().unwrap_or("").to_owned())
                .collect()
        } else {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("expr:").map(str::to_owned))
                .collect()
        };
        assert!(!exprs.is_empty(), "{file} has expressions");
        // Every identifier that looks like one of our metric names; label names are not metrics.
        let labels = ["event_type", "stream", "le", "instance"];
        for word in exprs.iter().flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        }) {
            let word = word.as_str();
            if labels.contains(&word) {
                continue;
            }
            let known_prefix = [
                "events_",
                "event_",
                "database_",
                "batch_",
                "dead_",
                "circuit_",
                "consumer_",
                "analytics_",
                "pipeline_",
                "reorgs",
                "role",
            ];
            if known_prefix.iter().any(|p| word.starts_with(p)) && word.len() > 4 {
                used.insert(word.to_owned());
            }
        }
    }
    assert!(
        used.len() >= 8,
        "the dashboard uses the service's metrics: {used:?}"
    );
    let missing: Vec<_> = used.iter().filter(|u| !exported.contains(*u)).collect();
    assert!(
        missing.is_empty(),
        "names not exported by /metrics: {missing:?}\nexported: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_reinjects_and_purges_and_status_reports() {
    let env = TestEnv::new("dlqcli").await;
    let mut redis = env.redis().await;
    let dlq = dlq_stream(&env.stream);
    let fixed = fixture_lines(SMALL_FIXTURE)[0].to_owned();
    let id: String = redis
        .xadd(
            &dlq,
            "*",
            &[
                ("payload", fixed.as_str()),
                ("error", "invalid JSON: test"),
                ("source_stream", env.stream.as_str()),
                ("source_id", "1-1"),
            ],
        )
        .await
        .expect("xadd");
    let _: String = redis
        .xadd(
            &dlq,
            "*",
            &[
                ("payload", "junk"),
                ("error", "bad"),
                ("source_stream", env.stream.as_str()),
                ("source_id", "1-2"),
            ],
        )
        .await
        .expect("xadd");
    let bin = env!("CARGO_BIN_EXE_redis-postgres-sync");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env("REDIS_URL", REDIS)
            .env("REDIS_STREAMS", &env.stream)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(&["dlq", "list"]);
    assert!(
        listed.contains("2 dead letter(s)")
            && listed.contains(&id)
            && listed.contains("invalid JSON: test"),
        "{listed}"
    );
    let reinjected = run(&["dlq", "reinject", &id]);
    assert!(
        reinjected.contains("1 dead letter(s) re-injected"),
        "{reinjected}"
    );
    let entries: redis::streams::StreamRangeReply =
        redis.xrange_all(&env.stream).await.expect("xrange");
    assert_eq!(entries.ids.len(), 1, "back in its source stream");
    assert!(
        matches!(entries.ids[0].map.get("payload"), Some(redis::Value::BulkString(b)) if b == fixed.as_bytes())
    );
    let purged = run(&["dlq", "purge", "--all"]);
    assert!(purged.contains("purged 1 dead letter(s)"), "{purged}");
    let left: usize = redis.xlen(&dlq).await.expect("xlen");
    assert_eq!(left, 0);
    // The re-injected entry is consumed like any other, and `status` shows the progress.
    let service = InProcess::start(env.settings(1, 10));
    env.wait_all_drained(Duration::from_secs(60)).await;
    service.stop().await;
    let out = std::process::Command::new(bin)
        .args(["status", "--json"])
        .env("REDIS_URL", REDIS)
        .env("REDIS_STREAMS", &env.stream)
        .env("DATABASE_URL", &env.database_url)
        .env("TERM_UPDATES_STREAM", &env.term_updates)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["streams"][0]["pending"], json!(0));
    assert_eq!(status["streams"][0]["dead_letters"], json!(0));
    assert_eq!(status["progress"][0]["entries_total"], json!(1));
}
