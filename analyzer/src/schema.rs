//! The report's data: one set of serde types that writes the JSON (README, "The JSON report")
//! and that tests and tools read it back into. No logic: `report::build` fills them, `words`
//! and the renderers read them.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
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
#[derive(Serialize, Deserialize, Default)]
pub struct Suppressed {
    #[serde(serialize_with = "as_integer")]
    pub bytes: f64,
    #[serde(serialize_with = "as_integer")]
    pub allocations: f64,
    pub sites: usize,
}

#[derive(Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub exe: String,
    pub cmdline: Vec<String>,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    /// "exit" (ran its exit handlers), "detached" (`leak-analyze detach` ended the trace; the
    /// process ran on), or "unknown" (still running, or killed).
    pub ended: String,
    /// The trace was started by `leak-analyze attach` in the running process: allocations made
    /// before `start_unix_ns` are unknown to it.
    pub attached: bool,
    pub children: Children,
}

/// What became of the process's forked children (format 1.1; zeros in older traces).
#[derive(Serialize, Deserialize)]
pub struct Children {
    /// Children that created a trace of their own and kept it.
    pub traced: u64,
    /// Children that ran untraced: the process tree's disk budget was spent.
    pub untraced_budget: u64,
    /// Children that removed their trace at exit: nothing they sampled was left unfreed.
    pub removed_empty: u64,
}

#[derive(Serialize, Deserialize)]
pub struct Sampling {
    pub mean_bytes: u64,
    pub changes: Vec<SamplingChangeOut>,
}

#[derive(Serialize, Deserialize)]
pub struct SamplingChangeOut {
    pub t_ns: u64,
    pub mean_bytes: u64,
}

#[derive(Serialize, Deserialize)]
pub struct Totals {
    #[serde(serialize_with = "as_integer")]
    pub unfreed_bytes: f64,
    #[serde(serialize_with = "as_integer")]
    pub unfreed_allocations: f64,
    pub sampled_events: u64,
    pub dropped_events: u64,
}

#[derive(Serialize, Deserialize)]
pub struct RssPoint {
    pub t_ns: u64,
    pub rss_bytes: u64,
    /// The part of `rss_bytes` that is leaktrace's own: its trace pages and its heap.
    pub tracer_bytes: u64,
}

/// The highest RSS sampled, and when (ns since start).
#[derive(Serialize, Deserialize, Clone, Copy)]
pub struct RssPeak {
    pub rss_bytes: u64,
    pub t_ns: u64,
}

/// Does the sampled heap explain the RSS growth, or is memory growing outside malloc?
#[derive(Serialize, Deserialize)]
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

#[derive(Serialize, Deserialize)]
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<Vec<String>>,
    /// What holds the site's objects, from the last heap scan (`ctl --scan`); null without one.
    pub retention: Option<crate::retention::RetentionOut>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct FrameOut {
    pub address: String,
    pub module: Option<String>,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The address relative to its module's load bias (how an unresolved frame is named).
    #[serde(skip, default)]
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
