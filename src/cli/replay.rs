//! `replay`: rebuilds every derived table from the event log already in Postgres, with a
//! progress bar (loading, folding, writing). Also home of that progress bar, which `verify`
//! shares.

use anyhow::Context;
use clap::Args;

use indicatif::{ProgressBar, ProgressStyle};

use redis_postgres_sync::config::DatabaseArgs;
use redis_postgres_sync::store::{self, load::EVENT_LOG, rebuild::Step};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
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
    let rebuilt = store::rebuild::replay(&mut conn, &mut |step| bar.update(step)).await;
    bar.finish();
    let rebuilt = rebuilt.context("replaying the event log")?;
    let rows: Vec<String> = rebuilt
        .rows
        .iter()
        .map(|(table, n)| format!("{table} {n}"))
        .collect();
    println!(
        "replayed {} events into the derived tables of {} in {:.1} s\nrows: {}",
        rebuilt.events,
        store::redact(url),
        started.elapsed().as_secs_f64(),
        rows.join(", ")
    );
    Ok(())
}

/// One progress bar on stderr through the phases of a fold of the event log (and of a rebuild);
/// drawn only when stderr is a terminal.
#[derive(Debug)]
pub struct StepBar {
    bar: ProgressBar,
    phase: &'static str,
    tables_read: u64,
}

impl StepBar {
    pub fn new() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            phase: "",
            tables_read: 0,
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
            Step::Loading { table, events } => {
                self.enter("loading", EVENT_LOG.len() as u64);
                self.tables_read += 1;
                self.bar.set_position(self.tables_read);
                self.bar
                    .set_message(format!("event tables ({events} events, read {table})"));
            }
            Step::Folding { done, total } => {
                self.enter("folding", total as u64);
                self.bar.set_position(done as u64);
                self.bar.set_message("events");
            }
            Step::Writing { table, done, total } => {
                self.enter("writing", total as u64);
                self.bar.set_position(done as u64);
                self.bar.set_message(format!("rows ({table})"));
            }
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
