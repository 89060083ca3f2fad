//! Reading values out of rindexer's JSON (SPEC §1 value forms): integers in hex, decimal or as
//! JSON numbers (never through a float), bytes32 and addresses as fixed-width hex, and field
//! access on an item ([`Fields`]) whose errors name the field by its path.

use primitive_types::U256;
use serde_json::{Map, Value};

use super::decode::{json_type, FieldError, Problem, MAX_TIMESTAMP};
use crate::domain::{Address, Bytes32, VaultType};

/// Field access on one JSON object, with errors that name the field by its path.
pub(super) struct Fields<'a> {
    pub(super) obj: &'a Map<String, Value>,
    pub(super) prefix: &'static str,
}

impl Fields<'_> {
    pub(super) fn err(&self, name: &str, problem: Problem) -> FieldError {
        FieldError {
            field: format!("{}{}", self.prefix, name),
            problem,
        }
    }

    pub(super) fn required<T>(
        &self,
        name: &str,
        parse: impl Fn(&Value) -> Result<T, Problem>,
    ) -> Result<T, FieldError> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Err(self.err(name, Problem::Missing)),
            Some(v) => parse(v).map_err(|p| self.err(name, p)),
        }
    }

    pub(super) fn opt<T>(
        &self,
        parse: impl Fn(&Value) -> Result<T, Problem>,
        name: &str,
    ) -> Result<Option<T>, FieldError> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => parse(v).map(Some).map_err(|p| self.err(name, p)),
        }
    }

    pub(super) fn uint(&self, name: &str) -> Result<U256, FieldError> {
        self.required(name, uint_value)
    }

    /// `totalShares`, also under its pre-release ABI name `sharesTotal`.
    pub(super) fn total_shares(&self) -> Result<U256, FieldError> {
        if !self.obj.contains_key("totalShares") && self.obj.contains_key("sharesTotal") {
            return self.uint("sharesTotal");
        }
        self.uint("totalShares")
    }

    pub(super) fn int(&self, name: &str) -> Result<i64, FieldError> {
        self.required(name, int_value)
    }

    pub(super) fn opt_int(&self, name: &str) -> Result<Option<i64>, FieldError> {
        self.opt(int_value, name)
    }

    pub(super) fn timestamp(&self, name: &str) -> Result<Option<i64>, FieldError> {
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

    pub(super) fn bytes32(&self, name: &str) -> Result<Bytes32, FieldError> {
        self.required(name, |v| fixed_hex::<32>(v).map(Bytes32))
    }

    pub(super) fn address(&self, name: &str) -> Result<Address, FieldError> {
        self.required(name, |v| fixed_hex::<20>(v).map(Address))
    }

    pub(super) fn bytes(&self, name: &str) -> Result<Vec<u8>, FieldError> {
        self.required(name, |v| {
            let s = string(v, "a hex string")?;
            let digits = strip_0x(s);
            // `hex::decode` would take a second `0x` too: only one prefix is valid.
            if digits.starts_with("0x") || digits.starts_with("0X") {
                return Err(Problem::NotHex);
            }
            hex::decode(digits).map_err(|_| Problem::NotHex)
        })
    }

    pub(super) fn vault_type(&self, name: &str) -> Result<VaultType, FieldError> {
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

pub(super) fn string<'v>(v: &'v Value, expected: &'static str) -> Result<&'v str, Problem> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(Problem::WrongType {
            expected,
            got: json_type(other),
        }),
    }
}

pub(super) fn strip_0x(s: &str) -> &str {
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
}

/// `N` bytes from exactly `2N` hex digits, with or without `0x`, any case.
pub(super) fn fixed_hex<const N: usize>(v: &Value) -> Result<[u8; N], Problem> {
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

pub(super) fn decimal(text: &str) -> Result<U256, Problem> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::NotAnInteger(text.to_owned()));
    }
    U256::from_dec_str(text).map_err(|_| Problem::OutOfRange { max: "2^256-1" })
}

pub(super) fn hex_uint(digits: &str, text: &str) -> Result<U256, Problem> {
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
pub(super) fn int_value(v: &Value) -> Result<i64, Problem> {
    let n = uint_value(v)?;
    if n > U256::from(i64::MAX as u64) {
        return Err(Problem::OutOfRange { max: "2^63-1" });
    }
    Ok(n.as_u64() as i64)
}
