//! TLS to PostgreSQL and Redis (issue 13): the service syncs the recorded fixture with
//! `DATABASE_URL=…?sslmode=require` against the local PostgreSQL (`ssl = on`, snakeoil
//! certificate) and `REDIS_URL=rediss://…` against a `redis-server --tls-port` this test starts
//! with a certificate of a CA it generates (`REDIS_CA_CERT`). A certificate that does not verify
//! stops the binary at start with exit status 2, a message naming the setting, and no password.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use redis::AsyncCommands;
use redis_postgres_sync::ingest::publish::{publish, PublishOptions};
use redis_postgres_sync::ingest::stream;

use crate::support::*;

/// A CA and a server certificate it signed (for 127.0.0.1 and localhost), as PEM files.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rps-tls-{label}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "redis-postgres-sync test CA");
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pem");
            p
        };
        Self {
            ca: write("ca.pem", ca.pem()),
            cert: write("server.pem", cert.pem()),
            key: write("server.key", key.serialize_pem()),
            dir,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A `redis-server` serving TLS only, stopped when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    async fn start(pki: &Pki) -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&pki.cert)
            .arg("--tls-key-file")
            .arg(&pki.key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server with TLS (the binary supports --tls-port)");
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server --tls-port did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `group` has read and acknowledged every entry of `stream_name` on `conn`.
async fn drained(conn: &mut redis::aio::MultiplexedConnection, stream_name: &str, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: redis::streams::StreamInfoGroupsReply =
            conn.xinfo_groups(stream_name).await.unwrap_or_default();
        if info
            .groups
            .iter()
            .any(|g| g.name == group && g.pending == 0 && g.lag == Some(0))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stream_name} not drained by {group}: {:?}",
            info.groups
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_syncs_over_tls_to_postgres_and_redis() {
    let pki = Pki::new("sync");
    let redis_server = TlsRedis::start(&pki).await;
    let env = TestEnv::new("tls").await;
    let mut settings = env.settings(2, 200);
    settings.connections.database_url = format!("{}?sslmode=require", env.database_url);
    settings.connections.redis_url = redis_server.url();
    settings.connections.redis_ca_cert = Some(pki.ca.clone());
    let mut conn = stream::connect(&redis_server.url(), Some(&pki.ca))
        .await
        .expect("TLS connection to the test redis-server");
    publish(
        &mut conn,
        &env.stream,
        &fixture_lines(SMALL_FIXTURE),
        &PublishOptions::default(),
        |_| {},
    )
    .await
    .expect("publish over TLS");
    let service = InProcess::start(settings);
    drained(&mut conn, &env.stream, &env.group).await;
    // While it runs, every connection of the service to its database is encrypted.
    let (total, encrypted) = (
        env.count(&format!(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            env.name
        ))
        .await,
        env.count(&format!(
            "SELECT count(*) AS n FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = '{}' AND s.ssl AND a.pid <> pg_backend_pid()",
            env.name
        ))
        .await,
    );
    drained(&mut conn, &env.term_updates, "analytics").await;
    service.stop().await;
    assert!(
        total > 0 && encrypted == total,
        "{encrypted} of {total} connections use TLS"
    );
    env.assert_all_tables(&expected_tables(SMALL_FIXTURE)).await;
}

/// Runs the binary's `sync` with `vars` and returns (exit code, stderr) — within `limit`.
fn run_sync(vars: &[(&str, String)], limit: Duration) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-postgres-sync"));
    cmd.arg("sync")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("HTTP_PORT", "0")
        .env("RUST_LOG", "warn");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("status") {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "still running".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_certificate_that_does_not_verify_stops_the_start_with_exit_2() {
    let pki = Pki::new("pgbad");
    let env = TestEnv::new("tlspgbad").await;
    // The test CA did not sign the server's snakeoil certificate.
    let url = format!(
        "postgres://postgres:s3cretpw@127.0.0.1:5432/{}?sslmode=verify-full&sslrootcert={}",
        env.name,
        path(&pki.ca)
    );
    // With the HTTP endpoints on: they must not keep the failed process alive.
    let (code, stderr) = run_sync(
        &[
            ("DATABASE_URL", url),
            ("REDIS_STREAMS", env.stream.clone()),
            ("HTTP_PORT", free_port().to_string()),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("did not verify"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cretpw"),
        "the password is never printed: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_that_does_not_verify_stops_the_start_with_exit_2() {
    let pki = Pki::new("redisbad");
    let redis_server = TlsRedis::start(&pki).await;
    let env = TestEnv::new("tlsredisbad").await;
    // No REDIS_CA_CERT: the test CA is not among the system's roots.
    let url = format!("rediss://:s3cretpw@127.0.0.1:{}", redis_server.port);
    let (code, stderr) = run_sync(
        &[
            ("DATABASE_URL", env.database_url.clone()),
            ("REDIS_URL", url),
            ("REDIS_STREAMS", env.stream.clone()),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("REDIS_URL") && stderr.contains("did not verify"),
        "{stderr}"
    );
    assert!(
        stderr.contains("REDIS_CA_CERT"),
        "says how to fix it: {stderr}"
    );
    assert!(
        !stderr.contains("s3cretpw"),
        "the password is never printed: {stderr}"
    );
}
