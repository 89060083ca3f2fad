//! Test support: a fresh database and fresh stream names per test, the service run in-process or
//! as a child process, and comparison of the stored tables with the pure fold.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use redis::AsyncCommands;
use redis_postgres_sync::analytics::AnalyticsStats;
use redis_postgres_sync::app::App;
use redis_postgres_sync::config::{AnalyticsSettings, Connections, SyncSettings};
use redis_postgres_sync::domain::{fold, Event, Tables};
use redis_postgres_sync::fixture::{self, FixtureConfig};
use redis_postgres_sync::ingest::publish::{publish, PublishOptions};
use redis_postgres_sync::ingest::stream;
use redis_postgres_sync::store::compare;
use redis_postgres_sync::sync::SyncStats;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const SMALL_FIXTURE: &str = include_str!("../fixtures/small.jsonl");

/// A database and stream names of one test; the database is dropped when this is.
pub struct TestEnv {
    pub name: String,
    pub database_url: String,
    pub stream: String,
    pub term_updates: String,
    pub group: String,
}

/// Warnings and errors of the service under test go to the test's captured output.
fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_test_writer()
            .try_init();
    });
}

impl TestEnv {
    pub async fn new(label: &str) -> Self {
        init_logs();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("rps_test_{label}_{}", &id[..12]);
        let mut admin = AsyncPgConnection::establish(&format!("{PG}/postgres"))
            .await
            .expect("postgres is up");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        Self {
            database_url: format!("{PG}/{name}"),
            stream: format!("{name}:in"),
            term_updates: format!("{name}:term_updates"),
            group: "postgres-sync".to_owned(),
            name,
        }
    }

    pub fn settings(&self, workers: u32, batch_size: u32) -> SyncSettings {
        SyncSettings {
            connections: Connections {
                redis_url: REDIS.to_owned(),
                database_url: self.database_url.clone(),
                redis_ca_cert: None,
            },
            redis_streams: vec![self.stream.clone()],
            consumer_group: self.group.clone(),
            consumer_name: None,
            batch_size,
            batch_timeout_ms: 200,
            workers,
            processing_timeout_ms: 2_000,
            max_retries: 3,
            lease_ttl_ms: 2_000,
            state_cache_keys: 500_000,
            input_retention: redis_postgres_sync::config::InputRetention::Keep,
            max_entry_bytes: 1 << 20,
            analytics: AnalyticsSettings {
                term_updates_stream: self.term_updates.clone(),
                consumer_group_suffix: String::new(),
                analytics_batch_size: 200,
            },
            no_analytics: false,
            ops: redis_postgres_sync::config::OpsSettings::default(),
        }
    }

    /// Environment for the binary, matching [`settings`](Self::settings).
    pub fn env(&self, workers: u32, batch_size: u32) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.database_url.clone()),
            ("REDIS_URL", REDIS.to_owned()),
            ("REDIS_STREAMS", self.stream.clone()),
            ("CONSUMER_GROUP", self.group.clone()),
            ("TERM_UPDATES_STREAM", self.term_updates.clone()),
            ("WORKERS", workers.to_string()),
            ("BATCH_SIZE", batch_size.to_string()),
            ("BATCH_TIMEOUT_MS", "200".to_owned()),
            ("PROCESSING_TIMEOUT_MS", "2000".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ]
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        stream::connect(REDIS, None).await.expect("redis is up")
    }

    pub async fn publish(&self, lines: &[&str], opts: &PublishOptions) -> usize {
        let mut conn = self.redis().await;
        publish(&mut conn, &self.stream, lines, opts, |_| {})
            .await
            .expect("publish")
    }

    pub async fn pg(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.database_url)
            .await
            .expect("test database")
    }

    /// Waits until the group has read every entry of the input stream and acknowledged it all.
    pub async fn wait_drained(&self, timeout: Duration) {
        wait_group_drained(&self.stream, &self.group, timeout).await;
    }

    /// Compares every base table with `expected`; panics with the differences.
    pub async fn assert_base_tables(&self, expected: &Tables) {
        self.assert_tables(expected, &["atom", "triple", "position", "vault", "term"])
            .await;
    }

    pub async fn assert_tables(&self, expected: &Tables, only: &[&str]) {
        let diffs = self.assert_tables_equal(expected, only).await;
        assert!(
            diffs.iter().all(|d| d.checked > 0),
            "some table is empty: {:?}",
            diffs
                .iter()
                .map(|d| (d.table, d.checked))
                .collect::<Vec<_>>()
        );
    }

    /// Like [`assert_tables`](Self::assert_tables), empty tables allowed; returns the diffs.
    pub async fn assert_tables_equal(
        &self,
        expected: &Tables,
        only: &[&str],
    ) -> Vec<compare::TableDiff> {
        let mut conn = self.pg().await;
        let diffs = compare::compare(&mut conn, expected, only)
            .await
            .expect("compare");
        let bad: Vec<String> = diffs
            .iter()
            .filter(|d| !d.is_clean())
            .map(|d| {
                format!(
                    "{}: {} rows, {} missing (e.g. {:?}), {} extra (e.g. {:?}), {} differing (e.g. {:?})",
                    d.table,
                    d.checked,
                    d.missing.len(),
                    <[_]>::first(&d.missing),
                    d.extra.len(),
                    <[_]>::first(&d.extra),
                    d.differing.len(),
                    <[_]>::first(&d.differing)
                )
            })
            .collect();
        assert!(
            bad.is_empty(),
            "tables differ from the pure fold:\n{}",
            bad.join("\n")
        );
        diffs
    }

    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.pg().await;
        let r: N = diesel::sql_query(sql)
            .get_result(&mut conn)
            .await
            .expect("count query");
        r.n
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let name = self.name.clone();
        let streams = [
            self.stream.clone(),
            self.term_updates.clone(),
            stream::dlq_stream(&self.stream),
            stream::dead_letter_marker(&stream::dlq_stream(&self.stream), &self.group),
        ];
        // Drop runs outside any runtime's async context: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = AsyncPgConnection::establish(&format!("{PG}/postgres")).await
                {
                    let _ =
                        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                }
                if let Ok(mut r) = stream::connect(REDIS, None).await {
                    let _: Result<(), _> = r.del(&streams[..]).await;
                }
            });
        })
        .join();
    }
}

pub async fn wait_group_drained(stream_name: &str, group: &str, timeout: Duration) {
    let mut conn = stream::connect(REDIS, None).await.expect("redis");
    let deadline = Instant::now() + timeout;
    loop {
        let info: redis::streams::StreamInfoGroupsReply =
            conn.xinfo_groups(stream_name).await.unwrap_or_default();
        if let Some(g) = info.groups.iter().find(|g| g.name == group) {
            if g.pending == 0 && g.lag == Some(0) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "stream {stream_name} not drained by group {group} in {timeout:?}: {:?}",
            info.groups
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The service running in this process.
pub struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
    pub stats: Arc<SyncStats>,
    pub analytics: Arc<AnalyticsStats>,
}

impl InProcess {
    /// `sync` with its analytics consumer (unless `settings.no_analytics`).
    pub fn start(settings: SyncSettings) -> Self {
        let (tx, rx) = oneshot::channel();
        let app = App::new(&settings);
        let running = app.clone();
        let handle = tokio::spawn(async move {
            running
                .run(settings, None, async move {
                    let _ = rx.await;
                })
                .await
        });
        Self {
            stop: Some(tx),
            handle,
            stats: app.sync,
            analytics: app.analytics,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.handle)
            .await
            .expect("sync stops within 30 s")
            .expect("sync task did not panic")
            .expect("sync returned Ok");
    }
}

/// The service as a child process (for kill -9).
pub fn spawn_binary(env: &[(&'static str, String)], subcommand: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-postgres-sync"));
    cmd.arg(subcommand)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn the binary")
}

pub fn fixture_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

pub fn events_of(text: &str) -> Vec<Event> {
    fixture::read_events(text).expect("fixture decodes")
}

pub fn expected_tables(text: &str) -> Tables {
    fold(&events_of(text)).tables()
}

/// A generated fixture of about `events` events.
pub fn generated_fixture(events: usize, seed: u64) -> String {
    let cfg = FixtureConfig {
        events,
        accounts: 300,
        terms: 800,
        seed,
        ..FixtureConfig::default()
    };
    let mut out = Vec::new();
    fixture::generate(&cfg, &mut out).expect("generate");
    String::from_utf8(out).expect("utf-8")
}

impl TestEnv {
    /// Waits until the input is drained, the outbox is empty, and the analytics group has
    /// acknowledged every term update.
    pub async fn wait_all_drained(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.wait_drained(timeout).await;
        loop {
            if self
                .count("SELECT count(*) AS n FROM term_update_outbox")
                .await
                == 0
            {
                break;
            }
            assert!(Instant::now() < deadline, "outbox not drained");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_group_drained(
            &self.term_updates,
            "analytics",
            deadline.saturating_duration_since(Instant::now()),
        )
        .await;
    }

    /// Compares all nine derived tables with `expected`.
    pub async fn assert_all_tables(&self, expected: &Tables) {
        self.assert_tables(expected, &[]).await;
    }
}

/// A TCP proxy in front of a server, that a test can cut (refusing and dropping every
/// connection, as if the server were down) and restore.
pub struct Proxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // `up` is read under the lock `cut` drains with, so no connection accepted
                // while the proxy is up can slip past a cut that runs meanwhile.
                let mut conns = conns2.lock().expect("lock");
                if !std::sync::atomic::AtomicBool::load(&up2, std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                conns.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Self {
            port,
            up,
            conns,
            accept,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        let mut conns = self.conns.lock().expect("lock");
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in conns.drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1: (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP server");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
