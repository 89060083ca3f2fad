//! `fixture`: writes a generated event history to a file or stdout.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use redis_postgres_sync::fixture::{generate_with_progress, FixtureConfig};

#[derive(Debug, Args)]
pub struct FixtureArgs {
    /// Number of events to generate (at least; the last block is completed).
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Number of distinct accounts that deposit and redeem.
    #[arg(long, default_value_t = 1_000)]
    pub accounts: usize,
    /// Maximum number of terms (atoms and triples) created.
    #[arg(long, default_value_t = 2_000)]
    pub terms: usize,
    /// Bonding curves in use: 1 (linear) or 2 (linear and offset-progressive).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub curves: u8,
    /// Random seed; the same seed and knobs give the same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output file; `-` for stdout.
    #[arg(long, short, default_value = "-")]
    pub output: PathBuf,
}

pub fn run(args: FixtureArgs) -> anyhow::Result<()> {
    let cfg = FixtureConfig {
        events: args.events,
        accounts: args.accounts,
        terms: args.terms,
        curves: args.curves,
        seed: args.seed,
        ..FixtureConfig::default()
    };
    let to_stdout = args.output.as_os_str() == "-";
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(BufWriter::new(io::stdout().lock()))
    } else {
        let file = File::create(&args.output)
            .with_context(|| format!("cannot create output file {}", args.output.display()))?;
        Box::new(BufWriter::new(file))
    };
    let bar = if to_stdout {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.events as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let written = generate_with_progress(&cfg, &mut out, |n| bar.set_position(n as u64))
        .context("writing the fixture")?;
    out.flush().context("writing the fixture")?;
    bar.finish_and_clear();
    if !to_stdout {
        eprintln!("wrote {written} events to {}", args.output.display());
    }
    Ok(())
}
