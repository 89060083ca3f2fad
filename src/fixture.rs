//! A deterministic generator of realistic Intuition event histories, in rindexer's JSON form.
//!
//! It simulates the MultiVault contract closely enough that the derived tables are meaningful:
//! per-transaction emission order as in `MultiVault.sol` (SharePriceChanged before
//! AtomCreated/TripleCreated, the counter vault opened with ghost shares only, two
//! SharePriceChanged for one vault when an entry fee lands on the default curve), vault totals that
//! equal the ghost shares plus the holders' balances, prices that follow the vault totals, deposits
//! and redeems by many accounts with a skewed popularity over terms, redeems to zero, triples over
//! triples, and the protocol's other events as noise. Output is one rindexer envelope per
//! `(block, event type)`, in rindexer's encodings (ids without `0x`, hex log index and time,
//! decimal uint256).

use std::collections::HashMap;
use std::io::{self, Write};

use primitive_types::U256;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use crate::domain::math::WAD;
use crate::domain::types::{counter_term_id, keccak256, Address, Bytes32, TermId};

/// The MultiVault proxy on Intuition mainnet (chain 1155).
pub const MULTIVAULT: &str = "0x6E35cF57A41fA15eA0EaE9C33e751b01A784Fe7e";
/// Chain id of Intuition mainnet.
pub const CHAIN_ID: u64 = 1155;
/// Network name the generator writes.
pub const NETWORK: &str = "intuition";
/// Shares minted to the burn address when a vault opens (`minShare`); never a position.
pub const GHOST_SHARES: u64 = 1_000_000;

/// Knobs of a generated history.
#[derive(Clone, Debug)]
pub struct FixtureConfig {
    /// Stop after at least this many events (all events, noise included).
    pub events: usize,
    /// Distinct depositing accounts.
    pub accounts: usize,
    /// Upper bound on created terms (atoms + triples).
    pub terms: usize,
    /// Bonding curves in use: 1 (linear only) or 2 (linear and offset-progressive).
    pub curves: u8,
    pub seed: u64,
    /// First block number.
    pub start_block: u64,
}

impl Default for FixtureConfig {
    fn default() -> Self {
        Self {
            events: 5_000,
            accounts: 200,
            terms: 400,
            curves: 2,
            seed: 1,
            start_block: 1311,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Vault {
    assets: U256,
    shares: U256,
}

#[derive(Clone, Copy, PartialEq)]
enum TermKind {
    Atom,
    Triple { counter: TermId },
}

struct Term {
    id: TermId,
    kind: TermKind,
}

/// One log of a transaction, before envelope grouping.
struct Log {
    event_name: &'static str,
    signature: &'static str,
    fields: Map<String, Value>,
}

/// The simulated chain.
struct Chain {
    cfg: FixtureConfig,
    rng: ChaCha8Rng,
    accounts: Vec<Address>,
    terms: Vec<Term>,
    /// Vault type of every created term and counter term, by id.
    vault_types: HashMap<TermId, u8>,
    vaults: HashMap<(TermId, u8), Vault>,
    balances: HashMap<(Address, TermId, u8), U256>,
    /// Positions with a balance, for picking redeems.
    holders: Vec<(Address, TermId, u8)>,
    epoch: u64,
    total_utilization: i128,
    atom_seq: u64,
}

const SIG_ATOM: &str = "0xfd579ad7468b1720e08f84efe16900074f3ffdaaeaa82e675e5aec69bf393189";
const SIG_TRIPLE: &str = "0xf13505b910c49b286cf7fbaf1a78620cf7d8bda0e8e39c1baed620c08af686e7";
const SIG_DEPOSITED: &str = "0xf717428d3271f4ca44ee92a96ecda708463de1c200f30db4e295def5e8db6b4a";
const SIG_REDEEMED: &str = "0x5ab85658e5658520d47644e1417584159fc8edb9712149792a9337ff5e1048a4";
const SIG_PRICE: &str = "0xcc9bc63a4b047be4850fcbada8d7ed7aa097ed4f6c3b55bebc7e108ea1d2f824";
const SIG_FEE: &str = "0xc7a5742f069dec143091f9dc7c9ca18f1212ac3f76cd16f5f8aa6f5cab9b2afc";
const SIG_WALLET_FEE: &str = "0x2ef7be1e4972d779c5501d1e4658106fc78e92a99800d2f69140c78b84068e19";
const SIG_UTIL_ADDED: &str = "0x75ba148093b67b99a3a73383328e124a6ff020639d126ec6a0adb55766d32217";
const SIG_PUTIL_ADDED: &str = "0xfbc12b3b70d38b479dc83423a10420167e484f3fe4f16391b77b925194168a33";
const SIG_UTIL_REMOVED: &str = "0x15347e028ad43baa634bf63b5062f97a54a8b497ec496dd31c9b2da27fa36404";
const SIG_PUTIL_REMOVED: &str =
    "0x62c25a075382083421af11238f1e987f397e822e4d32d143ce60ba2ff98910f6";

/// The atom id of `data`: `keccak256(ATOM_SALT ‖ keccak256(data))`.
pub fn atom_id(data: &[u8]) -> TermId {
    let mut pre = [0u8; 64];
    pre[..32].copy_from_slice(&keccak256(b"ATOM_SALT"));
    pre[32..].copy_from_slice(&keccak256(data));
    Bytes32(keccak256(&pre))
}

/// The triple id: `keccak256(TRIPLE_SALT ‖ subject ‖ predicate ‖ object)`.
pub fn triple_id(s: &TermId, p: &TermId, o: &TermId) -> TermId {
    let mut pre = [0u8; 128];
    pre[..32].copy_from_slice(&keccak256(b"TRIPLE_SALT"));
    pre[32..64].copy_from_slice(&s.0);
    pre[64..96].copy_from_slice(&p.0);
    pre[96..].copy_from_slice(&o.0);
    Bytes32(keccak256(&pre))
}

fn bare_hex(b: &[u8]) -> String {
    hex::encode(b)
}

fn dec(v: U256) -> Value {
    Value::String(v.to_string())
}

fn eth(milli: u64) -> U256 {
    U256::from(milli) * U256::from(1_000_000_000_000_000u64)
}

impl Chain {
    fn new(cfg: FixtureConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let accounts = (0..cfg.accounts.max(1))
            .map(|i| {
                let h = keccak256(format!("account-{}-{i}", cfg.seed).as_bytes());
                let mut a = [0u8; 20];
                a.copy_from_slice(&h[12..]);
                Address(a)
            })
            .collect();
        let epoch = rng.random_range(1..10);
        Self {
            cfg,
            rng,
            accounts,
            terms: Vec::new(),
            vault_types: HashMap::new(),
            vaults: HashMap::new(),
            balances: HashMap::new(),
            holders: Vec::new(),
            epoch,
            total_utilization: 0,
            atom_seq: 0,
        }
    }

    /// Price of one share (1e18 units) of a vault: linear is assets/shares; curve 2 grows with
    /// the supply (an offset-progressive curve's shape).
    fn price(curve: u8, v: &Vault) -> U256 {
        if v.shares.is_zero() {
            return WAD;
        }
        match curve {
            1 => v.assets * WAD / v.shares,
            _ => WAD + v.shares / U256::from(1_000u64),
        }
    }

    fn shares_for(curve: u8, v: &Vault, assets: U256) -> U256 {
        assets * WAD / Self::price(curve, v)
    }

    fn price_log(&self, term: TermId, curve: u8, vault_type: u8) -> Log {
        let v = self.vaults.get(&(term, curve)).copied().unwrap_or_default();
        let mut f = Map::new();
        f.insert("termId".into(), json!(bare_hex(&term.0)));
        f.insert("curveId".into(), json!(curve.to_string()));
        f.insert("sharePrice".into(), dec(Self::price(curve, &v)));
        f.insert("totalAssets".into(), dec(v.assets));
        f.insert("totalShares".into(), dec(v.shares));
        f.insert("vaultType".into(), json!(vault_type));
        Log {
            event_name: "SharePriceChanged",
            signature: SIG_PRICE,
            fields: f,
        }
    }

    fn fee_log(&mut self, sender: Address, amount: U256) -> Log {
        let mut f = Map::new();
        f.insert("epoch".into(), json!(self.epoch.to_string()));
        f.insert("sender".into(), json!(sender.to_checksum()));
        f.insert("amount".into(), dec(amount));
        Log {
            event_name: "ProtocolFeeAccrued",
            signature: SIG_FEE,
            fields: f,
        }
    }

    fn utilization_logs(&mut self, user: Address, value: U256, added: bool) -> [Log; 2] {
        let v = i128::try_from(value.low_u128() / 1_000_000_000).unwrap_or(0);
        self.total_utilization += if added { v } else { -v };
        let (name, pname, sig, psig, key) = if added {
            (
                "TotalUtilizationAdded",
                "PersonalUtilizationAdded",
                SIG_UTIL_ADDED,
                SIG_PUTIL_ADDED,
                "valueAdded",
            )
        } else {
            (
                "TotalUtilizationRemoved",
                "PersonalUtilizationRemoved",
                SIG_UTIL_REMOVED,
                SIG_PUTIL_REMOVED,
                "valueRemoved",
            )
        };
        let mut t = Map::new();
        t.insert("epoch".into(), json!(self.epoch.to_string()));
        t.insert(key.into(), json!(v.to_string()));
        t.insert(
            "totalUtilization".into(),
            json!(self.total_utilization.to_string()),
        );
        let mut p = Map::new();
        p.insert("user".into(), json!(user.to_checksum()));
        p.insert("epoch".into(), json!(self.epoch.to_string()));
        p.insert(key.into(), json!(v.to_string()));
        p.insert("personalUtilization".into(), json!(v.to_string()));
        [
            Log {
                event_name: name,
                signature: sig,
                fields: t,
            },
            Log {
                event_name: pname,
                signature: psig,
                fields: p,
            },
        ]
    }

    fn open_vault(&mut self, term: TermId, curve: u8) {
        self.vaults.entry((term, curve)).or_insert(Vault {
            assets: U256::from(GHOST_SHARES),
            shares: U256::from(GHOST_SHARES),
        });
    }

    fn credit(&mut self, account: Address, term: TermId, curve: u8, shares: U256) -> U256 {
        let key = (account, term, curve);
        let bal = self.balances.entry(key).or_default();
        if bal.is_zero() {
            self.holders.push(key);
        }
        *bal += shares;
        *bal
    }

    #[allow(clippy::too_many_arguments)]
    fn deposited_log(
        sender: Address,
        receiver: Address,
        term: TermId,
        curve: u8,
        assets: U256,
        after_fees: U256,
        shares: U256,
        total: U256,
        vault_type: u8,
    ) -> Log {
        let mut f = Map::new();
        f.insert("sender".into(), json!(sender.to_checksum()));
        f.insert("receiver".into(), json!(receiver.to_checksum()));
        f.insert("termId".into(), json!(bare_hex(&term.0)));
        f.insert("curveId".into(), json!(curve.to_string()));
        f.insert("assets".into(), dec(assets));
        f.insert("assetsAfterFees".into(), dec(after_fees));
        f.insert("shares".into(), dec(shares));
        f.insert("totalShares".into(), dec(total));
        f.insert("vaultType".into(), json!(vault_type));
        Log {
            event_name: "Deposited",
            signature: SIG_DEPOSITED,
            fields: f,
        }
    }

    /// A Zipf-like pick: low indexes (old, popular terms) far more often than high ones.
    fn popular_term(&mut self) -> usize {
        let n = self.terms.len();
        let u: f64 = self.rng.random();
        ((n as f64) * u.powi(3)) as usize % n
    }

    fn atom_data(&mut self) -> Vec<u8> {
        self.atom_seq += 1;
        let i = self.atom_seq;
        match self.rng.random_range(0..40) {
            0 => vec![0xff, 0xfe, (i % 251) as u8, (i / 251 % 251) as u8], // not UTF-8
            1 => format!("nul\0atom-{}-{i}", self.cfg.seed).into_bytes(),
            2 => format!("ipfs://bafkrei{}{i}", self.cfg.seed).into_bytes(),
            3 => format!("名前-{i}-{}", self.cfg.seed).into_bytes(),
            _ => format!("atom-{}-{i}", self.cfg.seed).into_bytes(),
        }
    }

    fn create_atom(&mut self, sender: Address) -> Vec<Log> {
        let data = self.atom_data();
        let id = atom_id(&data);
        if self.vault_types.contains_key(&id) {
            return Vec::new();
        }
        let assets = eth(self.rng.random_range(150..3000));
        let fee = assets * U256::from(125u64) / U256::from(10_000u64);
        let wallet_fee = assets * U256::from(50u64) / U256::from(10_000u64);
        let after_fees = assets - fee - wallet_fee - eth(100) - U256::from(GHOST_SHARES);
        let mut logs = vec![self.fee_log(sender, fee)];
        let mut w = Map::new();
        w.insert("termId".into(), json!(bare_hex(&id.0)));
        w.insert("sender".into(), json!(sender.to_checksum()));
        w.insert("amount".into(), dec(wallet_fee));
        logs.push(Log {
            event_name: "AtomWalletDepositFeeCollected",
            signature: SIG_WALLET_FEE,
            fields: w,
        });
        self.open_vault(id, 1);
        let shares = Self::shares_for(1, &self.vaults[&(id, 1)], after_fees);
        {
            let v = self.vaults.get_mut(&(id, 1)).expect("opened above");
            v.assets += after_fees;
            v.shares += shares;
        }
        logs.push(self.price_log(id, 1, 0));
        let wallet = {
            let h = keccak256(&[b"wallet".as_slice(), &id.0].concat());
            let mut a = [0u8; 20];
            a.copy_from_slice(&h[12..]);
            Address(a)
        };
        let mut f = Map::new();
        f.insert("creator".into(), json!(sender.to_checksum()));
        f.insert("termId".into(), json!(bare_hex(&id.0)));
        f.insert("atomData".into(), json!(bare_hex(&data)));
        f.insert("atomWallet".into(), json!(wallet.to_checksum()));
        logs.push(Log {
            event_name: "AtomCreated",
            signature: SIG_ATOM,
            fields: f,
        });
        let total = self.credit(sender, id, 1, shares);
        logs.push(Self::deposited_log(
            sender, sender, id, 1, assets, after_fees, shares, total, 0,
        ));
        logs.push(self.fee_log(sender, eth(100)));
        logs.extend(self.utilization_logs(sender, assets, true));
        self.terms.push(Term {
            id,
            kind: TermKind::Atom,
        });
        self.vault_types.insert(id, 0);
        logs
    }

    fn create_triple(&mut self, sender: Address) -> Vec<Log> {
        if self.terms.len() < 3 {
            return self.create_atom(sender);
        }
        // Mostly atoms as subject/predicate/object; sometimes a triple (triples over triples).
        let pick = |chain: &mut Self| {
            let i = chain.popular_term();
            chain.terms[i].id
        };
        let (s, p, o) = (pick(self), pick(self), pick(self));
        let id = triple_id(&s, &p, &o);
        if self.vault_types.contains_key(&id) {
            return Vec::new();
        }
        let counter = counter_term_id(&id);
        let assets = eth(self.rng.random_range(150..2000));
        let fee = assets * U256::from(125u64) / U256::from(10_000u64);
        let after_fees = assets - fee - eth(100) - U256::from(2 * GHOST_SHARES);
        let mut logs = vec![self.fee_log(sender, fee)];
        self.open_vault(id, 1);
        let shares = Self::shares_for(1, &self.vaults[&(id, 1)], after_fees);
        {
            let v = self.vaults.get_mut(&(id, 1)).expect("opened above");
            v.assets += after_fees;
            v.shares += shares;
        }
        logs.push(self.price_log(id, 1, 1));
        self.open_vault(counter, 1);
        logs.push(self.price_log(counter, 1, 2));
        let mut f = Map::new();
        f.insert("creator".into(), json!(sender.to_checksum()));
        f.insert("termId".into(), json!(bare_hex(&id.0)));
        f.insert("subjectId".into(), json!(bare_hex(&s.0)));
        f.insert("predicateId".into(), json!(bare_hex(&p.0)));
        f.insert("objectId".into(), json!(bare_hex(&o.0)));
        logs.push(Log {
            event_name: "TripleCreated",
            signature: SIG_TRIPLE,
            fields: f,
        });
        let total = self.credit(sender, id, 1, shares);
        logs.push(Self::deposited_log(
            sender, sender, id, 1, assets, after_fees, shares, total, 1,
        ));
        logs.push(self.fee_log(sender, eth(100)));
        logs.extend(self.utilization_logs(sender, assets, true));
        self.terms.push(Term {
            id,
            kind: TermKind::Triple { counter },
        });
        self.vault_types.insert(id, 1);
        self.vault_types.insert(counter, 2);
        logs
    }

    fn deposit(&mut self, account: Address) -> Vec<Log> {
        let i = self.popular_term();
        let term = &self.terms[i];
        let (pro, kind) = (term.id, term.kind);
        let curve = if self.cfg.curves >= 2 && self.rng.random_bool(0.3) {
            2
        } else {
            1
        };
        // Against a triple (its counter vault) a third of the time, unless the account already
        // holds the other side on this curve (the contract reverts on that).
        let (target, vault_type) = match kind {
            TermKind::Atom => (pro, 0u8),
            TermKind::Triple { counter } => {
                let holds = |t: TermId| {
                    self.balances
                        .get(&(account, t, curve))
                        .is_some_and(|b| !b.is_zero())
                };
                let against = if holds(pro) {
                    false
                } else if holds(counter) {
                    true
                } else {
                    self.rng.random_bool(0.33)
                };
                if against {
                    (counter, 2)
                } else {
                    (pro, 1)
                }
            }
        };
        let assets = eth(self.rng.random_range(1..500));
        let fee = assets * U256::from(125u64) / U256::from(10_000u64);
        let entry_fee = assets * U256::from(50u64) / U256::from(10_000u64);
        let mut logs = Vec::new();
        logs.extend(self.utilization_logs(account, assets, true));
        logs.push(self.fee_log(account, fee));
        if curve == 2 {
            self.open_vault(target, 2);
            if let TermKind::Triple { counter } = kind {
                // A triple's first deposit on a new curve opens both sides.
                let other = if target == pro { counter } else { pro };
                if !self.vaults.contains_key(&(other, 2)) {
                    self.open_vault(other, 2);
                    let other_type = if other == pro { 1 } else { 2 };
                    logs.push(self.price_log(other, 2, other_type));
                }
            }
        }
        let mut after_fees = assets - fee;
        // The entry fee goes to the default-curve vault once it is past the fee threshold: a
        // SharePriceChanged of the default curve even when the deposit is on curve 2 (and so two
        // SharePriceChanged for one vault in one transaction when it is on curve 1).
        if self
            .vaults
            .get(&(target, 1))
            .is_some_and(|v| v.shares >= WAD)
        {
            let v = self.vaults.get_mut(&(target, 1)).expect("checked above");
            v.assets += entry_fee;
            after_fees -= entry_fee;
            logs.push(self.price_log(target, 1, vault_type));
        }
        self.open_vault(target, curve);
        let shares = Self::shares_for(curve, &self.vaults[&(target, curve)], after_fees);
        {
            let v = self.vaults.get_mut(&(target, curve)).expect("opened above");
            v.assets += after_fees;
            v.shares += shares;
        }
        logs.push(self.price_log(target, curve, vault_type));
        let total = self.credit(account, target, curve, shares);
        // Now and then an operator deposits for someone else.
        let sender = if self.rng.random_bool(0.05) {
            self.accounts[0]
        } else {
            account
        };
        logs.push(Self::deposited_log(
            sender, account, target, curve, assets, after_fees, shares, total, vault_type,
        ));
        logs
    }

    fn redeem(&mut self) -> Vec<Log> {
        let i = self.rng.random_range(0..self.holders.len());
        let (account, term, curve) = self.holders[i];
        let bal = self.balances[&(account, term, curve)];
        let vault_type = self.vault_types[&term];
        // A third of redeems empty the position.
        let shares = if self.rng.random_bool(0.33) {
            bal
        } else {
            bal / U256::from(self.rng.random_range(2..10u64))
        };
        let v = self.vaults[&(term, curve)];
        let raw = shares * v.assets / v.shares;
        let fees = raw * U256::from(200u64) / U256::from(10_000u64);
        let assets = raw - fees;
        let mut logs = vec![self.fee_log(account, fees / U256::from(2u64))];
        {
            let v = self.vaults.get_mut(&(term, curve)).expect("held");
            v.assets -= raw;
            v.assets += fees / U256::from(2u64); // the exit fee stays in the vault
            v.shares -= shares;
        }
        logs.push(self.price_log(term, curve, vault_type));
        let left = bal - shares;
        self.balances.insert((account, term, curve), left);
        if left.is_zero() {
            self.holders.swap_remove(i);
        }
        let mut f = Map::new();
        f.insert("sender".into(), json!(account.to_checksum()));
        f.insert("receiver".into(), json!(account.to_checksum()));
        f.insert("termId".into(), json!(bare_hex(&term.0)));
        f.insert("curveId".into(), json!(curve.to_string()));
        f.insert("shares".into(), dec(shares));
        f.insert("totalShares".into(), dec(left));
        f.insert("assets".into(), dec(assets));
        f.insert("fees".into(), dec(fees));
        f.insert("vaultType".into(), json!(vault_type));
        logs.push(Log {
            event_name: "Redeemed",
            signature: SIG_REDEEMED,
            fields: f,
        });
        logs.extend(self.utilization_logs(account, assets, false));
        logs
    }

    fn transaction(&mut self) -> Vec<Log> {
        let account = self.accounts[self.rng.random_range(0..self.accounts.len())];
        let room = self.terms.len() < self.cfg.terms;
        let roll = self.rng.random_range(0..100);
        if self.terms.len() < 4 || (room && roll < 12) {
            self.create_atom(account)
        } else if room && roll < 22 {
            self.create_triple(account)
        } else if !self.holders.is_empty() && roll < 45 {
            self.redeem()
        } else {
            self.deposit(account)
        }
    }
}

/// Generates a history and writes it as JSON lines, one rindexer envelope per line. Returns the
/// number of events (items) written.
pub fn generate<W: Write>(cfg: &FixtureConfig, out: &mut W) -> io::Result<usize> {
    generate_with_progress(cfg, out, |_| {})
}

/// [`generate`], calling `progress(events_so_far)` after each block.
pub fn generate_with_progress<W: Write>(
    cfg: &FixtureConfig,
    out: &mut W,
    mut progress: impl FnMut(usize),
) -> io::Result<usize> {
    let mut chain = Chain::new(cfg.clone());
    let mut written = 0usize;
    let mut block = cfg.start_block;
    let mut time: u64 = 1_756_464_756;
    while written < cfg.events {
        let block_hash = keccak256(format!("block-{}-{block}", cfg.seed).as_bytes());
        let txs = chain.rng.random_range(1..8usize);
        let mut log_index = 0u64;
        // rindexer groups a block's logs by event type, in first-seen order.
        let mut groups: Vec<(&'static str, &'static str, Vec<Value>)> = Vec::new();
        for tx_index in 0..txs {
            let tx_hash = keccak256(format!("tx-{}-{block}-{tx_index}", cfg.seed).as_bytes());
            for log in chain.transaction() {
                let mut fields = log.fields;
                fields.insert(
                    "transaction_information".into(),
                    json!({
                        "chain_id": CHAIN_ID,
                        "network": NETWORK,
                        "address": MULTIVAULT,
                        "block_hash": format!("0x{}", hex::encode(block_hash)),
                        "block_number": block,
                        "block_timestamp": format!("0x{time:x}"),
                        "transaction_hash": format!("0x{}", hex::encode(tx_hash)),
                        "log_index": format!("0x{log_index:x}"),
                        "transaction_index": tx_index,
                    }),
                );
                log_index += 1;
                match groups.iter_mut().find(|g| g.0 == log.event_name) {
                    Some(g) => g.2.push(Value::Object(fields)),
                    None => {
                        groups.push((log.event_name, log.signature, vec![Value::Object(fields)]))
                    }
                }
            }
        }
        for (chunk, (name, signature, items)) in groups.into_iter().enumerate() {
            written += items.len();
            let envelope = json!({
                "event_name": name,
                "event_data": items,
                "event_signature_hash": signature,
                "network": NETWORK,
                "block_number": block,
                "message_id": format!("rindexer_stream__-{}-{block}-chunk-{chunk}", cfg.seed),
            });
            serde_json::to_writer(&mut *out, &envelope)?;
            out.write_all(b"\n")?;
        }
        progress(written);
        block += chain.rng.random_range(1..4u64);
        time += 2;
    }
    Ok(written)
}

/// Decodes a JSON-lines fixture into its events, in file order. Any bad line or item is an error
/// naming its line: recorded fixtures are trusted input.
pub fn read_events(jsonl: &str) -> anyhow::Result<Vec<crate::domain::Event>> {
    use crate::ingest::decode::{decode_envelope, Envelope};
    let mut events = Vec::new();
    for (n, line) in jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match decode_envelope(line.as_bytes())
            .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?
        {
            Envelope::Events { items, .. } => {
                for item in items {
                    events.push(item.map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?);
                }
            }
            Envelope::Reorg(_) => anyhow::bail!("line {}: reorg notices are not events", n + 1),
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::domain::{fold, EventKind, VaultType};

    fn history(cfg: &FixtureConfig) -> (String, Vec<crate::domain::Event>) {
        let mut out = Vec::new();
        generate(cfg, &mut out).expect("in-memory write");
        let text = String::from_utf8(out).expect("utf-8");
        let events = read_events(&text).expect("the generator writes valid envelopes");
        (text, events)
    }

    fn cfg(seed: u64) -> FixtureConfig {
        FixtureConfig {
            events: 3_000,
            accounts: 40,
            terms: 120,
            seed,
            ..FixtureConfig::default()
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        assert_eq!(history(&cfg(3)).0, history(&cfg(3)).0);
        assert_ne!(history(&cfg(3)).0, history(&cfg(4)).0);
    }

    #[test]
    fn size_knob_is_respected() {
        let (_, events) = history(&cfg(5));
        assert!(
            events.len() >= 3_000 && events.len() < 3_200,
            "{}",
            events.len()
        );
    }

    #[test]
    fn emission_order_per_transaction_follows_the_contract() {
        let (_, events) = history(&cfg(6));
        let mut txs: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for e in &events {
            txs.entry((e.meta.block_number, e.meta.transaction_hash))
                .or_default()
                .push(e);
        }
        let (mut atoms, mut triples) = (0, 0);
        for logs in txs.values_mut() {
            logs.sort_by_key(|e| e.meta.log_index);
            let names: Vec<&str> = logs.iter().map(|e| e.kind.name()).collect();
            for (i, e) in logs.iter().enumerate() {
                match &e.kind {
                    EventKind::AtomCreated { term_id, .. } => {
                        atoms += 1;
                        // SharePriceChanged of the atom vault, then AtomCreated, then its Deposited.
                        assert!(
                            matches!(&logs[i - 1].kind, EventKind::SharePriceChanged { term_id: t, vault_type: VaultType::Atom, .. } if t == term_id),
                            "{names:?}"
                        );
                        assert!(
                            matches!(&logs[i + 1].kind, EventKind::Deposited { term_id: t, .. } if t == term_id),
                            "{names:?}"
                        );
                    }
                    EventKind::TripleCreated { term_id, .. } => {
                        triples += 1;
                        let counter = counter_term_id(term_id);
                        assert!(
                            matches!(&logs[i - 2].kind, EventKind::SharePriceChanged { term_id: t, vault_type: VaultType::Triple, .. } if t == term_id),
                            "{names:?}"
                        );
                        match &logs[i - 1].kind {
                            EventKind::SharePriceChanged {
                                term_id: t,
                                total_shares,
                                total_assets,
                                vault_type: VaultType::CounterTriple,
                                ..
                            } => {
                                assert_eq!(*t, counter);
                                assert_eq!(
                                    (*total_shares, *total_assets),
                                    (U256::from(GHOST_SHARES), U256::from(GHOST_SHARES))
                                );
                            }
                            other => panic!(
                                "expected the counter vault's SharePriceChanged, got {other:?}"
                            ),
                        }
                        assert!(
                            matches!(&logs[i + 1].kind, EventKind::Deposited { term_id: t, .. } if t == term_id)
                        );
                    }
                    EventKind::Deposited {
                        term_id, curve_id, ..
                    }
                    | EventKind::Redeemed {
                        term_id, curve_id, ..
                    } => {
                        // Always preceded (not necessarily directly) by its vault's SharePriceChanged.
                        assert!(logs[..i].iter().any(|p| matches!(&p.kind, EventKind::SharePriceChanged { term_id: t, curve_id: c, .. } if t == term_id && c == curve_id)), "{names:?}");
                    }
                    _ => {}
                }
            }
        }
        assert!(
            atoms > 10 && triples > 5,
            "atoms {atoms}, triples {triples}"
        );
    }

    #[test]
    fn vault_totals_are_ghost_shares_plus_balances_and_prices_follow() {
        let (_, events) = history(&cfg(8));
        let state = fold(&events);
        let tables = state.tables();
        let mut held: HashMap<_, U256> = HashMap::new();
        for p in tables.position.values() {
            *held.entry((p.term_id, p.curve_id)).or_default() += p.shares;
        }
        let (mut zeroes, mut doubles, mut curve2, mut over_triples) = (0, 0, 0, 0);
        for v in tables.vault.values() {
            let balances = held
                .get(&(v.term_id, v.curve_id))
                .copied()
                .unwrap_or_default();
            assert_eq!(
                v.total_shares,
                U256::from(GHOST_SHARES) + balances,
                "vault {:?}",
                (v.term_id, v.curve_id)
            );
            if v.curve_id == U256::one() {
                assert_eq!(
                    v.current_share_price,
                    v.total_assets * crate::domain::math::WAD / v.total_shares
                );
            } else {
                curve2 += 1;
            }
        }
        zeroes += tables
            .position
            .values()
            .filter(|p| p.shares.is_zero())
            .count();
        let mut per_tx: HashMap<_, usize> = HashMap::new();
        for e in &events {
            if let EventKind::SharePriceChanged {
                term_id, curve_id, ..
            } = &e.kind
            {
                *per_tx
                    .entry((e.meta.transaction_hash, *term_id, *curve_id))
                    .or_default() += 1;
            }
        }
        doubles += per_tx.values().filter(|n| **n > 1).count();
        for t in tables.triple.values() {
            if tables.triple.contains_key(&t.subject_id)
                || tables.triple.contains_key(&t.object_id)
                || tables.triple.contains_key(&t.predicate_id)
            {
                over_triples += 1;
            }
        }
        assert!(zeroes > 0, "some redeems empty a position");
        assert!(doubles > 0, "some transactions move one vault twice");
        assert!(curve2 > 0, "curve 2 is used");
        assert!(over_triples > 0, "some triples are about triples");
        assert!(
            events
                .iter()
                .any(|e| matches!(e.kind, EventKind::Generic { .. })),
            "noise events"
        );
    }
}
