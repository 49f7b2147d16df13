//! Is a site's live memory growing steadily (a leak), or did it level off or turn over (a cache)?
//!
//! A site is `growing` when four things hold, all measured from the moment it first held memory
//! (so a leak that started late is judged on its own span):
//! 1. It rises: a Mann–Kendall test on its estimated live bytes at evenly spaced times finds an
//!    upward trend with confidence >= 0.95, and the Theil–Sen slope (median of all pairwise
//!    slopes, robust to the jumps sampling makes) is positive.
//! 2. It is still rising: the last third of the span rises on its own (Mann–Kendall >= 0.95) by at
//!    least 10% of the whole rise. A cache that filled up and stopped fails this.
//! 3. The late rise is more than sampling noise: at least two standard deviations of the
//!    sampling error of that rise, which comes from the sampled allocations born in the last
//!    third and still live plus those born before it and freed in it. A sampled cache that
//!    turns over wobbles; this keeps a wobble from reading as growth.
//! 4. Old allocations survive: at least 15% of the site's live bytes were allocated in the first
//!    half of its span. A leak keeps what it allocated long ago; a cache that turns over does not.
//!
//! Limits: a leak that started in the last few percent of the trace cannot be told from churn
//! in flight; a cache still filling when the trace ends, or one whose entries outlive the trace,
//! looks like a leak until it fills; a leak whose old allocations are freed while new ones pile
//! up faster (a slow queue) fails test 4.

/// A sampled allocation still live at the end of the trace.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    pub alloc_ns: u64,
    /// Bytes it stands for.
    pub weight: f64,
    /// Sampling variance of `weight` (0 when every allocation is recorded).
    pub variance: f64,
}

/// The verdict for one site.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trend {
    pub growing: bool,
    /// Theil–Sen slope of live bytes, per second.
    pub bytes_per_sec: f64,
    /// One-sided Mann–Kendall confidence that the series rises, 0–1.
    pub confidence: f64,
}

/// What the verdict on one site is drawn from.
pub struct Evidence<'a> {
    /// Evenly spaced times, and the site's estimated live bytes at each.
    pub times_ns: &'a [u64],
    pub live_bytes: &'a [f64],
    pub end_ns: u64,
    pub unfreed_bytes: f64,
    /// When the site first held memory: its earliest allocation the trace knows of.
    pub active_from: u64,
    /// The site's sampled allocations still live at the end.
    pub live: &'a [Lifetime],
    /// At each of `times_ns`, the sampling variance of the site's freed allocations that were
    /// live across it (allocated at or before it, freed after it).
    pub freed_variance: &'a [f64],
}

const MIN_CONFIDENCE: f64 = 0.95;
const MIN_LATE_CONFIDENCE: f64 = 0.95;
const MIN_LATE_RISE_FRACTION: f64 = 0.1;
const MIN_LATE_RISE_SDS: f64 = 2.0;
const MIN_EARLY_SURVIVOR_FRACTION: f64 = 0.15;
/// Fewer points than this since the site first held memory: too recent to judge.
const MIN_ACTIVE_POINTS: usize = 8;

pub fn assess(e: &Evidence<'_>) -> Trend {
    let n = e.times_ns.len().min(e.live_bytes.len());
    if e.unfreed_bytes <= 0.0 {
        return Trend::default();
    }
    let active_from = e.active_from;
    let Some(start) = (0..n).find(|&i| e.times_ns[i] >= active_from && e.live_bytes[i] > 0.0) else {
        return Trend::default();
    };
    let (t, y) = (&e.times_ns[start..n], &e.live_bytes[start..n]);
    if y.len() < MIN_ACTIVE_POINTS {
        return Trend::default();
    }
    let slope = theil_sen(t, y);
    let confidence = mann_kendall_confidence(y);
    let rises = confidence >= MIN_CONFIDENCE && slope > 0.0;

    let late = y.len() - y.len() / 3;
    let (lt, ly) = (&t[late..], &y[late..]);
    // Least squares here, not Theil–Sen: with few sample steps in a short stretch, the median
    // pairwise slope of a staircase understates its rise.
    let late_rise = least_squares_slope(lt, ly) * (lt[lt.len() - 1] - lt[0]) as f64;
    let whole_rise = median_of_ends(y, false) - median_of_ends(y, true);
    // Sampling variance of L(end) - L(late start): allocations that crossed the boundary, the
    // freed ones live across it and the live ones born after it.
    let late_from = lt[0];
    let late_variance: f64 = e.freed_variance.get(start + late).copied().unwrap_or(0.0)
        + e.live.iter().filter(|l| l.alloc_ns > late_from).map(|l| l.variance).sum::<f64>();
    let still_rising = mann_kendall_confidence(ly) >= MIN_LATE_CONFIDENCE
        && late_rise >= MIN_LATE_RISE_FRACTION * whole_rise
        && late_rise >= MIN_LATE_RISE_SDS * late_variance.sqrt();

    let midpoint = active_from + e.end_ns.saturating_sub(active_from) / 2;
    let live = e.live.iter();
    let live_total: f64 = live.clone().map(|l| l.weight).sum();
    let early: f64 = live.filter(|l| l.alloc_ns < midpoint).map(|l| l.weight).sum();
    let old_survive = live_total > 0.0 && early >= MIN_EARLY_SURVIVOR_FRACTION * live_total;

    if std::env::var_os("LEAK_ANALYZE_DEBUG_TREND").is_some() {
        eprintln!(
            "trend: conf {confidence:.3} slope {:.0}/s | late conf {:.3} rise {late_rise:.0} whole {whole_rise:.0} sd {:.0} | early {:.2}",
            slope * 1e9,
            mann_kendall_confidence(ly),
            late_variance.sqrt(),
            early / live_total.max(1.0)
        );
        eprintln!("  series from {start}: {:?}", y.iter().map(|v| (v / 1e6) as i64).collect::<Vec<_>>());
    }
    Trend { growing: rises && still_rising && old_survive, bytes_per_sec: slope * 1e9, confidence }
}

/// Median of the first (or last) three points: a robust level at one end of the series.
fn median_of_ends(y: &[f64], first: bool) -> f64 {
    let k = y.len().min(3);
    let mut v: Vec<f64> = if first { y[..k].to_vec() } else { y[y.len() - k..].to_vec() };
    v.sort_by(f64::total_cmp);
    (v[(k - 1) / 2] + v[k / 2]) / 2.0
}

/// Ordinary least-squares slope, in bytes per ns.
fn least_squares_slope(t: &[u64], y: &[f64]) -> f64 {
    let n = t.len() as f64;
    let t0 = t.first().copied().unwrap_or(0);
    let ts: Vec<f64> = t.iter().map(|&v| (v - t0) as f64).collect();
    let (mt, my) = (ts.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = ts.iter().zip(y).map(|(a, b)| (a - mt) * (b - my)).sum();
    let var: f64 = ts.iter().map(|a| (a - mt) * (a - mt)).sum();
    if var > 0.0 {
        cov / var
    } else {
        0.0
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
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    sign * (1.0 - poly * (-x * x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(n: usize) -> Vec<u64> {
        (1..=n as u64).map(|i| i * 1_000_000_000).collect()
    }

    fn live(alloc_ns: u64, weight: f64, variance: f64) -> Lifetime {
        Lifetime { alloc_ns, weight, variance }
    }

    /// Evidence for a series whose live allocations were made when the series stepped up.
    fn judge(y: &[f64], variance_per_byte: f64) -> Trend {
        let t = times(y.len());
        let mut lives = Vec::new();
        let mut prev = 0.0;
        for (i, &v) in y.iter().enumerate() {
            if v > prev {
                lives.push(live(t[i], v - prev, (v - prev) * variance_per_byte));
            }
            prev = v;
        }
        assess(&Evidence {
            times_ns: &t,
            live_bytes: y,
            end_ns: *t.last().unwrap(),
            unfreed_bytes: *y.last().unwrap(),
            active_from: lives.iter().map(|l| l.alloc_ns).min().unwrap_or(0),
            live: &lives,
            freed_variance: &[],
        })
    }

    #[test]
    fn steady_leak_is_growing_with_its_rate() {
        let y: Vec<f64> = (0..48).map(|i| 1000.0 * i as f64 + if i % 3 == 0 { 300.0 } else { 0.0 }).collect();
        let tr = judge(&y, 0.0);
        assert!(tr.growing, "{tr:?}");
        assert!((tr.bytes_per_sec - 1000.0).abs() < 100.0, "{tr:?}");
        assert!(tr.confidence > 0.99);
    }

    #[test]
    fn plateau_is_not_growing() {
        let y: Vec<f64> = (0..48).map(|i| (i.min(16) * 1000) as f64).collect();
        assert!(!judge(&y, 0.0).growing);
    }

    #[test]
    fn late_leak_is_judged_on_its_own_span() {
        let y: Vec<f64> = (0..48).map(|i| if i < 30 { 0.0 } else { 2000.0 * (i - 29) as f64 }).collect();
        let tr = judge(&y, 0.0);
        assert!(tr.growing, "{tr:?}");
        assert!((tr.bytes_per_sec - 2000.0).abs() < 200.0, "{tr:?}");
    }

    #[test]
    fn rise_within_sampling_noise_is_not_growing() {
        // A rise of 3 KB over the last third, when each sampled byte stands for a 64 KB sample.
        let y: Vec<f64> = (0..48).map(|i| 100_000.0 + i as f64 * 200.0).collect();
        assert!(!judge(&y, 65_536.0).growing);
        assert!(judge(&y, 0.0).growing);
    }

    #[test]
    fn cache_that_turned_over_is_not_growing() {
        // Rising series, but every live allocation is recent: the old ones were replaced.
        let t = times(48);
        let y: Vec<f64> = (0..48).map(|i| 1000.0 * i as f64).collect();
        let lives: Vec<Lifetime> = (40..48).map(|i| live(t[i], 5875.0, 0.0)).collect();
        let tr = assess(&Evidence {
            times_ns: &t,
            live_bytes: &y,
            end_ns: t[47],
            unfreed_bytes: 47_000.0,
            active_from: t[40],
            live: &lives,
            freed_variance: &[],
        });
        assert!(!tr.growing, "{tr:?}");
    }

    #[test]
    fn flat_and_recent_churn_are_not_growing() {
        assert!(!judge(&[500.0; 48], 0.0).growing);
        let mut y = vec![0.0; 48];
        y[47] = 10_000.0;
        assert!(!judge(&y, 0.0).growing);
    }

    #[test]
    fn erf_matches_known_values() {
        assert!((erf(1.0) - 0.842_700_79).abs() < 1e-6);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-3);
    }
}
