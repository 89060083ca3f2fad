//! `status`: one screen for the on-call engineer — input lag and pending per stream, dead
//! letters, analytics lag, unpublished term updates and the last committed progress.

use clap::Args;
use redis::AsyncCommands;
use serde_json::json;

use redis_postgres_sync::analytics;
use redis_postgres_sync::config::Connections;
use redis_postgres_sync::ingest::stream::{self, dlq_stream};
use redis_postgres_sync::store;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connections: Connections,
    /// Input streams, comma-separated.
    #[arg(
        long,
        env = "REDIS_STREAMS",
        default_value = redis_postgres_sync::config::DEFAULT_INPUT_STREAM,
        value_delimiter = ','
    )]
    pub redis_streams: Vec<String>,
    /// Consumer group on the input streams.
    #[arg(long, env = "CONSUMER_GROUP", default_value = redis_postgres_sync::config::DEFAULT_CONSUMER_GROUP)]
    pub consumer_group: String,
    /// Stream of changed term ids.
    #[arg(long, env = "TERM_UPDATES_STREAM", default_value = redis_postgres_sync::config::DEFAULT_TERM_UPDATES_STREAM)]
    pub term_updates_stream: String,
    /// Suffix of the analytics consumer group.
    #[arg(long, env = "CONSUMER_GROUP_SUFFIX", default_value = "")]
    pub consumer_group_suffix: String,
    /// Print JSON instead of a table.
    /// Input retention of the running sync (shown, not applied).
    #[arg(long, env = "INPUT_RETENTION", value_enum, default_value = "keep")]
    pub input_retention: redis_postgres_sync::config::InputRetention,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let mut redis = stream::connect(
        &args.connections.redis_url,
        args.connections.redis_ca_cert(),
    )
    .await?;
    let mut streams = Vec::new();
    for s in &args.redis_streams {
        let lag = analytics::lag(&mut redis, s, &args.consumer_group).await?;
        let dead: usize = redis.xlen(dlq_stream(s)).await.unwrap_or(0);
        let length: usize = redis.xlen(s).await.unwrap_or(0);
        streams.push(json!({"stream": s, "length": length, "undelivered": lag.undelivered, "pending": lag.pending, "oldest_unacked_seconds": lag.seconds, "dead_letters": dead}));
    }
    let analytics_group = format!("analytics{}", args.consumer_group_suffix);
    let a = analytics::lag(&mut redis, &args.term_updates_stream, &analytics_group).await?;
    let term_updates_length: usize = redis.xlen(&args.term_updates_stream).await.unwrap_or(0);
    let input_retention = match args.input_retention {
        redis_postgres_sync::config::InputRetention::Keep => "keep",
        redis_postgres_sync::config::InputRetention::Acked => "acked",
    };
    let mut conn = store::connect::connect(&args.connections.database_url).await?;
    let progress = store::measure::progress(&mut conn, &args.consumer_group).await?;
    let outbox = store::measure::unpublished_batches(&mut conn).await?;
    let report = json!({
        "streams": streams,
        "retention": {"input": input_retention, "term_updates": "acked", "dead_letters": "keep"},
        "analytics": {"stream": args.term_updates_stream, "group": analytics_group, "length": term_updates_length, "undelivered": a.undelivered, "pending": a.pending, "oldest_unacked_seconds": a.seconds},
        "unpublished_term_update_batches": outbox,
        "progress": progress.iter().map(|p| json!({"stream": p.stream, "last_entry_id": p.last_entry_id, "entries_total": p.entries_total, "updated_at": p.updated_at})).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "input (group {}, retention {input_retention})",
        args.consumer_group
    );
    println!(
        "  {:<32} {:>10} {:>12} {:>10} {:>14} {:>12}",
        "stream", "length", "undelivered", "pending", "oldest unacked", "dead letters"
    );
    for s in &streams {
        println!(
            "  {:<32} {:>10} {:>12} {:>10} {:>13.1}s {:>12}",
            s["stream"].as_str().unwrap_or(""),
            s["length"].as_u64().unwrap_or(0),
            s["undelivered"].as_u64().unwrap_or(0),
            s["pending"].as_u64().unwrap_or(0),
            s["oldest_unacked_seconds"].as_f64().unwrap_or(0.0),
            s["dead_letters"].as_u64().unwrap_or(0)
        );
    }
    println!(
        "analytics (stream {}, group {analytics_group}, acknowledged entries trimmed)",
        args.term_updates_stream
    );
    println!(
        "  length {term_updates_length}  undelivered {}  pending {}  oldest unacked {:.1}s  unpublished batches {}",
        a.undelivered, a.pending, a.seconds, outbox
    );
    println!("last committed progress");
    if progress.is_empty() {
        println!("  (nothing committed yet)");
    }
    for p in &progress {
        println!(
            "  {:<32} last entry {:<22} entries {:>10}  at {}",
            p.stream, p.last_entry_id, p.entries_total, p.updated_at
        );
    }
    Ok(())
}
