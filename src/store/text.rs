//! The text forms the store reads back from PostgreSQL — `0x` hex ids and addresses, decimal
//! uint256 (`NUMERIC::text`), the stored spellings of vault and term types — parsed once here for
//! every reader (`load`, `prior`, `analytics`), each error naming the value.

use anyhow::{anyhow, Context};
use primitive_types::{U256, U512};

use crate::domain::types::TermType;
use crate::domain::{Address, Bytes32, VaultType};

/// `N` bytes of hex, with or without `0x`.
pub fn hex_n<const N: usize>(s: &str) -> anyhow::Result<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s.trim_start_matches("0x"), &mut out)
        .with_context(|| format!("{s:?} is not {N} bytes of hex"))?;
    Ok(out)
}

/// A term id, transaction hash or block hash.
pub fn bytes32(s: &str) -> anyhow::Result<Bytes32> {
    hex_n::<32>(s).map(Bytes32)
}

pub fn address(s: &str) -> anyhow::Result<Address> {
    hex_n::<20>(s).map(Address)
}

pub fn u256(s: &str) -> anyhow::Result<U256> {
    U256::from_dec_str(s).map_err(|e| anyhow!("{s:?} is not a uint256: {e:?}"))
}

pub fn u512(s: &str) -> anyhow::Result<U512> {
    U512::from_dec_str(s).map_err(|e| anyhow!("{s:?} is not a 512-bit number: {e:?}"))
}

pub fn vault_type(s: &str) -> anyhow::Result<VaultType> {
    VaultType::from_stored(s).ok_or_else(|| anyhow!("unknown vault type {s:?}"))
}

pub fn term_type(s: &str) -> anyhow::Result<TermType> {
    TermType::from_stored(s).ok_or_else(|| anyhow!("unknown term type {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stored_spelling_reads_back_as_written() {
        for t in [VaultType::Atom, VaultType::Triple, VaultType::CounterTriple] {
            assert_eq!(vault_type(t.as_str()).expect("spelling"), t);
        }
        for t in [
            TermType::Atom,
            TermType::Triple,
            TermType::CounterTriple,
            TermType::Unknown,
        ] {
            assert_eq!(term_type(t.as_str()).expect("spelling"), t);
        }
        assert!(vault_type("atom").is_err() && term_type("").is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let e = bytes32("0x12").expect_err("short");
        assert!(format!("{e:#}").contains("\"0x12\""), "{e:#}");
        assert!(u256("-1").is_err() && address("0xzz").is_err());
        assert_eq!(u256("42").expect("number"), U256::from(42));
    }
}
