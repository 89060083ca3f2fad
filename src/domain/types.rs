//! Value types of the domain: ids, addresses, event identity and order, and the typed events.
//!
//! Everything here is plain data. Formatting to the stored text forms (`0x` + lowercase hex for ids,
//! EIP-55 for addresses) lives here too, because it is part of the contract, not of any one sink.

use std::fmt;
use std::sync::{Arc, LazyLock};

use primitive_types::U256;
use sha3::{Digest, Keccak256};

/// keccak-256 of `data`.
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    Keccak256::digest(data).into()
}

/// A bytes32 id (`termId`, `subjectId`, a transaction or block hash, …).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Bytes32(pub [u8; 32]);

/// Two 128-bit words rather than the derived length + byte-slice write: ids are the keys of every
/// map of the fold, and a fixed-size key hashes in two multiply-folds this way.
impl std::hash::Hash for Bytes32 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (lo, hi) = self.0.split_at(16);
        state.write_u128(u128::from_le_bytes(lo.try_into().unwrap_or_default()));
        state.write_u128(u128::from_le_bytes(hi.try_into().unwrap_or_default()));
    }
}

/// A term id: an atom, a triple, or a triple's counter term.
pub type TermId = Bytes32;
/// A transaction hash.
pub type TxHash = Bytes32;

impl fmt::Display for Bytes32 {
    /// `0x` followed by 64 lowercase hex digits: the stored form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 66];
        buf[0] = b'0';
        buf[1] = b'x';
        hex_lower(&self.0, &mut buf[2..]);
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Bytes32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A 20-byte account or contract address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; 20]);

/// As for [`Bytes32`]: fixed-size words instead of a length-prefixed byte slice.
impl std::hash::Hash for Address {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (lo, hi) = self.0.split_at(16);
        state.write_u128(u128::from_le_bytes(lo.try_into().unwrap_or_default()));
        state.write_u32(u32::from_le_bytes(hi.try_into().unwrap_or_default()));
    }
}

impl Address {
    /// The EIP-55 mixed-case checksum form, `0x` + 40 hex digits: the stored form.
    pub fn to_checksum(&self) -> String {
        let mut lower = [0u8; 40];
        hex_lower(&self.0, &mut lower);
        let hash = keccak256(&lower);
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, &c) in lower.iter().enumerate() {
            let nibble = if i % 2 == 0 {
                hash[i / 2] >> 4
            } else {
                hash[i / 2] & 0x0f
            };
            out.push(if c.is_ascii_alphabetic() && nibble >= 8 {
                c.to_ascii_uppercase() as char
            } else {
                c as char
            });
        }
        out
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn hex_lower(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 0x0f) as usize];
    }
}

/// `COUNTER_SALT = keccak256("COUNTER_SALT")`, computed rather than copied (a wrong constant
/// circulates in older indexers).
pub fn counter_salt() -> [u8; 32] {
    static SALT: LazyLock<[u8; 32]> = LazyLock::new(|| keccak256(b"COUNTER_SALT"));
    *SALT
}

/// The counter term of a triple: `keccak256(COUNTER_SALT ‖ triple_id)` (64-byte preimage).
pub fn counter_term_id(triple_id: &TermId) -> TermId {
    let mut preimage = [0u8; 64];
    preimage[..32].copy_from_slice(&counter_salt());
    preimage[32..].copy_from_slice(&triple_id.0);
    Bytes32(keccak256(&preimage))
}

/// The identity of an event: `(transaction_hash, log_index)`. Two deliveries with the same identity
/// are the same event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct EventId {
    pub transaction_hash: TxHash,
    pub log_index: i64,
}

/// The position of an event in chain order. "Newest" means greatest `Order`. The transaction hash
/// breaks ties so the order is total even on malformed input that repeats a `(block, log_index)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Order {
    pub block_number: i64,
    pub log_index: i64,
    pub transaction_hash: TxHash,
}

/// The vault type of MultiVault v2 (`enum VaultType { ATOM, TRIPLE, COUNTER_TRIPLE }`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum VaultType {
    Atom,
    Triple,
    CounterTriple,
}

impl VaultType {
    /// The ABI's uint8 value, if it names a vault type.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Atom),
            1 => Some(Self::Triple),
            2 => Some(Self::CounterTriple),
            _ => None,
        }
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Atom => "Atom",
            Self::Triple => "Triple",
            Self::CounterTriple => "CounterTriple",
        }
    }

    /// The type whose stored spelling is `s`.
    pub fn from_stored(s: &str) -> Option<Self> {
        [Self::Atom, Self::Triple, Self::CounterTriple]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// The type of a term row.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum TermType {
    Atom,
    Triple,
    CounterTriple,
    /// Seen in a vault but named by no creation event yet; upgraded when one arrives.
    Unknown,
}

impl TermType {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Atom => "Atom",
            Self::Triple => "Triple",
            Self::CounterTriple => "CounterTriple",
            Self::Unknown => "Unknown",
        }
    }

    /// The type whose stored spelling is `s`.
    pub fn from_stored(s: &str) -> Option<Self> {
        [Self::Atom, Self::Triple, Self::CounterTriple, Self::Unknown]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// Where and when an event happened: everything of `transaction_information`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct EventMeta {
    pub transaction_hash: TxHash,
    pub log_index: i64,
    pub block_number: i64,
    /// Block time in seconds since the Unix epoch; `None` when the producer sent none.
    pub block_timestamp: Option<i64>,
    pub block_hash: Option<Bytes32>,
    pub transaction_index: Option<i64>,
    pub address: Option<Address>,
    pub network: Option<Arc<str>>,
    pub chain_id: Option<i64>,
}

impl EventMeta {
    pub fn id(&self) -> EventId {
        EventId {
            transaction_hash: self.transaction_hash,
            log_index: self.log_index,
        }
    }

    pub fn order(&self) -> Order {
        Order {
            block_number: self.block_number,
            log_index: self.log_index,
            transaction_hash: self.transaction_hash,
        }
    }
}

/// What an event says, per event type (parameter names as in the MultiVault v2 ABI).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum EventKind {
    AtomCreated {
        creator: Address,
        term_id: TermId,
        atom_data: Vec<u8>,
        atom_wallet: Address,
    },
    TripleCreated {
        creator: Address,
        term_id: TermId,
        subject_id: TermId,
        predicate_id: TermId,
        object_id: TermId,
    },
    Deposited {
        sender: Address,
        receiver: Address,
        term_id: TermId,
        curve_id: U256,
        assets: U256,
        assets_after_fees: U256,
        shares: U256,
        total_shares: U256,
        vault_type: VaultType,
    },
    Redeemed {
        sender: Address,
        receiver: Address,
        term_id: TermId,
        curve_id: U256,
        shares: U256,
        total_shares: U256,
        assets: U256,
        fees: U256,
        vault_type: VaultType,
    },
    SharePriceChanged {
        term_id: TermId,
        curve_id: U256,
        share_price: U256,
        total_assets: U256,
        total_shares: U256,
        vault_type: VaultType,
    },
    /// Any other MultiVault event: kept in the log, no effect on derived state.
    Generic {
        event_name: String,
        /// The item exactly as received, as JSON text.
        payload: String,
    },
}

impl EventKind {
    /// The event name as rindexer spells it.
    pub fn name(&self) -> &str {
        match self {
            Self::AtomCreated { .. } => "AtomCreated",
            Self::TripleCreated { .. } => "TripleCreated",
            Self::Deposited { .. } => "Deposited",
            Self::Redeemed { .. } => "Redeemed",
            Self::SharePriceChanged { .. } => "SharePriceChanged",
            Self::Generic { event_name, .. } => event_name,
        }
    }
}

/// One decoded event.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Event {
    pub meta: EventMeta,
    pub kind: EventKind,
}

impl Event {
    pub fn id(&self) -> EventId {
        self.meta.id()
    }

    pub fn order(&self) -> Order {
        self.meta.order()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b32(s: &str) -> Bytes32 {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim_start_matches("0x"), &mut out).expect("test vector is hex");
        Bytes32(out)
    }

    #[test]
    fn counter_salt_is_keccak_of_its_name() {
        assert_eq!(
            Bytes32(counter_salt()).to_string(),
            "0xe7cbc1eb0e9b3f8688b0bc91a8278f7d2867f14f2a10dc3f0d9fcfdc32dada12"
        );
    }

    #[test]
    fn counter_term_id_matches_the_spec_vectors() {
        let cases = [
            (
                "0x64adf3bd860af07a7e627b5cd5b57ca6210545f2a04f5f8b95bbc77c00ea99c5",
                "0x35a7b8d7fffc872df5079728afad322687d8621806361f714c1f9804f1460916",
            ),
            (
                "0x13e873f24ca8440af550b1c4e42331ba07cbd813def28350bf4f545ab9239168",
                "0x10561ff3ff085932ea5ddbef47c2c70bc30475d85d1a352f42a53cdbd8b74d93",
            ),
        ];
        for (triple, counter) in cases {
            assert_eq!(counter_term_id(&b32(triple)).to_string(), counter);
        }
    }

    #[test]
    fn eip55_checksums_the_known_vectors() {
        // The test vectors of EIP-55 itself, plus the MultiVault proxy.
        for expected in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
            "0x6E35cF57A41fA15eA0EaE9C33e751b01A784Fe7e",
        ] {
            let mut raw = [0u8; 20];
            hex::decode_to_slice(expected[2..].to_ascii_lowercase(), &mut raw).expect("hex");
            assert_eq!(Address(raw).to_checksum(), expected);
        }
    }

    #[test]
    fn ids_print_lowercase_with_prefix() {
        let id = Bytes32([0xAB; 32]);
        assert_eq!(id.to_string(), format!("0x{}", "ab".repeat(32)));
    }
}
