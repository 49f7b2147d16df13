//! The traces `serve` exports: finding them, telling when one changed, and turning one into the
//! figures a scrape shows, through the same analysis and report every other output uses.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::hash::Hasher;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use leaktrace_format::layout::{hdr, EndReason, TraceState, HEADER_SIZE};
use leaktrace_format::{Header, ModuleRecord, Trace, TraceSource};

use crate::naming::{base_name, Symbols};
use crate::report::{self, SiteOut};
use crate::symbolize::{SymbolCache, SymbolizeOptions, Symbolizer};
use crate::{analysis, suppress};

/// What a trace file says of its tracer, for `leaktrace_trace_health`. One state at a time, the
/// first that applies in this order (an alert needs one answer, not a combination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No trace could be read from the file: no header, a foreign or damaged one.
    Corrupt,
    /// The tracer records nothing: paused (`ctl --pause`, a dormant start) or stopped by an
    /// internal failure.
    TracingOff,
    /// The process ran its exit handlers: the trace is complete and will not change.
    Exited,
    /// Damage (truncation, torn records) left parts of the trace unread.
    Partial,
    Ok,
}

impl Health {
    pub const ALL: [Health; 5] = [Health::Ok, Health::Partial, Health::TracingOff, Health::Exited, Health::Corrupt];

    pub fn label(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Partial => "partial",
            Health::TracingOff => "tracing_off",
            Health::Exited => "exited",
            Health::Corrupt => "corrupt",
        }
    }
}

/// One exported site.
#[derive(Clone, Debug)]
pub struct SiteFigures {
    /// The report's one-line site name (`sites[].name`).
    pub name: String,
    /// A hash of the site's symbolized frames: the same for the same code path in every run and
    /// every process of one build (see [`site_id`]).
    pub id: String,
    pub unfreed_bytes: f64,
    pub unfreed_bytes_ci95: f64,
    pub growing: bool,
    pub growth_bytes_per_sec: f64,
    pub trend_confidence: f64,
}

/// The figures of one traced process, from its last analysis.
#[derive(Clone, Debug, Default)]
pub struct ProcessFigures {
    /// The program's RSS at the last sample, leaktrace's own memory excluded, and that memory.
    pub rss_bytes: Option<f64>,
    pub tracer_bytes: Option<f64>,
    /// Estimated live heap: every sampled allocation still unfreed, suppressed sites included.
    pub heap_bytes: f64,
    /// RSS and heap growth over the span the report compares them on, and what the heap does
    /// not explain of the RSS growth (0 when it explains all of it).
    pub rss_growth_bytes: Option<f64>,
    pub heap_growth_bytes: Option<f64>,
    pub rss_unexplained_growth_bytes: Option<f64>,
    pub growth_outside_heap: bool,
    pub sampled_events: u64,
    pub dropped_events: u64,
    pub sampling_mean_bytes: u64,
    pub start_unix_ns: u64,
    /// The newest moment the trace knows of, ns since the start.
    pub last_record_ns: u64,
}

/// What a scrape shows of one trace file.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub path: PathBuf,
    /// Labels: the pid, and the executable's file name (never its command line: it may hold
    /// secrets). From the file name's pid when the header cannot be read.
    pub pid: String,
    pub exe: String,
    pub health: Health,
    /// Whether the traced process still runs, as this exporter's /proc sees it (None: unknown).
    pub running: Option<bool>,
    /// None when the file holds no readable trace.
    pub process: Option<ProcessFigures>,
    pub sites: Vec<SiteFigures>,
}

/// What says that a trace changed since it was last analysed: the file's identity and size, and
/// its header but for the writer's heartbeat (which ticks while nothing else happens; it is read
/// afresh at every refresh instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeKey {
    dev: u64,
    ino: u64,
    len: u64,
    header: u64,
}

/// The file opened read-only, its header bytes and change key.
pub struct Opened {
    pub file: File,
    pub head: Vec<u8>,
    pub key: ChangeKey,
}

/// Open a trace file read-only. O_NONBLOCK: a FIFO named like a trace must not hang the
/// exporter (it is then refused as not a regular file).
pub fn open(path: &Path) -> std::io::Result<Opened> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut head = vec![0u8; HEADER_SIZE];
    let got = TraceSource::read_at(&file, 0, &mut head);
    head.truncate(got);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let beat = hdr::HEARTBEAT_NS.min(head.len())..(hdr::HEARTBEAT_NS + 8).min(head.len());
    h.write(&head[..beat.start]);
    h.write(&head[beat.end..]);
    let key = ChangeKey { dev: md.dev(), ino: md.ino(), len: md.len(), header: h.finish() };
    Ok(Opened { file, head, key })
}

/// The pid in a trace file's name (`trace.1234.lt`, `leaktrace.1234.lt`): the label of a file
/// whose header cannot be read.
fn pid_from_name(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    stem.rsplit('.').find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).unwrap_or("").to_string()
}

/// Every trace file under `paths`: a file given by name whatever its name, and every `*.lt`
/// regular file of a directory (not its subdirectories). Directories that cannot be listed go in
/// `unreadable`.
pub fn discover(paths: &[PathBuf], unreadable: &mut Vec<(PathBuf, String)>) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(md) if md.is_dir() => match std::fs::read_dir(p) {
                Ok(entries) => {
                    for e in entries.flatten() {
                        let path = e.path();
                        if path.extension().is_some_and(|x| x == "lt") && path.is_file() {
                            found.insert(path);
                        }
                    }
                }
                Err(e) => unreadable.push((p.clone(), e.to_string())),
            },
            Ok(_) => {
                found.insert(p.clone());
            }
            // A file given by name that is gone (its process exited and removed it) is not an
            // error: it may come back.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => unreadable.push((p.clone(), e.to_string())),
        }
    }
    found
}

/// A stable id for a site: FNV-1a of its symbolized frames (function, file and line; module and
/// offset for a frame that did not resolve), so that restarts, other processes of the same
/// build and other hosts give the same id to the same code path.
pub fn site_id(site: &SiteOut) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator no name holds, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for f in &site.frames {
        match (&f.function, &f.file, f.line) {
            (Some(func), Some(file), Some(line)) => {
                eat(func.as_bytes());
                eat(file.as_bytes());
                eat(&line.to_le_bytes());
            }
            _ => {
                eat(f.module.as_deref().unwrap_or("").as_bytes());
                match f.module_offset {
                    Some(off) => eat(&off.to_le_bytes()),
                    None => eat(f.address.as_bytes()),
                }
            }
        }
    }
    format!("{h:016x}")
}

/// The writer's liveness, from the header just read: (health from the header alone, newest
/// moment it knows of). The header of a running process changes under us; a refresh that does
/// not re-analyse still shows its current heartbeat and state.
pub fn header_liveness(h: &Header) -> (Option<Health>, u64) {
    let state = if h.end_reason == EndReason::Exit as u32 {
        Some(Health::Exited)
    } else {
        match h.trace_state() {
            Some(TraceState::Paused | TraceState::Failed) => Some(Health::TracingOff),
            _ => None,
        }
    };
    (state, h.heartbeat_ns.max(h.end_ns))
}

fn health_of(trace: &Trace) -> Health {
    match header_liveness(&trace.header).0 {
        Some(Health::TracingOff) => Health::TracingOff,
        Some(Health::Exited) => Health::Exited,
        _ if trace.health.is_partial() => Health::Partial,
        _ => Health::Ok,
    }
}

/// A snapshot of a file without a readable trace.
pub fn corrupt(path: &Path, previous: Option<&Snapshot>) -> Snapshot {
    // A trace that was readable before keeps its labels, so that its series carry on.
    let (pid, exe) = match previous {
        Some(p) => (p.pid.clone(), p.exe.clone()),
        None => (pid_from_name(path), String::new()),
    };
    Snapshot {
        path: path.to_path_buf(),
        pid,
        exe,
        health: Health::Corrupt,
        running: None,
        process: None,
        sites: Vec::new(),
    }
}

/// Analyse one trace the way `report` does (same sites, names, estimates and verdicts), and
/// keep the `top` sites by unfreed bytes and every growing one. Never panics: a trace that
/// makes the reader or the analysis fail is reported as corrupt.
pub fn analyse(
    path: &Path,
    opened: Opened,
    top: usize,
    opts: &SymbolizeOptions,
    cache: &SymbolCache,
    previous: Option<&Snapshot>,
) -> (Snapshot, Vec<ModuleRecord>) {
    let file = opened.file;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let trace = Trace::parse_from(&file).ok()?;
        let symbolizer = Symbolizer::with_cache(&trace.modules, opts, cache);
        let mut symbols = None;
        let analysis = analysis::analyze(&trace, &file, &[], |stacks, live| {
            let (s, locations) = Symbols::for_sites(&trace.modules, &symbolizer, stacks, live);
            symbols = Some(s);
            locations
        });
        let symbols = symbols.unwrap_or_else(|| Symbols::new(&trace.modules, &symbolizer, &[]));
        let r = report::build(&trace, &analysis, &symbols, &symbolizer, &suppress::Suppressions::builtin());
        Some((trace, analysis.end_ns, r))
    }));
    let (trace, end_ns, r) = match result {
        Ok(Some(done)) => done,
        // No trace in the file: no header, a foreign or damaged one.
        Ok(None) => return (corrupt(path, previous), Vec::new()),
        Err(_) => {
            eprintln!("leak-analyze serve: {}: the analysis failed; exported as corrupt", path.display());
            return (corrupt(path, previous), Vec::new());
        }
    };

    // The report's order is growing sites first, then by unfreed bytes.
    let mut by_bytes: Vec<&SiteOut> = r.sites.iter().collect();
    by_bytes.sort_by(|a, b| b.unfreed_bytes.total_cmp(&a.unfreed_bytes));
    let mut kept: HashSet<usize> = by_bytes.iter().take(top).map(|s| s.id).collect();
    kept.extend(r.sites.iter().filter(|s| s.growing).map(|s| s.id));
    let mut ids = HashSet::new();
    let sites = r
        .sites
        .iter()
        .filter(|s| kept.contains(&s.id))
        .map(|s| {
            let mut id = site_id(s);
            // Two sites of one process with the same frames (two lost stacks) stay two series.
            let mut n = 1;
            while !ids.insert(id.clone()) {
                n += 1;
                id = format!("{}-{n}", site_id(s));
            }
            SiteFigures {
                name: s.name.clone(),
                id,
                unfreed_bytes: s.unfreed_bytes,
                unfreed_bytes_ci95: s.unfreed_bytes_ci95,
                growing: s.growing,
                growth_bytes_per_sec: s.growth_bytes_per_sec,
                trend_confidence: s.trend_confidence,
            }
        })
        .collect();

    let last = r.rss.last();
    let rvh = r.rss_vs_heap.as_ref();
    let process = ProcessFigures {
        rss_bytes: last.map(|p| p.rss_bytes.saturating_sub(p.tracer_bytes) as f64),
        tracer_bytes: last.map(|p| p.tracer_bytes as f64),
        heap_bytes: r.totals.unfreed_bytes,
        rss_growth_bytes: rvh.map(|v| v.rss_growth_bytes),
        heap_growth_bytes: rvh.map(|v| v.heap_growth_bytes),
        rss_unexplained_growth_bytes: rvh.map(|v| (v.rss_growth_bytes - v.heap_growth_bytes).max(0.0)),
        growth_outside_heap: rvh.is_some_and(|v| v.growth_outside_heap),
        sampled_events: r.totals.sampled_events,
        dropped_events: r.totals.dropped_events,
        sampling_mean_bytes: trace.header.current_mean_bytes,
        start_unix_ns: trace.header.start_unix_ns,
        last_record_ns: end_ns.max(header_liveness(&trace.header).1),
    };
    let exe = base_name(&r.process.exe).to_string();
    let snapshot = Snapshot {
        path: path.to_path_buf(),
        pid: trace.header.pid.to_string(),
        exe,
        health: health_of(&trace),
        running: process_running(trace.header.pid, trace.header.start_unix_ns),
        process: Some(process),
        sites,
    };
    (snapshot, trace.modules)
}

/// A snapshot brought up to date with a header read now, for a trace that did not change
/// otherwise (its heartbeat did).
pub fn with_header(mut s: Snapshot, head: &[u8]) -> Snapshot {
    let Ok(h) = Header::parse(head) else { return s };
    let (state, beat) = header_liveness(&h);
    if let Some(p) = s.process.as_mut() {
        p.last_record_ns = p.last_record_ns.max(beat);
    }
    if let Some(state) = state {
        s.health = state;
    }
    s.running = process_running(h.pid, h.start_unix_ns);
    s
}

/// Boot time on CLOCK_REALTIME, in ns (`btime` of /proc/stat, whole seconds).
fn boot_unix_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    secs.checked_mul(1_000_000_000)
}

/// How far a process may seem to have started after its trace did and still be the traced one:
/// `btime` is whole seconds, and the clock may have been stepped since boot.
const START_SLACK_NS: u64 = 5_000_000_000;

/// Is the process that wrote a trace still running? From /proc/PID/stat: a process of that pid
/// that is a zombie, or that started after the trace did (the pid was reused), is not it. None
/// when /proc cannot tell (not mounted, or the pid is 0). Only as seen from the exporter's pid
/// namespace: the exporter must share the traced processes' (the host's, usually).
pub fn process_running(pid: u32, start_unix_ns: u64) -> Option<bool> {
    if pid == 0 {
        return None;
    }
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::path::Path::new("/proc/self/stat").exists().then_some(false)
        }
        Err(_) => return None,
    };
    // After the command name in parentheses (which may hold any byte): field 3, the state, on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return Some(false);
    }
    let ticks: u64 = fields.get(19)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    let started = boot_unix_ns()?.saturating_add(ticks.saturating_mul(1_000_000_000) / hz);
    Some(started <= start_unix_ns.saturating_add(START_SLACK_NS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running_and_a_later_one_is_not_it() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let me = std::process::id();
        assert_eq!(process_running(me, now), Some(true));
        // A trace that started long before this process did was written by another one.
        assert_eq!(process_running(me, now - 3_600_000_000_000), Some(false));
        assert_eq!(process_running(0, now), None);
        // No such pid (above pid_max).
        assert_eq!(process_running(u32::MAX, now), Some(false));
    }

    #[test]
    fn pid_comes_from_the_file_name() {
        assert_eq!(pid_from_name(Path::new("/x/trace.1234.lt")), "1234");
        assert_eq!(pid_from_name(Path::new("/x/leaktrace.77.lt")), "77");
        assert_eq!(pid_from_name(Path::new("/x/service.lt")), "");
    }
}
