//! End-to-end tests of `sync` against real Postgres and Redis: the stored base tables must equal
//! the pure fold of the same events, whatever the delivery order, duplication, crash history or
//! number of workers.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use redis_postgres_sync::ingest::publish::PublishOptions;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_fixture_gives_the_fold_row_by_row() {
    let env = TestEnv::new("e2e").await;
    let lines = fixture_lines(SMALL_FIXTURE);
    env.publish(&lines, &PublishOptions::default()).await;
    let sync = InProcess::start(env.settings(4, 100));
    env.wait_all_drained(Duration::from_secs(120)).await;
    let stats = sync.stats.clone();
    let analysed = sync.analytics.health.metrics.analytics_entries.get();
    sync.stop().await;
    let events = events_of(SMALL_FIXTURE);
    env.assert_base_tables(&expected_tables(SMALL_FIXTURE))
        .await;
    let logged = env
        .count(
            "SELECT (SELECT count(*) FROM atom_created_events) + (SELECT count(*) FROM triple_created_events) + \
             (SELECT count(*) FROM deposited_events) + (SELECT count(*) FROM redeemed_events) + \
             (SELECT count(*) FROM share_price_changed_events) + (SELECT count(*) FROM generic_events) AS n",
        )
        .await;
    assert_eq!(
        logged as usize,
        events.len(),
        "every event once in the event log"
    );
    assert_eq!(stats.health.metrics.events_new() as usize, events.len());
    assert_eq!(
        env.count("SELECT count(*) AS n FROM term_update_outbox")
            .await,
        0,
        "outbox drained"
    );
    // term_updates is trimmed once acknowledged: count what analytics consumed.
    assert!(analysed > 0, "changed terms were published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_and_duplicated_delivery_gives_the_same_tables() {
    let env = TestEnv::new("shuffle").await;
    let lines = fixture_lines(SMALL_FIXTURE);
    let published = env
        .publish(
            &lines,
            &PublishOptions {
                shuffle: true,
                duplicate_share: 0.3,
                seed: 11,
            },
        )
        .await;
    assert!(published > lines.len() + lines.len() / 5);
    let sync = InProcess::start(env.settings(2, 50));
    env.wait_drained(Duration::from_secs(120)).await;
    let stats = sync.stats.clone();
    sync.stop().await;
    env.assert_base_tables(&expected_tables(SMALL_FIXTURE))
        .await;
    assert!(
        stats.health.metrics.events_duplicate.get() > 0,
        "duplicates were seen and ignored"
    );
    assert_eq!(stats.health.metrics.events_conflicting.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republished_stream_and_restart_change_nothing() {
    let env = TestEnv::new("republish").await;
    let lines = fixture_lines(SMALL_FIXTURE);
    env.publish(&lines, &PublishOptions::default()).await;
    let sync = InProcess::start(env.settings(3, 200));
    env.wait_drained(Duration::from_secs(120)).await;
    sync.stop().await;
    // A second run (state rebuilt from Postgres) sees the whole stream again.
    env.publish(
        &lines,
        &PublishOptions {
            shuffle: true,
            duplicate_share: 0.0,
            seed: 5,
        },
    )
    .await;
    let sync = InProcess::start(env.settings(1, 200));
    env.wait_drained(Duration::from_secs(120)).await;
    let stats = sync.stats.clone();
    sync.stop().await;
    assert_eq!(
        stats.health.metrics.events_new(),
        0,
        "nothing new the second time"
    );
    env.assert_base_tables(&expected_tables(SMALL_FIXTURE))
        .await;
}

/// A database upgraded from a version before `event_transactions`: its events have no keys there
/// until the first writer adds them, and a redelivery of every event must still change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_before_event_transactions_stay_duplicates_after_the_upgrade() {
    use diesel_async::RunQueryDsl;
    let env = TestEnv::new("keys_upgrade").await;
    let lines = fixture_lines(SMALL_FIXTURE);
    env.publish(&lines, &PublishOptions::default()).await;
    let sync = InProcess::start(env.settings(2, 200));
    env.wait_drained(Duration::from_secs(120)).await;
    sync.stop().await;
    // As the migration leaves a database written by an older version.
    let mut conn = env.pg().await;
    for sql in [
        "DELETE FROM event_transactions",
        "INSERT INTO event_transactions_backfill (pending) VALUES (true) ON CONFLICT DO NOTHING",
    ] {
        diesel::sql_query(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    env.publish(
        &lines,
        &PublishOptions {
            shuffle: true,
            duplicate_share: 0.0,
            seed: 9,
        },
    )
    .await;
    let sync = InProcess::start(env.settings(2, 200));
    env.wait_drained(Duration::from_secs(120)).await;
    let stats = sync.stats.clone();
    sync.stop().await;
    assert_eq!(
        stats.health.metrics.events_new(),
        0,
        "nothing new the second time"
    );
    assert_eq!(
        env.count("SELECT count(*) AS n FROM dead_letters").await,
        0,
        "no redelivery refused"
    );
    assert_eq!(
        env.count("SELECT count(*) AS n FROM event_transactions_backfill")
            .await,
        0,
        "the keys were added once"
    );
    env.assert_base_tables(&expected_tables(SMALL_FIXTURE))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_worker_counts_give_identical_tables() {
    let text = generated_fixture(6_000, 21);
    let expected = expected_tables(&text);
    let lines = fixture_lines(&text);
    for workers in [1, 4] {
        let env = TestEnv::new(&format!("workers{workers}")).await;
        env.publish(
            &lines,
            &PublishOptions {
                shuffle: true,
                duplicate_share: 0.1,
                seed: 3,
            },
        )
        .await;
        let sync = InProcess::start(env.settings(workers, 150));
        env.wait_drained(Duration::from_secs(120)).await;
        sync.stop().await;
        env.assert_base_tables(&expected).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_three_times_mid_run_loses_and_doubles_nothing() {
    let text = generated_fixture(25_000, 33);
    let expected = expected_tables(&text);
    let env = TestEnv::new("crash").await;
    let lines = fixture_lines(&text);
    env.publish(
        &lines,
        &PublishOptions {
            shuffle: true,
            duplicate_share: 0.05,
            seed: 8,
        },
    )
    .await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(77);
    // Small batches so each run commits some batches and is killed in the middle of others.
    let run_env = env.env(2, 25);
    let mut kills = 0;
    for _ in 0..3 {
        let mut child = spawn_binary(&run_env, "sync");
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_500..3_500))).await;
        if child.try_wait().expect("child status").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        let _ = child.wait();
    }
    assert_eq!(kills, 3, "the service was still running at each kill");
    let before = env
        .count("SELECT count(*) AS n FROM deposited_events")
        .await;
    assert!(before > 0, "some batches committed before the kills");
    let mut child = spawn_binary(&run_env, "sync");
    env.wait_drained(Duration::from_secs(240)).await;
    // SIGTERM: graceful stop.
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "graceful stop exits 0, got {status}");
    env.assert_base_tables(&expected).await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM term_update_outbox")
            .await,
        0
    );
}

/// The events stored in the event tables.
const STORED_EVENTS: &str = "SELECT (SELECT count(*) FROM atom_created_events)
    + (SELECT count(*) FROM triple_created_events) + (SELECT count(*) FROM deposited_events)
    + (SELECT count(*) FROM redeemed_events) + (SELECT count(*) FROM share_price_changed_events)
    + (SELECT count(*) FROM generic_events) AS n";

/// A migrated database of its own and the writer lease of group `g` on it.
async fn leased_env(label: &str) -> (TestEnv, redis_postgres_sync::store::lease::Lease) {
    use redis_postgres_sync::store::{self, lease};
    let env = TestEnv::new(label).await;
    store::migrate(&env.database_url).await.expect("migrate");
    let mut conn = env.pg().await;
    let held = lease::acquire(&mut conn, "g", "writer", Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("free lease");
    (env, held)
}

/// `store::commit_after` of `write` on a connection of its own, on a task: 60 s per half.
fn spawn_commit_after(
    env: &TestEnv,
    lease: &redis_postgres_sync::store::lease::Lease,
    write: redis_postgres_sync::store::BatchWrite,
    predecessor: impl std::future::Future<Output = bool> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<redis_postgres_sync::store::Committed>> {
    let (url, lease) = (env.database_url.clone(), lease.clone());
    tokio::spawn(async move {
        let mut conn =
            <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url)
                .await
                .expect("connect");
        redis_postgres_sync::store::commit_after(
            &mut conn,
            "g",
            &write,
            &lease,
            predecessor,
            Duration::from_secs(60),
        )
        .await
    })
}

/// Batch commits overlap (issue 14): a batch begun while the one before it commits
/// (`store::commit_after`) writes its event-log rows at once but commits only after its
/// predecessor has, and leaves no trace when the predecessor fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapped_batch_commits_only_after_the_batch_before_it() {
    use redis_postgres_sync::store::{self, event_rows::event_rows, BatchWrite};
    use redis_postgres_sync::store::{PredecessorFailed, StreamProgress};
    let (env, held) = leased_env("overlap").await;
    let mut conn = env.pg().await;
    let events = events_of(&generated_fixture(60, 11));
    let (first, second) = events.split_at(30);
    let batch = |events: &[redis_postgres_sync::domain::Event], entry: &str| BatchWrite {
        rows: event_rows(events),
        progress: vec![StreamProgress {
            stream: "s".into(),
            last_entry_id: entry.into(),
            entries: 1,
        }],
        ..BatchWrite::default()
    };
    const PROGRESS: &str = "SELECT count(*) AS n FROM sync_progress WHERE last_entry_id = ";

    // The predecessor has not committed yet: nothing of this batch is visible.
    let (open, gate) = tokio::sync::oneshot::channel::<bool>();
    let task = spawn_commit_after(&env, &held, batch(first, "1-0"), async {
        gate.await.unwrap_or(false)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !task.is_finished(),
        "a batch commits only after its predecessor"
    );
    assert_eq!(
        env.count(STORED_EVENTS).await,
        0,
        "its event-log rows are not visible yet"
    );
    assert_eq!(env.count(&format!("{PROGRESS}'1-0'")).await, 0);
    open.send(true).expect("the batch waits");
    task.await
        .expect("task")
        .expect("commits once its predecessor has");
    assert_eq!(env.count(STORED_EVENTS).await, first.len() as i64);
    assert_eq!(env.count(&format!("{PROGRESS}'1-0'")).await, 1);

    // A predecessor that failed: the batch rolls back whole.
    let second_batch = batch(second, "2-0");
    let failed = store::commit_after(
        &mut conn,
        "g",
        &second_batch,
        &held,
        async { false },
        Duration::from_secs(30),
    )
    .await
    .expect_err("a batch whose predecessor failed does not commit");
    assert!(failed.is::<PredecessorFailed>(), "{failed:#}");
    assert_eq!(
        env.count(STORED_EVENTS).await,
        first.len() as i64,
        "nothing of it stays"
    );
    assert_eq!(env.count(&format!("{PROGRESS}'2-0'")).await, 0);
    // And the connection is usable again: the same batch commits once its predecessor has.
    store::commit_after(
        &mut conn,
        "g",
        &second_batch,
        &held,
        async { true },
        Duration::from_secs(30),
    )
    .await
    .expect("commits");
    assert_eq!(env.count(STORED_EVENTS).await, events.len() as i64);
}

/// The deadlock an overlapped batch must not make: consecutive batches share transactions, so a
/// batch whose predecessor holds the uncommitted `event_transactions` key of one of its
/// transactions writes its first half without waiting on it (that key comes after the gate),
/// then commits once the predecessor has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapped_batch_does_not_wait_on_the_keys_its_predecessor_holds() {
    use diesel_async::SimpleAsyncConnection;
    use redis_postgres_sync::store::tables::events::hash_prefix;
    use redis_postgres_sync::store::{event_rows::event_rows, BatchWrite};
    let (env, held) = leased_env("overlapkeys").await;
    let events = events_of(&generated_fixture(20, 12));
    // The predecessor: a transaction holding the key of every transaction of the batch.
    let mut predecessor = env.pg().await;
    let keys: Vec<String> = events
        .iter()
        .map(|e| hash_prefix(&e.meta.transaction_hash).to_string())
        .collect();
    predecessor
        .batch_execute(&format!(
            "BEGIN; INSERT INTO event_transactions (hash_prefix) SELECT unnest('{{{}}}'::int8[]) ON CONFLICT DO NOTHING",
            keys.join(",")
        ))
        .await
        .expect("the predecessor's keys");
    let (reached_tx, reached) = tokio::sync::oneshot::channel::<()>();
    let (open, gate) = tokio::sync::oneshot::channel::<bool>();
    let write = BatchWrite {
        rows: event_rows(&events),
        ..BatchWrite::default()
    };
    let task = spawn_commit_after(&env, &held, write, async move {
        let _ = reached_tx.send(());
        gate.await.unwrap_or(false)
    });
    tokio::time::timeout(Duration::from_secs(20), reached)
        .await
        .expect("the event-table rows are written while the predecessor holds its keys")
        .expect("reached");
    // The predecessor commits; the gate opens; the batch commits after it.
    predecessor.batch_execute("COMMIT").await.expect("commit");
    open.send(true).expect("the batch waits");
    task.await.expect("task").expect("commits");
    assert_eq!(env.count(STORED_EVENTS).await, events.len() as i64);
}

/// An overlapped batch blocked on the server ends within its timeouts: the ROLLBACK after a
/// timed-out half queues behind the blocked statement, so the whole transaction is bounded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapped_batch_blocked_on_the_server_times_out() {
    use diesel_async::SimpleAsyncConnection;
    use redis_postgres_sync::store::{self, event_rows::event_rows, BatchWrite};
    let (env, held) = leased_env("overlapblocked").await;
    let events = events_of(&generated_fixture(20, 13));
    // Another session holds every event table: the batch's first statement blocks.
    let mut other = env.pg().await;
    other
        .batch_execute("BEGIN; LOCK TABLE atom_created_events, triple_created_events, deposited_events, redeemed_events, share_price_changed_events, generic_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let write = BatchWrite {
        rows: event_rows(&events),
        ..BatchWrite::default()
    };
    let mut conn = env.pg().await;
    let commit = store::commit_after(
        &mut conn,
        "g",
        &write,
        &held,
        async { true },
        Duration::from_millis(200),
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), commit).await;
    let failed = ended.expect("the commit ends although the server still blocks it");
    let e = failed.expect_err("a blocked batch does not commit");
    assert!(format!("{e:#}").contains("PROCESSING_TIMEOUT_MS"), "{e:#}");
    drop(conn);
    other.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(env.count(STORED_EVENTS).await, 0);
}
