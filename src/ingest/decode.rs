//! Decoding of rindexer envelopes into typed [`Event`]s — every encoding variant of SPEC §1.
//!
//! Pure: bytes in, typed events or typed errors out. An envelope-level fault (bad JSON, no
//! `event_name`, `event_data` neither array nor object) rejects the whole envelope; an item-level
//! fault rejects that item alone ([`ItemError`] keeps the item so it can be dead-lettered), and the
//! good items of the same envelope still decode.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::json::{self, Unstorable};
pub use super::value::uint_value;
use super::value::{fixed_hex, int_value, Fields};
use crate::domain::{Address, Bytes32, Event, EventKind, EventMeta};

/// The event name of rindexer's reorg control message (SPEC §5).
pub const REORG_EVENT: &str = "__rindexer_reorg";

/// The latest block time accepted: 9999-12-31T23:59:59Z, in seconds.
pub(super) const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// A decoded stream entry.
#[derive(Debug)]
pub enum Envelope {
    /// Events of one type (normally all logs of that type in one block), each decoded on its own.
    Events {
        event_name: String,
        items: Vec<Result<Event, ItemError>>,
    },
    /// rindexer's reorg notice: events of `network` at or after `fork_block` are orphaned.
    Reorg(ReorgNotice),
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReorgNotice {
    pub network: Option<String>,
    pub fork_block: i64,
    pub depth: Option<i64>,
}

/// Why a whole envelope was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("envelope is not a JSON object")]
    NotAnObject,
    #[error("field `event_name`: {0}")]
    EventName(Problem),
    #[error("field `event_data`: {0}")]
    EventData(Problem),
    #[error("reorg notice: {0}")]
    Reorg(FieldError),
}

/// Why one item of an envelope was rejected; `item` is the item as received.
#[derive(Debug, thiserror::Error)]
#[error("item {index}: {error}")]
pub struct ItemError {
    pub index: usize,
    pub error: FieldError,
    pub item: Value,
}

/// A bad field: which one (its path in the item) and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("field `{field}`: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Problem {
    Missing,
    /// The JSON type is not one this field takes.
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
    /// Not a non-negative integer in a form the field takes (decimal, `0x` hex, JSON number).
    NotAnInteger(String),
    /// An integer beyond the field's range.
    OutOfRange {
        max: &'static str,
    },
    /// Hex of the wrong length.
    HexLength {
        expected: usize,
        got: usize,
    },
    /// A character that is not a hex digit, or an odd number of digits.
    NotHex,
    /// A vault type other than 0, 1, 2.
    UnknownVaultType(u64),
    /// A text with a NUL character, which PostgreSQL text cannot hold.
    ContainsNul,
    /// A generic event's parameters that PostgreSQL's JSONB cannot hold.
    Unstorable(Box<Unstorable>),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "missing"),
            Problem::WrongType { expected, got } => write!(f, "expected {expected}, got {got}"),
            Problem::NotAnInteger(s) => {
                write!(f, "{:?} is not a non-negative integer", truncate(s, 80))
            }
            Problem::OutOfRange { max } => write!(f, "out of range (max {max})"),
            Problem::HexLength { expected, got } => {
                write!(f, "expected {expected} hex digits, got {got}")
            }
            Problem::NotHex => write!(f, "not valid hex"),
            Problem::ContainsNul => write!(f, "contains a NUL character"),
            Problem::Unstorable(u) => write!(f, "{u}"),
            Problem::UnknownVaultType(v) => {
                write!(f, "unknown vault type {v} (expected 0, 1 or 2)")
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub(super) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decodes one envelope (the JSON text of the entry's `payload` field).
pub fn decode_envelope(json: &[u8]) -> Result<Envelope, EnvelopeError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| EnvelopeError::Json(e.to_string()))?;
    let Value::Object(mut envelope) = value else {
        return Err(EnvelopeError::NotAnObject);
    };
    let event_name = match envelope.get("event_name") {
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(EnvelopeError::EventName(Problem::ContainsNul))
        }
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(EnvelopeError::EventName(Problem::WrongType {
                expected: "a non-empty string",
                got: "an empty string",
            }))
        }
        Some(other) => {
            return Err(EnvelopeError::EventName(Problem::WrongType {
                expected: "a string",
                got: json_type(other),
            }))
        }
        None => return Err(EnvelopeError::EventName(Problem::Missing)),
    };
    let items = match envelope.remove("event_data") {
        Some(Value::Array(items)) => items,
        Some(item @ Value::Object(_)) => vec![item],
        Some(other) => {
            return Err(EnvelopeError::EventData(Problem::WrongType {
                expected: "an array or an object",
                got: json_type(&other),
            }))
        }
        None => return Err(EnvelopeError::EventData(Problem::Missing)),
    };
    let context = EnvelopeContext {
        network: match envelope.get("network") {
            Some(Value::String(s)) if !s.contains('\0') => Some(Arc::from(s.as_str())),
            _ => None,
        },
        network_has_nul: matches!(envelope.get("network"), Some(Value::String(s)) if s.contains('\0')),
        block_number: envelope.get("block_number").cloned(),
    };
    if event_name == REORG_EVENT {
        return decode_reorg(&items, &context).map(Envelope::Reorg);
    }
    let items = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            decode_item(&event_name, &item, &context).map_err(|error| ItemError {
                index,
                error,
                item,
            })
        })
        .collect();
    Ok(Envelope::Events { event_name, items })
}

struct EnvelopeContext {
    network: Option<Arc<str>>,
    /// The envelope's `network` was a text with a NUL (so `network` is `None`).
    network_has_nul: bool,
    block_number: Option<Value>,
}

fn decode_reorg(items: &[Value], context: &EnvelopeContext) -> Result<ReorgNotice, EnvelopeError> {
    let err = |field: &str, problem| {
        EnvelopeError::Reorg(FieldError {
            field: field.to_owned(),
            problem,
        })
    };
    let item = match items.first() {
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(err(
                "event_data[0]",
                Problem::WrongType {
                    expected: "an object",
                    got: json_type(other),
                },
            ))
        }
        None => return Err(err("event_data[0]", Problem::Missing)),
    };
    let fields = Fields {
        obj: item,
        prefix: "",
    };
    let fork_block = fields.int("fork_block").map_err(EnvelopeError::Reorg)?;
    let depth = fields.opt_int("depth").map_err(EnvelopeError::Reorg)?;
    // A notice without a network rolls back every network, so a network that cannot be read
    // must reject the notice rather than widen it.
    let network = match item.get("network") {
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(err("event_data[0].network", Problem::ContainsNul))
        }
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) if context.network_has_nul => {
            return Err(err("network", Problem::ContainsNul))
        }
        None | Some(Value::Null) => context.network.as_deref().map(str::to_owned),
        Some(other) => {
            return Err(err(
                "event_data[0].network",
                Problem::WrongType {
                    expected: "a string",
                    got: json_type(other),
                },
            ))
        }
    };
    Ok(ReorgNotice {
        network,
        fork_block,
        depth,
    })
}

fn decode_item(
    event_name: &str,
    item: &Value,
    context: &EnvelopeContext,
) -> Result<Event, FieldError> {
    let Value::Object(obj) = item else {
        return Err(FieldError {
            field: "event_data[]".to_owned(),
            problem: Problem::WrongType {
                expected: "an object",
                got: json_type(item),
            },
        });
    };
    let f = Fields { obj, prefix: "" };
    let (meta, lossless) = decode_meta(obj, context, event_name_is_core(event_name))?;
    let kind = match event_name {
        "AtomCreated" => EventKind::AtomCreated {
            creator: f.address("creator")?,
            term_id: f.bytes32("termId")?,
            atom_data: f.bytes("atomData")?,
            atom_wallet: f.address("atomWallet")?,
        },
        "TripleCreated" => EventKind::TripleCreated {
            creator: f.address("creator")?,
            term_id: f.bytes32("termId")?,
            subject_id: f.bytes32("subjectId")?,
            predicate_id: f.bytes32("predicateId")?,
            object_id: f.bytes32("objectId")?,
        },
        "Deposited" => EventKind::Deposited {
            sender: f.address("sender")?,
            receiver: f.address("receiver")?,
            term_id: f.bytes32("termId")?,
            curve_id: f.uint("curveId")?,
            assets: f.uint("assets")?,
            assets_after_fees: f.uint("assetsAfterFees")?,
            shares: f.uint("shares")?,
            total_shares: f.total_shares()?,
            vault_type: f.vault_type("vaultType")?,
        },
        "Redeemed" => EventKind::Redeemed {
            sender: f.address("sender")?,
            receiver: f.address("receiver")?,
            term_id: f.bytes32("termId")?,
            curve_id: f.uint("curveId")?,
            shares: f.uint("shares")?,
            total_shares: f.total_shares()?,
            assets: f.uint("assets")?,
            fees: f.uint("fees")?,
            vault_type: f.vault_type("vaultType")?,
        },
        "SharePriceChanged" => EventKind::SharePriceChanged {
            term_id: f.bytes32("termId")?,
            curve_id: f.uint("curveId")?,
            share_price: f.uint("sharePrice")?,
            total_assets: f.uint("totalAssets")?,
            total_shares: f.uint("totalShares")?,
            vault_type: f.vault_type("vaultType")?,
        },
        other => EventKind::Generic {
            event_name: other.to_owned(),
            payload: generic_payload(obj, lossless).map_err(|u| FieldError {
                field: "(parameters)".to_owned(),
                problem: Problem::Unstorable(Box::new(u)),
            })?,
        },
    };
    Ok(Event { meta, kind })
}

/// What generic_events stores as `payload`: the item's parameters, as JSONB gives them back
/// ([`json::canonical`]). `transaction_information` is left out (its fields have their own
/// columns, and it is most of the bytes) unless one of its fields could not be stored in its
/// column, in which case the item is kept whole.
fn generic_payload(obj: &Map<String, Value>, meta_lossless: bool) -> Result<String, Unstorable> {
    json::canonical_object(obj, |k| meta_lossless && k == "transaction_information")
}

fn event_name_is_core(name: &str) -> bool {
    matches!(
        name,
        "AtomCreated" | "TripleCreated" | "Deposited" | "Redeemed" | "SharePriceChanged"
    )
}

/// Decodes `transaction_information`. The identity and the block number are always required;
/// for generic events (`strict == false`) a malformed optional field is stored as NULL instead
/// of rejecting the item (SPEC §4: generic items need only a valid identity). The flag tells
/// whether every field present was kept.
fn decode_meta(
    item: &Map<String, Value>,
    context: &EnvelopeContext,
    strict: bool,
) -> Result<(EventMeta, bool), FieldError> {
    let info = match item.get("transaction_information") {
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(FieldError {
                field: "transaction_information".to_owned(),
                problem: Problem::WrongType {
                    expected: "an object",
                    got: json_type(other),
                },
            })
        }
        None => {
            return Err(FieldError {
                field: "transaction_information".to_owned(),
                problem: Problem::Missing,
            })
        }
    };
    let f = Fields {
        obj: info,
        prefix: "transaction_information.",
    };
    let block_number = match (info.get("block_number"), &context.block_number) {
        (None | Some(Value::Null), Some(top)) => int_value(top).map_err(|problem| FieldError {
            field: "block_number".to_owned(),
            problem,
        })?,
        _ => f.int("block_number")?,
    };
    let mut l = Leniency {
        strict,
        lossless: true,
    };
    let network = match info.get("network") {
        Some(Value::String(s)) if s.contains('\0') => l
            .keep::<()>(Err(f.err("network", Problem::ContainsNul)))
            .map(|_| context.network.clone())?,
        Some(Value::String(s)) => Some(Arc::from(s.as_str())),
        _ => context.network.clone(),
    };
    let meta = EventMeta {
        transaction_hash: f.bytes32("transaction_hash")?,
        log_index: f.int("log_index")?,
        block_number,
        block_timestamp: l.keep(f.timestamp("block_timestamp"))?,
        block_hash: l.keep(f.opt(|v| fixed_hex::<32>(v).map(Bytes32), "block_hash"))?,
        transaction_index: l.keep(f.opt_int("transaction_index"))?,
        address: l.keep(f.opt(|v| fixed_hex::<20>(v).map(Address), "address"))?,
        network,
        chain_id: l.keep(f.opt_int("chain_id"))?,
    };
    Ok((meta, l.lossless))
}

/// Strict: a bad optional field rejects the item. Lenient: it becomes NULL, and `lossless`
/// records that something was dropped.
struct Leniency {
    strict: bool,
    lossless: bool,
}

impl Leniency {
    fn keep<T>(&mut self, r: Result<Option<T>, FieldError>) -> Result<Option<T>, FieldError> {
        match r {
            Err(_) if !self.strict => {
                self.lossless = false;
                Ok(None)
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::VaultType;
    use primitive_types::U256;
    use serde_json::json;

    const TERM: &str = "9f2cd1bfe8d0d6e17a3dd7a5bd59bfc8b3dfb7ad7a6e0fa3c7aa5a37a1b12b3c";
    const TX: &str = "0xcc0d446745542abf27cc91640ecad32f9ca09c0e7f36021b1a5ff3bca0317c10";
    const ADDR: &str = "0xa86335cb7b6cf4269a858a94913eced5072b75d3";

    fn info() -> Value {
        json!({
            "chain_id": 1155, "network": "intuition", "address": "0x6E35cF57A41fA15eA0EaE9C33e751b01A784Fe7e",
            "block_hash": TX, "block_number": 1311, "block_timestamp": "0x68b18674",
            "transaction_hash": TX, "log_index": "0x1a", "transaction_index": 7
        })
    }

    fn deposited() -> Value {
        json!({
            "sender": ADDR, "receiver": ADDR, "termId": TERM, "curveId": "1",
            "assets": "1000000000000000000", "assetsAfterFees": "884249999999017500",
            "shares": "884249999999017500", "totalShares": "884249999999017500", "vaultType": 0,
            "transaction_information": info()
        })
    }

    fn envelope(name: &str, data: Value) -> Vec<u8> {
        json!({"event_name": name, "event_data": data, "network": "intuition", "block_number": 1311})
            .to_string()
            .into_bytes()
    }

    fn items(json: &[u8]) -> Vec<Result<Event, ItemError>> {
        match decode_envelope(json).expect("envelope decodes") {
            Envelope::Events { items, .. } => items,
            Envelope::Reorg(r) => panic!("unexpected reorg {r:?}"),
        }
    }

    fn one(json: &[u8]) -> Result<Event, FieldError> {
        let mut items = items(json);
        assert_eq!(items.len(), 1);
        items.remove(0).map_err(|e| e.error)
    }

    /// Decodes a Deposited whose field `path` (dotted for transaction_information) is `value`
    /// (`None` removes it).
    fn with_field(path: &str, value: Option<Value>) -> Result<Event, FieldError> {
        let mut item = deposited();
        let (obj, key) = match path.split_once('.') {
            Some((_, k)) => (
                item["transaction_information"]
                    .as_object_mut()
                    .expect("object"),
                k,
            ),
            None => (item.as_object_mut().expect("object"), path),
        };
        match value {
            Some(v) => obj.insert(key.to_owned(), v),
            None => obj.remove(key),
        };
        one(&envelope("Deposited", json!([item])))
    }

    fn problem(path: &str, value: Option<Value>) -> Problem {
        let err = with_field(path, value.clone()).expect_err("bad input is rejected");
        assert_eq!(err.field, path, "the error names the field ({value:?})");
        err.problem
    }

    #[test]
    fn decodes_the_spec_example() {
        let e = one(&envelope("Deposited", json!([deposited()]))).expect("valid");
        assert_eq!(e.meta.log_index, 26);
        assert_eq!(e.meta.block_number, 1311);
        assert_eq!(e.meta.block_timestamp, Some(0x68b18674));
        assert_eq!(e.meta.transaction_index, Some(7));
        assert_eq!(e.meta.chain_id, Some(1155));
        assert_eq!(e.meta.network.as_deref(), Some("intuition"));
        assert_eq!(e.meta.transaction_hash.to_string(), TX);
        match e.kind {
            EventKind::Deposited {
                term_id,
                receiver,
                total_shares,
                vault_type,
                ..
            } => {
                assert_eq!(term_id.to_string(), format!("0x{TERM}"));
                assert_eq!(
                    receiver.to_checksum(),
                    "0xA86335cB7b6Cf4269a858a94913ecEd5072B75D3"
                );
                assert_eq!(total_shares, U256::from(884_249_999_999_017_500u64));
                assert_eq!(vault_type, VaultType::Atom);
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn event_data_may_be_a_single_object_or_empty() {
        assert!(one(&envelope("Deposited", deposited())).is_ok());
        assert!(items(&envelope("Deposited", json!([]))).is_empty());
    }

    #[test]
    fn log_index_forms() {
        for (v, expected) in [
            (json!("0x1a"), 26),
            (json!(26), 26),
            (json!("26"), 26),
            (json!("0X1A"), 26),
            (json!(4_294_967_295u64), 4_294_967_295),
        ] {
            assert_eq!(
                with_field("transaction_information.log_index", Some(v.clone()))
                    .expect("valid")
                    .meta
                    .log_index,
                expected,
                "{v}"
            );
        }
    }

    #[test]
    fn block_number_forms_and_envelope_fallback() {
        for v in [json!(1311), json!("0x51f"), json!("1311")] {
            assert_eq!(
                with_field("transaction_information.block_number", Some(v))
                    .expect("valid")
                    .meta
                    .block_number,
                1311
            );
        }
        // Absent in the item: the envelope's block_number.
        assert_eq!(
            with_field("transaction_information.block_number", None)
                .expect("valid")
                .meta
                .block_number,
            1311
        );
    }

    #[test]
    fn timestamp_forms() {
        for (v, expected) in [
            (Some(json!("0x68b18674")), Some(0x68b18674)),
            (Some(json!("1756464756")), Some(1_756_464_756)),
            (Some(json!(1_756_464_756)), Some(1_756_464_756)),
            (Some(Value::Null), None),
            (None, None),
        ] {
            assert_eq!(
                with_field("transaction_information.block_timestamp", v)
                    .expect("valid")
                    .meta
                    .block_timestamp,
                expected
            );
        }
    }

    #[test]
    fn optional_meta_may_be_absent() {
        let mut item = deposited();
        let info = item["transaction_information"]
            .as_object_mut()
            .expect("object");
        for k in [
            "chain_id",
            "network",
            "address",
            "block_hash",
            "transaction_index",
        ] {
            info.remove(k);
        }
        let env = json!({"event_name": "Deposited", "event_data": [item]}).to_string();
        let e = one(env.as_bytes()).expect("valid");
        assert_eq!(
            (
                e.meta.chain_id,
                e.meta.address,
                e.meta.block_hash,
                e.meta.transaction_index
            ),
            (None, None, None, None)
        );
        assert_eq!(e.meta.network, None);
    }

    #[test]
    fn uint256_forms_are_read_exactly() {
        let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        for (v, expected) in [
            (
                json!("884249999999017500"),
                U256::from(884_249_999_999_017_500u64),
            ),
            (json!("0xc4574f3e8e4d1fc"), U256::from(0xc4574f3e8e4d1fcu64)),
            (
                json!(884_249_999_999_017_500u64),
                U256::from(884_249_999_999_017_500u64),
            ),
            (json!(max), U256::MAX),
            (
                serde_json::from_str::<Value>(max).expect("big number"),
                U256::MAX,
            ),
            (json!(format!("0x{}", "f".repeat(64))), U256::MAX),
            (json!(format!("0x0000{}", "f".repeat(64))), U256::MAX),
        ] {
            match with_field("shares", Some(v.clone())).expect("valid").kind {
                EventKind::Deposited { shares, .. } => assert_eq!(shares, expected, "{v}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ids_with_or_without_prefix_any_case() {
        for v in [
            TERM.to_owned(),
            format!("0x{TERM}"),
            TERM.to_uppercase(),
            format!("0X{}", TERM.to_uppercase()),
        ] {
            match with_field("termId", Some(json!(v))).expect("valid").kind {
                EventKind::Deposited { term_id, .. } => {
                    assert_eq!(term_id.to_string(), format!("0x{TERM}"))
                }
                other => panic!("{other:?}"),
            }
        }
        for v in [&ADDR[2..], ADDR, &ADDR.to_uppercase()[2..]] {
            assert!(with_field("receiver", Some(json!(v))).is_ok(), "{v}");
        }
    }

    #[test]
    fn vault_type_forms() {
        for (v, expected) in [
            (json!(0), VaultType::Atom),
            (json!("1"), VaultType::Triple),
            (json!("0x2"), VaultType::CounterTriple),
        ] {
            match with_field("vaultType", Some(v)).expect("valid").kind {
                EventKind::Deposited { vault_type, .. } => assert_eq!(vault_type, expected),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn legacy_shares_total_name_is_accepted() {
        let mut item = deposited();
        let v = item
            .as_object_mut()
            .expect("object")
            .remove("totalShares")
            .expect("present");
        item["sharesTotal"] = v;
        assert!(one(&envelope("Deposited", json!([item]))).is_ok());
    }

    #[test]
    fn every_core_event_decodes() {
        let atom = json!({"creator": ADDR, "termId": TERM, "atomData": "616c696365", "atomWallet": ADDR, "transaction_information": info()});
        let triple = json!({"creator": ADDR, "termId": TERM, "subjectId": TERM, "predicateId": TERM, "objectId": TERM, "transaction_information": info()});
        let redeemed = json!({"sender": ADDR, "receiver": ADDR, "termId": TERM, "curveId": "2", "shares": "5", "totalShares": "0", "assets": "4", "fees": "1", "vaultType": "1", "transaction_information": info()});
        let price = json!({"termId": TERM, "curveId": "1", "sharePrice": "1000000000000000000", "totalAssets": "1000000", "totalShares": "1000000", "vaultType": 2, "transaction_information": info()});
        let generic =
            json!({"epoch": "2", "sender": ADDR, "amount": "5", "transaction_information": info()});
        for (name, item) in [
            ("AtomCreated", atom),
            ("TripleCreated", triple),
            ("Redeemed", redeemed),
            ("SharePriceChanged", price),
            ("ProtocolFeeAccrued", generic),
        ] {
            let e =
                one(&envelope(name, json!([item]))).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(e.kind.name(), name);
        }
        let with_0x = json!({"creator": ADDR, "termId": TERM, "atomData": "0x616c696365", "atomWallet": ADDR, "transaction_information": info()});
        match one(&envelope("AtomCreated", json!([with_0x])))
            .expect("valid")
            .kind
        {
            EventKind::AtomCreated { atom_data, .. } => assert_eq!(atom_data, b"alice"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reorg_notice() {
        let env = json!({"event_name": "__rindexer_reorg", "network": "intuition",
            "event_data": [{"type": "reorg", "network": "intuition", "fork_block": "0x51f", "depth": 3}]});
        match decode_envelope(env.to_string().as_bytes()).expect("valid") {
            Envelope::Reorg(r) => assert_eq!(
                r,
                ReorgNotice {
                    network: Some("intuition".into()),
                    fork_block: 1311,
                    depth: Some(3)
                }
            ),
            other => panic!("{other:?}"),
        }
        let bad = json!({"event_name": "__rindexer_reorg", "event_data": [{"type": "reorg"}]});
        assert!(matches!(
            decode_envelope(bad.to_string().as_bytes()),
            Err(EnvelopeError::Reorg(_))
        ));
    }

    #[test]
    fn reorg_notice_with_an_unreadable_network_is_rejected_not_widened() {
        // Issue 12 fault 2: a NUL network reached the `reorgs` table and Postgres refused it
        // forever. A notice without a network rolls back every network, so the notice is refused.
        let reason = |env: Value| match decode_envelope(env.to_string().as_bytes()) {
            Err(EnvelopeError::Reorg(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(json!({"event_name": "__rindexer_reorg",
                "event_data": [{"type": "reorg", "network": "intu\u{0}ition", "fork_block": 5}]})),
            "field `event_data[0].network`: contains a NUL character"
        );
        assert_eq!(
            reason(
                json!({"event_name": "__rindexer_reorg", "network": "a\u{0}",
                "event_data": [{"type": "reorg", "fork_block": 5}]})
            ),
            "field `network`: contains a NUL character"
        );
        assert_eq!(
            reason(json!({"event_name": "__rindexer_reorg",
                "event_data": [{"type": "reorg", "network": 7, "fork_block": 5}]})),
            "field `event_data[0].network`: expected a string, got a number"
        );
    }

    #[test]
    fn generic_parameters_jsonb_cannot_hold_are_rejected() {
        // Issue 12 fault 3: `1e1000000` passed decoding and Postgres refused the whole batch.
        let huge = format!(
            r#"{{"event_name":"Odd","event_data":[{{"x":1e1000000,"transaction_information":{}}}]}}"#,
            info()
        );
        let items = items(huge.as_bytes());
        let err = items[0].as_ref().expect_err("rejected");
        assert!(err.to_string().contains("`$.x` is the number 1e"), "{err}");
        let nul = envelope(
            "Odd",
            json!([{"k": ["ok", "a\u{0}"], "transaction_information": info()}]),
        );
        let err = one(&nul).expect_err("rejected");
        assert!(err.to_string().contains("`$.k[1]` contains a NUL"), "{err}");
    }

    #[test]
    fn generic_payload_is_the_text_jsonb_gives_back() {
        let e = one(
            format!(
                r#"{{"event_name":"Odd","event_data":[{{"b":1E2,"a":-0,"c":1.50,"transaction_information":{}}}]}}"#,
                info()
            )
            .as_bytes(),
        )
        .expect("valid");
        match e.kind {
            // As `SELECT '{"b":1E2,"a":-0,"c":1.50}'::jsonb::text` gives it, less the spaces.
            EventKind::Generic { payload, .. } => {
                assert_eq!(payload, r#"{"a":0,"b":100,"c":1.50}"#)
            }
            other => panic!("{other:?}"),
        }
    }

    // ---- bad input: one test per kind --------------------------------------------------------

    #[test]
    fn envelope_invalid_json() {
        assert!(matches!(
            decode_envelope(b"{\"event_name\": "),
            Err(EnvelopeError::Json(_))
        ));
        assert!(matches!(
            decode_envelope(b"\xff\xfe"),
            Err(EnvelopeError::Json(_))
        ));
        assert_eq!(
            decode_envelope(b"[1,2]").expect_err("array"),
            EnvelopeError::NotAnObject
        );
    }

    #[test]
    fn envelope_deeply_nested_json_is_rejected_not_a_crash() {
        let deep = format!(
            "{{\"event_name\":\"X\",\"event_data\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(matches!(
            decode_envelope(deep.as_bytes()),
            Err(EnvelopeError::Json(_))
        ));
    }

    #[test]
    fn envelope_without_event_name() {
        let e = decode_envelope(json!({"event_data": []}).to_string().as_bytes())
            .expect_err("rejected");
        assert_eq!(e, EnvelopeError::EventName(Problem::Missing));
        assert_eq!(e.to_string(), "field `event_name`: missing");
        let e = decode_envelope(
            json!({"event_name": 5, "event_data": []})
                .to_string()
                .as_bytes(),
        )
        .expect_err("rejected");
        assert!(matches!(
            e,
            EnvelopeError::EventName(Problem::WrongType { .. })
        ));
    }

    #[test]
    fn envelope_event_data_neither_array_nor_object() {
        for data in [json!("x"), json!(5), Value::Null] {
            let e = decode_envelope(&envelope("Deposited", data)).expect_err("rejected");
            assert!(matches!(e, EnvelopeError::EventData(_)), "{e}");
        }
        let e = decode_envelope(json!({"event_name": "Deposited"}).to_string().as_bytes())
            .expect_err("rejected");
        assert_eq!(e, EnvelopeError::EventData(Problem::Missing));
    }

    #[test]
    fn item_not_an_object() {
        let items = items(&envelope("Deposited", json!([5, deposited()])));
        assert!(items[0].is_err());
        assert!(
            items[1].is_ok(),
            "the good item of the same envelope still decodes"
        );
    }

    #[test]
    fn missing_field() {
        assert_eq!(problem("termId", None), Problem::Missing);
        assert_eq!(problem("assets", Some(Value::Null)), Problem::Missing);
        assert_eq!(
            problem("transaction_information.transaction_hash", None),
            Problem::Missing
        );
        assert_eq!(
            problem("transaction_information.log_index", None),
            Problem::Missing
        );
        let mut item = deposited();
        item.as_object_mut()
            .expect("object")
            .remove("transaction_information");
        assert_eq!(
            one(&envelope("Deposited", json!([item])))
                .expect_err("rejected")
                .field,
            "transaction_information"
        );
    }

    #[test]
    fn wrong_json_type() {
        assert!(matches!(
            problem("termId", Some(json!(5))),
            Problem::WrongType { .. }
        ));
        assert!(matches!(
            problem("assets", Some(json!(true))),
            Problem::WrongType { .. }
        ));
        assert!(matches!(
            problem("assets", Some(json!([1]))),
            Problem::WrongType { .. }
        ));
    }

    #[test]
    fn not_an_integer() {
        for v in [
            json!("-5"),
            json!(-5),
            json!("1.5"),
            json!(1.5),
            json!("1e18"),
            json!(""),
            json!("0x"),
            json!(" 5"),
            json!("+5"),
            json!("0xzz"),
        ] {
            assert!(
                matches!(problem("assets", Some(v.clone())), Problem::NotAnInteger(_)),
                "{v}"
            );
        }
    }

    #[test]
    fn uint256_out_of_range() {
        let over = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        assert!(matches!(
            problem("assets", Some(json!(over))),
            Problem::OutOfRange { .. }
        ));
        let over_number: Value = serde_json::from_str(over).expect("big number");
        assert!(matches!(
            problem("assets", Some(over_number)),
            Problem::OutOfRange { .. }
        ));
        assert!(matches!(
            problem("assets", Some(json!(format!("0x1{}", "0".repeat(64))))),
            Problem::OutOfRange { .. }
        ));
    }

    #[test]
    fn int64_out_of_range() {
        for path in [
            "transaction_information.log_index",
            "transaction_information.block_number",
            "transaction_information.transaction_index",
        ] {
            assert!(
                matches!(
                    problem(path, Some(json!("9223372036854775808"))),
                    Problem::OutOfRange { .. }
                ),
                "{path}"
            );
        }
        assert!(with_field(
            "transaction_information.log_index",
            Some(json!("9223372036854775807"))
        )
        .is_ok());
        assert!(matches!(
            problem(
                "transaction_information.block_timestamp",
                Some(json!("0xffffffffffff"))
            ),
            Problem::OutOfRange { .. }
        ));
    }

    #[test]
    fn wrong_hex_length() {
        assert_eq!(
            problem("termId", Some(json!(&TERM[1..]))),
            Problem::HexLength {
                expected: 64,
                got: 63
            }
        );
        assert_eq!(
            problem("receiver", Some(json!(format!("{ADDR}00")))),
            Problem::HexLength {
                expected: 40,
                got: 42
            }
        );
        assert!(matches!(
            problem(
                "transaction_information.transaction_hash",
                Some(json!("0x1234"))
            ),
            Problem::HexLength { .. }
        ));
    }

    #[test]
    fn not_hex() {
        assert_eq!(
            problem("termId", Some(json!("g".repeat(64)))),
            Problem::NotHex
        );
        let atom = json!({"creator": ADDR, "termId": TERM, "atomData": "abc", "atomWallet": ADDR, "transaction_information": info()});
        assert_eq!(
            one(&envelope("AtomCreated", json!([atom])))
                .expect_err("odd digits")
                .problem,
            Problem::NotHex
        );
        // One `0x` prefix is allowed, not two.
        let twice = json!({"creator": ADDR, "termId": TERM, "atomData": "0x0x6162", "atomWallet": ADDR, "transaction_information": info()});
        assert_eq!(
            one(&envelope("AtomCreated", json!([twice])))
                .expect_err("double prefix")
                .problem,
            Problem::NotHex
        );
        let id = format!("0x0x{}", &TERM[2..]); // 64 characters after the first prefix
        assert_eq!(problem("termId", Some(json!(id))), Problem::NotHex);
    }

    #[test]
    fn nul_in_text_columns() {
        assert_eq!(
            problem("transaction_information.network", Some(json!("a\0b"))),
            Problem::ContainsNul
        );
        let e = decode_envelope(
            json!({"event_name": "X\0", "event_data": []})
                .to_string()
                .as_bytes(),
        )
        .expect_err("rejected");
        assert_eq!(e, EnvelopeError::EventName(Problem::ContainsNul));
    }

    #[test]
    fn unknown_vault_type() {
        assert_eq!(
            problem("vaultType", Some(json!(3))),
            Problem::UnknownVaultType(3)
        );
        assert_eq!(
            problem("vaultType", Some(json!("256"))),
            Problem::UnknownVaultType(256)
        );
    }

    #[test]
    fn bad_item_keeps_the_good_items_and_itself() {
        let mut bad = deposited();
        bad["termId"] = json!("nope");
        let items = items(&envelope(
            "Deposited",
            json!([deposited(), bad.clone(), deposited()]),
        ));
        assert!(items[0].is_ok() && items[2].is_ok());
        let err = items[1].as_ref().expect_err("bad");
        assert_eq!((err.index, err.item.clone()), (1, bad));
        assert_eq!(
            err.to_string(),
            "item 1: field `termId`: expected 64 hex digits, got 4"
        );
    }

    #[test]
    fn generic_events_need_only_a_valid_identity() {
        let mut item = json!({"epoch": "x", "anything": [1, {"deep": true}], "transaction_information": info()});
        item["transaction_information"]["chain_id"] = json!("not a number");
        let e = one(&envelope("ProtocolFeeAccrued", json!([item.clone()])))
            .expect("generic is lenient");
        assert_eq!(e.meta.chain_id, None);
        match e.kind {
            EventKind::Generic {
                event_name,
                payload,
            } => {
                assert_eq!(event_name, "ProtocolFeeAccrued");
                // chain_id could not be kept in its column: the item is stored whole.
                assert_eq!(serde_json::from_str::<Value>(&payload).expect("json"), item);
            }
            other => panic!("{other:?}"),
        }
        let clean = json!({"epoch": "2", "amount": "5", "transaction_information": info()});
        match one(&envelope("ProtocolFeeAccrued", json!([clean])))
            .expect("valid")
            .kind
        {
            EventKind::Generic { payload, .. } => {
                // Every meta field has its column: the payload holds the parameters only.
                assert_eq!(payload, r#"{"amount":"5","epoch":"2"}"#);
            }
            other => panic!("{other:?}"),
        }
        item["transaction_information"]["transaction_hash"] = json!("0x12");
        assert!(one(&envelope("ProtocolFeeAccrued", json!([item]))).is_err());
    }

    #[test]
    fn core_event_with_a_bad_optional_meta_field_is_rejected() {
        assert!(matches!(
            problem("transaction_information.chain_id", Some(json!("abc"))),
            Problem::NotAnInteger(_)
        ));
    }
}

#[cfg(test)]
mod fuzz {
    //! Fuzzing of the decoder with proptest: arbitrary bytes, arbitrary JSON, and mutations of
    //! valid envelopes never panic, and whatever decodes is within the documented ranges.

    use proptest::prelude::*;

    use super::*;

    const VALID: &str = include_str!("../../tests/fixtures/small.jsonl");

    fn check(bytes: &[u8]) {
        if let Ok(Envelope::Events { items, .. }) = decode_envelope(bytes) {
            for e in items.into_iter().flatten() {
                assert!(e.meta.log_index >= 0 && e.meta.block_number >= 0);
                assert!(e
                    .meta
                    .block_timestamp
                    .is_none_or(|t| (0..=MAX_TIMESTAMP).contains(&t)));
                assert!(e.meta.network.as_deref().is_none_or(|n| !n.contains('\0')));
            }
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[0-9a-fA-Fx]{0,70}".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("event_name".to_owned()),
                            Just("event_data".to_owned()),
                            Just("termId".to_owned()),
                            Just("transaction_information".to_owned()),
                            Just("log_index".to_owned()),
                            "[a-zA-Z_]{1,12}".prop_map(|s| s)
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // PROPTEST_CASES overrides the count (`just fuzz`).
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&bytes);
        }

        #[test]
        fn arbitrary_json_never_panics(v in json_value(), name in prop_oneof![Just("Deposited"), Just("Redeemed"), Just("AtomCreated"), Just("TripleCreated"), Just("SharePriceChanged"), Just("__rindexer_reorg"), Just("X")]) {
            let envelope = serde_json::json!({"event_name": name, "event_data": [v.clone()], "network": "n"});
            check(envelope.to_string().as_bytes());
            check(v.to_string().as_bytes());
        }

        #[test]
        fn mutated_valid_envelopes_never_panic(line in 0usize..900, flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let lines: Vec<&str> = VALID.lines().collect();
            let mut bytes = lines[line % lines.len()].as_bytes().to_vec();
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            check(&bytes);
        }
    }
}
