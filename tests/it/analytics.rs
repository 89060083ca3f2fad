//! End-to-end tests of the analytics consumer: once the input and `term_updates` are drained, the
//! four triple-level tables equal the pure fold row by row, whatever the delivery history and
//! even when the consumer is killed mid-run.

use std::time::Duration;

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
        analytics.batches.load(std::sync::atomic::Ordering::Relaxed) > 1,
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
