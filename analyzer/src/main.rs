//! leak-analyze: replay a leaktrace trace offline, symbolize it, and report what leaked where.
//!
//! Exit codes: 0 success, 2 error (unreadable or foreign file, bad arguments).

use leak_analyze::{attach, ctl, diff, export, launch, progress, report, serve, suppress, symbolize, watch};
use leak_analyze::{load, load_and_report, report_on, Loaded};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

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

/// What `diff` writes: only these, so clap refuses anything else before any work.
#[derive(Clone, Copy, ValueEnum)]
enum DiffFormat {
    Text,
    Json,
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
    /// Do not symbolize: every frame stays module + address.
    #[arg(long)]
    no_symbols: bool,
}

impl From<SymbolArgs> for symbolize::SymbolizeOptions {
    fn from(a: SymbolArgs) -> Self {
        symbolize::SymbolizeOptions { binaries: a.binaries, debug_dirs: a.debug_dirs, disabled: a.no_symbols }
    }
}

/// The trace settings `run` and `attach` share (the `LEAKTRACE_*` variables of the preload).
#[derive(clap::Args)]
struct TraceArgs {
    /// Trace path; %p is the pid (default as LEAKTRACE_FILE, else leaktrace.%p.lt: for run in
    /// the working directory; for attach in the process's, else $TMPDIR or /tmp).
    #[arg(short, long)]
    output: Option<String>,
    /// Mean bytes between samples (1 = every allocation).
    #[arg(long)]
    sample_bytes: Option<String>,
    /// Trace file size (e.g. 64M).
    #[arg(long)]
    file_size: Option<String>,
    /// RSS sampling interval in milliseconds.
    #[arg(long)]
    rss_ms: Option<u64>,
    /// on, or off to start dormant (resume with ctl).
    #[arg(long)]
    start: Option<String>,
    /// auto, dwarf or fp.
    #[arg(long)]
    unwinder: Option<String>,
}

impl TraceArgs {
    fn into_settings(self, tree_budget: Option<String>) -> launch::Settings {
        let TraceArgs { output, sample_bytes, file_size, rss_ms, start, unwinder } = self;
        launch::Settings { output, sample_bytes, file_size, rss_ms, start, unwinder, tree_budget }
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
        /// A suppression file (fun:/obj:/src:/leak: PATTERN lines): matching sites are left out
        /// of the list, and counted under `suppressed`. May be given several times.
        #[arg(long, value_name = "FILE")]
        suppressions: Vec<PathBuf>,
        /// Show the runtime's own one-time allocations too (the loader, stdio buffers, locale
        /// data, libstdc++'s emergency pool), which a built-in list leaves out by default.
        #[arg(long)]
        no_default_suppressions: bool,
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
        #[arg(long, value_enum, default_value = "text")]
        format: DiffFormat,
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
    /// Run CMD under the preload (LD_PRELOAD and the settings set for you); its exit status is
    /// passed through. The trace goes to leaktrace.<pid>.lt unless -o says otherwise.
    Run {
        #[command(flatten)]
        settings: TraceArgs,
        /// Disk budget of the process tree's traces (e.g. 1G).
        #[arg(long)]
        tree_budget: Option<String>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Start tracing a running process that was started without the preload: no restart, no
    /// debugger. One thread stops for milliseconds. The trace file's path is the last line.
    Attach {
        pid: i32,
        #[command(flatten)]
        settings: TraceArgs,
    },
    /// Stop tracing an attached process and give it its allocator back; it runs on untraced.
    /// The trace's path is the last line.
    Detach { pid: i32 },
    /// A Prometheus exporter: serve /metrics for the traces under PATH (trace files, or
    /// directories whose *.lt files are picked up as they appear and dropped when they go).
    Serve {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Address to listen on (loopback unless told otherwise).
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: String,
        /// Sites per process by unfreed bytes; growing sites are exported besides.
        #[arg(long, default_value_t = 20)]
        top: usize,
        #[command(flatten)]
        symbols: SymbolArgs,
    },
    /// Write the man page and the shell completions into DIR (for packaging).
    #[command(hide = true)]
    Assets { dir: PathBuf },
    /// Change running processes' tracing through their trace files, without a signal or
    /// restart. A directory stands for every trace file in it (a whole service's). Exit status
    /// 1 if a process refused (the disk or the tree's budget cannot hold a resumed trace).
    Ctl {
        #[arg(required = true)]
        trace: Vec<PathBuf>,
        #[arg(long, conflicts_with_all = ["resume", "sample_bytes"])]
        pause: bool,
        #[arg(long, conflicts_with = "sample_bytes")]
        resume: bool,
        /// Look for what holds the sampled live objects: the process scans a copy-on-write
        /// snapshot of its memory (a forked child; its threads stop only for the fork) and
        /// writes the findings into the trace; `report` then says per site what holds it.
        #[arg(long, conflicts_with_all = ["pause", "resume", "sample_bytes"])]
        scan: bool,
        /// New sampling mean in bytes (1 = record every allocation).
        #[arg(long)]
        sample_bytes: Option<u64>,
        /// How long to wait for the processes to answer, in milliseconds (default 2000; 60000
        /// with --scan). A process applies a request at its next allocation.
        #[arg(long)]
        wait: Option<u64>,
    },
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

fn run_diff(
    old: &Path,
    new: Option<&Path>,
    from: Option<&str>,
    to: Option<&str>,
    format: DiffFormat,
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
            let a = load_and_report(old, opts, &suppress::Suppressions::builtin())?;
            if from_ns.is_some() || to_ns.is_some() {
                bail!("--from and --to compare two moments of one trace; give one trace with them");
            }
            let b = load_and_report(new_path, opts, &suppress::Suppressions::builtin())?;
            fn side<'a>(l: &'a Loaded, p: &Path) -> diff::Side<'a> {
                diff::Side {
                    label: format!("{} (pid {})", p.display(), l.trace.header.pid),
                    analysis: &l.analysis,
                    report: &l.report,
                    at_probe: None,
                }
            }
            diff::diff(&side(&a, old), &side(&b, new_path))
        }
        None => {
            let progress = progress::Progress::on_stderr();
            progress.stage(format!("reading {}", old.display()));
            let loaded = load(old)?;
            // The moments must be known before the analysis: it keeps no event to look back at.
            let end = loaded.0.end_ns();
            let (t1, t2) = (from_ns.unwrap_or(0).min(end), to_ns.unwrap_or(end).min(end));
            if t1 >= t2 {
                bail!("--from must come before --to (the trace spans {:.1}s)", end as f64 / 1e9);
            }
            let a = report_on(loaded, opts, &suppress::Suppressions::builtin(), &[t1, t2], &progress);
            let side = |t: u64, probe: usize| diff::Side {
                label: format!("{:.1}s", t as f64 / 1e9),
                analysis: &a.analysis,
                report: &a.report,
                at_probe: Some(probe),
            };
            diff::diff(&side(t1, 0), &side(t2, 1))
        }
    };
    Ok(match format {
        DiffFormat::Json => serde_json::to_string_pretty(&d)? + "\n",
        DiffFormat::Text => diff::render_text(&d, top),
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Report { trace, format, output, symbols, top, suppressions, no_default_suppressions } => {
            let opts = symbols.into();
            let mut rules = if no_default_suppressions {
                suppress::Suppressions::default()
            } else {
                suppress::Suppressions::builtin()
            };
            for f in &suppressions {
                rules.extend(suppress::Suppressions::load(f)?);
            }
            let Loaded { trace: t, analysis, report: r } = load_and_report(&trace, &opts, &rules)?;
            let text: Vec<u8> = match format {
                Format::Json => (serde_json::to_string_pretty(&r)? + "\n").into_bytes(),
                Format::Text => report::render_text(&r, top).into_bytes(),
                Format::Folded => export::folded::render(&r).into_bytes(),
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
        Command::Assets { dir } => write_assets(&dir),
        Command::Serve { paths, listen, top, symbols } => {
            serve::run(serve::Options { listen, paths, top, symbolize: symbols.into() })
        }
        Command::Run { settings, tree_budget, command } => launch::run(&command, &settings.into_settings(tree_budget)),
        Command::Attach { pid, settings } => write_output(None, attach::attach(pid, &settings.into_settings(None))?),
        Command::Detach { pid } => write_output(None, attach::detach(pid)?),
        Command::Ctl { trace, pause, resume, sample_bytes, scan, wait } => {
            let request = ctl::Request::from_flags(pause, resume, sample_bytes, scan)?;
            let wait = wait.unwrap_or(if scan { 60_000 } else { 2000 });
            let (text, status) = ctl::ctl(&trace, request, std::time::Duration::from_millis(wait))?;
            write_output(None, &text)?;
            if status != 0 {
                std::process::exit(i32::from(status));
            }
            Ok(())
        }
    }
}

/// The man page (leak-analyze.1) and bash, zsh and fish completions, from the clap definitions.
fn write_assets(dir: &Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Cli::command();
    let mut man = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut man)?;
    std::fs::write(dir.join("leak-analyze.1"), man)?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "leak-analyze", dir)?;
    }
    Ok(())
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
