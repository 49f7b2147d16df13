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
    /// Every sampled allocation of this site the trace knows of.
    pub lifetimes: Vec<Lifetime>,
}

impl Site {
    /// Estimated live bytes of this site at `t_ns`, as far as the trace knows (allocations freed
    /// before the ring's window are not known).
    pub fn live_bytes_at(&self, t_ns: u64) -> f64 {
        self.lifetimes
            .iter()
            .filter(|l| l.alloc_ns <= t_ns && l.free_ns.is_none_or(|f| f > t_ns))
            .map(|l| l.weight)
            .sum::<f64>()
            + 0.0
    }
}

pub struct Analysis {
    pub sites: Vec<Site>,
    pub unfreed_bytes: f64,
    pub unfreed_allocations: f64,
    pub end_ns: u64,
}

/// Outermost frames a frame-pointer stack lacks next to a DWARF one (`__libc_start_call_main`,
/// `__libc_start_main`, `_start`; `start_thread`, `clone3`): `unwind::OUTER_SLACK` in the preload.
const STARTUP_FRAMES: usize = 3;

/// Number of points in each site's live-bytes series.
const SERIES_POINTS: usize = 96;

/// A sampled allocation's life, as far as the trace knows it.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    pub alloc_ns: u64,
    /// None: still live at the end of the trace.
    pub free_ns: Option<u64>,
    /// Bytes it stands for.
    pub weight: f64,
    /// Sampling variance of `weight` (0 when every allocation is recorded).
    pub variance: f64,
}

/// A site's estimated live bytes at each of `times`.
fn live_series(lives: &[Lifetime], times: &[u64]) -> Vec<f64> {
    let mut deltas: Vec<(u64, f64)> = Vec::with_capacity(lives.len() * 2);
    for l in lives {
        deltas.push((l.alloc_ns, l.weight));
        if let Some(f) = l.free_ns {
            deltas.push((f, -l.weight));
        }
    }
    deltas.sort_by_key(|&(t, _)| t);
    let (mut level, mut k) = (0.0f64, 0usize);
    times
        .iter()
        .map(|&t| {
            while k < deltas.len() && deltas[k].0 <= t {
                level += deltas[k].1;
                k += 1;
            }
            level.max(0.0)
        })
        .collect()
}

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

    // A process that switched from DWARF to frame-pointer unwinding has stacks of the same call
    // path with and without the outermost start-up frames (which have no frame pointers): map
    // each stack to the longest stack that extends it by at most `STARTUP_FRAMES` frames.
    let mut ids: Vec<u32> = trace.live.iter().map(|a| a.stack_id).chain(trace.events.iter().map(|e| e.stack_id)).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut longest_extension: HashMap<Vec<u64>, Vec<u64>> = HashMap::new();
    for &id in &ids {
        let f = frames_of(id);
        for cut in 1..=STARTUP_FRAMES.min(f.len().saturating_sub(1)) {
            let prefix = f[..f.len() - cut].to_vec();
            let e = longest_extension.entry(prefix).or_default();
            if f.len() > e.len() || (f.len() == e.len() && f < *e) {
                *e = f.clone();
            }
        }
    }
    let canonical = |f: Vec<u64>| -> Vec<u64> { longest_extension.get(&f).cloned().unwrap_or(f) };

    let end_ns = trace.end_ns();
    let mut index: HashMap<Vec<u64>, usize> = HashMap::new();
    let mut sites: Vec<Site> = Vec::new();
    let mut site_of_stack: HashMap<u32, usize> = HashMap::new();
    let mut site_for = |id: u32, sites: &mut Vec<Site>| -> usize {
        if let Some(&i) = site_of_stack.get(&id) {
            return i;
        }
        let frames = canonical(frames_of(id));
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
                lifetimes: Vec::new(),
            });
            sites.len() - 1
        });
        site_of_stack.insert(id, i);
        i
    };

    // Per site: the lifetime of every sampled allocation the trace knows of.
    let mut lifetimes: Vec<Vec<Lifetime>> = Vec::new();
    let push = |lifetimes: &mut Vec<Vec<Lifetime>>, site: usize, l: Lifetime| {
        if lifetimes.len() <= site {
            lifetimes.resize_with(site + 1, Vec::new);
        }
        lifetimes[site].push(l);
    };

    for a in &trace.live {
        let s = site_for(a.stack_id, &mut sites);
        let mean = u64::from(a.mean_bytes);
        let (w, n) = estimate(a.size, mean);
        // Var of the HT estimator for one sampled unit: (1 - p) / p^2 * s^2 = w^2 (1 - p).
        let var = w * w * (1.0 - sample_probability(a.size, mean.max(1)));
        let site = &mut sites[s];
        site.unfreed_bytes += w;
        site.unfreed_allocations += n;
        site.sampled_unfreed += 1;
        site.bytes_variance += var;
        site.first_alloc_ns = site.first_alloc_ns.min(a.time_ns);
        site.last_alloc_ns = site.last_alloc_ns.max(a.time_ns);
        push(&mut lifetimes, s, Lifetime { alloc_ns: a.time_ns, free_ns: None, weight: w, variance: var });
    }

    // History from the ring: allocations that lived and died inside its window.
    let window_start = trace.events.first().map_or(0, |e| e.time_ns);
    let wrapped = trace.health.overwritten_events > 0;
    let mut open: HashMap<u64, (u64, usize)> = HashMap::new();
    for e in &trace.events {
        match e.kind {
            EventKind::Alloc => {
                let s = site_for(e.stack_id, &mut sites);
                open.insert(e.addr, (e.time_ns, s));
            }
            EventKind::Free => {
                let (alloc_ns, s) = open.remove(&e.addr).unwrap_or_else(|| {
                    // Allocated before the window: it was live from (at least) its start.
                    (if wrapped { window_start } else { 0 }, site_for(e.stack_id, &mut sites))
                });
                let mean = u64::from(e.mean_bytes);
                let (w, _) = estimate(e.size, mean);
                let var = w * w * (1.0 - sample_probability(e.size, mean.max(1)));
                push(&mut lifetimes, s, Lifetime { alloc_ns, free_ns: Some(e.time_ns), weight: w, variance: var });
            }
        }
    }

    let series_times = series_times(end_ns);
    lifetimes.resize_with(sites.len(), Vec::new);
    for (site, lives) in sites.iter_mut().zip(lifetimes) {
        let series = live_series(&lives, &series_times);
        site.trend = growth::assess(&growth::Evidence {
            times_ns: &series_times,
            live_bytes: &series,
            end_ns,
            unfreed_bytes: site.unfreed_bytes,
            lifetimes: &lives,
        });
        site.series = series;
        site.lifetimes = lives;
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
