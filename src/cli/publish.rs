//! `publish`: pushes a JSON-lines fixture into a Redis stream (field `payload`), optionally
//! shuffled and with some entries published twice.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use redis_postgres_sync::ingest::publish::{publish, PublishOptions};
use redis_postgres_sync::ingest::stream;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The JSON-lines fixture (one rindexer envelope per line), e.g. from `fixture`.
    pub file: PathBuf,
    /// Target stream.
    #[arg(long, env = "REDIS_STREAM", default_value = redis_postgres_sync::config::DEFAULT_INPUT_STREAM)]
    pub stream: String,
    /// Redis server URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = redis_postgres_sync::config::DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    pub redis_url: String,
    /// PEM file of an extra root certificate for a `rediss://` REDIS_URL.
    #[arg(long, env = "REDIS_CA_CERT")]
    pub redis_ca_cert: Option<std::path::PathBuf>,
    /// Publish the entries in a random (seeded) order.
    #[arg(long)]
    pub shuffle: bool,
    /// Share of entries (0.0 to 1.0) published a second time.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub duplicate_share: f64,
    /// Seed of the shuffle and of the duplicate choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a number from 0.0 to 1.0, got {s:?}")),
    }
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let opts = PublishOptions {
        shuffle: args.shuffle,
        duplicate_share: args.duplicate_share,
        seed: args.seed,
    };
    let mut conn = stream::connect(&args.redis_url, args.redis_ca_cert.as_deref()).await?;
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} entries {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let total = publish(&mut conn, &args.stream, &lines, &opts, |n| {
        bar.set_length(n.max(lines.len()) as u64);
        bar.set_position(n as u64);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "published {total} entries ({} lines) to stream {}",
        lines.len(),
        args.stream
    );
    Ok(())
}
