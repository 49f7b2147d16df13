//! Is a site's live memory growing steadily (a leak) or did it level off (a cache)?
//!
//! Method: the site's estimated live bytes at evenly spaced times go through a Mann–Kendall
//! test (does the series rise more often than it falls, beyond chance?) and a Theil–Sen slope
//! (the median of all pairwise slopes: robust to the jumps sampling makes). A site is growing
//! when the rise is significant, the slope is positive, and the last third of the run still
//! rises at a good fraction of the overall rate (a cache that filled up and stopped fails
//! this). Limits: a leak that only started in the last few percent of the trace cannot be told
//! from churn in flight, and a cache that is still filling when the trace ends looks like a leak.

/// The verdict for one site.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trend {
    pub growing: bool,
    /// Theil–Sen slope of live bytes, per second.
    pub bytes_per_sec: f64,
    /// One-sided Mann–Kendall confidence that the series rises, 0–1.
    pub confidence: f64,
}

/// Confidence above which a rise counts as real.
const MIN_CONFIDENCE: f64 = 0.95;
/// The last third must rise at least this fraction of the overall slope.
const MIN_LATE_SLOPE_FRACTION: f64 = 0.25;

pub fn assess(times_ns: &[u64], live_bytes: &[f64], unfreed_bytes: f64) -> Trend {
    let n = times_ns.len().min(live_bytes.len());
    if n < 6 || unfreed_bytes <= 0.0 {
        return Trend::default();
    }
    let (t, y) = (&times_ns[..n], &live_bytes[..n]);
    let slope = theil_sen(t, y);
    let confidence = mann_kendall_confidence(y);
    let late = n - n / 3;
    let late_slope = theil_sen(&t[late..], &y[late..]);
    let still_rising = late_slope >= MIN_LATE_SLOPE_FRACTION * slope;
    Trend {
        growing: confidence >= MIN_CONFIDENCE && slope > 0.0 && still_rising,
        bytes_per_sec: slope * 1e9,
        confidence,
    }
}

/// Median of pairwise slopes, in bytes per ns.
fn theil_sen(t: &[u64], y: &[f64]) -> f64 {
    let mut slopes = Vec::with_capacity(t.len() * t.len() / 2);
    for i in 0..t.len() {
        for j in i + 1..t.len() {
            if t[j] > t[i] {
                slopes.push((y[j] - y[i]) / (t[j] - t[i]) as f64);
            }
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    let mid = slopes.len() / 2;
    let (_, m, _) = slopes.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// One-sided confidence that `y` trends upward, with the tie correction of the variance.
fn mann_kendall_confidence(y: &[f64]) -> f64 {
    let n = y.len();
    let mut s: i64 = 0;
    for i in 0..n {
        for j in i + 1..n {
            s += match y[j].total_cmp(&y[i]) {
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Less => -1,
                std::cmp::Ordering::Equal => 0,
            };
        }
    }
    let mut sorted = y.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && sorted[j] == sorted[i] {
            j += 1;
        }
        let g = (j - i) as f64;
        ties += g * (g - 1.0) * (2.0 * g + 5.0);
        i = j;
    }
    let nf = n as f64;
    let var = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - ties) / 18.0;
    if var <= 0.0 || s <= 0 {
        return 0.0;
    }
    let z = (s as f64 - 1.0) / var.sqrt();
    normal_cdf(z)
}

fn normal_cdf(z: f64) -> f64 {
    0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
}

/// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), enough for a confidence figure.
fn erf(x: f64) -> f64 {
    let sign = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    sign * (1.0 - poly * (-x * x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(n: usize) -> Vec<u64> {
        (1..=n as u64).map(|i| i * 1_000_000_000).collect()
    }

    #[test]
    fn steady_leak_is_growing_with_its_rate() {
        let t = times(48);
        let y: Vec<f64> = (0..48).map(|i| 1000.0 * i as f64 + if i % 3 == 0 { 300.0 } else { 0.0 }).collect();
        let tr = assess(&t, &y, 47_000.0);
        assert!(tr.growing, "{tr:?}");
        assert!((tr.bytes_per_sec - 1000.0).abs() < 100.0, "{tr:?}");
        assert!(tr.confidence > 0.99);
    }

    #[test]
    fn plateau_is_not_growing() {
        let t = times(48);
        let y: Vec<f64> = (0..48).map(|i| (i.min(16) * 1000) as f64).collect();
        assert!(!assess(&t, &y, 16_000.0).growing);
    }

    #[test]
    fn flat_and_recent_churn_are_not_growing() {
        let t = times(48);
        assert!(!assess(&t, &[500.0; 48], 500.0).growing);
        let mut y = vec![0.0; 48];
        y[47] = 10_000.0;
        assert!(!assess(&t, &y, 10_000.0).growing);
    }

    #[test]
    fn erf_matches_known_values() {
        assert!((erf(1.0) - 0.842_700_79).abs() < 1e-6);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-3);
    }
}
