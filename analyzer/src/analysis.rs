//! From a decoded trace to call sites: unfreed estimates, live-bytes series and growth verdicts.
//!
//! The live table in the file is the truth about what was unfreed at the end (it survives ring
//! wraps); the ring's events add the history: when allocations that were later freed lived.

use std::collections::HashMap;

use leaktrace_format::layout::EventKind;
use leaktrace_format::{sample_probability, sample_weight, Trace, TraceSource};

use crate::growth::{self, Lifetime, Trend};

/// One call site: a source location, reached by one raw stack (after trimming leaktrace's own
/// frames) or several (one line, several call instructions; see [`analyze`]'s `locate`).
#[derive(Clone, Debug)]
pub struct Site {
    /// Raw return addresses, innermost first, of the stack that holds the most of the site's
    /// unfreed bytes: it stands for the site. Empty when the stack was lost.
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
    /// Estimated live bytes of this site at each of the probe times given to [`analyze`], as far
    /// as the trace knows (allocations freed before the ring's window are not known).
    pub live_at_probes: Vec<f64>,
    /// The raw stacks this site stands for, the one with the most unfreed bytes first (ties in
    /// address order): one, or several on one source location. Stacks whose allocations were
    /// all freed count too: their history is part of the site's series.
    pub stacks: Vec<Vec<u64>>,
    /// The trace's stack ids that belong to this site (what a heap scan's findings name).
    pub stack_ids: Vec<u32>,
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

/// Bytes in fixed point, in units of 2^-32 bytes. A series point sums these rather than floats
/// so that its value depends only on which allocations are live at that time, not on the order
/// they were added and taken away in: the points of a plateau tie exactly, as the Mann–Kendall
/// test's tie handling expects, instead of differing in their last bits.
type Fixed = i128;
const FIXED_ONE: f64 = 4_294_967_296.0;

fn to_fixed(bytes: f64) -> Fixed {
    (bytes * FIXED_ONE).round() as Fixed
}

/// What a site's freed allocations contribute to its series, its growth test and its probes.
/// A full ring holds millions of them, so each is folded in as it streams past instead of kept.
struct FreedHistory {
    /// Difference arrays over the series times (entry k adds to point k and every later one):
    /// the weight of the allocations live at each time, and the sampling variance of those
    /// that cross it (allocated at or before it, freed after).
    weight: Vec<Fixed>,
    variance: Vec<f64>,
    /// Weight live at each probe time.
    at_probes: Vec<f64>,
}

impl FreedHistory {
    fn new(probes: usize) -> Self {
        FreedHistory {
            weight: vec![0; SERIES_POINTS + 1],
            variance: vec![0.0; SERIES_POINTS + 1],
            at_probes: vec![0.0; probes],
        }
    }

    fn add(&mut self, times: &[u64], probes: &[u64], alloc_ns: u64, free_ns: u64, weight: f64, variance: f64) {
        let from = times.partition_point(|&t| t < alloc_ns);
        let to = times.partition_point(|&t| t < free_ns);
        // A free stamped before its allocation (clock reads race across threads) takes the
        // weight away in between, as replaying the two events in time order would.
        let w = to_fixed(weight);
        self.weight[from] = self.weight[from].wrapping_add(w);
        self.weight[to] = self.weight[to].wrapping_sub(w);
        if from < to {
            self.variance[from] += variance;
            self.variance[to] -= variance;
        }
        for (live, &p) in self.at_probes.iter_mut().zip(probes) {
            if alloc_ns <= p && free_ns > p {
                *live += weight;
            }
        }
    }
}

/// Per retained site: what its series, growth test and probes are drawn from.
#[derive(Default)]
struct History {
    live: Vec<Lifetime>,
    /// None until the first freed allocation: many sites never see one.
    freed: Option<FreedHistory>,
    /// Earliest allocation time of any lifetime the trace knows of.
    active_from: Option<u64>,
}

impl History {
    fn add_live(&mut self, l: Lifetime) {
        self.live.push(l);
        self.active_from = Some(self.active_from.map_or(l.alloc_ns, |t| t.min(l.alloc_ns)));
    }

    fn add_freed(&mut self, times: &[u64], probes: &[u64], alloc_ns: u64, free_ns: u64, weight: f64, variance: f64) {
        self.freed
            .get_or_insert_with(|| FreedHistory::new(probes.len()))
            .add(times, probes, alloc_ns, free_ns, weight, variance);
        self.active_from = Some(self.active_from.map_or(alloc_ns, |t| t.min(alloc_ns)));
    }

    /// The estimated live bytes at each of `times` (the series times), and the sampling variance
    /// of the freed allocations live across each.
    fn series(&self, times: &[u64]) -> (Vec<f64>, Vec<f64>) {
        let mut weight = match &self.freed {
            Some(f) => f.weight.clone(),
            None => vec![0; SERIES_POINTS + 1],
        };
        for l in &self.live {
            let k = times.partition_point(|&t| t < l.alloc_ns);
            weight[k] = weight[k].wrapping_add(to_fixed(l.weight));
        }
        let mut level: Fixed = 0;
        let series = weight[..SERIES_POINTS]
            .iter()
            .map(|&d| {
                level = level.wrapping_add(d);
                (level as f64 / FIXED_ONE).max(0.0)
            })
            .collect();
        let mut level = 0.0;
        let variance = match &self.freed {
            Some(f) => f.variance[..SERIES_POINTS]
                .iter()
                .map(|d| {
                    level += d;
                    level
                })
                .collect(),
            None => vec![0.0; SERIES_POINTS],
        };
        (series, variance)
    }

    /// The estimated live bytes at each of `probes`.
    fn at_probes(&self, probes: &[u64]) -> Vec<f64> {
        probes
            .iter()
            .enumerate()
            .map(|(k, &p)| {
                let live: f64 = self.live.iter().filter(|l| l.alloc_ns <= p).map(|l| l.weight).sum();
                live + self.freed.as_ref().map_or(0.0, |f| f.at_probes[k])
            })
            .collect()
    }
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

/// Group a trace's sampled allocations into sites and judge each one's growth, streaming the
/// ring's events from `source` (the source `trace` was parsed from). `probe_times`: moments at
/// which every site's live bytes are wanted (`Site::live_at_probes`).
///
/// Two steps: this function replays the trace (sites, unfreed estimates, each site's history),
/// then `verdicts` draws each site's series and growth verdict from that history.
///
/// `locate` is given every distinct raw stack of the trace (innermost first, sorted), and for
/// each whether an allocation of it is still live, and says which stacks are one site: entry k
/// is the location number of stack k (`naming::Symbols::for_sites`: stacks whose symbolized
/// frames are equal). The stacks of one location are one site from the
/// start: its estimates, its series and its growth verdict are drawn from all of their
/// allocations, those that were freed included.
pub fn analyze<S: TraceSource + ?Sized>(
    trace: &Trace,
    source: &S,
    probe_times: &[u64],
    locate: impl FnOnce(&[Vec<u64>], &[bool]) -> Vec<usize>,
) -> Analysis {
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
    let mut ids: Vec<u32> =
        trace.live.iter().map(|a| a.stack_id).chain(trace.event_stack_ids.iter().copied()).collect();
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

    // Every distinct stack, and the location each one is at.
    let canonical_of: HashMap<u32, Vec<u64>> = ids.iter().map(|&id| (id, canonical(frames_of(id)))).collect();
    let mut distinct: Vec<Vec<u64>> = canonical_of.values().cloned().collect();
    distinct.sort_unstable();
    distinct.dedup();
    // Per stack id: its location, and its stack's index in `distinct`.
    let stack_index: HashMap<&[u64], usize> = distinct.iter().enumerate().map(|(k, f)| (f.as_slice(), k)).collect();
    let mut live = vec![false; distinct.len()];
    for a in &trace.live {
        if let Some(&k) = canonical_of.get(&a.stack_id).and_then(|f| stack_index.get(f.as_slice())) {
            live[k] = true;
        }
    }
    let mut locations = locate(&distinct, &live);
    if locations.len() != distinct.len() {
        locations = (0..distinct.len()).collect();
    }
    let place_of = |id: u32| -> (usize, usize) {
        let k = canonical_of.get(&id).and_then(|f| stack_index.get(f.as_slice()).copied()).unwrap_or(usize::MAX);
        match locations.get(k) {
            Some(&loc) => (loc, k),
            // Not among the ids collected above (cannot happen): a location of its own.
            None => (usize::MAX - id as usize, usize::MAX),
        }
    };

    let end_ns = trace.end_ns();
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut sites: Vec<Site> = Vec::new();
    // Per site: its stacks (indices into `distinct`) with the unfreed bytes of each.
    let mut parts: Vec<Vec<(usize, f64)>> = Vec::new();
    let mut site_of_stack: HashMap<u32, (usize, usize)> = HashMap::new();
    let mut site_for = |id: u32, sites: &mut Vec<Site>, parts: &mut Vec<Vec<(usize, f64)>>| -> (usize, usize) {
        if let Some(&i) = site_of_stack.get(&id) {
            return i;
        }
        let (location, k) = place_of(id);
        let i = *index.entry(location).or_insert_with(|| {
            parts.push(Vec::new());
            sites.push(Site {
                frames: Vec::new(),
                unfreed_bytes: 0.0,
                unfreed_allocations: 0.0,
                sampled_unfreed: 0,
                bytes_variance: 0.0,
                first_alloc_ns: u64::MAX,
                last_alloc_ns: 0,
                trend: Trend::default(),
                series: Vec::new(),
                live_at_probes: Vec::new(),
                stacks: Vec::new(),
                stack_ids: Vec::new(),
            });
            sites.len() - 1
        });
        let part = match parts[i].iter().position(|&(s, _)| s == k) {
            Some(p) => p,
            None => {
                parts[i].push((k, 0.0));
                parts[i].len() - 1
            }
        };
        site_of_stack.insert(id, (i, part));
        sites[i].stack_ids.push(id);
        (i, part)
    };

    let series_times = series_times(end_ns);
    // Live allocations first: only sites with some are reported, so only they need history.
    let mut histories: Vec<History> = Vec::new();
    for a in &trace.live {
        let (s, part) = site_for(a.stack_id, &mut sites, &mut parts);
        let mean = u64::from(a.mean_bytes);
        let (w, n) = estimate(a.size, mean);
        // Var of the HT estimator for one sampled unit: (1 - p) / p^2 * s^2 = w^2 (1 - p).
        let var = w * w * (1.0 - sample_probability(a.size, mean.max(1)));
        let site = &mut sites[s];
        site.unfreed_bytes += w;
        site.unfreed_allocations += n;
        site.sampled_unfreed += 1;
        site.bytes_variance += var;
        parts[s][part].1 += w;
        site.first_alloc_ns = site.first_alloc_ns.min(a.time_ns);
        site.last_alloc_ns = site.last_alloc_ns.max(a.time_ns);
        if histories.len() <= s {
            histories.resize_with(s + 1, History::default);
        }
        histories[s].add_live(Lifetime { alloc_ns: a.time_ns, weight: w, variance: var });
    }

    // History from the ring: allocations that lived and died inside its window.
    let mut first_event_ns = None;
    let wrapped = trace.health.overwritten_events > 0;
    let mut open: HashMap<u64, (u64, usize)> = HashMap::new();
    for e in trace.events(source) {
        let window_start = *first_event_ns.get_or_insert(e.time_ns);
        match e.kind {
            EventKind::Alloc => {
                let (s, _) = site_for(e.stack_id, &mut sites, &mut parts);
                open.insert(e.addr, (e.time_ns, s));
            }
            EventKind::Free => {
                let (alloc_ns, s) = open.remove(&e.addr).unwrap_or_else(|| {
                    // Allocated before the window: it was live from (at least) its start.
                    (if wrapped { window_start } else { 0 }, site_for(e.stack_id, &mut sites, &mut parts).0)
                });
                // A site created by events alone holds nothing at the end and is not reported.
                let Some(h) = histories.get_mut(s) else { continue };
                let mean = u64::from(e.mean_bytes);
                let (w, _) = estimate(e.size, mean);
                let var = w * w * (1.0 - sample_probability(e.size, mean.max(1)));
                h.add_freed(&series_times, probe_times, alloc_ns, e.time_ns, w, var);
            }
        }
    }

    sites.truncate(histories.len());
    verdicts(Replayed { sites, histories, parts, distinct, series_times, end_ns }, probe_times)
}

/// What replaying a trace gives: the sites with their unfreed estimates, each site's history
/// of live and freed sampled bytes, and its raw stacks with their unfreed bytes.
struct Replayed {
    sites: Vec<Site>,
    histories: Vec<History>,
    /// Per site: (index into `distinct`, unfreed bytes) of each of its stacks.
    parts: Vec<Vec<(usize, f64)>>,
    distinct: Vec<Vec<u64>>,
    series_times: Vec<u64>,
    end_ns: u64,
}

/// The second step: each site's series, its representative stack and its growth verdict, and
/// the report's order.
fn verdicts(r: Replayed, probe_times: &[u64]) -> Analysis {
    let Replayed { mut sites, histories, parts, distinct, series_times, end_ns } = r;
    for (site, (h, mut stacks)) in sites.iter_mut().zip(histories.into_iter().zip(parts)) {
        // The stack holding the most unfreed bytes first, then in address order.
        stacks.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| distinct.get(a.0).cmp(&distinct.get(b.0))));
        site.stacks = stacks.iter().filter_map(|&(k, _)| distinct.get(k).cloned()).collect();
        site.frames = site.stacks.first().cloned().unwrap_or_default();
        let (series, freed_variance) = h.series(&series_times);
        site.trend = growth::assess(&growth::Evidence {
            times_ns: &series_times,
            live_bytes: &series,
            end_ns,
            unfreed_bytes: site.unfreed_bytes,
            active_from: h.active_from.unwrap_or(0),
            live: &h.live,
            freed_variance: &freed_variance,
        });
        site.series = series;
        site.live_at_probes = h.at_probes(probe_times);
    }

    sites.retain(|s| s.sampled_unfreed > 0);
    sort_sites(&mut sites);
    Analysis {
        unfreed_bytes: sites.iter().map(|s| s.unfreed_bytes).sum(),
        unfreed_allocations: sites.iter().map(|s| s.unfreed_allocations).sum(),
        sites,
        end_ns,
    }
}

/// Growing sites first, then by unfreed bytes, then by stack: the order of every report.
fn sort_sites(sites: &mut [Site]) {
    sites.sort_by(|a, b| {
        b.trend
            .growing
            .cmp(&a.trend.growing)
            .then(b.unfreed_bytes.total_cmp(&a.unfreed_bytes))
            .then(a.frames.cmp(&b.frames))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One allocation as a reader keeping every lifetime would hold it.
    struct Kept {
        alloc_ns: u64,
        free_ns: Option<u64>,
        weight: f64,
        variance: f64,
    }

    /// Live bytes at each time by replaying every allocation and free in time order.
    fn replayed_series(kept: &[Kept], times: &[u64]) -> Vec<f64> {
        let mut deltas: Vec<(u64, f64)> = Vec::new();
        for k in kept {
            deltas.push((k.alloc_ns, k.weight));
            if let Some(f) = k.free_ns {
                deltas.push((f, -k.weight));
            }
        }
        deltas.sort_by_key(|&(t, _)| t);
        times.iter().map(|&t| deltas.iter().filter(|d| d.0 <= t).map(|d| d.1).sum::<f64>().max(0.0)).collect()
    }

    #[test]
    fn folded_history_matches_keeping_every_lifetime() {
        let times = series_times(96_000);
        let probes = [0, 500, 47_999, 48_000, 95_999, 200_000];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut kept = Vec::new();
        for i in 0..3000 {
            // Whole bytes and variances: sums are exact in both, so they must agree exactly.
            let alloc_ns = next(100_000);
            let free_ns = match i % 3 {
                0 => None,
                // Now and then a free stamped before its allocation, or at a series time.
                1 if i % 31 == 0 => Some(alloc_ns.saturating_sub(next(3000))),
                1 if i % 37 == 0 => Some(times[next(96) as usize]),
                _ => Some(alloc_ns + next(30_000)),
            };
            kept.push(Kept { alloc_ns, free_ns, weight: (1 + next(5000)) as f64, variance: next(1000) as f64 });
        }
        let mut h = History::default();
        for k in &kept {
            match k.free_ns {
                None => h.add_live(Lifetime { alloc_ns: k.alloc_ns, weight: k.weight, variance: k.variance }),
                Some(f) => h.add_freed(&times, &probes, k.alloc_ns, f, k.weight, k.variance),
            }
        }
        let (series, freed_variance) = h.series(&times);
        assert_eq!(series, replayed_series(&kept, &times));
        let crossing: Vec<f64> = times
            .iter()
            .map(|&t| {
                kept.iter().filter(|k| k.free_ns.is_some_and(|f| k.alloc_ns <= t && f > t)).map(|k| k.variance).sum()
            })
            .collect();
        assert_eq!(freed_variance, crossing);
        let at: Vec<f64> = probes
            .iter()
            .map(|&p| {
                kept.iter().filter(|k| k.alloc_ns <= p && k.free_ns.is_none_or(|f| f > p)).map(|k| k.weight).sum()
            })
            .collect();
        assert_eq!(h.at_probes(&probes), at);
        assert_eq!(h.active_from, kept.iter().map(|k| k.alloc_ns).min());
    }

    #[test]
    fn equal_sets_of_live_allocations_give_equal_points() {
        // A cache turning over: one entry at a time lives across two series points and is gone
        // by the third. With float sums the third points would differ in their last bits,
        // depending on the weights that came and went before (0.1 + 0.2 - 0.2 != 0.1).
        let times = series_times(96_000);
        let mut h = History::default();
        h.add_live(Lifetime { alloc_ns: 0, weight: 0.1, variance: 0.0 });
        for k in 0..32u64 {
            h.add_freed(&times, &[], 3000 * k + 10, 3000 * k + 2500, 0.2 + k as f64 / 3.0, 0.0);
        }
        let (series, _) = h.series(&times);
        let between: Vec<f64> = series.iter().skip(2).step_by(3).copied().collect();
        assert!(between.iter().all(|&v| v == series[2] && (v - 0.1).abs() < 1e-9), "{series:?}");
    }
}
