//! The Redis side of ingestion: the consumer group on the input streams (create, re-read own
//! pending entries, claim dead consumers' entries, read new ones, acknowledge), dead-lettering,
//! and publishing term updates.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, Value};

/// Entry fields that may hold the envelope JSON, in order of preference (SPEC §1).
pub const PAYLOAD_FIELDS: &[&str] = &["payload", "event_data", "data"];

/// One stream entry as read.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    /// The envelope JSON; `None` when the entry has none of [`PAYLOAD_FIELDS`] (or was deleted
    /// from the stream while pending).
    pub payload: Option<Vec<u8>>,
}

impl Entry {
    fn from_stream_id(stream: &str, s: StreamId, fields: &[&str]) -> Self {
        let payload = fields.iter().find_map(|f| match s.map.get(*f) {
            Some(Value::BulkString(b)) => Some(b.clone()),
            Some(Value::SimpleString(t)) => Some(t.clone().into_bytes()),
            _ => None,
        });
        Entry {
            stream: stream.to_owned(),
            id: s.id,
            payload,
        }
    }
}

/// The dead-letter stream of `stream` (SPEC §4).
pub fn dlq_stream(stream: &str) -> String {
    format!("{stream}:dlq")
}

/// Opens a multiplexed connection with no response timeout (blocking reads wait longer than the
/// client's default 500 ms). A `rediss://` URL is TLS, certificates verified against the system's
/// roots plus `ca_cert` (`REDIS_CA_CERT`); a certificate that does not verify is a
/// [`SettingError`](crate::config::SettingError) naming `REDIS_URL`.
pub async fn connect(url: &str, ca_cert: Option<&Path>) -> anyhow::Result<MultiplexedConnection> {
    let client = client(url, ca_cert)?;
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(Duration::from_secs(5)));
    match client
        .get_multiplexed_async_connection_with_config(&config)
        .await
    {
        Ok(conn) => Ok(conn),
        Err(e) => match crate::tls::certificate_problem(&e) {
            Some(why) => Err(crate::config::SettingError::new(format!(
                "REDIS_URL: the server's TLS certificate did not verify ({why}){}",
                if ca_cert.is_none() {
                    "; for a private CA, set REDIS_CA_CERT to its PEM file"
                } else {
                    ""
                }
            ))
            .into()),
            None => Err(anyhow::Error::new(e).context("connecting to Redis")),
        },
    }
}

/// The client for `url`: plain, or TLS with the system's roots and `ca_cert`.
pub fn client(url: &str, ca_cert: Option<&Path>) -> anyhow::Result<Client> {
    let tls = url.starts_with("rediss://");
    match (tls, ca_cert) {
        (false, Some(_)) => Err(crate::config::SettingError::new(
            "REDIS_CA_CERT is set, but REDIS_URL is not a rediss:// (TLS) URL",
        )
        .into()),
        (false, None) | (true, None) => {
            if tls {
                crate::tls::provider();
            }
            Client::open(url).context("invalid REDIS_URL")
        }
        (true, Some(path)) => {
            crate::tls::provider();
            crate::tls::read_pem(path)
                .map_err(|e| crate::config::SettingError::new(format!("REDIS_CA_CERT: {e}")))?;
            let extra = std::fs::read(path)
                .map_err(|e| crate::config::SettingError::new(format!("REDIS_CA_CERT: {e}")))?;
            // The system's roots and the extra one; the extra one alone if the system's bundle
            // holds a certificate rustls cannot use as a root.
            let mut bundle = crate::tls::system_roots_pem().unwrap_or_default();
            bundle.extend_from_slice(b"\n");
            bundle.extend_from_slice(&extra);
            let certs = |root_cert| redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            Client::build_with_tls(url, certs(bundle))
                .or_else(|_| Client::build_with_tls(url, certs(extra)))
                .context("REDIS_URL with REDIS_CA_CERT")
        }
    }
}

/// A consumer in a group over several streams.
#[allow(missing_debug_implementations)] // holds a connection
pub struct GroupReader {
    conn: MultiplexedConnection,
    pub streams: Vec<String>,
    pub group: String,
    pub consumer: String,
    /// Streams whose own pending entries have not all been re-read, with the id to read after.
    history_left: Vec<(String, String)>,
    /// Next XAUTOCLAIM start id per stream in the current round; `None` once scanned to the end.
    claim_cursor: HashMap<String, Option<String>>,
    /// The entry fields that may hold the payload, in order of preference.
    fields: &'static [&'static str],
}

impl GroupReader {
    /// Creates the group on every stream (from id 0, with MKSTREAM) if it does not exist.
    pub async fn new(
        mut conn: MultiplexedConnection,
        streams: Vec<String>,
        group: String,
        consumer: String,
        fields: &'static [&'static str],
    ) -> anyhow::Result<Self> {
        for s in &streams {
            ensure_group(&mut conn, s, &group).await?;
        }
        Ok(Self {
            conn,
            history_left: streams
                .iter()
                .map(|s| (s.clone(), "0".to_owned()))
                .collect(),
            claim_cursor: streams.iter().map(|s| (s.clone(), None)).collect(),
            fields,
            streams,
            group,
            consumer,
        })
    }

    /// Re-reads this consumer's own pending entries (delivered before, never acknowledged), one
    /// page at a time, from a cursor: call until it returns an empty batch, at start and after
    /// [`restart_history`](Self::restart_history).
    pub async fn read_own_pending(&mut self, count: usize) -> anyhow::Result<Vec<Entry>> {
        while let Some((stream, cursor)) = self.history_left.first().cloned() {
            let opts = StreamReadOptions::default()
                .group(&self.group, &self.consumer)
                .count(count);
            let reply: StreamReadReply = self
                .conn
                .xread_options(&[&stream], &[&cursor], &opts)
                .await
                .with_context(|| format!("reading pending entries of stream {stream}"))?;
            let ids: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
            match ids.last() {
                Some(last) if ids.len() >= count => self.history_left[0].1 = last.id.clone(),
                _ => {
                    self.history_left.remove(0);
                }
            }
            if !ids.is_empty() {
                return Ok(ids
                    .into_iter()
                    .map(|s| Entry::from_stream_id(&stream, s, self.fields))
                    .collect());
            }
        }
        Ok(Vec::new())
    }

    /// Starts re-reading this consumer's pending list from the beginning (after a failed batch).
    pub fn restart_history(&mut self) {
        self.history_left = self
            .streams
            .iter()
            .map(|s| (s.clone(), "0".to_owned()))
            .collect();
    }

    /// Whether the current round of [`claim_idle`](Self::claim_idle) has scanned every stream to
    /// its end (the next call starts a new round).
    pub fn claims_done(&self) -> bool {
        self.claim_cursor.values().all(Option::is_none)
    }

    /// Takes over entries pending for at least `min_idle` with other consumers (dead ones), up
    /// to `count` per stream, continuing each stream's scan where the last call stopped.
    pub async fn claim_idle(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> anyhow::Result<Vec<Entry>> {
        if self.claims_done() {
            for c in self.claim_cursor.values_mut() {
                *c = Some("0-0".to_owned());
            }
        }
        let mut out = Vec::new();
        for stream in self.streams.clone() {
            let Some(start) = self.claim_cursor.get(&stream).cloned().flatten() else {
                continue;
            };
            let reply: StreamAutoClaimReply = self
                .conn
                .xautoclaim_options(
                    &stream,
                    &self.group,
                    &self.consumer,
                    min_idle.as_millis() as u64,
                    &start,
                    StreamAutoClaimOptions::default().count(count),
                )
                .await
                .with_context(|| format!("claiming idle entries of stream {stream}"))?;
            // "0-0" means the scan reached the end. Entries deleted from the stream while pending
            // (reply.deleted_ids) are already gone from the pending list: nothing to process.
            let next = (reply.next_stream_id != "0-0").then_some(reply.next_stream_id);
            self.claim_cursor.insert(stream.clone(), next);
            out.extend(
                reply
                    .claimed
                    .into_iter()
                    .map(|s| Entry::from_stream_id(&stream, s, self.fields)),
            );
        }
        Ok(out)
    }

    /// Reads new entries, waiting up to `block` for the first one, then topping up without
    /// waiting until `count` entries or nothing more is there.
    pub async fn read_new(&mut self, count: usize, block: Duration) -> anyhow::Result<Vec<Entry>> {
        let mut out = self.read_new_once(count, Some(block)).await?;
        while !out.is_empty() && out.len() < count {
            let more = self.read_new_once(count - out.len(), None).await?;
            if more.is_empty() {
                break;
            }
            out.extend(more);
        }
        Ok(out)
    }

    async fn read_new_once(
        &mut self,
        count: usize,
        block: Option<Duration>,
    ) -> anyhow::Result<Vec<Entry>> {
        let fields = self.fields;
        let mut opts = StreamReadOptions::default()
            .group(&self.group, &self.consumer)
            .count(count);
        if let Some(b) = block {
            opts = opts.block(b.as_millis().max(1) as usize);
        }
        let ids: Vec<&str> = self.streams.iter().map(|_| ">").collect();
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&self.streams, &ids, &opts)
            .await
            .with_context(|| format!("reading streams {}", self.streams.join(",")))?;
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| {
                        k.ids
                            .into_iter()
                            .map(move |s| Entry::from_stream_id(&k.key, s, fields))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Where the next entries come from: own pending entries first, then idle entries of other
/// consumers, then new entries; idle entries are looked for again every processing timeout.
#[derive(Debug)]
pub struct EntrySource {
    phase: Phase,
    count: usize,
    block: Duration,
    min_idle: Duration,
    last_claim: Instant,
}

#[derive(Debug, PartialEq)]
enum Phase {
    OwnPending,
    /// Claiming entries idle at least this long.
    Claim(Duration),
    New,
}

impl EntrySource {
    /// `count` entries at most per call; new entries are waited for up to `block`; entries idle
    /// `min_idle` with other consumers are claimed.
    pub fn new(count: usize, block: Duration, min_idle: Duration) -> Self {
        Self {
            phase: Phase::OwnPending,
            count,
            block,
            min_idle,
            last_claim: Instant::now(),
        }
    }

    /// The next entries (possibly none, after waiting `block`).
    pub async fn next(&mut self, reader: &mut GroupReader) -> anyhow::Result<Vec<Entry>> {
        loop {
            match self.phase {
                Phase::OwnPending => {
                    let e = reader.read_own_pending(self.count).await?;
                    if !e.is_empty() {
                        return Ok(e);
                    }
                    // One writer per group (SPEC §4): at start, every other consumer is dead.
                    self.phase = Phase::Claim(Duration::ZERO);
                }
                Phase::Claim(min_idle) => {
                    let e = reader.claim_idle(min_idle, self.count).await?;
                    if !e.is_empty() {
                        return Ok(e);
                    }
                    if reader.claims_done() {
                        self.phase = Phase::New;
                        self.last_claim = Instant::now();
                    }
                }
                Phase::New => {
                    if self.last_claim.elapsed() >= self.min_idle {
                        self.phase = Phase::Claim(self.min_idle);
                        continue;
                    }
                    let wait = self.block.min(
                        self.min_idle
                            .saturating_sub(self.last_claim.elapsed())
                            .max(Duration::from_millis(1)),
                    );
                    return reader.read_new(self.count, wait).await;
                }
            }
        }
    }
}

async fn ensure_group(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> anyhow::Result<()> {
    let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(stream, group, "0").await;
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("creating consumer group {group} on stream {stream}"))
        }
    }
}

/// Acknowledges entries, grouped by stream, in one pipeline.
pub async fn ack(
    conn: &mut MultiplexedConnection,
    group: &str,
    entries: &[(String, String)],
) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut by_stream: HashMap<&str, Vec<&str>> = HashMap::new();
    for (stream, id) in entries {
        by_stream.entry(stream).or_default().push(id);
    }
    let mut pipe = redis::pipe();
    for (stream, ids) in by_stream {
        for chunk in ids.chunks(1000) {
            pipe.xack(stream, group, chunk).ignore();
        }
    }
    pipe.query_async::<()>(conn)
        .await
        .context("acknowledging entries")
}

pub use super::letter::{DeadLetter, Recorded};

/// Adds a recorded dead letter to its `<stream>:dlq` unless one of a higher or equal id was
/// added before, and remembers its id, atomically: publishing is in id order, so a letter
/// published before a crash is never added again. KEYS: the dead-letter stream, the marker;
/// ARGV: id, payload, error, source stream, source id.
const PUBLISH_DEAD_LETTER: &str = r"
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('XADD', KEYS[1], '*', 'payload', ARGV[2], 'error', ARGV[3], 'source_stream', ARGV[4], 'source_id', ARGV[5], 'dead_letter_id', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1])
return 1
";

/// The key remembering the last dead letter of `group` published to `dlq`.
pub fn dead_letter_marker(dlq: &str, group: &str) -> String {
    format!("{dlq}:published:{group}")
}

/// The field of a term_updates entry: comma-separated term ids.
pub const TERM_IDS_FIELD: &str = "term_ids";
/// Term ids per term_updates entry.
const TERM_IDS_PER_ENTRY: usize = 1000;

/// Publishes recorded dead letters (oldest first) to their `<stream>:dlq`, each exactly once
/// across retries and crashes; returns how many were added now.
pub async fn publish_dead_letters(
    conn: &mut MultiplexedConnection,
    group: &str,
    letters: &[Recorded],
) -> anyhow::Result<usize> {
    if letters.is_empty() {
        return Ok(0);
    }
    let script = redis::Script::new(PUBLISH_DEAD_LETTER);
    let sha: String = script
        .prepare_invoke()
        .load_async(conn)
        .await
        .context("loading the dead-letter script")?;
    let mut pipe = redis::pipe();
    for r in letters {
        let l = &r.letter;
        let dlq = dlq_stream(&l.source_stream);
        pipe.cmd("EVALSHA")
            .arg(&sha)
            .arg(2)
            .arg(&dlq)
            .arg(dead_letter_marker(&dlq, group))
            .arg(r.id)
            .arg(l.payload.as_slice())
            .arg(l.error.as_bytes())
            .arg(l.source_stream.as_bytes())
            .arg(l.source_id.as_bytes());
    }
    let added: Vec<i64> = pipe
        .query_async(conn)
        .await
        .context("writing to the dead-letter stream")?;
    Ok(added.iter().filter(|a| **a == 1).count())
}

/// Publishes changed term ids to the term updates stream.
pub async fn publish_term_updates(
    conn: &mut MultiplexedConnection,
    stream: &str,
    term_ids: &[String],
) -> anyhow::Result<()> {
    if term_ids.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for chunk in term_ids.chunks(TERM_IDS_PER_ENTRY) {
        pipe.xadd(stream, "*", &[(TERM_IDS_FIELD, chunk.join(","))])
            .ignore();
    }
    pipe.query_async::<()>(conn)
        .await
        .with_context(|| format!("publishing to stream {stream}"))
}

/// `ms-seq` as numbers.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The first id every consumer group on a stream still needs: the oldest entry one of them has
/// not acknowledged — its oldest pending entry, or the first after the last it was delivered
/// (a group that never read needs everything). `None` when the stream has no group.
pub fn first_needed(groups: &[(String, u64, Option<String>)]) -> Option<(u64, u64)> {
    groups
        .iter()
        .map(|(last_delivered, _pending, oldest_pending)| {
            let after_delivered = parse_id(last_delivered)
                .map(|(ms, seq)| match seq.checked_add(1) {
                    Some(s) => (ms, s),
                    None => (ms + 1, 0),
                })
                .unwrap_or((0, 0));
            match oldest_pending.as_deref().and_then(parse_id) {
                Some(p) => p.min(after_delivered),
                None => after_delivered,
            }
        })
        .min()
}

/// Trims the entries of `stream_name` that every consumer group on it has acknowledged
/// (`XTRIM … MINID`); returns how many were removed. Never an entry some group has not
/// acknowledged or not yet read; nothing when the stream has no group.
pub async fn trim_acknowledged(
    conn: &mut MultiplexedConnection,
    stream_name: &str,
) -> anyhow::Result<u64> {
    let info: redis::streams::StreamInfoGroupsReply = match conn.xinfo_groups(stream_name).await {
        Ok(i) => i,
        Err(e) if e.to_string().contains("no such key") => return Ok(0),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the groups of stream {stream_name}"))
        }
    };
    let mut groups = Vec::with_capacity(info.groups.len());
    for g in &info.groups {
        let oldest_pending = if g.pending > 0 {
            let summary: redis::streams::StreamPendingReply = conn
                .xpending(stream_name, &g.name)
                .await
                .with_context(|| format!("XPENDING {stream_name} {}", g.name))?;
            match summary {
                redis::streams::StreamPendingReply::Data(d) => Some(d.start_id),
                _ => None,
            }
        } else {
            None
        };
        groups.push((
            g.last_delivered_id.clone(),
            g.pending as u64,
            oldest_pending,
        ));
    }
    let Some((ms, seq)) = first_needed(&groups) else {
        return Ok(0);
    };
    if (ms, seq) <= (0, 1) {
        return Ok(0);
    }
    let removed: u64 = redis::cmd("XTRIM")
        .arg(stream_name)
        .arg("MINID")
        .arg(format!("{ms}-{seq}"))
        .query_async(conn)
        .await
        .with_context(|| format!("XTRIM {stream_name}"))?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::first_needed;

    fn g(last: &str, pending: u64, oldest: Option<&str>) -> (String, u64, Option<String>) {
        (last.to_owned(), pending, oldest.map(str::to_owned))
    }

    #[test]
    fn the_first_entry_some_group_still_needs() {
        assert_eq!(first_needed(&[]), None);
        // Caught up: everything up to the last delivered entry can go.
        assert_eq!(first_needed(&[g("5-2", 0, None)]), Some((5, 3)));
        // A pending entry is kept, and everything after it.
        assert_eq!(first_needed(&[g("9-0", 3, Some("4-1"))]), Some((4, 1)));
        // A group that never read keeps everything.
        assert_eq!(
            first_needed(&[g("9-0", 0, None), g("0-0", 0, None)]),
            Some((0, 1))
        );
        assert_eq!(
            first_needed(&[g("7-0", 0, None), g("6-5", 1, Some("6-5"))]),
            Some((6, 5))
        );
        assert_eq!(
            first_needed(&[g("3-18446744073709551615", 0, None)]),
            Some((4, 0))
        );
    }
}
