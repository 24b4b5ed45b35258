//! Repeated log lines, folded: the first line of a kind is written, then at
//! most one per interval saying how many more there were. A peer that fails
//! the same way thousands of times a second (a redial refused, `accept`
//! out of descriptors) fills no disk.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Distinct kinds kept per fold; beyond it the oldest is forgotten.
const MAX_KINDS: usize = 64;

/// One place that logs (a call site), folding its repeats.
pub struct Fold {
    every: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

struct Seen {
    /// When this kind was last written.
    written: Instant,
    /// Occurrences since then that were not written.
    folded: u64,
}

impl Fold {
    /// Writes a kind at most once per `every`.
    pub fn new(every: Duration) -> Fold {
        Fold { every, seen: Mutex::new(HashMap::new()) }
    }

    /// Whether an occurrence of `kind` should be written now; `Some(n)`
    /// when it should, `n` being the occurrences folded since the last one
    /// written (log it beside the line as `repeated`), `None` to stay quiet.
    pub fn hit(&self, kind: &str) -> Option<u64> {
        self.hit_at(kind, Instant::now())
    }

    fn hit_at(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = seen.get_mut(kind) {
            if now.duration_since(entry.written) < self.every {
                entry.folded += 1;
                return None;
            }
            let folded = entry.folded;
            *entry = Seen { written: now, folded: 0 };
            return Some(folded);
        }
        if seen.len() >= MAX_KINDS {
            if let Some(oldest) = seen.iter().min_by_key(|(_, s)| s.written).map(|(k, _)| k.clone()) {
                seen.remove(&oldest);
            }
        }
        seen.insert(kind.to_owned(), Seen { written: now, folded: 0 });
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_is_written_then_one_per_interval_with_the_count_folded() {
        let fold = Fold::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(fold.hit_at("refused", start), Some(0));
        for i in 1..=5 {
            assert_eq!(fold.hit_at("refused", start + Duration::from_secs(i)), None);
        }
        assert_eq!(fold.hit_at("other", start), Some(0), "another kind is written at once");
        assert_eq!(fold.hit_at("refused", start + Duration::from_secs(10)), Some(5));
        assert_eq!(fold.hit_at("refused", start + Duration::from_secs(11)), None);
    }

    #[test]
    fn kinds_are_bounded() {
        let fold = Fold::new(Duration::from_secs(10));
        let start = Instant::now();
        for i in 0..(MAX_KINDS * 3) {
            fold.hit_at(&format!("kind {i}"), start + Duration::from_millis(i as u64));
        }
        assert!(fold.seen.lock().unwrap().len() <= MAX_KINDS);
    }
}
