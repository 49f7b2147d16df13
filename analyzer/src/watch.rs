//! `leak-analyze watch`: a live view of a running process, re-read from its trace every few
//! seconds: RSS and its recent rate, the estimated heap, the verdict, the top growing sites.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Result;

use leaktrace_format::{Trace, TraceSource};

use crate::naming::{SiteName, Symbols};
use crate::report::{human_bytes, Report};
use crate::symbolize::{SymbolizeOptions, Symbolizer};
use crate::{analysis, report};

/// Clear the screen and home the cursor (only on a terminal).
const CLEAR: &str = "\x1b[2J\x1b[H";

pub struct Options {
    pub interval: Duration,
    /// Stop after this many refreshes (None: until the process ends).
    pub iterations: Option<u64>,
    pub top: usize,
    pub symbolize: SymbolizeOptions,
}

/// `load` gives the trace and the source it was parsed from.
pub fn run<S: TraceSource>(load: impl Fn() -> Result<(Trace, S)>, opts: &Options) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    // Symbolizing is the slow part; keep the symbolizer while the module map stays the same.
    let mut symbolizer: Option<(usize, Symbolizer)> = None;
    let mut refreshes = 0u64;
    loop {
        let (trace, source) = load()?;
        if symbolizer.as_ref().is_none_or(|(n, _)| *n != trace.modules.len()) {
            symbolizer = Some((trace.modules.len(), Symbolizer::new(&trace.modules, &opts.symbolize)));
        }
        let sym = &symbolizer.as_ref().expect("set just above").1;
        let mut symbols = None;
        let analysis = analysis::analyze(&trace, &source, &[], |stacks, live| {
            let (s, locations) = Symbols::for_sites(&trace.modules, sym, stacks, live);
            symbols = Some(s);
            locations
        });
        let symbols = symbols.unwrap_or_else(|| Symbols::new(&trace.modules, sym, &[]));
        let r = report::build(&trace, &analysis, &symbols, sym, &crate::suppress::Suppressions::builtin());
        let mut out = std::io::stdout().lock();
        if tty {
            out.write_all(CLEAR.as_bytes())?;
        }
        out.write_all(render(&trace, &r, opts.top).as_bytes())?;
        out.flush()?;
        refreshes += 1;
        if trace.header.ended_cleanly() || opts.iterations.is_some_and(|n| refreshes >= n) {
            return Ok(());
        }
        std::thread::sleep(opts.interval);
    }
}

fn minutes_and_seconds(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// RSS change per minute over the last minute of the series (or what there is of it), and the
/// span it was measured over.
/// The program's RSS (leaktrace's own share taken out, where the trace has it).
fn program_rss(s: &leaktrace_format::RssSample) -> f64 {
    s.rss_bytes.saturating_sub(s.own_bytes) as f64
}

fn recent_rss_rate(t: &Trace) -> Option<(f64, u64)> {
    let last = t.rss.last()?;
    let from = t.rss.iter().find(|r| r.t_ns + 60_000_000_000 >= last.t_ns)?;
    let dt = last.t_ns.checked_sub(from.t_ns).filter(|&d| d > 0)?;
    Some(((program_rss(last) - program_rss(from)) * 60e9 / dt as f64, dt))
}

pub fn render(t: &Trace, r: &Report, top: usize) -> String {
    let mut o = String::new();
    let state = if t.header.ended_cleanly() {
        "exited"
    } else {
        match t.header.trace_state() {
            Some(leaktrace_format::layout::TraceState::Paused) => "paused",
            Some(leaktrace_format::layout::TraceState::Failed) => "tracing stopped (internal failure)",
            _ => "running",
        }
    };
    let _ = writeln!(
        o,
        "pid {}  {}  [{state}, {}]",
        r.process.pid,
        r.process.cmdline.join(" "),
        minutes_and_seconds(t.end_ns())
    );
    let rss_now = t.rss.last().map_or(0.0, program_rss);
    let rate = recent_rss_rate(t).map_or(String::new(), |(v, span)| {
        let sign = if v >= 0.0 { "+" } else { "-" };
        format!(" ({sign}{}/min over the last {})", human_bytes(v.abs()), minutes_and_seconds(span))
    });
    let own = t.rss.last().map_or(0, |s| s.own_bytes);
    let own =
        if own > 0 { format!(" (leaktrace's own {} not counted)", human_bytes(own as f64)) } else { String::new() };
    let _ =
        writeln!(o, "RSS {}{rate}{own}   heap estimate {}", human_bytes(rss_now), human_bytes(r.totals.unfreed_bytes));
    let _ = writeln!(o, "\n{}\n", r.summary);
    let _ = writeln!(o, "{:>3}  {:>11}  {:>13}  {:>5}  site", "#", "unfreed", "growth/min", "conf");
    for s in r.sites.iter().take(top) {
        let growth = if s.growing { format!("+{}", human_bytes(s.growth_bytes_per_sec * 60.0)) } else { "-".into() };
        let _ = writeln!(
            o,
            "{:>3}  {:>11}  {:>13}  {:>5.2}  {}",
            s.id,
            human_bytes(s.unfreed_bytes),
            growth,
            s.trend_confidence,
            SiteName::of(&s.frames).quoted()
        );
    }
    if r.sites.is_empty() {
        let _ = writeln!(o, "     (no unfreed sampled allocations yet)");
    }
    o
}
