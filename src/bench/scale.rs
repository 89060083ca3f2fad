//! `bench --mode scale` (issue 14): sync a history into a fresh database, stop, start again on
//! it (restart → ready), then a reorg of the newest blocks (notice → ready again; 16 blocks
//! unless `--reorg-depth` says otherwise), with each phase's peak RSS.

use super::*;

/// The depth of the reorg `scale` mode applies at the head of the history unless told otherwise
/// (the acceptance figure of issue 14; its goal holds for reorgs of up to 64 blocks).
pub const DEFAULT_SCALE_REORG_DEPTH: i64 = 16;

/// What `bench --mode scale` measures on one history: sync, restart, and a reorg at the head.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub database: String,
    pub stream: String,
    pub entries: usize,
    /// Events in the history (new events committed by the first run).
    pub events: u64,
    pub highest_block: i64,
    /// Blocks the reorg orphaned: `fork_block..=highest_block`.
    pub reorg_depth: i64,
    /// `highest_block - (reorg_depth - 1)`: the first orphaned block.
    pub fork_block: i64,
    /// First read → last commit of the first run, and its events per second.
    pub sync_seconds: f64,
    pub events_per_second: f64,
    /// Peak RSS of the first run (from the service's start until input and analytics drained).
    pub sync_peak_memory_bytes: u64,
    /// RSS of the process when the second start began (the peak count is reset to it).
    pub restart_base_memory_bytes: u64,
    /// Second start on the same database and streams: spawn → `Role::Writer` (what `/ready`
    /// answers 200 for), and the peak RSS meanwhile.
    pub restart_ready_seconds: f64,
    pub restart_peak_memory_bytes: u64,
    /// XADD of the reorg notice → the writer had applied it (`SyncStats::reorgs` incremented;
    /// polled every 2 ms).
    pub reorg_applied_seconds: f64,
    /// XADD of the reorg notice → `Role::Writer` again (the state rebuilt, consuming).
    pub reorg_ready_seconds: f64,
    /// Peak RSS from the XADD until writer again (the count reset just before the XADD).
    pub reorg_peak_memory_bytes: u64,
    /// Events the reorg moved out of the event log.
    pub events_reorged: u64,
    /// Pipeline restarts after failures during the run (0 in a clean measurement).
    pub failure_restarts: u64,
    /// The server's buffer cache and WAL settings, and the event log's index size after the run.
    pub postgres: store::measure::BufferCache,
}

/// The highest block number of a fixture's lines (the envelope's `block_number`, or else its
/// events'); `None` when no line carries one.
pub fn highest_block<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Head {
        block_number: Option<serde_json::Value>,
    }
    lines
        .into_iter()
        .filter_map(|line| {
            let top = serde_json::from_str::<Head>(line)
                .ok()
                .and_then(|h| h.block_number)
                .and_then(|b| b.as_i64());
            top.or_else(|| match decode_envelope(line.as_bytes()) {
                Ok(Envelope::Events { items, .. }) => items
                    .iter()
                    .filter_map(|i| i.as_ref().ok())
                    .map(|e| e.meta.block_number)
                    .max(),
                _ => None,
            })
        })
        .max()
}

/// The `fork_block` of a reorg of the newest `depth` blocks up to `highest` (SPEC §5: events at
/// or after `fork_block` are orphaned).
pub fn fork_block_at_head(highest: i64, depth: i64) -> i64 {
    highest - (depth.max(1) - 1)
}

/// The reorg notice of `fork_block` on rindexer's network (SPEC §5).
pub fn reorg_notice(fork_block: i64, depth: i64) -> String {
    serde_json::json!({
        "event_name": crate::ingest::decode::REORG_EVENT,
        "network": "intuition",
        "event_data": [{"type": "reorg", "network": "intuition", "fork_block": fork_block, "depth": depth}],
    })
    .to_string()
}

/// `bench --mode scale` on one history: sync it into a fresh database (events/s, peak RSS),
/// stop, start again on the same database and streams (start → ready, peak RSS), then publish a
/// reorg of the newest `reorg_depth` blocks and time it until applied and until ready again.
pub async fn scale(
    fixture: &std::path::Path,
    opts: &SyncBenchOptions,
    reorg_depth: i64,
    mut progress: impl FnMut(&str, u64, u64),
) -> anyhow::Result<ScaleReport> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("rps_bench_{}", &id[..12]);
    let database_url = format!("{}/{name}", opts.postgres_server.trim_end_matches('/'));
    let input = format!("{name}:in");
    let term_updates = format!("{name}:term_updates");
    let mut redis = stream::connect(&opts.redis_url, opts.redis_ca_cert.as_deref()).await?;
    let (total, highest) =
        publish_fixture(&mut redis, &input, fixture, &opts.publish, &mut progress).await?;
    let highest = highest.with_context(|| format!("no block number in {}", fixture.display()))?;
    let reorg_depth = reorg_depth.max(1);
    let fork_block = fork_block_at_head(highest, reorg_depth);
    let settings = bench_settings(opts, &database_url, &input, &term_updates);
    let outcome = async {
        // 1. Sync the history.
        reset_peak_memory();
        let first = Running::start(settings.clone());
        let drained = drained(
            &mut redis,
            &first.stats,
            &first.analytics,
            &first.task,
            total as u64,
            &database_url,
            &term_updates,
            &mut progress,
        )
        .await;
        let sync_peak = memory().0;
        let stats = first.stats.clone();
        first.stop().await?;
        drained?;
        let read = stats.first_read.lock().ok().and_then(|t| *t);
        let committed = stats.last_commit.lock().ok().and_then(|t| *t);
        let (read, committed) = read.zip(committed).context("nothing was committed")?;
        let sync_seconds = committed.duration_since(read).as_secs_f64();
        let events = stats.health.metrics.events_new();
        let mut failures = stats.health.metrics.restarts("sync");

        // 2. Start again on the same database and streams.
        progress("restart", 0, 1);
        let base = reset_peak_memory();
        let started = Instant::now();
        let second = Running::start(settings.clone());
        second
            .until("it was ready", |s| s.health.writer_since().is_some())
            .await?;
        let ready = second
            .stats
            .health
            .writer_since()
            .unwrap_or_else(Instant::now);
        let restart_peak = memory().0;

        // 3. A reorg of the newest `reorg_depth` blocks.
        progress("reorg", 0, 1);
        reset_peak_memory();
        let notice = reorg_notice(fork_block, reorg_depth);
        let published = Instant::now();
        publish(
            &mut redis,
            &input,
            &[notice.as_str()],
            &PublishOptions::default(),
            |_| {},
        )
        .await?;
        second
            .until("the reorg was applied", |s| {
                s.health.metrics.reorgs.get() >= 1
            })
            .await?;
        let applied = Instant::now();
        // The pipeline that applied the notice became writer before the XADD; the next one after.
        second
            .until("it was ready after the reorg", |s| {
                s.health.writer_since().is_some_and(|t| t > published)
            })
            .await?;
        let ready_again = second
            .stats
            .health
            .writer_since()
            .unwrap_or_else(Instant::now);
        let reorg_peak = memory().0;
        let events_reorged = second.stats.health.metrics.reorg_events_moved.get();
        failures += second.stats.health.metrics.restarts("sync");
        second.stop().await?;
        let postgres = store::measure::read_buffer_cache(&database_url).await?;
        Ok::<_, anyhow::Error>(ScaleReport {
            database: name.clone(),
            stream: input.clone(),
            entries: total,
            events,
            highest_block: highest,
            reorg_depth,
            fork_block,
            sync_seconds,
            events_per_second: events as f64 / sync_seconds,
            sync_peak_memory_bytes: sync_peak,
            restart_base_memory_bytes: base,
            restart_ready_seconds: ready.duration_since(started).as_secs_f64(),
            restart_peak_memory_bytes: restart_peak,
            reorg_applied_seconds: applied.duration_since(published).as_secs_f64(),
            reorg_ready_seconds: ready_again.duration_since(published).as_secs_f64(),
            reorg_peak_memory_bytes: reorg_peak,
            events_reorged,
            failure_restarts: failures,
            postgres,
        })
    }
    .await;
    if !opts.keep {
        drop_everything(
            &opts.postgres_server,
            &name,
            &mut redis,
            &[&input, &term_updates, &stream::dlq_stream(&input)],
        )
        .await?;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_16_block_reorg_at_the_head_forks_15_blocks_below_the_highest() {
        let lines = [
            r#"{"block_number":1311,"event_name":"Deposited","event_data":[]}"#,
            r#"{"block_number":17928,"event_name":"AtomCreated","event_data":[]}"#,
            "",
            r#"{"block_number":9000,"event_name":"Redeemed","event_data":[]}"#,
        ];
        let highest = highest_block(lines).expect("a block");
        assert_eq!(highest, 17928);
        let fork = fork_block_at_head(highest, DEFAULT_SCALE_REORG_DEPTH);
        assert_eq!(fork, 17913);
        assert_eq!((fork..=highest).count(), 16);
        let fork = fork_block_at_head(highest, 64);
        assert_eq!((fork..=highest).count(), 64);
        assert_eq!(
            fork_block_at_head(highest, 0),
            highest,
            "one block at least"
        );
        assert_eq!(highest_block(["not json", "{}"]), None);
    }

    #[test]
    fn the_highest_block_of_the_recorded_fixture_and_its_notice_decode() {
        let text = include_str!("../../tests/fixtures/small.jsonl");
        let highest = highest_block(text.lines()).expect("a block");
        let mut max = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Ok(Envelope::Events { items, .. }) = decode_envelope(line.as_bytes()) {
                for e in items.into_iter().flatten() {
                    max = max.max(e.meta.block_number);
                }
            }
        }
        assert_eq!(
            highest, max,
            "the envelopes' block numbers are their events'"
        );
        let notice = reorg_notice(fork_block_at_head(highest, 16), 16);
        match decode_envelope(notice.as_bytes()).expect("a valid notice") {
            Envelope::Reorg(n) => {
                assert_eq!(n.fork_block, highest - 15);
                assert_eq!(n.network.as_deref(), Some("intuition"));
                assert_eq!(n.depth, Some(16));
            }
            Envelope::Events { .. } => panic!("decoded as events"),
        }
    }
}
