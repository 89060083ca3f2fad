//! Decoding of rindexer envelopes into typed [`Event`]s — every encoding variant of SPEC §1.
//!
//! Pure: bytes in, typed events or typed errors out. An envelope-level fault (bad JSON, no
//! `event_name`, `event_data` neither array nor object) rejects the whole envelope; an item-level
//! fault rejects that item alone ([`ItemError`] keeps the item so it can be dead-lettered), and the
//! good items of the same envelope still decode.

use std::fmt;
use std::sync::Arc;

use primitive_types::U256;
use serde_json::{Map, Value};

use crate::domain::{Address, Bytes32, Event, EventKind, EventMeta, VaultType};

/// The event name of rindexer's reorg control message (SPEC §5).
pub const REORG_EVENT: &str = "__rindexer_reorg";

/// The latest block time accepted: 9999-12-31T23:59:59Z, in seconds.
const MAX_TIMESTAMP: i64 = 253_402_300_799;

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

fn json_type(v: &Value) -> &'static str {
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
            Some(Value::String(s)) => Some(Arc::from(s.as_str())),
            _ => None,
        },
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
    let network = match item.get("network") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => context.network.as_deref().map(str::to_owned),
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
    let meta = decode_meta(obj, context, event_name_is_core(event_name))?;
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
            payload: item.to_string(),
        },
    };
    Ok(Event { meta, kind })
}

fn event_name_is_core(name: &str) -> bool {
    matches!(
        name,
        "AtomCreated" | "TripleCreated" | "Deposited" | "Redeemed" | "SharePriceChanged"
    )
}

/// Decodes `transaction_information`. The identity and the block number are always required;
/// for generic events (`strict == false`) a malformed optional field is stored as NULL instead
/// of rejecting the item (SPEC §4: generic items need only a valid identity).
fn decode_meta(
    item: &Map<String, Value>,
    context: &EnvelopeContext,
    strict: bool,
) -> Result<EventMeta, FieldError> {
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
    fn lenient<T>(strict: bool, r: Result<Option<T>, FieldError>) -> Result<Option<T>, FieldError> {
        if strict {
            r
        } else {
            Ok(r.unwrap_or(None))
        }
    }
    let network = match info.get("network") {
        Some(Value::String(s)) => Some(Arc::from(s.as_str())),
        _ => context.network.clone(),
    };
    Ok(EventMeta {
        transaction_hash: f.bytes32("transaction_hash")?,
        log_index: f.int("log_index")?,
        block_number,
        block_timestamp: lenient(strict, f.timestamp("block_timestamp"))?,
        block_hash: lenient(
            strict,
            f.opt(|v| fixed_hex::<32>(v).map(Bytes32), "block_hash"),
        )?,
        transaction_index: lenient(strict, f.opt_int("transaction_index"))?,
        address: lenient(
            strict,
            f.opt(|v| fixed_hex::<20>(v).map(Address), "address"),
        )?,
        network,
        chain_id: lenient(strict, f.opt_int("chain_id"))?,
    })
}

/// Field access on one JSON object, with errors that name the field by its path.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'static str,
}

impl Fields<'_> {
    fn err(&self, name: &str, problem: Problem) -> FieldError {
        FieldError {
            field: format!("{}{}", self.prefix, name),
            problem,
        }
    }

    fn required<T>(
        &self,
        name: &str,
        parse: impl Fn(&Value) -> Result<T, Problem>,
    ) -> Result<T, FieldError> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Err(self.err(name, Problem::Missing)),
            Some(v) => parse(v).map_err(|p| self.err(name, p)),
        }
    }

    fn opt<T>(
        &self,
        parse: impl Fn(&Value) -> Result<T, Problem>,
        name: &str,
    ) -> Result<Option<T>, FieldError> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => parse(v).map(Some).map_err(|p| self.err(name, p)),
        }
    }

    fn uint(&self, name: &str) -> Result<U256, FieldError> {
        self.required(name, uint_value)
    }

    /// `totalShares`, also under its pre-release ABI name `sharesTotal`.
    fn total_shares(&self) -> Result<U256, FieldError> {
        if !self.obj.contains_key("totalShares") && self.obj.contains_key("sharesTotal") {
            return self.uint("sharesTotal");
        }
        self.uint("totalShares")
    }

    fn int(&self, name: &str) -> Result<i64, FieldError> {
        self.required(name, int_value)
    }

    fn opt_int(&self, name: &str) -> Result<Option<i64>, FieldError> {
        self.opt(int_value, name)
    }

    fn timestamp(&self, name: &str) -> Result<Option<i64>, FieldError> {
        self.opt(
            |v| {
                let t = int_value(v)?;
                if t > MAX_TIMESTAMP {
                    return Err(Problem::OutOfRange {
                        max: "253402300799 (9999-12-31)",
                    });
                }
                Ok(t)
            },
            name,
        )
    }

    fn bytes32(&self, name: &str) -> Result<Bytes32, FieldError> {
        self.required(name, |v| fixed_hex::<32>(v).map(Bytes32))
    }

    fn address(&self, name: &str) -> Result<Address, FieldError> {
        self.required(name, |v| fixed_hex::<20>(v).map(Address))
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, FieldError> {
        self.required(name, |v| {
            let s = string(v, "a hex string")?;
            let digits = strip_0x(s);
            hex::decode(digits).map_err(|_| Problem::NotHex)
        })
    }

    fn vault_type(&self, name: &str) -> Result<VaultType, FieldError> {
        self.required(name, |v| {
            let n = uint_value(v)?;
            let small = if n > U256::from(u64::MAX) {
                u64::MAX
            } else {
                n.as_u64()
            };
            u8::try_from(small)
                .ok()
                .and_then(VaultType::from_u8)
                .ok_or(Problem::UnknownVaultType(small))
        })
    }
}

fn string<'v>(v: &'v Value, expected: &'static str) -> Result<&'v str, Problem> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(Problem::WrongType {
            expected,
            got: json_type(other),
        }),
    }
}

fn strip_0x(s: &str) -> &str {
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
}

/// `N` bytes from exactly `2N` hex digits, with or without `0x`, any case.
fn fixed_hex<const N: usize>(v: &Value) -> Result<[u8; N], Problem> {
    let digits = strip_0x(string(v, "a hex string")?);
    if digits.len() != 2 * N {
        return Err(Problem::HexLength {
            expected: 2 * N,
            got: digits.len(),
        });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(digits, &mut out).map_err(|_| Problem::NotHex)?;
    Ok(out)
}

/// A uint256 from a decimal string, a `0x` hex string or a JSON number, read exactly.
pub fn uint_value(v: &Value) -> Result<U256, Problem> {
    let text = match v {
        Value::String(s) => s.as_str(),
        // With serde_json's `arbitrary_precision`, a number keeps its literal text: no float.
        Value::Number(n) => return decimal(&n.to_string()),
        other => {
            return Err(Problem::WrongType {
                expected: "a decimal string, a 0x hex string or a number",
                got: json_type(other),
            })
        }
    };
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex_digits) => hex_uint(hex_digits, text),
        None => decimal(text),
    }
}

fn decimal(text: &str) -> Result<U256, Problem> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::NotAnInteger(text.to_owned()));
    }
    U256::from_dec_str(text).map_err(|_| Problem::OutOfRange { max: "2^256-1" })
}

fn hex_uint(digits: &str, text: &str) -> Result<U256, Problem> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Problem::NotAnInteger(text.to_owned()));
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 64 {
        return Err(Problem::OutOfRange { max: "2^256-1" });
    }
    let mut padded = [b'0'; 64];
    padded[64 - significant.len()..].copy_from_slice(significant.as_bytes());
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(padded, &mut bytes).map_err(|_| Problem::NotHex)?;
    Ok(U256::from_big_endian(&bytes))
}

/// A block number, log index, transaction index or time: a uint in any form, at most 2⁶³−1.
fn int_value(v: &Value) -> Result<i64, Problem> {
    let n = uint_value(v)?;
    if n > U256::from(i64::MAX as u64) {
        return Err(Problem::OutOfRange { max: "2^63-1" });
    }
    Ok(n.as_u64() as i64)
}
