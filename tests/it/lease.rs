//! One writer per consumer group (issue 9): a second process is a hot standby, takes over when
//! the writer dies or loses its database, and a writer that lost the lease commits nothing more.

use std::process::Child;
use std::time::{Duration, Instant};

use redis_postgres_sync::ingest::publish::PublishOptions;
use serde_json::Value;

use crate::support::*;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A `sync` child process with its own HTTP port and consumer name.
fn instance(env: &TestEnv, name: &str, database_url: Option<String>) -> (Child, u16) {
    let port = free_port();
    let mut vars = env.env(2, 30);
    vars.push(("HTTP_PORT", port.to_string()));
    vars.push(("HTTP_BIND", "127.0.0.1".into()));
    vars.push(("CONSUMER_NAME", name.to_owned()));
    vars.push(("LEASE_TTL_MS", "2000".into()));
    if let Some(url) = database_url {
        for (k, v) in vars.iter_mut() {
            if *k == "DATABASE_URL" {
                *v = url.clone();
            }
        }
    }
    (spawn_binary(&vars, "sync"), port)
}

async fn role(port: u16) -> Option<String> {
    let (status, body) = tokio::time::timeout(Duration::from_secs(3), http_get_opt(port, "/ready"))
        .await
        .ok()??;
    let v: Value = serde_json::from_str(&body).ok()?;
    let role = v["role"].as_str()?.to_owned();
    assert_eq!(
        status == 200,
        role == "writer",
        "/ready is 200 exactly for the writer"
    );
    Some(role)
}

async fn http_get_opt(port: u16, path: &str) -> Option<(u16, String)> {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    Some(http_get(port, path).await)
}

async fn wait_role(port: u16, want: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if role(port).await.as_deref() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "port {port} never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_started_together_give_the_tables_of_one() {
    let text = generated_fixture(10_000, 71);
    let env = TestEnv::new("two").await;
    env.publish(
        &fixture_lines(&text),
        &PublishOptions {
            shuffle: true,
            duplicate_share: 0.1,
            seed: 2,
        },
    )
    .await;
    let (a, pa) = instance(&env, "a", None);
    let (b, pb) = instance(&env, "b", None);
    // Exactly one writer; the other reports standby.
    let deadline = Instant::now() + Duration::from_secs(60);
    let roles = loop {
        let roles = (role(pa).await, role(pb).await);
        if matches!(
            (roles.0.as_deref(), roles.1.as_deref()),
            (Some("writer"), Some("standby")) | (Some("standby"), Some("writer"))
        ) {
            break roles;
        }
        assert!(
            Instant::now() < deadline,
            "no writer/standby pair: {roles:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    env.wait_all_drained(Duration::from_secs(180)).await;
    assert_eq!((role(pa).await, role(pb).await), roles, "roles held still");
    let standby_port = if roles.0.as_deref() == Some("standby") {
        pa
    } else {
        pb
    };
    let (status, _) = http_get(standby_port, "/health").await;
    assert_eq!(status, 200, "a standby is healthy");
    stop(a);
    stop(b);
    env.assert_all_tables(&expected_tables(&text)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_writer_is_killed() {
    let text = generated_fixture(25_000, 72);
    let env = TestEnv::new("takeover").await;
    env.publish(
        &fixture_lines(&text),
        &PublishOptions {
            shuffle: true,
            duplicate_share: 0.05,
            seed: 3,
        },
    )
    .await;
    let (mut a, pa) = instance(&env, "a", None);
    wait_role(pa, "writer", Duration::from_secs(60)).await;
    let (b, pb) = instance(&env, "b", None);
    wait_role(pb, "standby", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut redis = env.redis().await;
    let groups: redis::streams::StreamInfoGroupsReply =
        redis::AsyncCommands::xinfo_groups(&mut redis, &env.stream)
            .await
            .expect("groups");
    assert!(groups.groups[0].lag.unwrap_or(0) > 0, "killed mid-run");
    a.kill().expect("SIGKILL");
    let _ = a.wait();
    let takeover = wait_role(pb, "writer", Duration::from_secs(30)).await;
    eprintln!(
        "takeover after SIGKILL of the writer: {} ms (lease TTL 2000 ms)",
        takeover.as_millis()
    );
    env.wait_all_drained(Duration::from_secs(240)).await;
    stop(b);
    env.assert_all_tables(&expected_tables(&text)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cut_from_its_database_is_fenced_after_the_takeover() {
    let text = generated_fixture(20_000, 73);
    let env = TestEnv::new("fenced").await;
    env.publish(
        &fixture_lines(&text),
        &PublishOptions {
            shuffle: true,
            duplicate_share: 0.05,
            seed: 4,
        },
    )
    .await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{}", proxy.port, env.name);
    let (a, pa) = instance(&env, "a", Some(via_proxy));
    wait_role(pa, "writer", Duration::from_secs(60)).await;
    let (b, pb) = instance(&env, "b", None);
    wait_role(pb, "standby", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // Cut the writer's connections (its backends die); the standby takes over once the lease expires.
    proxy.cut();
    let takeover = wait_role(pb, "writer", Duration::from_secs(30)).await;
    eprintln!(
        "takeover after the writer lost its database: {} ms",
        takeover.as_millis()
    );
    let mut conn = env.pg().await;
    let holder = redis_postgres_sync::store::lease::current(&mut conn, &env.group)
        .await
        .expect("lease")
        .expect("row");
    assert_eq!(holder.holder, "b");
    // The old writer gets its database back: its next commit is fenced, and it stands by.
    proxy.restore();
    wait_role(pa, "standby", Duration::from_secs(60)).await;
    env.wait_all_drained(Duration::from_secs(240)).await;
    let after = redis_postgres_sync::store::lease::current(&mut conn, &env.group)
        .await
        .expect("lease")
        .expect("row");
    assert_eq!(
        (after.holder.as_str(), after.token),
        ("b", holder.token),
        "no takeover back: b kept the lease it took"
    );
    stop(a);
    stop(b);
    env.assert_all_tables(&expected_tables(&text)).await;
}

/// A batch commit longer than `LEASE_TTL_MS` does not hand the lease away: the heartbeat it
/// commits is the time of its commit (`clock_timestamp()`, fenced again as its last statement),
/// so a standby whose takeover waited behind it finds a live writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_longer_than_the_lease_ttl_keeps_the_lease() {
    use diesel_async::AsyncConnection;
    use redis_postgres_sync::store::{self, lease};
    let env = TestEnv::new("longcommit").await;
    store::migrate(&env.database_url).await.expect("migrate");
    let ttl = Duration::from_millis(500);
    let mut writer = env.pg().await;
    let held = lease::acquire(&mut writer, "g", "writer", ttl)
        .await
        .expect("acquire")
        .expect("free lease");
    let url = env.database_url.clone();
    let standby = tokio::spawn(async move {
        // Starts looking once the TTL has passed inside the writer's transaction, and waits
        // behind it on the lease row.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let mut conn = diesel_async::AsyncPgConnection::establish(&url)
            .await
            .expect("standby connection");
        let started = Instant::now();
        let got = lease::acquire(&mut conn, "g", "standby", ttl)
            .await
            .expect("acquire");
        (got, started.elapsed())
    });
    writer
        .transaction(async |conn| {
            lease::fence(conn, &held).await?;
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            lease::fence(conn, &held).await
        })
        .await
        .expect("the long batch commits");
    let (got, waited) = standby.await.expect("standby task");
    eprintln!("lease: the standby's look waited {waited:?} behind the commit");
    assert!(got.is_none(), "a live writer kept its lease: {got:?}");
    // And the writer can still commit with its token.
    lease::fence(&mut writer, &held)
        .await
        .expect("still the writer");
}
