//! leak-analyze: replay a leaktrace trace offline, symbolize it, and report what leaked where.
//!
//! Exit codes: 0 success, 2 error (unreadable or foreign file, bad arguments).

mod analysis;
mod diff;
mod export;
mod growth;
mod progress;
mod report;
mod symbolize;
mod watch;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use leaktrace_format::layout::{self, hdr};
use leaktrace_format::Trace;

#[derive(Parser)]
#[command(name = "leak-analyze", version, about = "Report memory leaks from a leaktrace trace file")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    /// Collapsed stacks (`a;b;c bytes`) for flamegraph.pl, inferno, speedscope.
    Folded,
    /// A gzipped pprof profile (inuse_objects, inuse_space), for `go tool pprof`.
    Pprof,
    /// One self-contained HTML page: verdict, charts, sites, flame graph.
    Html,
}

/// Where to find the traced program's binaries and debug files.
#[derive(clap::Args)]
struct SymbolArgs {
    /// Look for the traced binaries here (by file name, or by full path as in a sysroot).
    #[arg(long = "binaries")]
    binaries: Vec<PathBuf>,
    /// Look for separate debug files here, in the .build-id/xx/rest.debug layout.
    #[arg(long = "debug-dir")]
    debug_dirs: Vec<PathBuf>,
}

impl From<SymbolArgs> for symbolize::SymbolizeOptions {
    fn from(a: SymbolArgs) -> Self {
        symbolize::SymbolizeOptions { binaries: a.binaries, debug_dirs: a.debug_dirs }
    }
}

#[derive(Subcommand)]
enum Command {
    /// List the call sites with unfreed memory at the end of the trace, biggest first.
    Report {
        trace: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Write the report here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        symbols: SymbolArgs,
        /// Sites to show in text output.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Process identity, settings, time span, event counts and file health.
    Info { trace: PathBuf },
    /// What grew between two traces (OLD NEW), or between two moments of one trace
    /// (TRACE --from T1 --to T2; times like 90s, 5m, 1h, from the start of the trace).
    Diff {
        old: PathBuf,
        new: Option<PathBuf>,
        /// With one trace: the earlier moment (default: the start).
        #[arg(long)]
        from: Option<String>,
        /// With one trace: the later moment (default: the end).
        #[arg(long)]
        to: Option<String>,
        /// text or json.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        #[command(flatten)]
        symbols: SymbolArgs,
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// A live view of a running process: RSS, heap estimate, top growing sites.
    Watch {
        trace: PathBuf,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Stop after this many refreshes (default: when the process exits).
        #[arg(long)]
        iterations: Option<u64>,
        #[arg(long, default_value_t = 10)]
        top: usize,
        #[command(flatten)]
        symbols: SymbolArgs,
    },
    /// Change a running process's tracing through its trace file, without a signal or restart.
    Ctl {
        trace: PathBuf,
        #[arg(long, conflicts_with_all = ["resume", "sample_bytes"])]
        pause: bool,
        #[arg(long, conflicts_with = "sample_bytes")]
        resume: bool,
        /// New sampling mean in bytes (1 = record every allocation).
        #[arg(long)]
        sample_bytes: Option<u64>,
    },
}

/// Read a trace file without trusting it: refuse directories and non-files, never read more
/// than the file holds. The file stays open: the analysis streams the event ring from it.
fn load(path: &Path) -> Result<(Trace, File)> {
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

fn write_output(output: Option<&Path>, text: impl AsRef<[u8]>) -> Result<()> {
    match output {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_ref())?;
            out.flush()?;
            Ok(())
        }
    }
}

fn ctl(path: &Path, pause: bool, resume: bool, sample_bytes: Option<u64>) -> Result<String> {
    let (control, mean) = match (pause, resume, sample_bytes) {
        (true, _, _) => (layout::Control::Pause, 0),
        (_, true, _) => (layout::Control::Resume, 0),
        (_, _, Some(n)) if (1..=u64::from(u32::MAX)).contains(&n) => (layout::Control::SetMeanBytes, n),
        (_, _, Some(n)) => bail!("--sample-bytes {n} is out of range (1 to 4294967295)"),
        _ => bail!("say what to change: --pause, --resume or --sample-bytes N"),
    };
    // Opening for writing is the permission check: only who can write the trace can steer it.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    let mut head = vec![0u8; layout::HEADER_SIZE];
    f.read_exact_at(&mut head, 0).with_context(|| format!("{}: too short for a trace header", path.display()))?;
    leaktrace_format::Header::parse(&head).with_context(|| format!("{}", path.display()))?;
    f.write_all_at(&mean.to_le_bytes(), hdr::REQUESTED_MEAN_BYTES as u64)?;
    f.write_all_at(&(control as u32).to_le_bytes(), hdr::CONTROL as u64)?;
    let seq = u32::from_le_bytes(head[hdr::CONTROL_SEQ..hdr::CONTROL_SEQ + 4].try_into()?);
    f.write_all_at(&seq.wrapping_add(1).to_le_bytes(), hdr::CONTROL_SEQ as u64)?;
    // After the sequence, a new epoch in the gate word: every thread of the process takes its
    // slow path at its next allocation, and acts on the request there. An atomic add through a
    // shared mapping, since the process stores to the same word.
    // SAFETY: a shared mapping of the file's header page, which the check above found to be a
    // trace header; the process maps the same page, and both sides touch the word atomically.
    let header = unsafe { memmap2::MmapOptions::new().len(layout::HEADER_SIZE).map_mut(&f) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    // SAFETY: GATE is 8-byte aligned within the page-aligned mapping, which outlives the use.
    let gate = unsafe { std::sync::atomic::AtomicU64::from_ptr(header.as_ptr().add(hdr::GATE) as *mut u64) };
    gate.fetch_add(layout::GATE_EPOCH, std::sync::atomic::Ordering::SeqCst);
    Ok(format!(
        "request sent to pid {}; it applies within 100 ms if the process is running\n",
        u32::from_le_bytes(head[hdr::PID..hdr::PID + 4].try_into()?)
    ))
}

/// A trace, its analysis and its report, for one side of a diff.
struct Loaded {
    trace: Trace,
    analysis: analysis::Analysis,
    report: report::Report,
}

/// Analyze and symbolize a loaded trace; `probe_times`: see [`analysis::analyze`].
fn report_on(
    (trace, file): (Trace, File),
    opts: &symbolize::SymbolizeOptions,
    probe_times: &[u64],
    progress: &progress::Progress,
) -> Loaded {
    progress.stage(format!("analyzing {} events and {} live allocations", trace.readable_events, trace.live.len()));
    let analysis = analysis::analyze(&trace, &file, probe_times);
    progress.stage(format!("symbolizing {} call sites", analysis.sites.len()));
    let symbolizer = symbolize::Symbolizer::new(&trace.modules, opts);
    let report = report::build(&trace, &analysis, &symbolizer);
    Loaded { trace, analysis, report }
}

fn load_and_report(path: &Path, opts: &symbolize::SymbolizeOptions) -> Result<Loaded> {
    let progress = progress::Progress::new();
    progress.stage(format!("reading {}", path.display()));
    Ok(report_on(load(path)?, opts, &[], &progress))
}

fn run_diff(
    old: &Path,
    new: Option<&Path>,
    from: Option<&str>,
    to: Option<&str>,
    format: Format,
    opts: &symbolize::SymbolizeOptions,
    top: usize,
) -> Result<String> {
    let time = |s: Option<&str>, what: &str| -> Result<Option<u64>> {
        s.map(|v| diff::parse_time(v).with_context(|| format!("--{what} {v:?} is not a time like 90s, 5m or 1h")))
            .transpose()
    };
    let (from_ns, to_ns) = (time(from, "from")?, time(to, "to")?);
    let d = match new {
        Some(new_path) => {
            let a = load_and_report(old, opts)?;
            if from_ns.is_some() || to_ns.is_some() {
                bail!("--from and --to compare two moments of one trace; give one trace with them");
            }
            let b = load_and_report(new_path, opts)?;
            fn side<'a>(l: &'a Loaded, p: &Path) -> diff::Side<'a> {
                diff::Side {
                    label: format!("{} (pid {})", p.display(), l.trace.header.pid),
                    trace: &l.trace,
                    analysis: &l.analysis,
                    report: &l.report,
                    at_probe: None,
                }
            }
            diff::diff(&side(&a, old), &side(&b, new_path))
        }
        None => {
            let progress = progress::Progress::new();
            progress.stage(format!("reading {}", old.display()));
            let loaded = load(old)?;
            // The moments must be known before the analysis: it keeps no event to look back at.
            let end = loaded.0.end_ns();
            let (t1, t2) = (from_ns.unwrap_or(0).min(end), to_ns.unwrap_or(end).min(end));
            if t1 >= t2 {
                bail!("--from must come before --to (the trace spans {:.1}s)", end as f64 / 1e9);
            }
            let a = report_on(loaded, opts, &[t1, t2], &progress);
            let side = |t: u64, probe: usize| diff::Side {
                label: format!("{:.1}s", t as f64 / 1e9),
                trace: &a.trace,
                analysis: &a.analysis,
                report: &a.report,
                at_probe: Some(probe),
            };
            diff::diff(&side(t1, 0), &side(t2, 1))
        }
    };
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&d)? + "\n",
        Format::Text => diff::render_text(&d, top),
        _ => bail!("diff writes text or json"),
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Report { trace, format, output, symbols, top } => {
            let opts = symbols.into();
            let Loaded { trace: t, analysis, report: r } = load_and_report(&trace, &opts)?;
            let text: Vec<u8> = match format {
                Format::Json => (serde_json::to_string_pretty(&r)? + "\n").into_bytes(),
                Format::Text => report::render_text(&r, top).into_bytes(),
                Format::Folded => export::folded::render(&r, &t.modules).into_bytes(),
                Format::Pprof => export::pprof::render(&r, &analysis, &t.modules)?,
                Format::Html => export::html::render(&r, &analysis, &t, top).into_bytes(),
            };
            write_output(output.as_deref(), &text)
        }
        Command::Info { trace } => write_output(None, report::render_info(&load(&trace)?.0)),
        Command::Diff { old, new, from, to, format, symbols, top } => {
            let opts = symbols.into();
            let text = run_diff(&old, new.as_deref(), from.as_deref(), to.as_deref(), format, &opts, top)?;
            write_output(None, &text)
        }
        Command::Watch { trace, interval, iterations, top, symbols } => {
            if !(interval.is_finite() && interval > 0.0) {
                bail!("--interval must be a positive number of seconds");
            }
            let opts = watch::Options {
                interval: std::time::Duration::from_secs_f64(interval.min(86_400.0)),
                iterations,
                top,
                symbolize: symbols.into(),
            };
            watch::run(|| load(&trace), &opts)
        }
        Command::Ctl { trace, pause, resume, sample_bytes } => {
            write_output(None, &ctl(&trace, pause, resume, sample_bytes)?)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("leak-analyze: {e:#}");
            ExitCode::from(2)
        }
    }
}
