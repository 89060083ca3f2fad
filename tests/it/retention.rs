//! Bounded Redis memory (issue 13): entries of TERM_UPDATES_STREAM that every group acknowledged
//! are trimmed; input entries too with INPUT_RETENTION=acked; never an entry some group has not
//! acknowledged or not yet read.

use std::time::Duration;

use redis::AsyncCommands;
use redis_postgres_sync::config::InputRetention;
use redis_postgres_sync::ingest::publish::PublishOptions;
use redis_postgres_sync::metrics::StreamLabels;

use crate::support::*;

/// Publishes the recorded fixture as a live feed: small bursts with pauses, so sync commits many
/// small batches and publishes many term updates.
async fn live_feed(env: &TestEnv) -> usize {
    let lines = fixture_lines(SMALL_FIXTURE);
    let mut sent = 0;
    for chunk in lines.chunks(40) {
        sent += env.publish(chunk, &PublishOptions::default()).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    sent
}

async fn xlen(env: &TestEnv, stream_name: &str) -> usize {
    env.redis().await.xlen(stream_name).await.expect("xlen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_term_updates_are_trimmed_and_input_is_kept_by_default() {
    let env = TestEnv::new("retainkeep").await;
    let service = InProcess::start(env.settings(2, 50));
    let sent = live_feed(&env).await;
    env.wait_all_drained(Duration::from_secs(60)).await;
    // Counted by the analytics consumer (its own stats in an in-process service).
    let trimmed = service
        .analytics
        .health
        .metrics
        .stream_trimmed_entries
        .get_or_create(&StreamLabels {
            stream: env.term_updates.clone(),
        })
        .get();
    service.stop().await;
    let left = xlen(&env, &env.term_updates).await;
    eprintln!("retention: {trimmed} term updates trimmed, {left} left");
    assert!(
        left <= 1,
        "term_updates holds {left} entries once analytics caught up"
    );
    assert!(trimmed > 0);
    assert_eq!(xlen(&env, &env.stream).await, sent, "INPUT_RETENTION=keep");
    env.assert_all_tables(&expected_tables(SMALL_FIXTURE)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_input_retention_acked_the_input_is_trimmed_too() {
    let env = TestEnv::new("retainacked").await;
    let mut settings = env.settings(2, 50);
    settings.input_retention = InputRetention::Acked;
    let service = InProcess::start(settings);
    live_feed(&env).await;
    env.wait_all_drained(Duration::from_secs(60)).await;
    // The trim follows the last acknowledgement.
    let mut left = xlen(&env, &env.stream).await;
    for _ in 0..50 {
        if left <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = xlen(&env, &env.stream).await;
    }
    service.stop().await;
    assert!(
        left <= 1,
        "the input stream holds {left} entries once drained"
    );
    env.assert_all_tables(&expected_tables(SMALL_FIXTURE)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_never_reads_keeps_every_entry() {
    let env = TestEnv::new("retainother").await;
    let mut redis = env.redis().await;
    let () = redis
        .xgroup_create_mkstream(&env.stream, "archiver", "0")
        .await
        .expect("second group");
    let mut settings = env.settings(2, 50);
    settings.input_retention = InputRetention::Acked;
    let service = InProcess::start(settings);
    let sent = live_feed(&env).await;
    env.wait_all_drained(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    service.stop().await;
    assert_eq!(
        xlen(&env, &env.stream).await,
        sent,
        "the archiver group read nothing yet"
    );
}
