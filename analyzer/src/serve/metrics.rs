//! The /metrics page: the snapshots of every trace in the Prometheus text format, through
//! `prometheus-client` (names, units, escaping and types as its encoder writes them).
//!
//! A registry is built afresh for each scrape from the snapshots, so that a trace that went
//! away leaves no series behind. The README's metric table lists every name below.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::traces::{Health, Snapshot};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: String,
    exe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    pid: String,
    exe: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    pid: String,
    exe: String,
    site: String,
    site_id: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// The exporter's own figures for one scrape.
pub struct ExporterFigures {
    pub trace_files: usize,
    /// Traces whose refresh had not finished when the scrape had to answer: shown as of their
    /// previous analysis.
    pub stale_traces: usize,
    /// How long ago the oldest figures shown were read from their trace.
    pub max_staleness_seconds: f64,
    pub unreadable_paths: usize,
    pub last_refresh_seconds: f64,
    pub analyses: u64,
    pub symbol_cache_modules: usize,
}

/// Register a family of gauges and return it.
fn gauge<L>(reg: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Family<L, FGauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, FGauge>::default();
    match unit {
        Some(u) => reg.register_with_unit(name, help, u, f.clone()),
        None => reg.register(name, help, f.clone()),
    }
    f
}

fn counter(reg: &mut Registry, name: &str, help: &str) -> Family<ProcessLabels, Counter> {
    let f = Family::<ProcessLabels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The text of one scrape. `now_unix_ns`: the time the ages are measured to.
pub fn render(snapshots: &[Arc<Snapshot>], exporter: &ExporterFigures, now_unix_ns: u64) -> String {
    let mut reg = Registry::with_prefix("leaktrace");
    let rss = gauge::<ProcessLabels>(
        &mut reg,
        "process_rss",
        "Resident set size of the traced program at its last RSS sample, leaktrace's own memory excluded",
        Some(Unit::Bytes),
    );
    let tracer = gauge::<ProcessLabels>(
        &mut reg,
        "tracer_memory",
        "Memory leaktrace itself holds in the traced process (trace pages and its heap), at the last RSS sample",
        Some(Unit::Bytes),
    );
    let heap = gauge::<ProcessLabels>(
        &mut reg,
        "process_heap",
        "Estimated live heap: sampled allocations still unfreed, scaled by their sampling weight",
        Some(Unit::Bytes),
    );
    let rss_growth = gauge::<ProcessLabels>(
        &mut reg,
        "process_rss_growth",
        "RSS growth over the span the report compares with the heap (since sampling last started)",
        Some(Unit::Bytes),
    );
    let heap_growth = gauge::<ProcessLabels>(
        &mut reg,
        "process_heap_growth",
        "Estimated heap growth over the same span as leaktrace_process_rss_growth_bytes",
        Some(Unit::Bytes),
    );
    let unexplained = gauge::<ProcessLabels>(
        &mut reg,
        "process_rss_unexplained_growth",
        "RSS growth the heap growth does not explain (fragmentation, mmap, thread stacks); 0 when it explains all",
        Some(Unit::Bytes),
    );
    let outside = gauge::<ProcessLabels>(
        &mut reg,
        "process_growth_outside_heap",
        "1 when the report finds most of the RSS growth outside malloc'd memory",
        None,
    );
    let sampled = counter(&mut reg, "events_sampled", "Allocation and free events the tracer recorded");
    let dropped =
        counter(&mut reg, "events_dropped", "Events the tracer could not record (tables or ring full, no stack)");
    let mean = gauge::<ProcessLabels>(
        &mut reg,
        "sampling_mean",
        "Mean bytes between sampled allocations now in force (1: every allocation; 0: paused)",
        Some(Unit::Bytes),
    );
    let started = gauge::<ProcessLabels>(
        &mut reg,
        "process_start_time",
        "When the traced process started, seconds since the Unix epoch",
        Some(Unit::Seconds),
    );
    let age = gauge::<ProcessLabels>(
        &mut reg,
        "last_record_age",
        "Seconds since the tracer last wrote anything (event, RSS sample or heartbeat): grows when it stopped or hung",
        Some(Unit::Seconds),
    );
    let running = gauge::<ProcessLabels>(
        &mut reg,
        "process_running",
        "1 while the traced process runs, 0 once it is gone (as the exporter's /proc sees it; absent when unknown)",
        None,
    );
    let health = gauge::<HealthLabels>(
        &mut reg,
        "trace_health",
        "1 for the trace's state (ok, partial, tracing_off, exited, corrupt), 0 for the others",
        None,
    );
    let site_bytes = gauge::<SiteLabels>(
        &mut reg,
        "site_unfreed",
        "Estimated unfreed bytes of a call site (the top sites by unfreed bytes, and every growing one)",
        Some(Unit::Bytes),
    );
    let site_ci = gauge::<SiteLabels>(
        &mut reg,
        "site_unfreed_ci95",
        "Half-width of the 95% confidence interval of leaktrace_site_unfreed_bytes (0 when every allocation is recorded)",
        Some(Unit::Bytes),
    );
    let site_growing = gauge::<SiteLabels>(
        &mut reg,
        "site_growing",
        "1 when the site's live memory grows steadily (the report's GROWING verdict), else 0",
        None,
    );
    let site_rate = gauge::<SiteLabels>(
        &mut reg,
        "site_growth_rate",
        "Theil-Sen slope of the site's live bytes, in bytes per second",
        Some(Unit::Other("bytes_per_second".into())),
    );
    let site_conf = gauge::<SiteLabels>(
        &mut reg,
        "site_trend_confidence",
        "One-sided Mann-Kendall confidence (0 to 1) that the site's live bytes rise",
        None,
    );

    // One set of series per (pid, exe): of two traces of one pid (a pid reused while the old
    // trace is still there), the process that started last is shown.
    let mut newest: HashMap<(&str, &str), &Snapshot> = HashMap::new();
    for s in snapshots {
        let start = |x: &Snapshot| x.process.as_ref().map_or(0, |p| p.start_unix_ns);
        let e = newest.entry((&s.pid, &s.exe)).or_insert(s);
        if start(s) > start(e) {
            *e = s;
        }
    }
    let mut shown: Vec<&Snapshot> = newest.into_values().collect();
    shown.sort_by(|a, b| a.path.cmp(&b.path));

    for s in shown {
        let l = ProcessLabels { pid: s.pid.clone(), exe: s.exe.clone() };
        for h in Health::ALL {
            let hl = HealthLabels { pid: s.pid.clone(), exe: s.exe.clone(), state: h.label().to_string() };
            health.get_or_create(&hl).set(flag(h == s.health));
        }
        if let Some(r) = s.running {
            running.get_or_create(&l).set(flag(r));
        }
        let Some(p) = &s.process else { continue };
        if let Some(v) = p.rss_bytes {
            rss.get_or_create(&l).set(v);
        }
        if let Some(v) = p.tracer_bytes {
            tracer.get_or_create(&l).set(v);
        }
        heap.get_or_create(&l).set(p.heap_bytes);
        if let (Some(r), Some(h), Some(u)) = (p.rss_growth_bytes, p.heap_growth_bytes, p.rss_unexplained_growth_bytes) {
            rss_growth.get_or_create(&l).set(r);
            heap_growth.get_or_create(&l).set(h);
            unexplained.get_or_create(&l).set(u);
        }
        outside.get_or_create(&l).set(flag(p.growth_outside_heap));
        sampled.get_or_create(&l).inc_by(p.sampled_events);
        dropped.get_or_create(&l).inc_by(p.dropped_events);
        mean.get_or_create(&l).set(p.sampling_mean_bytes as f64);
        started.get_or_create(&l).set(p.start_unix_ns as f64 / 1e9);
        let last_unix_ns = p.start_unix_ns.saturating_add(p.last_record_ns);
        age.get_or_create(&l).set(now_unix_ns.saturating_sub(last_unix_ns) as f64 / 1e9);
        for site in &s.sites {
            let sl = SiteLabels {
                pid: s.pid.clone(),
                exe: s.exe.clone(),
                site: site.name.clone(),
                site_id: site.id.clone(),
            };
            site_bytes.get_or_create(&sl).set(site.unfreed_bytes);
            site_ci.get_or_create(&sl).set(site.unfreed_bytes_ci95);
            site_growing.get_or_create(&sl).set(flag(site.growing));
            site_rate.get_or_create(&sl).set(site.growth_bytes_per_sec);
            site_conf.get_or_create(&sl).set(site.trend_confidence);
        }
    }

    let own = |reg: &mut Registry, name: &str, help: &str, unit: Option<Unit>, v: f64| {
        let g = FGauge::default();
        g.set(v);
        match unit {
            Some(u) => reg.register_with_unit(name, help, u, g),
            None => reg.register(name, help, g),
        }
    };
    own(
        &mut reg,
        "exporter_trace_files",
        "Trace files found under the exporter's paths",
        None,
        exporter.trace_files as f64,
    );
    own(
        &mut reg,
        "exporter_stale_traces",
        "Traces shown as of an earlier refresh: their analysis had not finished when this scrape answered",
        None,
        exporter.stale_traces as f64,
    );
    own(
        &mut reg,
        "exporter_max_staleness",
        "How long ago the oldest figures of this scrape were read from their trace",
        Some(Unit::Seconds),
        exporter.max_staleness_seconds,
    );
    own(
        &mut reg,
        "exporter_unreadable_paths",
        "Trace files or directories the exporter may not read (skipped; logged once)",
        None,
        exporter.unreadable_paths as f64,
    );
    own(
        &mut reg,
        "exporter_last_refresh_duration",
        "How long the last finished refresh of every trace took",
        Some(Unit::Seconds),
        exporter.last_refresh_seconds,
    );
    own(
        &mut reg,
        "exporter_symbol_cache_modules",
        "Modules whose debug information the exporter keeps loaded",
        None,
        exporter.symbol_cache_modules as f64,
    );
    let analyses = Counter::<u64>::default();
    analyses.inc_by(exporter.analyses);
    reg.register("exporter_analyses", "Trace analyses run since the exporter started", analyses);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg);
    out
}
