//! The Hawk nonces a SQLite database holds, known in memory, so that the
//! table they are recorded in can be appended to instead of indexed by nonce.
//!
//! Why: a nonce's key, (session, nonce), is random. Kept unique by an index
//! on that key, every nonce landed on a random leaf page of the index, and
//! every round of the group-commit writer wrote one 4 KB WAL frame per nonce
//! and left as many pages for the next checkpoint to copy and sync: the
//! writer's WAL and checkpoint work was a third of the server's CPU on an
//! authenticated listing (BENCHMARKS.md). Appended rows share a page or two
//! per round.
//!
//! The writer checks a nonce here before recording it, and one process owns a
//! SQLite file, so what this process recorded is all there is to check. Any
//! row this ledger has not read yet, another process's or one written before
//! it started, has an id above [`NonceLedger::known_through`]: the insert
//! refuses a nonce found among those rows in the same statement, and a round
//! that sees another writer's ids reads them in before the next one. So a
//! nonce is accepted once, across restarts (the rows are read back at the
//! first round) and even across processes sharing the file.
//!
//! PostgreSQL keeps its unique index: there, instances write concurrently
//! and the database is the one place that sees them all.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};

use crate::store::Timestamp;

/// Nonces recorded in this SQLite database and not yet expired.
pub(super) struct NonceLedger {
    /// Keys a hash of (session, nonce) under a per-process random key, so
    /// that nobody can choose nonces that collide with another session's.
    hasher: RandomState,
    /// Expiry of each known nonce, by key.
    expiry: HashMap<u64, Timestamp>,
    /// The same keys by expiry, so that expired ones leave in order.
    by_expiry: BTreeMap<Timestamp, Vec<u64>>,
    /// Every row with an id up to this one has been read into the ledger
    /// (or had expired). `None` until the table is first read.
    known_through: Option<i64>,
    /// Another writer's rows were seen above `known_through`.
    behind: bool,
}

/// One nonce row as the table holds it.
pub(super) struct NonceRow {
    pub id_hmac: String,
    pub nonce: String,
    pub expires_at: Timestamp,
}

impl NonceLedger {
    pub fn new() -> Self {
        NonceLedger {
            hasher: RandomState::new(),
            expiry: HashMap::new(),
            by_expiry: BTreeMap::new(),
            known_through: None,
            behind: false,
        }
    }

    /// Rows above this id (or none: every row) are to be read before the
    /// next nonces are checked: at the first round, and after another
    /// writer's rows were seen.
    pub fn to_read_after(&self) -> Option<i64> {
        match self.known_through {
            None => Some(0),
            Some(known) if self.behind => Some(known),
            Some(_) => None,
        }
    }

    /// Rows above this id are unknown to the ledger; the insert checks them.
    pub fn known_through(&self) -> i64 {
        self.known_through.unwrap_or(0)
    }

    pub fn key(&self, id_hmac: &str, nonce: &str) -> u64 {
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        self.hasher.hash_one((id_hmac, '\n', nonce))
    }

    /// Whether `key` was recorded and is still live at `now`: a nonce whose
    /// expiry has passed can no longer come with an acceptable timestamp.
    pub fn holds(&self, key: u64, now: Timestamp) -> bool {
        self.expiry
            .get(&key)
            .is_some_and(|expires_at| *expires_at > now)
    }

    pub fn record(&mut self, key: u64, expires_at: Timestamp) {
        if let Some(previous) = self.expiry.insert(key, expires_at)
            && previous != expires_at
        {
            self.unindex(key, previous);
        }
        self.by_expiry.entry(expires_at).or_default().push(key);
    }

    /// Rows read from the table: every row up to `through` is now known.
    pub fn learn(&mut self, rows: &[NonceRow], through: i64) {
        for row in rows {
            self.record(self.key(&row.id_hmac, &row.nonce), row.expires_at);
        }
        self.known_through = Some(self.known_through().max(through));
        self.behind = false;
    }

    /// This process's own rows, just inserted with these ids (and already
    /// recorded). When they directly follow the rows already known, the
    /// ledger is still complete and moves past them; otherwise another
    /// writer's rows lie between, to be read before the next round.
    pub fn appended(&mut self, ids: &mut [i64]) {
        let Some(known) = self.known_through else {
            self.behind = true;
            return;
        };
        ids.sort_unstable();
        let follows = ids
            .iter()
            .enumerate()
            .all(|(i, id)| *id == known + 1 + i as i64);
        match ids.last() {
            Some(last) if follows => self.known_through = Some(*last),
            Some(_) => self.behind = true,
            None => {}
        }
    }

    /// Forgets the nonces that expired at or before `now`.
    pub fn forget_expired(&mut self, now: Timestamp) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() > now {
                break;
            }
            let (expires_at, keys) = entry.remove_entry();
            for key in keys {
                if self.expiry.get(&key) == Some(&expires_at) {
                    self.expiry.remove(&key);
                }
            }
        }
    }

    fn unindex(&mut self, key: u64, expires_at: Timestamp) {
        if let Some(keys) = self.by_expiry.get_mut(&expires_at) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.by_expiry.remove(&expires_at);
            }
        }
    }

    /// Nonces held in memory.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.expiry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(nonce: &str, expires_at: Timestamp) -> NonceRow {
        NonceRow {
            id_hmac: "session".into(),
            nonce: nonce.into(),
            expires_at,
        }
    }

    #[test]
    fn a_nonce_is_held_until_it_expires_and_then_forgotten() {
        let mut ledger = NonceLedger::new();
        ledger.learn(&[row("a", 100), row("b", 200)], 2);
        let (a, b) = (ledger.key("session", "a"), ledger.key("session", "b"));
        assert!(ledger.holds(a, 99) && ledger.holds(b, 99));
        assert!(!ledger.holds(a, 100), "expired at 100");
        assert!(!ledger.holds(ledger.key("other", "a"), 99), "per session");
        assert!(!ledger.holds(ledger.key("sessio", "na"), 99));
        ledger.forget_expired(150);
        assert_eq!(ledger.len(), 1);
        assert!(ledger.holds(b, 150));
        // Recorded again with a later expiry: the earlier one no longer
        // takes it away.
        ledger.record(b, 300);
        ledger.forget_expired(250);
        assert!(ledger.holds(b, 250));
        ledger.forget_expired(300);
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn own_rows_move_the_ledger_on_only_when_nothing_lies_between() {
        let mut ledger = NonceLedger::new();
        assert_eq!(ledger.to_read_after(), Some(0), "never read: read all");
        ledger.learn(&[], 10);
        assert_eq!(ledger.to_read_after(), None);
        ledger.appended(&mut [12, 11]);
        assert_eq!((ledger.known_through(), ledger.to_read_after()), (12, None));
        ledger.appended(&mut []);
        assert_eq!((ledger.known_through(), ledger.to_read_after()), (12, None));
        // Row 13 is someone else's.
        ledger.appended(&mut [14, 15]);
        assert_eq!(
            (ledger.known_through(), ledger.to_read_after()),
            (12, Some(12))
        );
        ledger.learn(&[row("theirs", 100)], 15);
        assert_eq!((ledger.known_through(), ledger.to_read_after()), (15, None));
        assert!(ledger.holds(ledger.key("session", "theirs"), 0));
    }
}
