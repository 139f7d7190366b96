//! The arithmetic behind every figure: median, percentiles, rates. Pure functions, so the
//! numbers the benchmark prints can be checked without a daemon.

use std::time::Duration;

/// The `p`-quantile (0 ≤ p ≤ 1) by nearest rank on the sorted samples: index
/// `round((n - 1) · p)`, so p = 0 is the minimum and p = 1 the maximum. NaN when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize]
}

/// The median, the mean of the two middle samples when their number is even. NaN when empty.
pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

/// Events per second over a wall-clock span; 0 when nothing happened or no time passed.
pub fn per_second(events: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if events == 0 || secs <= 0.0 {
        return 0.0;
    }
    events as f64 / secs
}

/// `ours / theirs`, or NaN when either is missing (NaN) or theirs is not positive.
pub fn ratio(ours: f64, theirs: f64) -> f64 {
    if ours.is_nan() || theirs.is_nan() || theirs <= 0.0 {
        return f64::NAN;
    }
    ours / theirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        // 1..=100 shuffled: p50 is the 51st by round(99 · 0.5) = 50 (0-based) → 51, p99 → 99.
        let mut s: Vec<f64> = (1..=100).map(f64::from).collect();
        s.reverse();
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&s, 0.5), 51.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&s, 1.0), 100.0);
        // With few samples p99 is the maximum, never past the end.
        assert_eq!(percentile(&[5.0, 9.0, 7.0], 0.99), 9.0);
        assert_eq!(percentile(&[5.0], 0.99), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn cycles_per_second() {
        assert_eq!(per_second(40, Duration::from_secs(2)), 20.0);
        assert_eq!(per_second(3, Duration::from_millis(1500)), 2.0);
        assert_eq!(per_second(0, Duration::from_secs(1)), 0.0);
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(30.0, 120.0), 0.25);
        assert!(ratio(f64::NAN, 1.0).is_nan());
        assert!(ratio(1.0, 0.0).is_nan());
    }
}
