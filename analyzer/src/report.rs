//! The report: a stable JSON document (see README, "JSON report") and a text rendering of it.

use std::fmt::Write as _;

use serde::Serialize;

use leaktrace_format::{layout, Trace};

use crate::analysis::Analysis;
use crate::naming::{SiteName, Symbols};
use crate::suppress::Suppressions;
use crate::symbolize::Symbolizer;

#[derive(Serialize)]
pub struct Report {
    pub format_version: String,
    /// One sentence: the likely answer.
    pub summary: String,
    /// True when damage (truncation, torn records) made the trace incomplete.
    pub partial: bool,
    pub health_notes: Vec<String>,
    pub process: Process,
    pub sampling: Sampling,
    pub totals: Totals,
    pub rss: Vec<RssPoint>,
    /// The highest RSS sampled (the series may have been thinned past it); null without one.
    pub rss_peak: Option<RssPeak>,
    pub rss_vs_heap: Option<RssVsHeap>,
    pub sites: Vec<SiteOut>,
    /// Sites left out of `sites` by a suppression rule (still counted in `totals`).
    pub suppressed: Suppressed,
    pub symbolization_warnings: Vec<String>,
}

/// What the suppression rules left out of the list of sites.
#[derive(Serialize, Default)]
pub struct Suppressed {
    #[serde(serialize_with = "as_integer")]
    pub bytes: f64,
    #[serde(serialize_with = "as_integer")]
    pub allocations: f64,
    pub sites: usize,
}

#[derive(Serialize)]
pub struct Process {
    pub pid: u32,
    pub exe: String,
    pub cmdline: Vec<String>,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub ended: &'static str,
    pub children: Children,
}

/// What became of the process's forked children (format 1.1; zeros in older traces).
#[derive(Serialize)]
pub struct Children {
    /// Children that created a trace of their own and kept it.
    pub traced: u64,
    /// Children that ran untraced: the process tree's disk budget was spent.
    pub untraced_budget: u64,
    /// Children that removed their trace at exit: nothing they sampled was left unfreed.
    pub removed_empty: u64,
}

#[derive(Serialize)]
pub struct Sampling {
    pub mean_bytes: u64,
    pub changes: Vec<SamplingChangeOut>,
}

#[derive(Serialize)]
pub struct SamplingChangeOut {
    pub t_ns: u64,
    pub mean_bytes: u64,
}

#[derive(Serialize)]
pub struct Totals {
    #[serde(serialize_with = "as_integer")]
    pub unfreed_bytes: f64,
    #[serde(serialize_with = "as_integer")]
    pub unfreed_allocations: f64,
    pub sampled_events: u64,
    pub dropped_events: u64,
}

#[derive(Serialize)]
pub struct RssPoint {
    pub t_ns: u64,
    pub rss_bytes: u64,
    /// The part of `rss_bytes` that is leaktrace's own: its trace pages and its heap.
    pub tracer_bytes: u64,
}

/// The highest RSS sampled, and when (ns since start).
#[derive(Serialize, Clone, Copy)]
pub struct RssPeak {
    pub rss_bytes: u64,
    pub t_ns: u64,
}

/// Does the sampled heap explain the RSS growth, or is memory growing outside malloc?
#[derive(Serialize)]
pub struct RssVsHeap {
    /// The program's RSS growth over the span: leaktrace's own memory excluded.
    #[serde(serialize_with = "as_integer")]
    pub rss_growth_bytes: f64,
    /// The RSS growth as the kernel counts it, leaktrace's own included.
    #[serde(serialize_with = "as_integer")]
    pub raw_rss_growth_bytes: f64,
    /// How much of the raw growth was leaktrace's own (its trace pages and heap).
    #[serde(serialize_with = "as_integer")]
    pub tracer_growth_bytes: f64,
    /// The span compared, ns since start: from the first RSS sample since sampling last
    /// started (the heap is unknown while paused) to the last.
    pub from_ns: u64,
    pub to_ns: u64,
    #[serde(serialize_with = "as_integer")]
    pub heap_growth_bytes: f64,
    /// heap growth / RSS growth, when RSS grew.
    pub explained_fraction: Option<f64>,
    /// RSS grew by much more than the heap: fragmentation, mmap, thread stacks.
    pub growth_outside_heap: bool,
}

#[derive(Serialize)]
pub struct SiteOut {
    pub id: usize,
    /// What every output calls the site: its naming frame and where it is (see `naming`).
    pub name: String,
    #[serde(serialize_with = "as_integer")]
    pub unfreed_bytes: f64,
    /// Half-width of the 95% confidence interval of `unfreed_bytes` (0 in exact mode).
    #[serde(serialize_with = "as_integer")]
    pub unfreed_bytes_ci95: f64,
    #[serde(serialize_with = "as_integer")]
    pub unfreed_allocations: f64,
    pub sampled_unfreed: u64,
    pub growing: bool,
    pub growth_bytes_per_sec: f64,
    pub trend_confidence: f64,
    pub first_alloc_ns: u64,
    pub last_alloc_ns: u64,
    pub frames: Vec<FrameOut>,
    /// When the site merges several raw call stacks (one source location reached by several
    /// call instructions), their return addresses, innermost first, the stack with the most
    /// unfreed bytes first; empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<Vec<String>>,
}

#[derive(Serialize, Clone, Debug)]
pub struct FrameOut {
    pub address: String,
    pub module: Option<String>,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The address relative to its module's load bias (how an unresolved frame is named).
    #[serde(skip)]
    pub module_offset: Option<u64>,
}

impl FrameOut {
    /// A frame that did not resolve: its address, and its module if known.
    pub fn unresolved(addr: u64, module: Option<String>, module_offset: Option<u64>) -> FrameOut {
        FrameOut { address: format!("{addr:#x}"), module, function: None, file: None, line: None, module_offset }
    }
}

/// Counts and byte figures go out as integers (estimates rounded): a consumer in jq or Go should
/// not have to cast, and pprof, heaptrack and memray do the same. Rates and confidences stay
/// fractional.
pub fn as_integer<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(if v.is_finite() { v.round() as i64 } else { 0 })
}

/// The report of an analysis whose sites were grouped by `symbols` (see [`crate::naming`]).
pub fn build(
    trace: &Trace,
    analysis: &Analysis,
    symbols: &Symbols,
    symbolizer: &Symbolizer,
    suppressions: &Suppressions,
) -> Report {
    let h = &trace.header;
    let process = trace.process.clone().unwrap_or_default();
    let sites: Vec<SiteOut> = analysis
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let frames = symbols.site_frames(&s.frames);
            SiteOut {
                id: i + 1,
                name: SiteName::of(&frames).plain(),
                unfreed_bytes: s.unfreed_bytes.round(),
                unfreed_bytes_ci95: (1.96 * s.bytes_variance.sqrt()).round(),
                unfreed_allocations: s.unfreed_allocations.round(),
                sampled_unfreed: s.sampled_unfreed,
                growing: s.trend.growing,
                growth_bytes_per_sec: s.trend.bytes_per_sec.round(),
                trend_confidence: (s.trend.confidence * 1000.0).round() / 1000.0,
                first_alloc_ns: s.first_alloc_ns,
                last_alloc_ns: s.last_alloc_ns,
                frames,
                stacks: if s.stacks.len() > 1 {
                    s.stacks.iter().map(|st| st.iter().map(|a| format!("{a:#x}")).collect()).collect()
                } else {
                    Vec::new()
                },
            }
        })
        .collect();
    let (sites, suppressed_sites): (Vec<SiteOut>, Vec<SiteOut>) =
        sites.into_iter().partition(|s| !suppressions.matches(&s.frames));
    let suppressed = Suppressed {
        bytes: suppressed_sites.iter().map(|s| s.unfreed_bytes).sum::<f64>() + 0.0,
        allocations: suppressed_sites.iter().map(|s| s.unfreed_allocations).sum::<f64>() + 0.0,
        sites: suppressed_sites.len(),
    };
    let rss_vs_heap = compare_rss_with_heap(trace, analysis);
    let rss_points: Vec<RssPoint> = trace
        .rss
        .iter()
        .map(|r| RssPoint { t_ns: r.t_ns, rss_bytes: r.rss_bytes, tracer_bytes: r.own_bytes })
        .collect();
    let summary = crate::naming::summary(&sites, rss_vs_heap.as_ref(), &rss_points);
    Report {
        format_version: format!("{}.{}", h.version_major, h.version_minor),
        summary,
        partial: trace.health.is_partial(),
        health_notes: trace.health.notes.clone(),
        process: Process {
            pid: h.pid,
            exe: process.exe,
            cmdline: process.cmdline,
            start_unix_ns: h.start_unix_ns,
            duration_ns: analysis.end_ns,
            ended: if h.ended_cleanly() { "exit" } else { "unknown" },
            children: Children {
                traced: h.children_traced,
                untraced_budget: h.children_untraced_budget,
                removed_empty: h.children_removed,
            },
        },
        sampling: Sampling {
            mean_bytes: h.current_mean_bytes.max(1),
            changes: trace
                .sampling
                .iter()
                .map(|s| SamplingChangeOut { t_ns: s.t_ns, mean_bytes: s.mean_bytes })
                .collect(),
        },
        totals: Totals {
            // `+ 0.0` turns the -0.0 of an empty float sum into 0.
            unfreed_bytes: analysis.unfreed_bytes.round() + 0.0,
            unfreed_allocations: analysis.unfreed_allocations.round() + 0.0,
            sampled_events: h.ring_head,
            dropped_events: h.events_dropped + h.live_dropped + h.skipped_no_stack,
        },
        rss: rss_points,
        rss_peak: rss_peak(trace),
        rss_vs_heap,
        sites,
        suppressed,
        symbolization_warnings: symbolizer.warnings(),
    }
}

/// RSS growth at least this large, and this much more than the heap's, is flagged as outside malloc.
const OUTSIDE_HEAP_MIN_BYTES: f64 = 16.0 * 1024.0 * 1024.0;
const OUTSIDE_HEAP_MAX_EXPLAINED: f64 = 0.5;

fn compare_rss_with_heap(trace: &Trace, analysis: &Analysis) -> Option<RssVsHeap> {
    // Only the stretch sampled without a pause: the heap is unknown while paused.
    let since = trace.sampling_since()?;
    let first = trace.rss.iter().find(|r| r.t_ns >= since)?;
    let last = trace.rss.last()?;
    if last.t_ns <= first.t_ns {
        return None;
    }
    let times = analysis.series_times();
    let heap = analysis.heap_series();
    let heap_at = |t: u64| -> f64 {
        // The series point at or just before t (0 before the first point).
        times.iter().zip(&heap).take_while(|(&ts, _)| ts <= t).last().map_or(0.0, |(_, &h)| h)
    };
    let raw_growth = last.rss_bytes as f64 - first.rss_bytes as f64;
    let tracer_growth = last.own_bytes as f64 - first.own_bytes as f64;
    let rss_growth = raw_growth - tracer_growth;
    let heap_growth = heap_at(last.t_ns) - heap_at(first.t_ns);
    let explained = (rss_growth > 0.0).then(|| (heap_growth / rss_growth).clamp(0.0, 10.0));
    Some(RssVsHeap {
        rss_growth_bytes: rss_growth,
        raw_rss_growth_bytes: raw_growth,
        tracer_growth_bytes: tracer_growth,
        from_ns: first.t_ns,
        to_ns: last.t_ns,
        heap_growth_bytes: heap_growth.round(),
        explained_fraction: explained.map(|e| (e * 1000.0).round() / 1000.0),
        growth_outside_heap: rss_growth >= OUTSIDE_HEAP_MIN_BYTES
            && explained.is_some_and(|e| e < OUTSIDE_HEAP_MAX_EXPLAINED),
    })
}

/// The RSS peak: the writer's own record (format 1.1), which halving cannot lose, else the
/// series' highest sample.
fn rss_peak(trace: &Trace) -> Option<RssPeak> {
    let h = &trace.header;
    let series = trace.rss.iter().max_by_key(|r| r.rss_bytes).map(|r| RssPeak { rss_bytes: r.rss_bytes, t_ns: r.t_ns });
    match series {
        Some(s) if h.rss_peak_bytes > s.rss_bytes => Some(RssPeak { rss_bytes: h.rss_peak_bytes, t_ns: h.rss_peak_ns }),
        other => other,
    }
}

/// "over the trace", or, when the comparison starts later than the RSS series (sampling was
/// paused, or started dormant), the span it covers.
pub fn rss_span_words(r: &RssVsHeap, rss: &[RssPoint]) -> String {
    match rss.first() {
        Some(first) if r.from_ns > first.t_ns => {
            format!("in the {} since sampling last started (at {})", secs(r.to_ns - r.from_ns), secs(r.from_ns))
        }
        _ => format!("over the trace ({})", secs(r.to_ns - r.from_ns)),
    }
}

/// ", leaktrace's own 2.3 MiB excluded" when the tracer's memory grew noticeably.
pub fn tracer_words(r: &RssVsHeap) -> String {
    if r.tracer_growth_bytes >= 64.0 * 1024.0 {
        format!(" (leaktrace's own {} excluded)", human_bytes(r.tracer_growth_bytes))
    } else {
        String::new()
    }
}

pub fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    // `+ 0.0` turns -0 (an empty f64 sum) into 0, so nothing reads "-0 B"; NaN and infinities
    // (from a damaged trace) read as 0.
    let mut v = if b.is_finite() { b + 0.0 } else { 0.0 };
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// "children: 3 traced, 312 not traced (disk budget spent), 40 traces removed (nothing
/// unfreed)", or None for a process without forked children.
pub fn children_line(c: &Children) -> Option<String> {
    let mut parts = Vec::new();
    if c.traced > 0 {
        parts.push(format!("{} traced", c.traced));
    }
    if c.untraced_budget > 0 {
        parts.push(format!("{} not traced (disk budget spent: LEAKTRACE_TREE_BUDGET)", c.untraced_budget));
    }
    if c.removed_empty > 0 {
        parts.push(format!("{} traces removed (nothing unfreed)", c.removed_empty));
    }
    (!parts.is_empty()).then(|| format!("children: {}", parts.join(", ")))
}

fn secs(ns: u64) -> String {
    format!("{:.1}s", ns as f64 / 1e9)
}

pub fn render_text(r: &Report, top: usize) -> String {
    let mut o = String::new();
    let p = &r.process;
    let _ = writeln!(o, "leaktrace report: pid {} {} ({})", p.pid, p.cmdline.join(" "), p.exe);
    let _ = writeln!(
        o,
        "ran {}, ended: {}; sampling mean {} bytes; {} sampled events, {} dropped",
        secs(p.duration_ns),
        p.ended,
        r.sampling.mean_bytes,
        r.totals.sampled_events,
        r.totals.dropped_events
    );
    if let Some(line) = children_line(&p.children) {
        let _ = writeln!(o, "{line}");
    }
    let _ = writeln!(o, "\n{}\n", r.summary);
    if r.partial {
        let _ = writeln!(o, "PARTIAL: the trace is damaged; figures cover what could be read");
    }
    for n in &r.health_notes {
        let _ = writeln!(o, "  note: {n}");
    }
    if let (Some(first), Some(last)) = (r.rss.first(), r.rss.last()) {
        let peak = match r.rss_peak {
            Some(p) if p.rss_bytes > first.rss_bytes.max(last.rss_bytes) => {
                format!(", peak {} at {}", human_bytes(p.rss_bytes as f64), secs(p.t_ns))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "RSS {} -> {} over {} (from {} to {}){peak}",
            human_bytes(first.rss_bytes as f64),
            human_bytes(last.rss_bytes as f64),
            secs(last.t_ns.saturating_sub(first.t_ns)),
            secs(first.t_ns),
            secs(last.t_ns)
        );
    }
    let _ = writeln!(
        o,
        "unfreed at end: {} in {:.0} allocations, {} call sites{}\n",
        human_bytes(r.totals.unfreed_bytes),
        r.totals.unfreed_allocations,
        r.sites.len(),
        if r.suppressed.sites > 0 {
            format!(
                "; {} of it in {} suppressed sites (runtime allocations; --no-default-suppressions shows them)",
                human_bytes(r.suppressed.bytes),
                r.suppressed.sites
            )
        } else {
            String::new()
        }
    );
    for s in r.sites.iter().take(top) {
        let ci = if s.unfreed_bytes_ci95 > 0.0 {
            format!(" ± {}", human_bytes(s.unfreed_bytes_ci95))
        } else {
            String::new()
        };
        let verdict = if s.growing {
            format!("GROWING {}/s (confidence {:.2})", human_bytes(s.growth_bytes_per_sec), s.trend_confidence)
        } else {
            "not growing".to_string()
        };
        let _ = writeln!(
            o,
            "#{} {}{} unfreed in {:.0} allocations ({} sampled), {}",
            s.id,
            human_bytes(s.unfreed_bytes),
            ci,
            s.unfreed_allocations,
            s.sampled_unfreed,
            verdict
        );
        for f in &s.frames {
            let module = f.module.as_deref().unwrap_or("?");
            match (&f.function, &f.file, f.line) {
                (Some(func), Some(file), Some(line)) => {
                    let _ = writeln!(o, "    {func} at {file}:{line}");
                }
                (Some(func), _, _) => {
                    let _ = writeln!(o, "    {func} in {module}");
                }
                _ => {
                    let _ = writeln!(o, "    {} in {module}", f.address);
                }
            }
        }
        let _ = writeln!(o);
    }
    if r.sites.len() > top {
        let _ = writeln!(o, "... {} more sites (use --top or --format json)", r.sites.len() - top);
    }
    for w in &r.symbolization_warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    o
}

/// `leak-analyze info`: identity, settings, counts and health.
pub fn render_info(t: &Trace) -> String {
    let h = &t.header;
    let mut o = String::new();
    let p = t.process.clone().unwrap_or_default();
    let state = match h.trace_state() {
        Some(layout::TraceState::Initializing) => "initializing",
        Some(layout::TraceState::Tracing) => "tracing",
        Some(layout::TraceState::Paused) => "paused",
        Some(layout::TraceState::Failed) if h.failure == layout::Failure::NoDisk as u32 => {
            "stopped: the disk or the tree's budget could not hold the whole file"
        }
        Some(layout::TraceState::Failed) => "stopped after an internal failure",
        None => "unknown",
    };
    let _ = writeln!(o, "format version   {}.{}", h.version_major, h.version_minor);
    let _ = writeln!(o, "process          pid {} (parent {}) on {}", h.pid, p.ppid, p.hostname);
    let _ = writeln!(o, "executable       {}", p.exe);
    let _ = writeln!(o, "command line     {}", p.cmdline.join(" "));
    let unwinder = match h.unwinder {
        0 => "deciding (DWARF, comparing with frame pointers)",
        1 => "frame pointers",
        2 => "DWARF",
        _ => "unknown",
    };
    let _ = writeln!(o, "tracer           leaktrace {}, unwinder: {unwinder}", p.tracer_version);
    let _ = writeln!(
        o,
        "DWARF stacks     {} by the caching CFI unwinder, {} by libgcc (when the first could not finish)",
        h.cfi_stacks, h.libgcc_stacks
    );
    let _ = writeln!(o, "started          {} ns since the epoch", h.start_unix_ns);
    let _ = writeln!(o, "time span        {}", secs(t.end_ns()));
    let _ = writeln!(
        o,
        "ended            {}",
        if h.ended_cleanly() { "exit" } else { "unknown (still running, or killed)" }
    );
    let _ = writeln!(o, "state            {state}");
    let _ = writeln!(o, "sampling mean    {} bytes (initially {})", h.current_mean_bytes, h.initial_mean_bytes);
    let _ = writeln!(
        o,
        "file size        {} ({} ring records, {} live slots)",
        human_bytes(h.file_size as f64),
        h.ring_capacity,
        h.live_capacity
    );
    // Every count from one source where the file has it whole: the ring holds every event
    // recorded until it wraps, and the live table every sampled allocation not yet freed.
    let ring_allocs = t.readable_events - t.readable_frees;
    let whole_ring = t.health.overwritten_events == 0 && t.health.torn_events == 0 && t.readable_events == h.ring_head;
    if whole_ring {
        let _ = writeln!(
            o,
            "events           {} recorded: {} sampled allocations, {} of them freed since (all in the ring)",
            h.ring_head, ring_allocs, t.readable_frees
        );
    } else {
        let _ = writeln!(
            o,
            "events           {} recorded; the ring holds the newest {} ({} allocations, {} frees)",
            h.ring_head, t.readable_events, ring_allocs, t.readable_frees
        );
        let _ = writeln!(
            o,
            "                 counted {} allocations, {} frees (each thread adds its counts in batches of 64: \
             up to 63 per thread short until it exits)",
            h.sampled_allocs, h.sampled_frees
        );
    }
    let wraps = h.ring_head / h.ring_capacity.max(1);
    let _ = writeln!(
        o,
        "ring             {} wraps, {} events overwritten, {} readable",
        wraps, t.health.overwritten_events, t.readable_events
    );
    let _ = writeln!(
        o,
        "live             {} sampled allocations unfreed (the live table: however old, whatever the ring lost)",
        t.live.len()
    );
    if whole_ring && h.live_dropped == 0 && ring_allocs.saturating_sub(t.readable_frees) != t.live.len() as u64 {
        let _ = writeln!(
            o,
            "                 note: the ring's {} allocations less its {} frees is not the live table's {} \
             (the process is still running, or was killed mid-record)",
            ring_allocs,
            t.readable_frees,
            t.live.len()
        );
    }
    let c = Children {
        traced: h.children_traced,
        untraced_budget: h.children_untraced_budget,
        removed_empty: h.children_removed,
    };
    if let Some(line) = children_line(&c) {
        let _ = writeln!(o, "{line}");
    }
    let reserved = if h.reserved_bytes == 0 || h.reserved_bytes >= h.file_size {
        "all of it".to_string()
    } else {
        format!("{} (dormant: the rest is reserved when it is resumed)", human_bytes(h.reserved_bytes as f64))
    };
    let _ = writeln!(o, "disk             {reserved} allocated on disk");
    if h.tree_budget > 0 {
        let _ = writeln!(
            o,
            "tree budget      {} for the traces of this process and its descendants (LEAKTRACE_TREE_BUDGET)",
            human_bytes(h.tree_budget as f64)
        );
    }
    let _ = writeln!(
        o,
        "dropped          {} events, {} allocations (live table full), {} stacks (stack table full)",
        h.events_dropped, h.live_dropped, h.stacks_dropped
    );
    let _ = writeln!(
        o,
        "skipped          {} sampled allocations made with too little stack left to unwind",
        h.skipped_no_stack
    );
    let _ = writeln!(
        o,
        "stack table      {} of {} used",
        human_bytes(h.stacks_used as f64),
        human_bytes(h.region(layout::Region::Stacks).1 as f64)
    );
    let _ = writeln!(o, "modules          {}", t.modules.len());
    let _ = writeln!(o, "RSS samples      {} (every {} ms)", t.rss.len(), h.rss_interval_ms);
    let health = if t.health.is_partial() { "DAMAGED (report will be marked partial)" } else { "ok" };
    let _ = writeln!(o, "file health      {health}");
    for n in &t.health.notes {
        let _ = writeln!(o, "  {n}");
    }
    o
}
