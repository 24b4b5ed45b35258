//! The budget of TLS handshakes in progress, apart from the connection limit.
//!
//! A peer needs no certificate to open TCP and stall in the handshake, so
//! handshakes must not share the limit that admitted clients are served
//! under: they get their own, smaller budget (`--max-handshakes`) and a cap
//! per source address (`--max-handshakes-per-source`; an IPv6 source is its
//! /64). A source that holds an established (authenticated) connection, or
//! held one in the last ten minutes, may still start a handshake when the
//! shared budget is spent, from a small pool of its own (as large as the cap
//! per source): a client reconnecting after a blip gets through a flood of
//! strangers. The connection permit is taken only once the handshake has
//! succeeded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a source stays known after its last established connection ended.
const KNOWN_FOR: Duration = Duration::from_secs(600);
/// Sources remembered without an established connection, at most.
const MAX_REMEMBERED: usize = 1024;

/// Why a handshake could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `--max-handshakes` are in progress.
    Budget,
    /// `--max-handshakes-per-source` are in progress from this source.
    PerSource,
}

pub struct Handshakes {
    max: usize,
    max_per_source: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Handshakes in progress under the shared budget.
    shared: usize,
    /// Handshakes in progress of known sources beyond the shared budget.
    returning: usize,
    per_source: HashMap<IpAddr, usize>,
    known: HashMap<IpAddr, Known>,
}

struct Known {
    established: usize,
    last: Instant,
}

impl Known {
    fn is_current(&self, now: Instant) -> bool {
        self.established > 0 || now.duration_since(self.last) < KNOWN_FOR
    }
}

/// A handshake in progress; its place in the budget is freed on drop.
pub struct Slot {
    budget: Arc<Handshakes>,
    source: IpAddr,
    returning: bool,
}

/// An established connection of a source; keeps it known while it lives.
pub struct Established {
    budget: Arc<Handshakes>,
    source: IpAddr,
}

/// The address a budget is kept by: IPv4 as is, IPv6 by its /64.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from((u128::from(v6) >> 64) << 64)),
        v4 => v4,
    }
}

impl Handshakes {
    pub fn new(max: usize, max_per_source: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes { max, max_per_source, state: Mutex::default() })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn max_per_source(&self) -> usize {
        self.max_per_source
    }

    /// A place for a handshake from `ip`, or why there is none.
    pub fn begin(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let source = source_of(ip);
        let now = Instant::now();
        let mut state = self.lock();
        let from_source = state.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(Refused::PerSource);
        }
        let returning = if state.shared < self.max {
            state.shared += 1;
            false
        } else if state.returning < self.max_per_source && state.known.get(&source).is_some_and(|k| k.is_current(now)) {
            state.returning += 1;
            true
        } else {
            return Err(Refused::Budget);
        };
        *state.per_source.entry(source).or_insert(0) += 1;
        Ok(Slot { budget: self.clone(), source, returning })
    }

    /// The handshake of `slot` succeeded: its place is freed and its source
    /// is known for as long as the returned guard lives (and a while after).
    pub fn established(self: &Arc<Self>, slot: Slot) -> Established {
        let source = slot.source;
        drop(slot);
        let now = Instant::now();
        let mut state = self.lock();
        if !state.known.contains_key(&source) && state.known.len() >= MAX_REMEMBERED {
            state.known.retain(|_, k| k.is_current(now));
            if state.known.len() >= MAX_REMEMBERED {
                if let Some(oldest) = state
                    .known
                    .iter()
                    .filter(|(_, k)| k.established == 0)
                    .min_by_key(|(_, k)| k.last)
                    .map(|(ip, _)| *ip)
                {
                    state.known.remove(&oldest);
                }
            }
        }
        let known = state.known.entry(source).or_insert(Known { established: 0, last: now });
        known.established += 1;
        known.last = now;
        Established { budget: self.clone(), source }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        if self.returning {
            state.returning -= 1;
        } else {
            state.shared -= 1;
        }
        if let Some(count) = state.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                state.per_source.remove(&self.source);
            }
        }
    }
}

impl Drop for Established {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        if let Some(known) = state.known.get_mut(&self.source) {
            known.established = known.established.saturating_sub(1);
            known.last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_budget_and_the_cap_per_source_hold_and_free_on_drop() {
        let budget = Handshakes::new(3, 2);
        let a1 = budget.begin(ip("10.0.0.1")).unwrap();
        let _a2 = budget.begin(ip("10.0.0.1")).unwrap();
        assert_eq!(budget.begin(ip("10.0.0.1")).err(), Some(Refused::PerSource));
        let _b1 = budget.begin(ip("10.0.0.2")).unwrap();
        assert_eq!(budget.begin(ip("10.0.0.3")).err(), Some(Refused::Budget));
        drop(a1);
        let _c1 = budget.begin(ip("10.0.0.3")).unwrap();
        assert!(budget.lock().per_source.len() <= 3);
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64() {
        let budget = Handshakes::new(10, 1);
        let _a = budget.begin(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(budget.begin(ip("2001:db8:1:2:ffff::9")).err(), Some(Refused::PerSource));
        assert!(budget.begin(ip("2001:db8:1:3::1")).is_ok());
        assert_eq!(source_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn a_known_source_gets_through_a_spent_budget_within_its_cap() {
        let budget = Handshakes::new(2, 2);
        let first = budget.begin(ip("10.0.0.9")).unwrap();
        let connection = budget.established(first);
        let _x = budget.begin(ip("10.0.0.1")).unwrap();
        let _y = budget.begin(ip("10.0.0.2")).unwrap();
        assert_eq!(budget.begin(ip("10.0.0.3")).err(), Some(Refused::Budget));
        let again = budget.begin(ip("10.0.0.9")).expect("a known source reconnects");
        drop(connection);
        let _twice = budget.begin(ip("10.0.0.9")).expect("still known after its connection ended");
        assert_eq!(budget.begin(ip("10.0.0.9")).err(), Some(Refused::PerSource));
        drop(again);
        assert_eq!(budget.lock().returning, 1);
    }
}
