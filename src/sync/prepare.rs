//! From stream entries to a batch ready to commit: decode (in parallel), dead-letter what the
//! decoder refuses, fold the rest into the sharded state, and cut the batch where the stream
//! order demands it.
//!
//! Two things cut a batch. A **reorg notice** takes effect between the entries of its stream
//! (SPEC §5): the entries before it are the batch, the notice is handed over beside it, the
//! entries after it are left unread. A **suspect** entry — one of a batch PostgreSQL refused in a
//! way that could not be narrowed to generic events (see `Quarantine`) — is folded in a batch of
//! its own, so a second refusal names it alone; a **condemned** entry, refused alone, is
//! dead-lettered unread with the reason.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde_json::Value;

use super::shards::{Needs, Shards};
use crate::domain::types::TxHash;
use crate::domain::{BaseRows, Event};
use crate::ingest::decode::{decode_envelope, Envelope, ReorgNotice};
use crate::ingest::stream::{self, DeadLetter, Entry};
use crate::store::dead_letters::WHOLE_ENTRY;
use crate::store::event_rows::{event_rows, move_transaction_keys};
use crate::store::{BatchWrite, StreamProgress};

/// `(stream, entry id)`.
pub type EntryKey = (String, String);

/// Entries PostgreSQL refused in a way the writer could not narrow down, kept by the supervisor
/// across pipeline restarts.
#[derive(Debug, Default, Clone)]
pub struct Quarantine {
    /// Entries of a refused batch: each is folded in a batch of its own.
    pub suspects: HashSet<EntryKey>,
    /// Entries refused alone: dead-lettered unread, with the reason.
    pub condemned: HashMap<EntryKey, String>,
}

impl Quarantine {
    /// Takes in the entries of a refused batch: a batch of one condemns its entry; a larger one
    /// makes its entries suspects.
    pub fn refused(&mut self, entries: &[EntryKey], reason: &str) {
        match entries {
            [one] => {
                self.suspects.remove(one);
                self.condemned.insert(one.clone(), reason.to_owned());
            }
            many => self.suspects.extend(many.iter().cloned()),
        }
    }

    /// Forgets entries that are settled (committed or dead-lettered, and acknowledged).
    pub fn settled(&mut self, acks: &[EntryKey]) {
        if self.suspects.is_empty() && self.condemned.is_empty() {
            return;
        }
        for key in acks {
            self.suspects.remove(key);
            self.condemned.remove(key);
        }
    }
}

/// A reorg notice and the entry that carried it.
#[derive(Debug)]
pub struct ReorgWork {
    pub stream: String,
    pub entry_id: String,
    pub notice: ReorgNotice,
    /// The entry's payload, to dead-letter the notice if PostgreSQL refuses it.
    pub payload: Vec<u8>,
}

/// A batch ready to commit.
#[derive(Debug)]
pub struct Prepared {
    pub write: BatchWrite,
    /// Where each new generic event came from (an index into `entries`, the item's index), to
    /// dead-letter it if PostgreSQL refuses it.
    pub origins: HashMap<(TxHash, i64), (usize, usize)>,
    pub entries: Vec<Entry>,
    pub acks: Vec<EntryKey>,
    /// The fold's sequence number of the batch (`Shards::release` once committed).
    pub batch: u64,
    pub new_events: usize,
    pub new_by_type: Vec<(String, u64)>,
    pub duplicates: usize,
    pub conflicts: usize,
    pub read_at: Instant,
}

impl Prepared {
    /// The dead letter of generic event `index` (of `write.generic`), refused for `reason`.
    pub fn letter_for_generic(&self, index: usize, reason: &str) -> DeadLetter {
        let event = &self.write.generic[index];
        let key = (event.meta.transaction_hash, event.meta.log_index);
        let (entry, item) = self.origins.get(&key).copied().unwrap_or((usize::MAX, 0));
        match self.entries.get(entry) {
            Some(e) => {
                let payload = e.payload.as_deref().unwrap_or_default();
                let item_json = envelope_items(payload)
                    .and_then(|items| items.into_iter().nth(item))
                    .unwrap_or(Value::Null);
                DeadLetter {
                    source_stream: e.stream.clone(),
                    source_id: e.id.clone(),
                    item_index: item as i32,
                    payload: SingleItems::new(payload).envelope(&item_json),
                    error: reason.to_owned(),
                }
            }
            // Unreachable: every generic event of a batch has an origin.
            None => DeadLetter {
                source_stream: String::new(),
                source_id: format!("{}:{}", event.meta.transaction_hash, event.meta.log_index),
                item_index: WHOLE_ENTRY,
                payload: Vec::new(),
                error: reason.to_owned(),
            },
        }
    }
}

/// What [`prepare`] made of a read.
#[derive(Debug, Default)]
pub struct Cut {
    /// The batch (none when the read began with a reorg notice).
    pub batch: Option<Prepared>,
    /// A reorg notice that ended the batch; the pipeline restarts once it is applied.
    pub reorg: Option<ReorgWork>,
    /// Entries after a suspect's batch, to prepare next (not after a reorg: those are read again
    /// after the restart).
    pub rest: Vec<Entry>,
}

/// Loads what a batch reads that the shards lack: the stored events of its identities and the
/// stored rows of its keys (`store::prior`; tests serve them from memory).
pub type Loader<'a> = &'a mut dyn FnMut(&Needs) -> anyhow::Result<(Vec<Event>, BaseRows)>;

/// Decodes and folds a batch of entries into the rows it writes, cut as the module docs say;
/// `load` brings in what the fold reads and the shards do not hold. Fails only when loading does
/// (a transient failure: nothing was folded).
pub fn prepare(
    shards: &mut Shards,
    mut entries: Vec<Entry>,
    workers: usize,
    read_at: Instant,
    max_entry_bytes: usize,
    quarantine: &Quarantine,
    load: Loader<'_>,
) -> anyhow::Result<Cut> {
    let mut rest = Vec::new();
    if !quarantine.suspects.is_empty() {
        let suspect = |e: &Entry| {
            quarantine
                .suspects
                .contains(&(e.stream.clone(), e.id.clone()))
        };
        if let Some(i) = entries.iter().position(suspect) {
            // The suspect alone, or everything before it.
            let end = if i == 0 { 1 } else { i };
            rest = entries.split_off(end);
        }
    }
    let mut events: Vec<Event> = Vec::with_capacity(entries.len() * 4);
    let mut origins = HashMap::new();
    let mut dead_letters = Vec::new();
    let mut progress: Vec<StreamProgress> = Vec::new();
    let mut acks = Vec::with_capacity(entries.len());
    let mut reorg = None;
    let decoded = decode_all(&entries, workers, max_entry_bytes, quarantine);
    for (index, (entry, decoded)) in decoded.into_iter().enumerate() {
        match decoded {
            Decoded::Events(items, mut letters) => {
                for (item, e) in items {
                    if matches!(e.kind, crate::domain::EventKind::Generic { .. }) {
                        origins
                            .entry((e.meta.transaction_hash, e.meta.log_index))
                            .or_insert((index, item));
                    }
                    events.push(e);
                }
                dead_letters.append(&mut letters);
            }
            Decoded::Dead(letter) => dead_letters.push(letter),
            Decoded::Reorg(notice) => {
                reorg = Some(ReorgWork {
                    stream: entry.stream.clone(),
                    entry_id: entry.id.clone(),
                    notice,
                    payload: entry.payload.clone().unwrap_or_default(),
                });
                rest.clear();
                break;
            }
        }
        note_progress(&mut progress, entry);
        acks.push((entry.stream.clone(), entry.id.clone()));
    }
    if acks.is_empty() {
        return Ok(Cut {
            batch: None,
            reorg,
            rest,
        });
    }
    let needs = shards.needs(&events);
    if !needs.is_empty() {
        let (stored, rows) = load(&needs)?;
        shards.seed(stored, rows);
    }
    let folded = shards.fold(events);
    let mut generic_rows = event_rows(&folded.generic);
    let mut rows = folded.rows;
    move_transaction_keys(&mut generic_rows, &mut rows);
    let batch = Prepared {
        write: BatchWrite {
            rows,
            generic: folded.generic,
            generic_rows,
            dead_letters,
            progress,
            term_updates: folded.changed_terms,
            moved_triples: folded.moved_triples,
        },
        origins,
        entries,
        acks,
        batch: folded.batch,
        new_events: folded.new_events,
        new_by_type: folded.new_by_type,
        read_at,
        duplicates: folded.duplicates,
        conflicts: folded.conflicts,
    };
    Ok(Cut {
        batch: Some(batch),
        reorg,
        rest,
    })
}

/// Counts `entry` into its stream's progress row.
pub fn note_progress(progress: &mut Vec<StreamProgress>, entry: &Entry) {
    match progress.iter_mut().find(|p| p.stream == entry.stream) {
        Some(p) => {
            if stream_id_key(&entry.id) > stream_id_key(&p.last_entry_id) {
                p.last_entry_id = entry.id.clone();
            }
            p.entries += 1;
        }
        None => progress.push(StreamProgress {
            stream: entry.stream.clone(),
            last_entry_id: entry.id.clone(),
            entries: 1,
        }),
    }
}

enum Decoded {
    /// The good events with their item index, and dead letters of the bad items.
    Events(Vec<(usize, Event)>, Vec<DeadLetter>),
    Dead(DeadLetter),
    Reorg(ReorgNotice),
}

/// Decodes entries, in parallel when there are several workers.
fn decode_all<'e>(
    entries: &'e [Entry],
    workers: usize,
    max_entry_bytes: usize,
    quarantine: &Quarantine,
) -> Vec<(&'e Entry, Decoded)> {
    let one = |e: &'e Entry| (e, decode_entry(e, max_entry_bytes, quarantine));
    if workers <= 1 || entries.len() < 64 {
        return entries.iter().map(one).collect();
    }
    let chunk = entries.len().div_ceil(workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn decode_entry(entry: &Entry, max_entry_bytes: usize, quarantine: &Quarantine) -> Decoded {
    let dead = |payload: &[u8], item_index: i32, error: String| DeadLetter {
        source_stream: entry.stream.clone(),
        source_id: entry.id.clone(),
        item_index,
        payload: payload.to_vec(),
        error,
    };
    let Some(payload) = &entry.payload else {
        return Decoded::Dead(dead(
            b"",
            WHOLE_ENTRY,
            format!("entry has no {} field", stream::PAYLOAD_FIELDS.join(", ")),
        ));
    };
    if let Some(reason) = condemned(quarantine, entry) {
        return Decoded::Dead(dead(payload, WHOLE_ENTRY, reason.to_owned()));
    }
    if payload.len() > max_entry_bytes {
        return Decoded::Dead(dead(
            payload,
            WHOLE_ENTRY,
            format!(
                "entry of {} bytes exceeds MAX_ENTRY_BYTES ({max_entry_bytes})",
                payload.len()
            ),
        ));
    }
    match decode_envelope(payload) {
        Err(e) => Decoded::Dead(dead(payload, WHOLE_ENTRY, e.to_string())),
        Ok(Envelope::Reorg(notice)) => Decoded::Reorg(notice),
        Ok(Envelope::Events { items, .. }) => {
            let mut events = Vec::with_capacity(items.len());
            let mut letters = Vec::new();
            // Parsed once for all the bad items of the entry: linear in its size.
            let mut singles: Option<SingleItems> = None;
            for (index, item) in items.into_iter().enumerate() {
                match item {
                    Ok(e) => events.push((index, e)),
                    Err(bad) => {
                        let singles = singles.get_or_insert_with(|| SingleItems::new(payload));
                        letters.push(dead(
                            &singles.envelope(&bad.item),
                            bad.index as i32,
                            bad.to_string(),
                        ))
                    }
                }
            }
            Decoded::Events(events, letters)
        }
    }
}

fn condemned<'q>(quarantine: &'q Quarantine, entry: &Entry) -> Option<&'q str> {
    if quarantine.condemned.is_empty() {
        return None;
    }
    quarantine
        .condemned
        .get(&(entry.stream.clone(), entry.id.clone()))
        .map(String::as_str)
}

/// Builds envelopes that hold one item of an entry (how a bad item is dead-lettered): the
/// entry's envelope is parsed once, without its `event_data`, and each item is written into a
/// copy of it.
struct SingleItems {
    envelope: serde_json::Map<String, Value>,
}

impl SingleItems {
    fn new(payload: &[u8]) -> Self {
        let mut envelope = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(o)) => o,
            _ => serde_json::Map::new(),
        };
        envelope.remove("event_data");
        Self { envelope }
    }

    /// The envelope with `event_data` holding only `item`.
    fn envelope(&self, item: &Value) -> Vec<u8> {
        struct One<'a> {
            envelope: &'a serde_json::Map<String, Value>,
            item: &'a Value,
        }
        impl serde::Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(self.envelope.len() + 1))?;
                for (k, v) in self.envelope {
                    m.serialize_entry(k, v)?;
                }
                m.serialize_entry("event_data", &[self.item])?;
                m.end()
            }
        }
        serde_json::to_vec(&One {
            envelope: &self.envelope,
            item,
        })
        .unwrap_or_default()
    }
}

/// The items of an envelope's `event_data` (one object counts as one item).
fn envelope_items(payload: &[u8]) -> Option<Vec<Value>> {
    match serde_json::from_slice::<Value>(payload)
        .ok()?
        .get_mut("event_data")?
        .take()
    {
        Value::Array(items) => Some(items),
        item @ Value::Object(_) => Some(vec![item]),
        _ => None,
    }
}

/// `ms-seq` as numbers, for comparing stream ids.
fn stream_id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loader for a fold with nothing stored before it.
    fn nothing_stored(_: &Needs) -> anyhow::Result<(Vec<Event>, BaseRows)> {
        Ok(Default::default())
    }

    fn entry(id: &str, payload: &str) -> Entry {
        Entry {
            stream: "in".to_owned(),
            id: id.to_owned(),
            payload: Some(payload.as_bytes().to_vec()),
        }
    }

    fn events_of(line: &str) -> usize {
        match decode_envelope(line.as_bytes()) {
            Ok(Envelope::Events { items, .. }) => items.iter().filter(|i| i.is_ok()).count(),
            other => panic!("not events: {other:?}"),
        }
    }

    #[test]
    fn a_reorg_notice_cuts_its_batch() {
        let lines: Vec<&str> = include_str!("../../tests/fixtures/small.jsonl")
            .lines()
            .take(3)
            .collect();
        let notice = r#"{"event_name":"__rindexer_reorg","network":"intuition","event_data":[{"type":"reorg","network":"intuition","fork_block":"0x51f","depth":3}]}"#;
        let entries = vec![
            entry("1-0", lines[0]),
            entry("2-0", "not json"),
            entry("3-0", notice),
            entry("4-0", lines[1]),
            entry("5-0", notice),
        ];
        let mut shards = Shards::new(2, 1_000_000);
        let q = Quarantine::default();
        let cut = prepare(
            &mut shards,
            entries,
            2,
            Instant::now(),
            1 << 20,
            &q,
            &mut nothing_stored,
        )
        .expect("nothing to load");
        let batch = cut.batch.expect("the entries before the notice");
        assert_eq!(
            batch.acks,
            [
                ("in".to_owned(), "1-0".to_owned()),
                ("in".to_owned(), "2-0".to_owned())
            ],
            "only entries before the notice are acknowledged with the batch"
        );
        assert_eq!(batch.write.dead_letters.len(), 1);
        assert_eq!(batch.write.dead_letters[0].item_index, WHOLE_ENTRY);
        assert_eq!(batch.write.progress[0].last_entry_id, "2-0");
        let reorg = cut.reorg.expect("the notice");
        assert_eq!(
            (reorg.stream.as_str(), reorg.entry_id.as_str()),
            ("in", "3-0")
        );
        assert_eq!(reorg.notice.fork_block, 0x51f);
        assert!(cut.rest.is_empty(), "entries after a notice are read again");
        assert_eq!(
            shards.event_count(),
            events_of(lines[0]),
            "entry 4-0 was not folded"
        );

        let cut = prepare(
            &mut Shards::new(1, 1_000_000),
            vec![entry("6-0", notice)],
            1,
            Instant::now(),
            1 << 20,
            &q,
            &mut nothing_stored,
        )
        .expect("nothing to load");
        assert!(cut.batch.is_none(), "nothing before the notice: no batch");
        assert_eq!(cut.reorg.map(|r| r.entry_id), Some("6-0".to_owned()));
    }

    #[test]
    fn a_suspect_is_folded_alone_and_a_condemned_entry_is_dead_lettered_unread() {
        let lines: Vec<&str> = include_str!("../../tests/fixtures/small.jsonl")
            .lines()
            .take(3)
            .collect();
        let entries = || {
            vec![
                entry("1-0", lines[0]),
                entry("2-0", lines[1]),
                entry("3-0", lines[2]),
            ]
        };
        let mut q = Quarantine::default();
        q.refused(
            &[("in".into(), "1-0".into()), ("in".into(), "2-0".into())],
            "x",
        );
        let mut shards = Shards::new(2, 1_000_000);
        let cut = prepare(
            &mut shards,
            entries(),
            2,
            Instant::now(),
            1 << 20,
            &q,
            &mut nothing_stored,
        )
        .expect("nothing to load");
        let acks: Vec<&str> = cut
            .batch
            .as_ref()
            .expect("batch")
            .acks
            .iter()
            .map(|a| a.1.as_str())
            .collect();
        assert_eq!(acks, ["1-0"]);
        assert_eq!(cut.rest.len(), 2);
        let cut = prepare(
            &mut shards,
            cut.rest,
            2,
            Instant::now(),
            1 << 20,
            &q,
            &mut nothing_stored,
        )
        .expect("nothing to load");
        let acks: Vec<&str> = cut
            .batch
            .as_ref()
            .expect("batch")
            .acks
            .iter()
            .map(|a| a.1.as_str())
            .collect();
        assert_eq!(
            acks,
            ["2-0"],
            "a suspect after others: the others first, then it alone"
        );
        let cut = prepare(
            &mut shards,
            cut.rest,
            2,
            Instant::now(),
            1 << 20,
            &q,
            &mut nothing_stored,
        )
        .expect("nothing to load");
        assert!(cut.rest.is_empty());

        // 1-0 committed alone; 2-0 was refused alone.
        q.settled(&[("in".into(), "1-0".into())]);
        q.refused(
            &[("in".into(), "2-0".into())],
            "rejected by PostgreSQL: boom",
        );
        assert!(!q.suspects.contains(&("in".to_owned(), "2-0".to_owned())));
        let cut = prepare(
            &mut Shards::new(1, 1_000_000),
            entries(),
            1,
            Instant::now(),
            1 << 20,
            &q,
            &mut nothing_stored,
        )
        .expect("nothing to load");
        let batch = cut.batch.expect("batch");
        assert_eq!(batch.write.dead_letters.len(), 1);
        assert_eq!(batch.write.dead_letters[0].source_id, "2-0");
        assert_eq!(
            batch.write.dead_letters[0].error,
            "rejected by PostgreSQL: boom"
        );
        assert_eq!(batch.new_events, events_of(lines[0]) + events_of(lines[2]));
        q.settled(&batch.acks);
        assert!(q.condemned.is_empty() && q.suspects.is_empty());
    }

    #[test]
    fn many_bad_items_of_one_entry_are_dead_lettered_in_linear_time() {
        // Issue 12: one 938 KiB entry with 1,400 bad items took 3.6 s (the envelope was parsed
        // again for every item). Each dead letter holds its item alone.
        let good = r#"{"x":"1","transaction_information":{"transaction_hash":"0x0101010101010101010101010101010101010101010101010101010101010101","log_index":"0x1","block_number":1}}"#;
        let bad = format!(
            r#"{{"x":"{}","transaction_information":{{"log_index":"0x1"}}}}"#,
            "p".repeat(600)
        );
        let mut items = vec![good.to_owned()];
        items.extend(std::iter::repeat_n(bad, 1400));
        let payload = format!(
            r#"{{"event_name":"Odd","network":"n","event_data":[{}]}}"#,
            items.join(",")
        );
        assert!(payload.len() > 850_000);
        let started = Instant::now();
        let cut = prepare(
            &mut Shards::new(1, 1_000_000),
            vec![entry("1-0", &payload)],
            1,
            Instant::now(),
            1 << 20,
            &Quarantine::default(),
            &mut nothing_stored,
        )
        .expect("nothing to load");
        eprintln!(
            "prepare: {} bytes, 1,400 bad items dead-lettered in {:?}",
            payload.len(),
            started.elapsed()
        );
        let batch = cut.batch.expect("batch");
        assert_eq!(batch.new_events, 1);
        assert_eq!(batch.write.dead_letters.len(), 1400);
        let letter = &batch.write.dead_letters[7];
        assert_eq!(letter.item_index, 8);
        let v: Value = serde_json::from_slice(&letter.payload).expect("json");
        assert_eq!(v["event_name"], "Odd");
        assert_eq!(v["network"], "n");
        assert_eq!(v["event_data"].as_array().map(Vec::len), Some(1));
    }
}
