//! leak-analyze as a library: replay a leaktrace trace, symbolize it, and build the report
//! every output renders (text, JSON, HTML, pprof, folded), the diff, and live control
//! (`ctl`, `attach`). `main.rs` is the command line over it; tests use it directly.
//!
//! The pipeline: [`load`] a trace without trusting it, [`report_on`] it (analysis, naming,
//! [`report::build`]), then render [`report::Report`], whose serde form is the JSON interface.

pub mod analysis;
pub mod attach;
pub mod ctl;
pub mod diff;
pub mod export;
pub mod growth;
pub mod inject;
pub mod launch;
pub mod naming;
pub mod progress;
pub mod report;
pub mod retention;
pub mod schema;
pub mod serve;
pub mod suppress;
pub mod symbolize;
pub mod watch;
pub mod words;

use std::fs::File;
use std::path::Path;

use anyhow::{bail, Context, Result};
use leaktrace_format::Trace;

/// Read a trace file without trusting it: refuse directories and non-files, never read more
/// than the file holds. The file stays open: the analysis streams the event ring from it.
pub fn load(path: &Path) -> Result<(Trace, File)> {
    let md = std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !md.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The path may have been swapped for something else between the two looks.
    if !file.metadata().with_context(|| format!("cannot read {}", path.display()))?.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let trace = Trace::parse_from(&file).with_context(|| format!("{}", path.display()))?;
    Ok((trace, file))
}

/// A trace, its analysis and its report.
pub struct Loaded {
    pub trace: Trace,
    pub analysis: analysis::Analysis,
    pub report: report::Report,
}

/// Analyze and symbolize a loaded trace; `probe_times`: see [`analysis::analyze`].
pub fn report_on(
    (trace, file): (Trace, File),
    opts: &symbolize::SymbolizeOptions,
    suppressions: &suppress::Suppressions,
    probe_times: &[u64],
    progress: &progress::Progress,
) -> Loaded {
    progress.stage(format!("collecting the call stacks of {} live allocations", trace.live.len()));
    let symbolizer = symbolize::Symbolizer::new(&trace.modules, opts);
    let mut symbols = None;
    let analysis = analysis::analyze(&trace, &file, probe_times, |stacks, live| {
        progress.stage(format!("symbolizing {} call stacks", live.iter().filter(|&&l| l).count()));
        let (s, locations) = naming::Symbols::for_sites(&trace.modules, &symbolizer, stacks, live);
        progress.stage(format!("analyzing {} events and {} live allocations", trace.readable_events, trace.live.len()));
        symbols = Some(s);
        locations
    });
    let symbols = symbols.unwrap_or_else(|| naming::Symbols::new(&trace.modules, &symbolizer, &[]));
    let report = report::build(&trace, &analysis, &symbols, &symbolizer, suppressions);
    Loaded { trace, analysis, report }
}

/// [`load`] and [`report_on`] the trace at `path`, with a progress line on a terminal.
pub fn load_and_report(
    path: &Path,
    opts: &symbolize::SymbolizeOptions,
    suppressions: &suppress::Suppressions,
) -> Result<Loaded> {
    let progress = progress::Progress::on_stderr();
    progress.stage(format!("reading {}", path.display()));
    Ok(report_on(load(path)?, opts, suppressions, &[], &progress))
}
