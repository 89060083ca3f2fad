//! `verify`: compares every derived table with the fold of the event log and reports drift;
//! exit status 1 on any drift.

use std::process::ExitCode;

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use clap::Args;

use redis_postgres_sync::config::DatabaseArgs;
use redis_postgres_sync::store::{self, compare::DERIVED_NAMES};
use redis_postgres_sync::verify::verify_in;

use super::replay::{RangesArg, StepBar};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Only these tables, comma-separated [default: all nine].
    #[arg(long, value_delimiter = ',', value_parser = PossibleValuesParser::new(DERIVED_NAMES))]
    pub tables: Vec<String>,
    /// Print the report as JSON on stdout (same exit status).
    #[arg(long)]
    pub json: bool,
    /// Examples shown per kind of difference (missing, extra, differing) and table.
    #[arg(long, default_value_t = 3)]
    pub examples: usize,
    #[command(flatten)]
    pub ranges: RangesArg,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let url = &args.database.database_url;
    let mut conn = store::connect::connect(url).await?;
    let only: Vec<&str> = args.tables.iter().map(String::as_str).collect();
    let mut bar = StepBar::new();
    let ranges = args.ranges.ranges()?;
    let report = verify_in(&mut conn, &only, args.examples, ranges, &mut |step| {
        bar.update(step)
    })
    .await;
    bar.finish();
    let report = report?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("writing the report as JSON")?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(if report.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
