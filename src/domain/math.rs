//! The arithmetic of SPEC §2: exact uint256 with a 512-bit intermediate where a product can
//! overflow.
//!
//! **Saturation rule.** A derived value is exact whenever it fits in uint256. A sum or product that
//! would exceed 2²⁵⁶−1 (possible only on hostile input: all the ether there is fits in 2⁸⁷ wei) is
//! stored as 2²⁵⁶−1. Every function here is a pure function of its inputs, so saturation never
//! makes a result depend on event order.

use primitive_types::{U256, U512};

/// 10¹⁸: one share, in the contract's fixed-point unit.
pub const WAD: U256 = U256([1_000_000_000_000_000_000, 0, 0, 0]);

/// `market_cap = total_shares * share_price / 10^18`, rounded down, through a 512-bit product.
pub fn market_cap(total_shares: U256, share_price: U256) -> U256 {
    let product = total_shares.full_mul(share_price);
    saturate(product / U512::from(WAD))
}

/// `min(x, 2²⁵⁶−1)`.
pub fn saturate(x: U512) -> U256 {
    U256::try_from(x).unwrap_or(U256::MAX)
}

/// Sum of non-negative values, saturating: `min(Σ, 2²⁵⁶−1)`, independent of the order of terms.
pub fn sum<I: IntoIterator<Item = U256>>(values: I) -> U256 {
    values
        .into_iter()
        .fold(U256::zero(), |acc, v| acc.saturating_add(v))
}

/// An exact running total that supports removal: uint256 terms summed in 512 bits, so any
/// sequence of adds and removals of the same terms gives the same total. (2⁵¹²−1 holds more than
/// 2²⁵⁵ terms of 2²⁵⁶−1: no count of triples reaches it; the add saturates rather than panic.)
///
/// Stored in two forms: [`value`](Self::value), the saturated uint256 that readers see, and
/// [`exact`](Self::exact), the 512-bit sum, which a total read back from storage must start from
/// ([`from_exact`](Self::from_exact)) so that a later removal stays exact.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Total(U512);

impl Total {
    /// A total that stands at `exact` (the 512-bit sum of its terms).
    pub fn from_exact(exact: U512) -> Self {
        Self(exact)
    }

    pub fn add(&mut self, v: U256) {
        self.0 = self.0.saturating_add(U512::from(v));
    }

    /// Removes a term that was added before.
    pub fn remove(&mut self, v: U256) {
        self.0 = self.0.saturating_sub(U512::from(v));
    }

    /// The total as stored: saturated to uint256.
    pub fn value(&self) -> U256 {
        saturate(self.0)
    }

    /// The exact sum, in 512 bits.
    pub fn exact(&self) -> U512 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> U256 {
        U256::from_dec_str(s).expect("decimal")
    }

    #[test]
    fn market_cap_formula_table() {
        // (total_shares, share_price, expected market_cap)
        let cases = [
            ("0", "0", "0"),
            ("0", "1000000000000000000", "0"),
            // A fresh linear atom vault (INTUITION-NOTES worked numbers): price 1e18 → cap = shares.
            (
                "884250000000017500",
                "1000000000000000000",
                "884250000000017500",
            ),
            // Rounds down.
            ("3", "333333333333333333", "0"),
            (
                "3000000000000000000",
                "333333333333333333",
                "999999999999999999",
            ),
            // Product beyond 2^256 still exact through 512 bits.
            (
                "115792089237316195423570985008687907853269984665640564039457584007913129639935",
                "1000000000000000000",
                "115792089237316195423570985008687907853269984665640564039457584007913129639935",
            ),
            (
                "115792089237316195423570985008687907853269984665640564039457584007913129639935",
                "2",
                "231584178474632390847141970017375815706539969331281128078915",
            ),
        ];
        for (shares, price, expected) in cases {
            assert_eq!(
                market_cap(u(shares), u(price)),
                u(expected),
                "{shares} * {price}"
            );
        }
    }

    #[test]
    fn market_cap_saturates_beyond_uint256() {
        assert_eq!(market_cap(U256::MAX, U256::MAX), U256::MAX);
    }

    #[test]
    fn sum_saturates_and_is_order_independent() {
        let a = [U256::MAX - 5, U256::from(3), U256::from(7)];
        assert_eq!(sum(a), U256::MAX);
        assert_eq!(sum(a.iter().rev().copied()), U256::MAX);
        assert_eq!(sum([U256::from(2), U256::from(3)]), U256::from(5));
    }

    #[test]
    fn total_removes_exactly_even_past_uint256() {
        let mut t = Total::default();
        t.add(U256::MAX);
        t.add(U256::from(10));
        assert_eq!(t.value(), U256::MAX);
        t.remove(U256::MAX);
        assert_eq!(t.value(), U256::from(10));
    }

    #[test]
    fn total_resumes_exactly_from_its_exact_sum() {
        let mut t = Total::default();
        for _ in 0..10 {
            t.add(U256::MAX);
        }
        assert_eq!(t.value(), U256::MAX);
        assert_eq!(t.exact(), U512::from(U256::MAX) * U512::from(10));
        // Read back from storage: the exact sum, not the saturated value, carries on.
        let mut back = Total::from_exact(t.exact());
        assert_eq!(back, t);
        for _ in 0..9 {
            back.remove(U256::MAX);
        }
        back.add(U256::from(7));
        assert_eq!(back.value(), U256::MAX);
        back.remove(U256::MAX);
        assert_eq!(back.value(), U256::from(7));
    }
}
