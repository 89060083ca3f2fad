//! Reorgs end to end (SPEC §5): a `__rindexer_reorg` notice in the middle of a fixture takes the
//! orphaned events out of the event log (into `reorged_events`), every derived table returns to
//! the fold of what is left, and canonical events published afterwards, even with the identity
//! of an orphaned event and other content, apply normally.

use std::collections::BTreeSet;
use std::time::Duration;

use primitive_types::U256;
use redis_postgres_sync::ingest::decode::ReorgNotice;
use redis_postgres_sync::ingest::publish::PublishOptions;
use redis_postgres_sync::store::reorg::{self, ReorgOutcome, ReorgRequest};
use serde_json::{json, Value};

use crate::support::*;

/// The events the service folds; anything else is stored in generic_events only.
const HANDLED: [&str; 5] = [
    "AtomCreated",
    "TripleCreated",
    "Deposited",
    "Redeemed",
    "SharePriceChanged",
];

fn parse(line: &str) -> Value {
    serde_json::from_str(line).expect("fixture line is JSON")
}

fn block_of(line: &str) -> i64 {
    parse(line)["block_number"]
        .as_i64()
        .expect("fixture lines carry a numeric block_number")
}

fn event_name(line: &str) -> String {
    parse(line)["event_name"]
        .as_str()
        .expect("event_name")
        .to_owned()
}

/// `line` with `edit` applied to every item of its `event_data`.
fn edit_items(line: &str, edit: impl Fn(&mut serde_json::Map<String, Value>)) -> String {
    let mut v = parse(line);
    for item in v["event_data"].as_array_mut().expect("event_data array") {
        edit(item.as_object_mut().expect("item object"));
    }
    v.to_string()
}

/// The same events under new identities: the last 8 hex digits of each transaction hash replaced.
fn with_new_identities(line: &str, salt: u32) -> String {
    edit_items(line, |item| {
        let info = item["transaction_information"]
            .as_object_mut()
            .expect("transaction_information");
        let hash = info["transaction_hash"].as_str().expect("hash").to_owned();
        info.insert(
            "transaction_hash".into(),
            Value::from(format!("{}{salt:08x}", &hash[..hash.len() - 8])),
        );
    })
}

/// `line` with its network (envelope and items) set to `network`, or removed.
fn with_network(line: &str, network: Option<&str>) -> String {
    let line = edit_items(line, |item| {
        let info = item["transaction_information"]
            .as_object_mut()
            .expect("transaction_information");
        match network {
            Some(n) => info.insert("network".into(), Value::from(n)),
            None => info.remove("network"),
        };
    });
    let mut v = parse(&line);
    let obj = v.as_object_mut().expect("envelope object");
    match network {
        Some(n) => obj.insert("network".into(), Value::from(n)),
        None => obj.remove("network"),
    };
    v.to_string()
}

/// The same identities with other amounts: what a different canonical block holds.
fn with_amounts_changed(line: &str) -> String {
    edit_items(line, |item| {
        for key in [
            "assets",
            "assetsAfterFees",
            "sharePrice",
            "totalAssets",
            "totalShares",
        ] {
            if let Some(Value::String(s)) = item.get(key) {
                let n = U256::from_dec_str(s).expect("decimal uint256") + U256::from(7u64);
                item.insert(key.into(), Value::from(n.to_string()));
            }
        }
    })
}

fn identities(text: &str) -> BTreeSet<String> {
    events_of(text)
        .iter()
        .map(|e| format!("{}:{}", e.meta.transaction_hash, e.meta.log_index))
        .collect()
}

#[derive(diesel::QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    s: String,
}

async fn texts(env: &TestEnv, sql: &str) -> BTreeSet<String> {
    let mut conn = env.pg().await;
    let rows: Vec<Text> = diesel_async::RunQueryDsl::load(diesel::sql_query(sql), &mut conn)
        .await
        .expect("text query");
    rows.into_iter().map(|r| r.s).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorg_mid_fixture_gives_the_fold_without_orphaned_blocks_plus_replacements() {
    let text = generated_fixture(5_000, 71);
    let lines = fixture_lines(&text);
    let blocks: Vec<i64> = lines
        .iter()
        .map(|l| block_of(l))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Blocks [fork, resume) are orphaned; blocks from resume on are the canonical continuation.
    let fork = blocks[blocks.len() * 6 / 10];
    let resume = blocks[blocks.len() * 7 / 10];
    let below: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| block_of(l) < fork)
        .collect();
    let orphaned: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| (fork..resume).contains(&block_of(l)))
        .collect();
    let after: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| block_of(l) >= resume)
        .collect();
    assert!(!below.is_empty() && !orphaned.is_empty() && !after.is_empty());
    // Beyond the fork: an event of another network (stays) and one without a network (goes).
    let mut generic = after
        .iter()
        .filter(|l| !HANDLED.contains(&event_name(l).as_str()));
    let other_network = with_network(
        &with_new_identities(generic.next().expect("a generic event"), 1),
        Some("othernet"),
    );
    let no_network = with_network(
        &with_new_identities(generic.next().expect("a second generic event"), 2),
        None,
    );
    // Replacements: the orphaned blocks again, every other entry with other amounts under the
    // same identities (a conflict if the orphaned events were still known).
    let replacements: Vec<String> = orphaned
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i % 2 == 0 {
                with_amounts_changed(l)
            } else {
                (*l).to_owned()
            }
        })
        .collect();
    assert!(
        orphaned
            .iter()
            .step_by(2)
            .any(|l| event_name(l) == "Deposited" || event_name(l) == "SharePriceChanged"),
        "some replacement changes derived rows"
    );
    let notice = json!({"event_name": "__rindexer_reorg", "network": "intuition",
        "event_data": [{"type": "reorg", "network": "intuition", "fork_block": fork, "depth": 3}]})
    .to_string();

    let join = |parts: &[&[&str]]| -> String {
        parts
            .iter()
            .flat_map(|p| p.iter())
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    };
    let replacement_refs: Vec<&str> = replacements.iter().map(String::as_str).collect();
    let survivors = join(&[&below, &[other_network.as_str()], &replacement_refs, &after]);
    let expected = expected_tables(&survivors);
    let with_old_content = join(&[&below, &[other_network.as_str()], &orphaned, &after]);
    assert_ne!(
        expected,
        expected_tables(&with_old_content),
        "the replacements change the derived tables"
    );
    let gone = join(&[&orphaned, &[no_network.as_str()]]);

    let env = TestEnv::new("reorg").await;
    let dup = |seed| PublishOptions {
        shuffle: false,
        duplicate_share: 0.1,
        seed,
    };
    let mut first: Vec<&str> = below.clone();
    first.extend(&orphaned);
    first.push(&other_network);
    first.push(&no_network);
    env.publish(&first, &dup(1)).await;
    env.publish(&[&notice], &PublishOptions::default()).await;
    let mut then: Vec<&str> = replacement_refs.clone();
    then.extend(&after);
    env.publish(&then, &dup(2)).await;

    let service = InProcess::start(env.settings(2, 100));
    env.wait_all_drained(Duration::from_secs(180)).await;
    let stats = service.stats.clone();
    service.stop().await;

    env.assert_all_tables(&expected).await;
    assert_eq!(stats.health.metrics.reorgs.get(), 1, "one reorg applied");
    assert_eq!(
        stats.health.metrics.events_conflicting.get(),
        0,
        "replacements under orphaned identities are new events, not conflicts"
    );
    let audited = texts(
        &env,
        "SELECT transaction_hash || ':' || log_index AS s FROM reorged_events",
    )
    .await;
    assert_eq!(
        audited,
        identities(&gone),
        "reorged_events holds exactly the orphaned events"
    );
    assert_eq!(
        stats.health.metrics.reorg_events_moved.get() as usize,
        audited.len()
    );
    let logged = texts(
        &env,
        "SELECT transaction_hash || ':' || log_index AS s FROM ( \
         SELECT transaction_hash, log_index FROM atom_created_events UNION ALL \
         SELECT transaction_hash, log_index FROM triple_created_events UNION ALL \
         SELECT transaction_hash, log_index FROM deposited_events UNION ALL \
         SELECT transaction_hash, log_index FROM redeemed_events UNION ALL \
         SELECT transaction_hash, log_index FROM share_price_changed_events UNION ALL \
         SELECT transaction_hash, log_index FROM generic_events) e",
    )
    .await;
    assert_eq!(
        logged,
        identities(&survivors),
        "the event log is the survivors"
    );
    assert_eq!(
        texts(
            &env,
            &format!(
                "SELECT event_table || ' ' || (event_row->>'transaction_hash') || ':' || (event_row->>'log_index') AS s \
                 FROM reorged_events WHERE network IS NULL AND fork_block = {fork}"
            ),
        )
        .await,
        identities(&no_network)
            .into_iter()
            .map(|id| format!("generic_events {id}"))
            .collect(),
        "the events without a network were orphaned, their rows kept"
    );

    // The same notice again (a redelivery after a crash before XACK) changes nothing; a notice
    // beyond every block moves nothing and rebuilds nothing.
    let entry_id = texts(&env, "SELECT entry_id AS s FROM reorgs").await;
    assert_eq!(entry_id.len(), 1);
    let entry_id = entry_id.into_iter().next().expect("one notice");
    let notice = ReorgNotice {
        network: Some("intuition".into()),
        fork_block: fork,
        depth: Some(3),
    };
    let mut conn = env.pg().await;
    let again = reorg::apply(
        &mut conn,
        ReorgRequest {
            group: &env.group,
            stream: &env.stream,
            entry_id: &entry_id,
            notice: &notice,
            lease: None,
        },
    )
    .await
    .expect("redelivered notice");
    assert_eq!(again, ReorgOutcome::AlreadyApplied);
    let late = ReorgNotice {
        fork_block: blocks[blocks.len() - 1] + 1_000,
        ..notice.clone()
    };
    let beyond = reorg::apply(
        &mut conn,
        ReorgRequest {
            group: &env.group,
            stream: &env.stream,
            entry_id: "9999999999999-0",
            notice: &late,
            lease: None,
        },
    )
    .await
    .expect("notice beyond every block");
    assert!(
        matches!(&beyond, ReorgOutcome::Applied { recomputed, .. } if recomputed.keys == 0)
            && beyond.events_moved() == 0,
        "{beyond:?}"
    );
    env.assert_all_tables(&expected).await;
}
