//! Percentiles and medians. Samples are kept whole and sorted (a run has at most a few hundred
//! thousand), so every percentile is exact rather than bucketed.

use serde::{Deserialize, Serialize};

/// Latency percentiles, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Samples behind the figures.
    pub samples: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `nanos` (signed: a receipt stamped a little before its due time counts as
    /// early, not as a huge unsigned number). Empty input gives zeros.
    pub fn of(mut nanos: Vec<i64>) -> Latency {
        if nanos.is_empty() {
            return Latency::default();
        }
        nanos.sort_unstable();
        let ms = |v: i64| v as f64 / 1e6;
        Latency {
            samples: nanos.len(),
            p50_ms: ms(percentile(&nanos, 50.0)),
            p90_ms: ms(percentile(&nanos, 90.0)),
            p99_ms: ms(percentile(&nanos, 99.0)),
            max_ms: ms(nanos[nanos.len() - 1]),
        }
    }

    /// The per-percentile median of several runs' figures.
    pub fn median_of(runs: &[Latency]) -> Latency {
        Latency {
            samples: runs.iter().map(|l| l.samples).sum(),
            p50_ms: median(runs.iter().map(|l| l.p50_ms)),
            p90_ms: median(runs.iter().map(|l| l.p90_ms)),
            p99_ms: median(runs.iter().map(|l| l.p99_ms)),
            max_ms: median(runs.iter().map(|l| l.max_ms)),
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).map(|n| n * 1_000_000).collect();
        let l = Latency::of(v);
        assert_eq!((l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Latency::of(vec![7_000_000]).p99_ms, 7.0);
        assert_eq!(Latency::of(Vec::new()), Latency::default());
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median([]), 0.0);
    }
}
