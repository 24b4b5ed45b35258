//! "Does the bridge beat the peer on this row?", with room for noise: a
//! win is a PASS only when it is clear of the rounds' spread; a difference
//! inside the noise is a TIE.
//!
//! Self-contained (std only), so its tests run without building the whole
//! bench: `rustc --edition 2021 --test benches/bridge/verdict.rs -o
//! target/bench-verdict-tests && target/bench-verdict-tests` (.ci/run does).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Tie,
    Miss,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Tie => "TIE",
            Verdict::Miss => "MISS",
        }
    }
}

/// The ratio of medians (bridge / peer) must be at least this far on the
/// right side of 1 for a PASS (or a MISS the other way) when the rounds'
/// ranges overlap: 5 %.
pub const MARGIN: f64 = 0.05;

/// The ranges decide only with this many rounds on each side: with fewer,
/// a range says nothing about the noise.
pub const MIN_ROUNDS: usize = 3;

/// The bridge's rounds against the peer's. PASS when the bridge's worst
/// round is better than the peer's best round (with at least
/// [`MIN_ROUNDS`] each), or the ratio of medians is better than 1 by at
/// least [`MARGIN`]; MISS for the same the other way round; TIE otherwise.
/// `None` when either side has no finite value.
pub fn beat(better: Better, bridge: &[f64], peer: &[f64]) -> Option<Verdict> {
    let (b, p) = (Spread::of(bridge)?, Spread::of(peer)?);
    if p.median <= 0.0 {
        return None;
    }
    let ratio = b.median / p.median;
    let enough = bridge.len() >= MIN_ROUNDS && peer.len() >= MIN_ROUNDS;
    // ahead: every bridge round better than every peer round; clear: the
    // medians better by the margin; behind and lost: the same the other way.
    let (ahead, behind, clear, lost) = match better {
        Better::Lower => (b.max < p.min, b.min > p.max, ratio <= 1.0 - MARGIN, ratio >= 1.0 + MARGIN),
        Better::Higher => (b.min > p.max, b.max < p.min, ratio >= 1.0 + MARGIN, ratio <= 1.0 - MARGIN),
    };
    Some(if (enough && ahead) || clear {
        Verdict::Pass
    } else if (enough && behind) || lost {
        Verdict::Miss
    } else {
        Verdict::Tie
    })
}

struct Spread {
    min: f64,
    max: f64,
    median: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { min: v[0], max: v[n - 1], median })
    }
}

#[cfg(test)]
mod tests {
    // The bench has no libtest harness (`harness = false`): built by cargo
    // with cfg(test) (clippy --all-targets) the #[test]s are dropped and
    // this import goes unused; `rustc --test` on this file runs them.
    #[allow(unused_imports)]
    use super::{beat, Better, Verdict};

    #[test]
    fn separate_ranges_pass_even_by_a_small_margin() {
        // Latency: the bridge's worst round (101) beats nginx's best (102);
        // the ratio is only 0.98.
        assert_eq!(beat(Better::Lower, &[100.0, 100.5, 101.0], &[102.0, 102.5, 103.0]), Some(Verdict::Pass));
        // Throughput: higher is better.
        assert_eq!(beat(Better::Higher, &[103.0, 104.0, 105.0], &[100.0, 101.0, 102.0]), Some(Verdict::Pass));
    }

    #[test]
    fn overlapping_ranges_within_the_margin_tie() {
        // The latest full run's p99 at c=1: bridge 367-416 us, nginx 362-416 us.
        assert_eq!(beat(Better::Lower, &[367.0, 383.0, 416.0], &[362.0, 392.0, 416.0]), Some(Verdict::Tie));
        // The same row the run before, 1.05x: still inside the noise.
        assert_eq!(beat(Better::Lower, &[380.0, 410.0, 430.0], &[370.0, 391.0, 440.0]), Some(Verdict::Tie));
        // WAN list, 700 against 703 ms.
        assert_eq!(beat(Better::Lower, &[696.0, 700.0, 710.0], &[670.0, 703.0, 711.0]), Some(Verdict::Tie));
        assert_eq!(beat(Better::Higher, &[98.0, 101.0, 104.0], &[97.0, 100.0, 103.0]), Some(Verdict::Tie));
    }

    #[test]
    fn overlapping_ranges_beyond_the_margin_pass() {
        // Watch x16 in the latest full run: 1.17x with the ranges overlapping.
        assert_eq!(
            beat(Better::Higher, &[254_594.0, 264_691.0, 309_338.0], &[209_142.0, 226_199.0, 334_671.0]),
            Some(Verdict::Pass)
        );
        assert_eq!(beat(Better::Lower, &[80.0, 90.0, 130.0], &[85.0, 100.0, 120.0]), Some(Verdict::Pass));
    }

    #[test]
    fn losing_clearly_misses() {
        // Separate ranges the wrong way, however small the ratio.
        assert_eq!(beat(Better::Lower, &[102.0, 102.5, 103.0], &[100.0, 100.5, 101.0]), Some(Verdict::Miss));
        assert_eq!(beat(Better::Higher, &[100.0, 101.0, 102.0], &[103.0, 104.0, 105.0]), Some(Verdict::Miss));
        // Overlapping ranges but worse by more than the margin.
        assert_eq!(beat(Better::Lower, &[90.0, 110.0, 130.0], &[85.0, 100.0, 120.0]), Some(Verdict::Miss));
    }

    #[test]
    fn one_outlier_round_does_not_decide() {
        // The medians carry the margin rule; a slow round only widens the
        // range.
        assert_eq!(beat(Better::Lower, &[90.0, 90.0, 200.0], &[100.0, 100.0, 100.0]), Some(Verdict::Pass));
        assert_eq!(beat(Better::Lower, &[99.0, 99.0, 200.0], &[100.0, 100.0, 100.0]), Some(Verdict::Tie));
    }

    #[test]
    fn too_few_rounds_leave_it_to_the_margin() {
        // One round each: no spread to judge, so only the margin counts.
        assert_eq!(beat(Better::Lower, &[99.0], &[100.0]), Some(Verdict::Tie));
        assert_eq!(beat(Better::Lower, &[94.0], &[100.0]), Some(Verdict::Pass));
        assert_eq!(beat(Better::Lower, &[106.0], &[100.0]), Some(Verdict::Miss));
    }

    #[test]
    fn no_values_no_verdict() {
        assert_eq!(beat(Better::Lower, &[], &[1.0, 2.0, 3.0]), None);
        assert_eq!(beat(Better::Higher, &[1.0, 2.0, 3.0], &[f64::NAN]), None);
    }
}
