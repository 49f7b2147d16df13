//! The report: a stable JSON document (see README, "JSON report") and a text rendering of it.

use std::fmt::Write as _;

use leaktrace_format::{layout, Trace};

use crate::analysis::Analysis;
use crate::naming::{SiteName, Symbols};
use crate::suppress::Suppressions;
use crate::symbolize::Symbolizer;

pub use crate::schema::*;
pub use crate::words::*;

/// How the trace ended, as the JSON's `process.ended` says it.
fn ended(h: &leaktrace_format::Header) -> &'static str {
    if h.detached() {
        "detached"
    } else if h.ended_cleanly() {
        "exit"
    } else {
        "unknown"
    }
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
                retention: None,
            }
        })
        .collect();
    let mut sites = sites;
    if !trace.scans.is_empty() {
        let ids: Vec<&[u32]> = analysis.sites.iter().map(|s| s.stack_ids.as_slice()).collect();
        let names: Vec<(usize, String)> = sites.iter().map(|s| (s.id, s.name.clone())).collect();
        for (site, r) in sites.iter_mut().zip(crate::retention::for_sites(trace, symbolizer, &ids, &names)) {
            site.retention = r;
        }
    }
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
    let peak = rss_peak(trace);
    let summary = crate::naming::summary(&sites, rss_vs_heap.as_ref(), &rss_points, peak);
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
            ended: ended(h).to_string(),
            attached: h.attached(),
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
        rss_peak: peak,
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
    if let Some(line) = rss_line(r) {
        let _ = writeln!(o, "{line}");
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
        if let Some(ret) = &s.retention {
            let _ = writeln!(o, "  retention: {}", crate::retention::describe(ret));
            for sample in ret.samples.iter().filter(|x| !x.text.is_empty()).take(2) {
                let _ = writeln!(o, "    e.g. {} bytes at {}: \"{}\"", sample.size, sample.address, sample.text);
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
    let how = if h.attached() { " (attached to the running process)" } else { "" };
    let _ = writeln!(o, "started          {} ns since the epoch{how}", h.start_unix_ns);
    let _ = writeln!(o, "time span        {}", secs(t.end_ns()));
    let ended = match ended(h) {
        "detached" => format!("detached at {} (the process ran on untraced)", secs(h.end_ns)),
        "exit" => "exit".to_string(),
        _ => "unknown (still running, or killed)".to_string(),
    };
    let _ = writeln!(o, "ended            {ended}");
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
    // reserved_bytes: 0 in 1.0 files, whose writers allocated the whole file at start.
    let disk = if h.reserved_bytes == 0 || h.reserved_bytes >= h.file_size {
        format!("{} reserved: the whole file", human_bytes(h.file_size as f64))
    } else if h.trace_state() == Some(layout::TraceState::Paused) || h.current_mean_bytes == 0 {
        format!(
            "{} of {} reserved (dormant-small: the rest is reserved at `ctl --resume`, if the disk and the \
             tree's budget hold it)",
            human_bytes(h.reserved_bytes as f64),
            human_bytes(h.file_size as f64)
        )
    } else {
        format!(
            "{} of {} reserved (small: the rest is reserved at the first sampled allocation)",
            human_bytes(h.reserved_bytes as f64),
            human_bytes(h.file_size as f64)
        )
    };
    let _ = writeln!(o, "disk             {disk}");
    if h.tree_budget > 0 {
        let _ = writeln!(
            o,
            "tree budget      {} for the traces of this process and its descendants together \
             (LEAKTRACE_TREE_BUDGET; ledger {:#x})",
            human_bytes(h.tree_budget as f64),
            h.tree_id
        );
    }
    let _ = writeln!(
        o,
        "dropped          {} metadata records (metadata region full: modules, sampling changes), {} allocations (live table full), {} stacks (stack table full)",
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
    let _ = writeln!(
        o,
        "RSS samples      {} (every {} ms now; the series halves when full)",
        t.rss.len(),
        h.rss_interval_ms
    );
    if let Some(p) = rss_peak(t) {
        let _ = writeln!(o, "RSS peak         {} at {}", human_bytes(p.rss_bytes as f64), secs(p.t_ns));
    }
    let health = if t.health.is_partial() { "DAMAGED (report will be marked partial)" } else { "ok" };
    let _ = writeln!(o, "file health      {health}");
    for n in &t.health.notes {
        let _ = writeln!(o, "  {n}");
    }
    o
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use leaktrace_format::synth::TraceBuilder;

    const MIB: u64 = 1 << 20;
    const S: u64 = 1_000_000_000;

    /// The report (and its JSON and text) of a synthetic trace, as `leak-analyze report` makes it.
    fn report_of(b: &TraceBuilder) -> (Report, serde_json::Value, String) {
        let bytes = b.build();
        let trace = Trace::parse_from(&bytes).expect("synthetic trace parses");
        let (analysis, r) = analyze_and_build(&trace, &bytes);
        let _ = analysis;
        let json = serde_json::to_value(&r).unwrap();
        let text = render_text(&r, 20);
        (r, json, text)
    }

    fn html_of(b: &TraceBuilder) -> String {
        let bytes = b.build();
        let trace = Trace::parse_from(&bytes).unwrap();
        let (analysis, r) = analyze_and_build(&trace, &bytes);
        crate::export::html::render(&r, &analysis, &trace, 20)
    }

    /// As `leak-analyze report` does it (main.rs `report_on`), without suppressions.
    pub(crate) fn analyze_and_build(trace: &Trace, bytes: &Vec<u8>) -> (Analysis, Report) {
        let symbolizer = Symbolizer::new(&trace.modules, &Default::default());
        let mut symbols = None;
        let analysis = crate::analysis::analyze(trace, bytes, &[], |stacks, live| {
            let (s, locations) = crate::naming::Symbols::for_sites(&trace.modules, &symbolizer, stacks, live);
            symbols = Some(s);
            locations
        });
        let symbols = symbols.unwrap_or_else(|| crate::naming::Symbols::new(&trace.modules, &symbolizer, &[]));
        let r = build(trace, &analysis, &symbols, &symbolizer, &Suppressions::default());
        (analysis, r)
    }

    fn info_of(b: &TraceBuilder) -> String {
        render_info(&Trace::parse_from(&b.build()).unwrap())
    }

    /// Exact mode; 8 MiB leaked in 1 MiB blocks from 1 s to 8 s; RSS samples every half second
    /// from 0.5 s to 10 s that follow the heap, with leaktrace's own memory growing by 128 KiB
    /// a sample on top (its trace pages): from 1.125 MiB to 3.5 MiB.
    pub(crate) fn eight_mib_leak() -> TraceBuilder {
        eight_mib_leak_in(TraceBuilder::new(4 * MIB))
    }

    fn eight_mib_leak_in(b: TraceBuilder) -> TraceBuilder {
        let mut b = b.exited_at(10 * S);
        let stack = b.stack(&[0x40_1000, 0x40_2000]);
        for i in 0..8 {
            b.alloc((i + 1) * S, 0x1000_0000 + i * 2 * MIB, MIB, stack);
        }
        for k in 1..=20u64 {
            let t = k * S / 2;
            let leaked = (t / S).min(8) * MIB;
            let own = MIB + k * 128 * 1024;
            b.rss(t, 10 * MIB + leaked + own, own);
        }
        b
    }

    #[test]
    fn own_memory_is_taken_out_of_the_rss_growth_and_said() {
        let (r, j, text) = report_of(&eight_mib_leak());
        let v = r.rss_vs_heap.as_ref().expect("an RSS comparison");
        // Raw RSS grew by the leak plus the tracer's 2.375 MiB; the program's growth is the leak.
        let own_growth = 19 * 128 * 1024;
        assert_eq!(v.tracer_growth_bytes, own_growth as f64);
        assert_eq!(v.raw_rss_growth_bytes, (8 * MIB + own_growth) as f64);
        assert_eq!(v.rss_growth_bytes, (8 * MIB) as f64);
        assert_eq!(v.heap_growth_bytes, (8 * MIB) as f64);
        assert_eq!(v.explained_fraction, Some(1.0));
        assert!(!v.growth_outside_heap);
        // JSON: additions, integers.
        assert_eq!(j["rss_vs_heap"]["tracer_growth_bytes"], own_growth);
        assert_eq!(j["rss_vs_heap"]["raw_rss_growth_bytes"], 8 * MIB + own_growth);
        assert_eq!(j["rss_vs_heap"]["rss_growth_bytes"], 8 * MIB);
        assert_eq!(
            (j["rss_vs_heap"]["from_ns"].as_u64(), j["rss_vs_heap"]["to_ns"].as_u64()),
            (Some(S / 2), Some(10 * S))
        );
        assert_eq!(j["rss"][0]["tracer_bytes"], MIB + 128 * 1024);
        // Text: the summary names the span and the exclusion; the RSS line keeps the raw figures.
        assert!(
            r.summary.contains(
                "RSS grew 8.0 MiB over the whole trace (0.5s to 10.0s; leaktrace's own 2.4 MiB excluded), \
                 100% of it explained by sampled heap growth"
            ),
            "{}",
            r.summary
        );
        assert!(
            text.contains(
                "RSS 11.1 MiB -> 21.5 MiB over the whole trace (0.5s to 10.0s); leaktrace's own 1.1 MiB -> 3.5 MiB of it"
            ),
            "{text}"
        );
        // The page escapes the apostrophe.
        assert!(html_of(&eight_mib_leak()).contains("leaktrace's own 2.4 MiB excluded"), "the HTML's verdict");
    }

    /// Without the own series (a 1.0 trace), the growth is the kernel's and nothing is said to
    /// be excluded.
    #[test]
    fn a_1_0_trace_excludes_nothing() {
        let b10 = eight_mib_leak_in(TraceBuilder::new(4 * MIB).version_1_0());
        let (r, j, text) = report_of(&b10);
        let v = r.rss_vs_heap.as_ref().unwrap();
        assert_eq!(v.tracer_growth_bytes, 0.0);
        assert_eq!(v.rss_growth_bytes, v.raw_rss_growth_bytes);
        assert!(v.explained_fraction.is_some_and(|e| e < 0.85), "{:?}", v.explained_fraction);
        assert!(!r.summary.contains("excluded") && !text.contains("leaktrace's own"), "{text}");
        assert_eq!(j["rss"][0]["tracer_bytes"], 0);
    }

    /// A process whose RSS peaked far above both ends: the peak the header kept (the series
    /// lost it to halving) is in the JSON, the summary and the RSS line, with its time.
    #[test]
    fn the_peak_is_shown_beside_start_and_end() {
        let mut b = TraceBuilder::new(4 * MIB).exited_at(60 * S);
        let stack = b.stack(&[0x40_1000]);
        b.alloc(10 * S, 0x1000_0000, 8 * MIB, stack);
        for (t, rss) in [(1, 100 * MIB), (20, 1800 * MIB), (40, 900 * MIB), (59, 108 * MIB + 614 * 1024)] {
            b.rss(t * S, rss, 0);
        }
        b.header.rss_peak_bytes = 2_350_000_000;
        b.header.rss_peak_ns = 31 * S;
        let (r, j, text) = report_of(&b);
        assert_eq!(j["rss_peak"]["rss_bytes"], 2_350_000_000u64);
        assert_eq!(j["rss_peak"]["t_ns"], 31 * S);
        assert!(
            r.summary
                .contains("RSS grew 8.6 MiB over the whole trace (1.0s to 59.0s), after a peak of 2.2 GiB at 31.0s"),
            "{}",
            r.summary
        );
        assert!(
            text.contains("RSS 100.0 MiB -> 108.6 MiB over the whole trace (1.0s to 59.0s), peak 2.2 GiB at 31.0s"),
            "{text}"
        );
        assert!(info_of(&b).contains("RSS peak         2.2 GiB at 31.0s"));
        let html = html_of(&b);
        assert!(html.contains("(peak 2.2 GiB at 31.0s)"), "the HTML's RSS figure");
        assert!(html.contains("after a peak of 2.2 GiB at 31.0s"), "the HTML's verdict");

        // A 1.0 trace has no peak in its header: the series' highest sample stands for it.
        b.header.rss_peak_bytes = 0;
        b.header.rss_peak_ns = 0;
        let (r, j, _) = report_of(&b);
        assert_eq!(j["rss_peak"]["rss_bytes"], 1800 * MIB);
        assert_eq!(j["rss_peak"]["t_ns"], 20 * S);
        assert!(r.summary.contains("after a peak of 1.8 GiB at 20.0s"), "{}", r.summary);

        // RSS that fell back below its start still says it peaked.
        b.rss.last_mut().unwrap().rss_bytes = 90 * MIB;
        let (r, _, _) = report_of(&b);
        assert!(r.summary.contains("RSS peaked at 1.8 GiB at 20.0s and ended at 90.0 MiB"), "{}", r.summary);

        // No RSS samples: no peak, whatever the header says.
        b.rss.clear();
        b.header.rss_peak_bytes = 5 * MIB;
        let (r, j, _) = report_of(&b);
        assert!(r.rss_peak.is_none() && j["rss_peak"].is_null() && j["rss_vs_heap"].is_null());
    }

    /// A trace started dormant and resumed at 3 s: the heap is compared from the resume, and
    /// both the summary and the RSS line say so, with the same words and times; the RSS line
    /// keeps the whole trace's ends too.
    #[test]
    fn one_span_stated_in_the_summary_and_the_rss_line() {
        let mut b = TraceBuilder::new(4 * MIB).exited_at(10 * S);
        b.sampling = vec![
            leaktrace_format::SamplingChange { t_ns: 0, mean_bytes: 0 },
            leaktrace_format::SamplingChange { t_ns: 3 * S, mean_bytes: 1 },
        ];
        let stack = b.stack(&[0x40_1000]);
        for i in 0..6 {
            b.alloc((4 + i) * S, 0x1000_0000 + i * 2 * MIB, 16 * MIB, stack);
        }
        for k in 1..=20u64 {
            let t = k * S / 2;
            // 100 MiB of growth before the resume that the heap cannot be asked about.
            let before = (t.min(3 * S) * 100 / (3 * S)) * MIB;
            let after = (t.saturating_sub(3 * S) / S).min(6) * 16 * MIB;
            b.rss(t, 10 * MIB + before + after, 0);
        }
        let (r, j, text) = report_of(&b);
        assert_eq!(j["rss_vs_heap"]["from_ns"], 3 * S);
        assert_eq!(j["rss_vs_heap"]["rss_growth_bytes"], 96 * MIB);
        assert!(r.summary.contains("RSS grew 96.0 MiB since sampling last started (3.0s to 10.0s)"), "{}", r.summary);
        assert!(
            text.contains(
                "RSS 26.0 MiB -> 206.0 MiB over the whole trace (0.5s to 10.0s); \
                 110.0 MiB -> 206.0 MiB since sampling last started (3.0s to 10.0s), the span the heap is compared over"
            ),
            "{text}"
        );
    }

    #[test]
    fn children_counters_in_json_and_text_only_when_nonzero() {
        let mut b = eight_mib_leak();
        let (_, j, text) = report_of(&b);
        assert_eq!(
            j["process"]["children"],
            serde_json::json!({"traced": 0, "untraced_budget": 0, "removed_empty": 0})
        );
        assert!(!text.contains("children:") && !info_of(&b).contains("children:"));
        b.header.children_traced = 3;
        b.header.children_untraced_budget = 312;
        b.header.children_removed = 40;
        let (_, j, text) = report_of(&b);
        assert_eq!(
            j["process"]["children"],
            serde_json::json!({"traced": 3, "untraced_budget": 312, "removed_empty": 40})
        );
        let line = "children: 3 traced, 312 not traced (disk budget spent: LEAKTRACE_TREE_BUDGET), \
                    40 traces removed (nothing unfreed)";
        assert!(text.contains(line), "{text}");
        assert!(info_of(&b).contains(line));
        b.header.children_traced = 0;
        b.header.children_removed = 0;
        let (_, _, text) = report_of(&b);
        assert!(text.contains("children: 312 not traced (disk budget spent"), "{text}");
    }

    /// The example: 158 sampled allocations, none freed, in a ring that holds them all,
    /// while the batched header counters say 128. info counts from the ring and the live table,
    /// which agree, and does not show the batched figure beside them.
    #[test]
    fn info_counts_add_up_from_what_the_file_holds() {
        let mut b = TraceBuilder::new(MIB);
        let stack = b.stack(&[0x40_1000]);
        for i in 0..158 {
            b.alloc(i * 1000, 0x1000_0000 + i * 64, 48, stack);
        }
        b.header.sampled_allocs = 128;
        b.header.live_count = 128;
        let info = info_of(&b);
        assert!(
            info.contains(
                "events           158 recorded: 158 sampled allocations, 0 of them freed since (all in the ring)"
            ),
            "{info}"
        );
        assert!(info.contains("live             158 sampled allocations unfreed"), "{info}");
        assert!(!info.contains(" 128 ") && !info.contains("note:"), "{info}");

        // Frees too: allocations less frees is the live table.
        for i in 0..100 {
            b.free(200_000 + i * 1000, 0x1000_0000 + i * 64);
        }
        let info = info_of(&b);
        assert!(info.contains("258 recorded: 158 sampled allocations, 100 of them freed since"), "{info}");
        assert!(info.contains("live             58 sampled"), "{info}");

        // A wrapped ring: the newest it holds, and the header's batched counters, each labelled.
        let mut b = TraceBuilder::new(MIB);
        let cap = b.header.ring_capacity;
        let stack = b.stack(&[0x40_1000]);
        for i in 0..cap + 500 {
            b.alloc(i * 1000, 0x1000_0000 + i * 64, 48, stack);
            b.free(i * 1000 + 500, 0x1000_0000 + i * 64);
        }
        b.header.sampled_allocs = cap + 500 - 37;
        b.header.sampled_frees = cap + 500 - 40;
        let info = info_of(&b);
        let total = 2 * (cap + 500);
        assert!(
            info.contains(&format!("events           {total} recorded; the ring holds the newest {cap}")),
            "{info}"
        );
        assert!(
            info.contains(&format!("counted {} allocations, {} frees (each thread adds", cap + 463, cap + 460)),
            "{info}"
        );
        assert!(info.contains(&format!("{} events overwritten", total - cap)), "{info}");
        assert!(info.contains("live             0 sampled"), "{info}");
    }

    /// Hostile values in every 1.1 place: every output renders, none panics.
    #[test]
    fn hostile_1_1_fields_never_panic() {
        for v in [u64::MAX, u64::MAX / 2, 1] {
            let mut b = eight_mib_leak();
            let h = &mut b.header;
            (h.rss_peak_bytes, h.rss_peak_ns, h.reserved_bytes, h.tree_budget, h.tree_id) = (v, v, v, v, v);
            (h.children_traced, h.children_untraced_budget, h.children_removed) = (v, v, v);
            (h.control_ack_seq, h.control_result) = (v as u32, v as u32);
            for (i, r) in b.rss.iter_mut().enumerate() {
                r.own_bytes = if i % 2 == 0 { v } else { 0 };
                r.rss_bytes = r.rss_bytes.max(v >> (i % 3));
            }
            let (r, _, text) = report_of(&b);
            assert!(!text.is_empty() && !r.summary.is_empty());
            assert!(r.rss.iter().all(|p| p.tracer_bytes <= p.rss_bytes));
            let _ = html_of(&b);
            let _ = info_of(&b);
        }
    }

    #[test]
    fn info_says_how_much_disk_the_file_holds_and_the_tree_budget() {
        let mut b = TraceBuilder::new(64 * MIB);
        assert!(info_of(&b).contains("disk             64.0 MiB reserved: the whole file"));
        b.header.reserved_bytes = MIB;
        b.header.state = layout::TraceState::Paused as u32;
        b.header.current_mean_bytes = 0;
        b.header.tree_budget = 256 * MIB;
        b.header.tree_id = 0x1234;
        let info = info_of(&b);
        assert!(
            info.contains(
                "disk             1.0 MiB of 64.0 MiB reserved (dormant-small: the rest is reserved at `ctl --resume`"
            ),
            "{info}"
        );
        assert!(
            info.contains("tree budget      256.0 MiB for the traces of this process and its descendants"),
            "{info}"
        );
        b.header.state = layout::TraceState::Tracing as u32;
        b.header.current_mean_bytes = 524_288;
        assert!(info_of(&b).contains("(small: the rest is reserved at the first sampled allocation)"));
        // A 1.0 file (reserved_bytes 0) had all of it from the start.
        b.header.reserved_bytes = 0;
        assert!(info_of(&b).contains("64.0 MiB reserved: the whole file"));
    }
}
