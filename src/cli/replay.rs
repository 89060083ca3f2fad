//! `replay`: rebuilds every derived table from the event log already in Postgres, key range by
//! key range, with a progress bar (ranges folded and written, then the pair tables). Also home
//! of that progress bar and of the `--ranges` option, which `verify` shares.

use anyhow::Context;
use clap::Args;

use indicatif::{ProgressBar, ProgressStyle};

use redis_postgres_sync::config::DatabaseArgs;
use redis_postgres_sync::store::{self, partition::Ranges, rebuild::Step};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub ranges: RangesArg,
}

/// How many key ranges of term ids the event log is folded in.
#[derive(Debug, Args)]
pub struct RangesArg {
    /// Key ranges of term ids to fold the event log in, one at a time (1 to 65536) [default: one
    /// per 200,000 events of the derived tables' types]. More ranges: less memory, more queries.
    #[arg(long = "ranges", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub count: Option<u32>,
}

impl RangesArg {
    pub fn ranges(&self) -> anyhow::Result<Option<Ranges>> {
        self.count.map(Ranges::new).transpose()
    }
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let url = &args.database.database_url;
    let applied = store::migrate(url).await?;
    if !applied.is_empty() {
        eprintln!("applied migration(s) {}", applied.join(", "));
    }
    let mut conn = store::connect::connect(url).await?;
    let started = std::time::Instant::now();
    let mut bar = StepBar::new();
    let rebuilt = store::rebuild::replay_in(&mut conn, args.ranges.ranges()?, &mut |step| {
        bar.update(step)
    })
    .await;
    bar.finish();
    let rebuilt = rebuilt.context("replaying the event log")?;
    let rows: Vec<String> = rebuilt
        .rows
        .iter()
        .map(|(table, n)| format!("{table} {n}"))
        .collect();
    println!(
        "replayed {} events into the derived tables of {} in {:.1} s ({} key ranges)\nrows: {}",
        rebuilt.events,
        store::redact(url),
        started.elapsed().as_secs_f64(),
        rebuilt.ranges,
        rows.join(", ")
    );
    Ok(())
}

/// One progress bar on stderr through the phases of a fold of the event log by key range (and
/// of a rebuild); drawn only when stderr is a terminal.
#[derive(Debug)]
pub struct StepBar {
    bar: ProgressBar,
    phase: &'static str,
}

impl StepBar {
    pub fn new() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            phase: "",
        }
    }

    fn enter(&mut self, phase: &'static str, len: u64) {
        if self.phase == phase {
            return;
        }
        self.bar.finish_and_clear();
        self.bar = ProgressBar::new(len);
        self.bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        self.bar.set_prefix(phase);
        self.phase = phase;
    }

    pub fn update(&mut self, step: Step) {
        match step {
            Step::Range {
                done,
                total,
                events,
            } => {
                self.enter("folding", total as u64);
                self.bar.set_position(done as u64);
                self.bar
                    .set_message(format!("key ranges ({events} events)"));
            }
            Step::Pairs { rows } => {
                self.enter("pairs", 1);
                self.bar.set_position(1);
                self.bar
                    .set_message(format!("predicate_object, subject_predicate ({rows} rows)"));
            }
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
