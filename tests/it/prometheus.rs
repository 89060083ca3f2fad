//! The monitoring parts against a real Prometheus: it scrapes the service under test (in-process,
//! HTTP on), loads deploy/prometheus-alerts.yml, and evaluates every query of
//! deploy/grafana-dashboard.json and every alert expression through its HTTP API.
//!
//! Needs the `prometheus` binary on PATH (Debian: `apt-get install prometheus`). Without it the
//! test prints that it was skipped and passes, unless `REQUIRE_PROMETHEUS=1` (CI sets it): then
//! it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis_postgres_sync::ingest::publish::PublishOptions;
use serde_json::{json, Value};

use crate::support::*;

/// What the dashboard's queries must show after the run, decided by the metric names they use:
///
/// - every query returns at least one sample: each metric it names is exported by a running
///   writer (labelless ones from the start, the labelled ones once set; the run sets them all),
///   so an empty answer means a misspelt name or a broken selector;
/// - a query naming one of MOVED — counters and histograms this run makes grow between two
///   stored scrapes (the fixture goes in two waves, each with a dead-lettered item; the second
///   repeats entries of the first) — returns a sample with a finite value above zero (a rate,
///   an average batch size, a latency quantile). The others (restarts, reorgs, conflicts: the run
///   moves none of them) may be zero.
///
/// The alert expressions must evaluate without error; their comparisons are false on a healthy
/// run, so they may be empty (but DeadLetters, which the run provokes and which must fire). With
/// their thresholds relaxed (`relax_thresholds`) each must return a sample: an alert that cannot
/// fire even then has a misspelt metric or an `and` whose sides share no labels.
const MOVED: &[&str] = &[
    "events_processed_total",
    "events_failed_total",
    "dead_lettered_events_total",
    "events_duplicate_total",
    "event_processing_duration_seconds",
    "database_write_duration_seconds",
    "batch_size_entries",
    "batch_size_events",
    "analytics_rows_written_total",
    "analytics_batches_total",
];

const JOB: &str = "redis-postgres-sync";

/// The running Prometheus and its temp dir; killed and removed on drop, panics included.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    fn start(binary: &Path, target_port: u16, rules: &Path) -> Self {
        let dir =
            std::env::temp_dir().join(format!("rps-prometheus-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
            rules = rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Self { child, dir, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if let Some((200, _)) = get(self.port, "/-/ready").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `/api/v1/query`: the `data` of a successful answer, or the error Prometheus gives.
    async fn query(&self, expr: &str) -> Result<Value, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = get(self.port, &path)
            .await
            .ok_or_else(|| "no answer".to_owned())?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if status != 200 || v["status"] != json!("success") {
            return Err(format!(
                "HTTP {status}: {} {}",
                v["errorType"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or(&body)
            ));
        }
        if let Some(w) = v["warnings"].as_array().filter(|w| !w.is_empty()) {
            eprintln!("prometheus warns about {expr}: {w:?}");
        }
        Ok(v["data"].clone())
    }

    /// The values of an instant query's samples (a scalar counts as one sample).
    async fn samples(&self, expr: &str) -> Result<Vec<f64>, String> {
        let data = self.query(expr).await?;
        let value = |v: &Value| -> f64 {
            v[1].as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN)
        };
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .map(|r| r.iter().map(|s| value(&s["value"])).collect())
                .unwrap_or_default()),
            Some("scalar") => Ok(vec![value(&data["result"])]),
            other => Err(format!("unexpected result type {other:?}: {data}")),
        }
    }

    /// How many scrapes of the service Prometheus holds (of the last 10 minutes).
    async fn scrapes(&self) -> usize {
        self.samples(&format!("count_over_time(up{{job=\"{JOB}\"}}[10m])"))
            .await
            .ok()
            .and_then(|v| v.first().copied())
            .map_or(0, |n| n as usize)
    }

    /// Waits for `n` more successful scrapes than now, so the state at this moment is stored.
    async fn wait_scrapes(&self, n: usize) {
        let start = self.scrapes().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = self
                .samples(&format!("up{{job=\"{JOB}\"}}"))
                .await
                .unwrap_or_default();
            if self.scrapes().await >= start + n && up == [1.0] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus does not scrape the service (up = {up:?}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("addr").port()
}

/// HTTP/1.0 GET on 127.0.0.1 (so Go's server never answers chunked): (status, body), or None
/// when nothing listens.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `expr` with every threshold comparison (`> 10000`, `== 0`, `< 1`, …) replaced by
/// `> -Inf`, which keeps every sample: what the alert would see if all its thresholds were met.
fn relax_thresholds(expr: &str) -> String {
    const OPS: [&str; 6] = ["==", "!=", ">=", "<=", ">", "<"];
    let mut out = String::new();
    let mut rest = expr;
    'scan: while !rest.is_empty() {
        for op in OPS {
            if let Some(after) = rest.strip_prefix(op) {
                let number = after.trim_start();
                let len = number
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .unwrap_or(number.len());
                if len > 0 {
                    out.push_str("> -Inf");
                    rest = &number[len..];
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `PATH` lookup of the `prometheus` binary.
fn prometheus_binary() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// Every `expr` of every target of every panel (rows' nested panels included).
fn dashboard_exprs(dash: &Value, out: &mut Vec<String>) {
    for panel in dash["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = target["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
        dashboard_exprs(panel, out);
    }
}

/// The metric-like identifiers of a PromQL expression.
fn names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
        .collect()
}

fn uses(expr: &str, metrics: &[&str]) -> bool {
    names(expr)
        .iter()
        .any(|w| metrics.iter().any(|m| w.starts_with(m)))
}

/// A Deposited envelope whose single item has an unknown vault type: one dead letter, counted
/// under `event_type="Deposited"`.
fn bad_entry(log_index: u64) -> String {
    let term = "2222222222222222222222222222222222222222222222222222222222222222";
    let addr = "0x3333333333333333333333333333333333333333";
    let tx = "0x4444444444444444444444444444444444444444444444444444444444444444";
    json!({"event_name": "Deposited", "network": "intuition", "event_data": [{
        "sender": addr, "receiver": addr, "termId": term, "curveId": "1", "assets": "10",
        "assetsAfterFees": "9", "shares": "9", "totalShares": "9", "vaultType": 9,
        "transaction_information": {"block_number": 7, "transaction_hash": tx,
            "log_index": format!("0x{log_index:x}"), "network": "intuition"}
    }]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_service_and_evaluates_every_dashboard_query_and_alert() {
    let Some(binary) = prometheus_binary() else {
        assert!(
            std::env::var("REQUIRE_PROMETHEUS").as_deref() != Ok("1"),
            "REQUIRE_PROMETHEUS=1 but the prometheus binary is not on PATH (apt-get install prometheus)"
        );
        eprintln!("skipped: prometheus not installed (apt-get install prometheus)");
        return;
    };
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules_file = deploy.join("prometheus-alerts.yml");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut dashboard = Vec::new();
    dashboard_exprs(&dash, &mut dashboard);
    let rules_text = std::fs::read_to_string(&rules_file).expect("alert rules");
    let alerts: Vec<String> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:").map(|e| e.trim().to_owned()))
        .collect();
    assert!(!dashboard.is_empty() && !alerts.is_empty());
    assert!(
        alerts.iter().all(|e| !e.starts_with(['|', '>'])),
        "block-scalar exprs: extend this test's extraction"
    );

    // The service, in-process, with its HTTP endpoints.
    let env = TestEnv::new("prom").await;
    let settings = env.settings(2, 100);
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

    let mut prom = Prometheus::start(&binary, port, &rules_file);
    prom.wait_ready().await;
    prom.wait_scrapes(2).await;

    // Two waves with scrapes between them, so every counter grows between two stored samples
    // (a labelled series appears only with its first increment: one wave would show no rate).
    let lines = fixture_lines(SMALL_FIXTURE);
    let (first, second) = lines.split_at(lines.len() / 2);
    let bad = [bad_entry(1), bad_entry(2)];
    let mut wave1: Vec<&str> = first.to_vec();
    wave1.push(&bad[0]);
    env.publish(&wave1, &PublishOptions::default()).await;
    env.wait_all_drained(Duration::from_secs(120)).await;
    prom.wait_scrapes(2).await;
    let mut wave2: Vec<&str> = second.to_vec();
    wave2.extend_from_slice(&first[..20]); // redelivered: events_duplicate_total
    wave2.push(&bad[1]);
    env.publish(&wave2, &PublishOptions::default()).await;
    env.wait_all_drained(Duration::from_secs(120)).await;
    prom.wait_scrapes(3).await;

    // Every dashboard query and every alert expression, each judged by the rule above.
    let mut failures = Vec::new();
    for expr in &dashboard {
        match prom.samples(expr).await {
            Err(e) => failures.push(format!("dashboard {expr}: {e}")),
            Ok(v) => {
                eprintln!("  {:>2} sample(s) {v:?}  {expr}", v.len());
                if v.is_empty() {
                    failures.push(format!("dashboard {expr}: no sample"));
                } else if uses(expr, MOVED) && !v.iter().any(|x| x.is_finite() && *x > 0.0) {
                    failures.push(format!(
                        "dashboard {expr}: no positive sample over a counter the run moved: {v:?}"
                    ));
                }
            }
        }
    }
    for expr in &alerts {
        match prom.samples(expr).await {
            Err(e) => failures.push(format!("alert {expr}: {e}")),
            Ok(v) => eprintln!("  {:>2} sample(s) {v:?}  {expr}", v.len()),
        }
        // Every alert can fire: with its thresholds met, the expression keeps a sample (its
        // metrics exist and both sides of an `and` share the labels it matches on).
        let relaxed = relax_thresholds(expr);
        match prom.samples(&relaxed).await {
            Ok(v) if !v.is_empty() => {}
            other => failures.push(format!(
                "alert {expr} can never fire: with every threshold met ({relaxed}) it gives {other:?}"
            )),
        }
    }

    // The rules loaded: every alert of the file, evaluated without error.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rules = loop {
        let (_, body) = get(prom.port, "/api/v1/rules").await.expect("rules API");
        let v: Value = serde_json::from_str(&body).expect("rules JSON");
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let settled = rules.iter().all(|r| r["health"] != json!("unknown"));
        if (rules.len() == alerts.len() && settled) || Instant::now() > deadline {
            break rules;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        rules.len(),
        alerts.len(),
        "every alert of deploy/prometheus-alerts.yml is loaded: {rules:#?}"
    );
    for r in &rules {
        let ok = r["health"] == json!("ok")
            || (r["health"] == json!("unknown")
                && r["lastError"].as_str().unwrap_or("").is_empty());
        if !ok {
            failures.push(format!(
                "rule {}: health {} {}",
                r["name"], r["health"], r["lastError"]
            ));
        }
    }
    // And the one this run provokes fires.
    let dead_letters = rules.iter().find(|r| r["name"] == json!("DeadLetters"));
    if dead_letters.map(|r| r["state"].clone()) != Some(json!("firing")) {
        failures.push(format!("DeadLetters is not firing: {dead_letters:?}"));
    }

    let _ = stop_tx.send(());
    service.await.expect("join").expect("service");
    assert!(
        failures.is_empty(),
        "{} of {} queries or rules failed:\n{}\nprometheus log:\n{}",
        failures.len(),
        dashboard.len() + alerts.len() + rules.len(),
        failures.join("\n"),
        prom.log()
    );
    eprintln!(
        "prometheus evaluated {} dashboard queries and {} alert expressions; {} rules ok",
        dashboard.len(),
        alerts.len(),
        rules.len()
    );
}

#[test]
fn relax_thresholds_replaces_comparisons_with_numbers_only() {
    assert_eq!(
        relax_thresholds("sum by (s) (x) > 10000 and deriv(sum by (s) (x)[10m:]) > 0"),
        "sum by (s) (x) > -Inf and deriv(sum by (s) (x)[10m:]) > -Inf"
    );
    assert_eq!(
        relax_thresholds(r#"max(role{role="writer"}) < 1"#),
        r#"max(role{role="writer"}) > -Inf"#
    );
    assert_eq!(relax_thresholds("a == 0.5 or b!=c"), "a > -Inf or b!=c");
}
