//! From a decoded trace to call sites: unfreed estimates, live-bytes series and growth verdicts.
//!
//! The live table in the file is the truth about what was unfreed at the end (it survives ring
//! wraps); the ring's events add the history: when allocations that were later freed lived.

use std::collections::HashMap;

use leaktrace_format::layout::EventKind;
use leaktrace_format::{sample_probability, sample_weight, Trace};

use crate::growth::{self, Trend};

/// One call site: a distinct stack (after trimming leaktrace's own frames).
#[derive(Clone, Debug)]
pub struct Site {
    /// Raw return addresses, innermost first. Empty when the stack was lost.
    pub frames: Vec<u64>,
    pub unfreed_bytes: f64,
    pub unfreed_allocations: f64,
    pub sampled_unfreed: u64,
    /// Sampling variance of `unfreed_bytes` (Horvitz–Thompson), for the confidence interval.
    pub bytes_variance: f64,
    pub first_alloc_ns: u64,
    pub last_alloc_ns: u64,
    pub trend: Trend,
    /// Estimated live bytes of this site at `SERIES_POINTS` evenly spaced times over the trace.
    pub series: Vec<f64>,
}

pub struct Analysis {
    pub sites: Vec<Site>,
    pub unfreed_bytes: f64,
    pub unfreed_allocations: f64,
    pub end_ns: u64,
}

/// Number of points in each site's live-bytes series.
const SERIES_POINTS: usize = 48;

/// Weight and count estimate of one sampled allocation.
fn estimate(size: u64, mean: u64) -> (f64, f64) {
    let mean = mean.max(1);
    let p = sample_probability(size, mean);
    if mean <= 1 {
        return (size as f64, 1.0);
    }
    if p <= 0.0 {
        return (0.0, 0.0);
    }
    (sample_weight(size, mean), 1.0 / p)
}

/// The times at which every site's `series` is sampled: `SERIES_POINTS` even steps up to `end_ns`.
pub fn series_times(end_ns: u64) -> Vec<u64> {
    (1..=SERIES_POINTS).map(|i| (end_ns as u128 * i as u128 / SERIES_POINTS as u128) as u64).collect()
}

impl Analysis {
    /// Times of the points of each site's `series`.
    pub fn series_times(&self) -> Vec<u64> {
        series_times(self.end_ns)
    }

    /// Estimated live heap (all sites with unfreed memory) at each of `series_times`.
    pub fn heap_series(&self) -> Vec<f64> {
        let mut heap = vec![0.0; SERIES_POINTS];
        for s in &self.sites {
            for (h, v) in heap.iter_mut().zip(&s.series) {
                *h += v;
            }
        }
        heap
    }
}

pub fn analyze(trace: &Trace) -> Analysis {
    let tracer_modules: Vec<_> = trace.modules.iter().filter(|m| m.is_tracer).collect();
    let mut stacks: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut frames_of = |id: u32| -> Vec<u64> {
        stacks
            .entry(id)
            .or_insert_with(|| {
                let mut f = trace.stack(id).unwrap_or_default();
                let own = f.iter().take_while(|&&a| tracer_modules.iter().any(|m| m.contains(a))).count();
                f.drain(..own);
                f
            })
            .clone()
    };

    let end_ns = trace.end_ns();
    let mut index: HashMap<Vec<u64>, usize> = HashMap::new();
    let mut sites: Vec<Site> = Vec::new();
    let mut site_of_stack: HashMap<u32, usize> = HashMap::new();
    let mut site_for = |id: u32, sites: &mut Vec<Site>| -> usize {
        if let Some(&i) = site_of_stack.get(&id) {
            return i;
        }
        let frames = frames_of(id);
        let i = *index.entry(frames.clone()).or_insert_with(|| {
            sites.push(Site {
                frames,
                unfreed_bytes: 0.0,
                unfreed_allocations: 0.0,
                sampled_unfreed: 0,
                bytes_variance: 0.0,
                first_alloc_ns: u64::MAX,
                last_alloc_ns: 0,
                trend: Trend::default(),
                series: Vec::new(),
            });
            sites.len() - 1
        });
        site_of_stack.insert(id, i);
        i
    };

    // Per-site deltas of estimated live bytes: (time, +/- weight).
    let mut deltas: Vec<Vec<(u64, f64)>> = Vec::new();
    let push_delta = |deltas: &mut Vec<Vec<(u64, f64)>>, site: usize, t: u64, w: f64| {
        if deltas.len() <= site {
            deltas.resize_with(site + 1, Vec::new);
        }
        deltas[site].push((t, w));
    };

    for a in &trace.live {
        let s = site_for(a.stack_id, &mut sites);
        let (w, n) = estimate(a.size, u64::from(a.mean_bytes));
        let site = &mut sites[s];
        site.unfreed_bytes += w;
        site.unfreed_allocations += n;
        site.sampled_unfreed += 1;
        // Var of the HT estimator for one sampled unit: (1 - p) / p^2 * s^2 = w^2 (1 - p).
        let p = sample_probability(a.size, u64::from(a.mean_bytes).max(1));
        site.bytes_variance += w * w * (1.0 - p);
        site.first_alloc_ns = site.first_alloc_ns.min(a.time_ns);
        site.last_alloc_ns = site.last_alloc_ns.max(a.time_ns);
        push_delta(&mut deltas, s, a.time_ns, w);
    }

    // History from the ring: allocations that lived and died inside its window.
    let window_start = trace.events.first().map_or(0, |e| e.time_ns);
    let wrapped = trace.health.overwritten_events > 0;
    let mut open: HashMap<u64, (u64, f64, usize)> = HashMap::new();
    for e in &trace.events {
        match e.kind {
            EventKind::Alloc => {
                let s = site_for(e.stack_id, &mut sites);
                let (w, _) = estimate(e.size, u64::from(e.mean_bytes));
                open.insert(e.addr, (e.time_ns, w, s));
            }
            EventKind::Free => {
                let (t0, w, s) = match open.remove(&e.addr) {
                    Some(v) => v,
                    None => {
                        // Allocated before the window: it was live from (at least) its start.
                        let s = site_for(e.stack_id, &mut sites);
                        let t0 = if wrapped { window_start } else { 0 };
                        (t0, estimate(e.size, u64::from(e.mean_bytes)).0, s)
                    }
                };
                push_delta(&mut deltas, s, t0, w);
                push_delta(&mut deltas, s, e.time_ns, -w);
            }
        }
    }

    let series_times = series_times(end_ns);
    deltas.resize_with(sites.len(), Vec::new);
    for (site, mut d) in sites.iter_mut().zip(deltas) {
        d.sort_by_key(|&(t, _)| t);
        let mut series = Vec::with_capacity(SERIES_POINTS);
        let (mut level, mut k) = (0.0f64, 0usize);
        for &t in &series_times {
            while k < d.len() && d[k].0 <= t {
                level += d[k].1;
                k += 1;
            }
            series.push(level.max(0.0));
        }
        site.trend = growth::assess(&series_times, &series, site.unfreed_bytes);
        site.series = series;
    }

    sites.retain(|s| s.sampled_unfreed > 0);
    sites.sort_by(|a, b| {
        b.trend
            .growing
            .cmp(&a.trend.growing)
            .then(b.unfreed_bytes.total_cmp(&a.unfreed_bytes))
            .then(a.frames.cmp(&b.frames))
    });
    Analysis {
        unfreed_bytes: sites.iter().map(|s| s.unfreed_bytes).sum(),
        unfreed_allocations: sites.iter().map(|s| s.unfreed_allocations).sum(),
        sites,
        end_ns,
    }
}
