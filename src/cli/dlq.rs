//! `dlq`: look at, re-inject and purge dead letters (`<stream>:dlq`, SPEC §4).

use anyhow::Context;
use clap::{Args, Subcommand};
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;

use redis_postgres_sync::ingest::stream::{self, dlq_stream};

#[derive(Debug, Args)]
pub struct DlqArgs {
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
    /// The input stream whose dead letters to use (its dead-letter stream is `<stream>:dlq`).
    #[arg(
        long,
        env = "REDIS_STREAMS",
        default_value = redis_postgres_sync::config::DEFAULT_INPUT_STREAM,
        value_delimiter = ','
    )]
    pub stream: Vec<String>,
    #[command(subcommand)]
    pub action: DlqAction,
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters: id, source entry, reason, and the start of the payload.
    List {
        /// At most this many, oldest first.
        #[arg(long, default_value_t = 50)]
        count: usize,
        /// Print whole payloads.
        #[arg(long)]
        full: bool,
    },
    /// Put dead letters back into their source stream (field `payload`) and remove them from the
    /// dead-letter stream: after fixing the producer or upgrading the service.
    Reinject {
        /// Dead-letter ids to re-inject (see `dlq list`).
        ids: Vec<String>,
        /// Re-inject every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead letters.
    Purge {
        /// Dead-letter ids to delete.
        ids: Vec<String>,
        /// Delete the whole dead-letter stream.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

struct Letter {
    id: String,
    source_stream: String,
    source_id: String,
    error: String,
    payload: String,
}

fn field(s: &redis::streams::StreamId, name: &str) -> String {
    match s.map.get(name) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(t)) => t.clone(),
        _ => String::new(),
    }
}

async fn letters(
    conn: &mut redis::aio::MultiplexedConnection,
    dlq: &str,
    count: usize,
) -> anyhow::Result<Vec<Letter>> {
    let reply: StreamRangeReply = conn
        .xrange_count(dlq, "-", "+", count)
        .await
        .with_context(|| format!("reading {dlq}"))?;
    Ok(reply
        .ids
        .iter()
        .map(|s| Letter {
            id: s.id.clone(),
            source_stream: field(s, "source_stream"),
            source_id: field(s, "source_id"),
            error: field(s, "error"),
            payload: field(s, "payload"),
        })
        .collect())
}

fn cut(s: &str, n: usize) -> String {
    let one_line = s.replace('\n', " ");
    match one_line.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let mut conn = stream::connect(&args.redis_url, args.redis_ca_cert.as_deref()).await?;
    for source in &args.stream {
        let dlq = dlq_stream(source);
        match &args.action {
            DlqAction::List { count, full } => {
                let total: usize = conn.xlen(&dlq).await.unwrap_or(0);
                println!("{dlq}: {total} dead letter(s)");
                let list = letters(&mut conn, &dlq, *count).await?;
                if list.is_empty() {
                    continue;
                }
                println!(
                    "{:<20}  {:<22}  {:<60}  payload",
                    "id", "source entry", "reason"
                );
                for l in list {
                    let payload = if *full {
                        l.payload.clone()
                    } else {
                        cut(&l.payload, 60)
                    };
                    println!(
                        "{:<20}  {:<22}  {:<60}  {}",
                        l.id,
                        l.source_id,
                        cut(&l.error, 60),
                        payload
                    );
                }
            }
            DlqAction::Reinject { ids, all } => {
                let list = letters(&mut conn, &dlq, usize::MAX / 2).await?;
                let chosen: Vec<&Letter> = list
                    .iter()
                    .filter(|l| *all || ids.contains(&l.id))
                    .collect();
                if !*all {
                    for id in ids {
                        anyhow::ensure!(
                            list.iter().any(|l| &l.id == id),
                            "no dead letter {id} in {dlq}"
                        );
                    }
                }
                for l in &chosen {
                    let target = if l.source_stream.is_empty() {
                        source.as_str()
                    } else {
                        l.source_stream.as_str()
                    };
                    let new_id: String = conn
                        .xadd(target, "*", &[("payload", l.payload.as_str())])
                        .await
                        .with_context(|| format!("re-injecting into {target}"))?;
                    let _: usize = conn
                        .xdel(&dlq, &[&l.id])
                        .await
                        .with_context(|| format!("removing {} from {dlq}", l.id))?;
                    println!("re-injected {} into {target} as {new_id}", l.id);
                }
                println!("{} dead letter(s) re-injected from {dlq}", chosen.len());
            }
            DlqAction::Purge { ids, all } => {
                if *all {
                    let n: usize = conn.xlen(&dlq).await.unwrap_or(0);
                    let _: () = conn
                        .del(&dlq)
                        .await
                        .with_context(|| format!("deleting {dlq}"))?;
                    println!("purged {n} dead letter(s) from {dlq}");
                } else {
                    anyhow::ensure!(
                        !ids.is_empty(),
                        "name the dead-letter ids to purge, or pass --all"
                    );
                    let n: usize = conn
                        .xdel(&dlq, ids)
                        .await
                        .with_context(|| format!("deleting from {dlq}"))?;
                    println!("purged {n} dead letter(s) from {dlq}");
                }
            }
        }
    }
    Ok(())
}
