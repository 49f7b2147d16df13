//! `leak-analyze serve`: a Prometheus exporter for the traces of a box's processes.
//!
//! Work follows scrapes: each scrape asks the refresher thread to bring every trace up to date
//! and waits for it at most [`SCRAPE_BUDGET`]; a trace whose analysis has not finished by then is
//! shown as of its previous one (`leaktrace_exporter_stale_traces` counts them), and its
//! analysis finishes for the next scrape. So a scrape answers in time however many traces there
//! are, and nothing is analysed while nobody scrapes.
//!
//! A refresh lists the paths again (new `*.lt` files come in, removed ones leave), reads each
//! trace's header, and re-analyses only the traces whose header or file changed since their
//! last analysis, a few at a time on the rayon pool. Debug information is loaded once per module
//! (build ID) for every trace and refresh ([`SymbolCache`]). Trace files are only ever opened
//! read-only.

mod metrics;
mod traces;

use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rayon::prelude::*;

use leaktrace_format::ModuleRecord;

use crate::symbolize::{SymbolCache, SymbolizeOptions};
use traces::Snapshot;

/// How long a scrape waits for the refresh it asked for before it answers with what is ready:
/// within a second with room to encode and send on a loaded box, so that a 1 s scrape timeout
/// holds.
pub const SCRAPE_BUDGET: Duration = Duration::from_millis(700);

pub struct Options {
    pub listen: String,
    pub paths: Vec<PathBuf>,
    /// Sites per process, by unfreed bytes (growing sites are exported besides).
    pub top: usize,
    pub symbolize: SymbolizeOptions,
}

/// One trace file's state between refreshes.
struct Entry {
    snapshot: Arc<Snapshot>,
    /// The change key of the analysis `snapshot` is drawn from.
    key: traces::ChangeKey,
    modules: Vec<ModuleRecord>,
    /// The refresh that last brought it up to date, and when that refresh read it.
    refreshed: u64,
    fresh_at: Instant,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<PathBuf, Entry>,
    /// Paths that could not be read, logged once each until they can be read again.
    unreadable: HashSet<PathBuf>,
    /// Refreshes asked for and finished (numbered from 1).
    requested: u64,
    finished: u64,
    /// The refresh under way, if any.
    running: Option<u64>,
    last_refresh: Duration,
    analyses: u64,
}

struct Shared {
    opts: Options,
    cache: SymbolCache,
    state: Mutex<State>,
    changed: Condvar,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in a refresh is caught per trace; should one escape, the state is still whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Shared {
    /// Ask for a refresh; returns its number.
    fn request(&self) -> u64 {
        let mut st = lock(&self.state);
        // A refresh not yet started covers this request too.
        if st.requested == st.finished || st.running == Some(st.requested) {
            st.requested += 1;
        }
        let n = st.requested;
        self.changed.notify_all();
        n
    }

    /// Refresh whenever asked, forever.
    fn refresher(&self) {
        loop {
            let n = {
                let mut st = lock(&self.state);
                while st.requested == st.finished {
                    st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.running = Some(st.requested);
                st.requested
            };
            let started = Instant::now();
            // Each trace's analysis catches its own panics; this keeps the refresher alive should
            // anything else in a refresh panic, so that scrapes are never left waiting on a dead
            // thread.
            if catch_unwind(AssertUnwindSafe(|| self.refresh(n))).is_err() {
                eprintln!("leak-analyze serve: a refresh failed; the next scrape tries again");
            }
            let mut st = lock(&self.state);
            st.finished = n;
            st.running = None;
            st.last_refresh = started.elapsed();
            self.changed.notify_all();
        }
    }

    fn refresh(&self, n: u64) {
        let mut unreadable = Vec::new();
        let found = traces::discover(&self.opts.paths, &mut unreadable);
        {
            let mut st = lock(&self.state);
            st.entries.retain(|p, _| found.contains(p));
        }
        // Open every trace and read its header: cheap, and it says which need analysing.
        let mut todo = Vec::new();
        for path in &found {
            match traces::open(path) {
                Ok(opened) => {
                    let mut st = lock(&self.state);
                    if st.unreadable.remove(path) {
                        eprintln!("leak-analyze serve: {} can be read again", path.display());
                    }
                    match st.entries.get_mut(path) {
                        Some(e) if e.key == opened.key => {
                            e.snapshot = Arc::new(traces::with_header((*e.snapshot).clone(), &opened.head));
                            e.refreshed = n;
                            e.fresh_at = Instant::now();
                        }
                        // Opened again for the analysis: thousands of traces must not hold as
                        // many descriptors at once.
                        _ => todo.push(path.clone()),
                    }
                }
                // Gone between the listing and the open: the next refresh drops it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => unreadable.push((path.clone(), e.to_string())),
            }
        }
        {
            let mut st = lock(&self.state);
            let now: HashSet<PathBuf> = unreadable.iter().map(|(p, _)| p.clone()).collect();
            for (p, why) in &unreadable {
                if st.unreadable.insert(p.clone()) {
                    eprintln!("leak-analyze serve: skipping {}: {why}", p.display());
                }
                st.entries.remove(p);
            }
            st.unreadable.retain(|p| now.contains(p));
        }
        todo.into_par_iter().for_each(|path| {
            // Gone or unreadable since the look above: the next refresh says so.
            let Ok(opened) = traces::open(&path) else { return };
            let key = opened.key;
            let fresh_at = Instant::now();
            let previous = lock(&self.state).entries.get(&path).map(|e| e.snapshot.clone());
            let (snapshot, modules) =
                traces::analyse(&path, opened, self.opts.top, &self.opts.symbolize, &self.cache, previous.as_deref());
            let mut st = lock(&self.state);
            st.analyses += 1;
            st.entries.insert(path, Entry { snapshot: Arc::new(snapshot), key, modules, refreshed: n, fresh_at });
        });
        let st = lock(&self.state);
        self.cache.retain_modules_of(st.entries.values().map(|e| e.modules.as_slice()));
    }

    /// The /metrics text: asks for a refresh and waits for it within [`SCRAPE_BUDGET`].
    fn scrape(&self) -> String {
        let deadline = Instant::now() + SCRAPE_BUDGET;
        let n = self.request();
        let mut st = lock(&self.state);
        while st.finished < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self.changed.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        let snapshots: Vec<Arc<Snapshot>> = st.entries.values().map(|e| e.snapshot.clone()).collect();
        let figures = metrics::ExporterFigures {
            trace_files: st.entries.len(),
            stale_traces: st.entries.values().filter(|e| e.refreshed < n).count(),
            max_staleness_seconds: st.entries.values().map(|e| e.fresh_at.elapsed().as_secs_f64()).fold(0.0, f64::max),
            unreadable_paths: st.unreadable.len(),
            last_refresh_seconds: st.last_refresh.as_secs_f64(),
            analyses: st.analyses,
            symbol_cache_modules: self.cache.len(),
        };
        drop(st);
        metrics::render(&snapshots, &figures, now_unix_ns())
    }
}

const INDEX: &str = "leak-analyze serve: a Prometheus exporter of leaktrace traces. Metrics at /metrics.\n";

pub fn run(opts: Options) -> Result<()> {
    let server = tiny_http::Server::http(&opts.listen).map_err(|e| anyhow!("cannot listen on {}: {e}", opts.listen))?;
    let shared = Arc::new(Shared {
        opts,
        cache: SymbolCache::default(),
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
    });
    for p in shared.opts.paths.iter().filter(|p| !p.exists()) {
        eprintln!("leak-analyze serve: {} does not exist (yet); watching for it", p.display());
    }
    let worker = shared.clone();
    std::thread::Builder::new().name("refresh".into()).spawn(move || worker.refresher())?;
    // The first refresh starts now, so that the first scrape finds the traces analysed.
    shared.request();
    let addr = server.server_addr().to_ip().map_or_else(|| shared.opts.listen.clone(), |a| a.to_string());
    eprintln!("leak-analyze serve: listening on http://{addr}/metrics");
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("");
        let response = match (request.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let header = tiny_http::Header::from_bytes("Content-Type", metrics::CONTENT_TYPE)
                    .map_err(|()| anyhow!("bad content type"))?;
                tiny_http::Response::from_string(shared.scrape()).with_header(header)
            }
            (tiny_http::Method::Get, "/") => tiny_http::Response::from_string(INDEX),
            _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
        };
        // A client that went away is its own problem, not the exporter's.
        let _ = request.respond(response);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use leaktrace_format::synth::TraceBuilder;

    const S: u64 = 1_000_000_000;
    const MIB: u64 = 1 << 20;

    /// A scratch directory under the system's temporary directory, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("leak-analyze-serve-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Exact mode over 10 s: a steady leak of 64 KiB a second (growing), a 4 MiB block allocated
    /// once (the largest, not growing), and a small one-off block (neither).
    fn service(extra: u64) -> TraceBuilder {
        let mut b = TraceBuilder::new(4 * MIB).exited_at(10 * S);
        let (leak, big, small) = (b.stack(&[0x40_1000]), b.stack(&[0x40_2000]), b.stack(&[0x40_3000]));
        b.alloc(S / 10, 0x7000_0000, 4 * MIB, big);
        b.alloc(S / 5, 0x7100_0000, 100, small);
        for i in 0..(100 + extra) {
            b.alloc(S / 10 + i * S / 10, 0x1000_0000 + i * 0x1_0000, 6554, leak);
        }
        for k in 1..=20 {
            b.rss(k * S / 2, 20 * MIB + k * 400 * 1024, 0);
        }
        b
    }

    fn start(paths: Vec<PathBuf>, top: usize) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            opts: Options {
                listen: String::new(),
                paths,
                top,
                symbolize: SymbolizeOptions { disabled: true, ..Default::default() },
            },
            cache: SymbolCache::default(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let worker = shared.clone();
        std::thread::spawn(move || worker.refresher());
        shared
    }

    /// The value of the one sample line that starts with `series` (name and labels as written).
    fn value(text: &str, series: &str) -> f64 {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(series)).collect();
        assert_eq!(lines.len(), 1, "{series}:\n{text}");
        lines[0].rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_scrape_shows_the_top_sites_and_the_growing_ones_and_reanalyses_only_what_changed() {
        let dir = Scratch::new("scrape");
        std::fs::write(dir.0.join("trace.4242.lt"), service(0).build()).unwrap();
        std::fs::write(dir.0.join("junk.lt"), b"not a trace").unwrap();
        std::fs::write(dir.0.join("notes.txt"), b"not looked at").unwrap();
        let shared = start(vec![dir.0.clone()], 1);

        let text = shared.scrape();
        let p = r#"{pid="4242",exe="synthetic""#;
        assert_eq!(value(&text, &format!("leaktrace_trace_health{p},state=\"exited\"}}")), 1.0);
        assert_eq!(value(&text, &format!("leaktrace_trace_health{p},state=\"ok\"}}")), 0.0);
        assert_eq!(value(&text, r#"leaktrace_trace_health{pid="",exe="",state="corrupt"}"#), 1.0);
        assert_eq!(value(&text, "leaktrace_exporter_trace_files"), 2.0);
        assert_eq!(value(&text, &format!("leaktrace_events_sampled_total{p}}}")), 102.0);
        // The heap estimate: every unfreed byte (exact mode).
        assert_eq!(value(&text, &format!("leaktrace_process_heap_bytes{p}}}")), (4 * MIB + 100 + 100 * 6554) as f64);
        assert_eq!(value(&text, &format!("leaktrace_process_rss_bytes{p}}}")), (20 * MIB + 20 * 400 * 1024) as f64);
        // Top 1 by bytes (the 4 MiB block) and the growing leak; not the small block.
        let sites: Vec<&str> = text.lines().filter(|l| l.starts_with("leaktrace_site_growing{")).collect();
        assert_eq!(sites.len(), 2, "{text}");
        let growing: Vec<&str> = sites.iter().copied().filter(|l| l.ends_with(" 1.0")).collect();
        assert_eq!(growing.len(), 1, "{text}");
        assert!(growing[0].contains(r#"site="0x401000""#), "{text}");
        let rate: f64 = text
            .lines()
            .find(|l| l.starts_with("leaktrace_site_growth_rate_bytes_per_second{") && l.contains("0x401000"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((rate - 65_540.0).abs() < 0.05 * 65_540.0, "{rate}\n{text}");
        let analyses = value(&text, "leaktrace_exporter_analyses_total");
        assert_eq!(analyses, 2.0, "{text}");

        // Nothing changed: nothing is analysed again.
        let text = shared.scrape();
        assert_eq!(value(&text, "leaktrace_exporter_analyses_total"), 2.0, "{text}");
        assert_eq!(value(&text, "leaktrace_exporter_stale_traces"), 0.0, "{text}");

        // Only the writer's heartbeat moved: read, not analysed.
        let path = dir.0.join("trace.4242.lt");
        let mut bytes = std::fs::read(&path).unwrap();
        let beat = leaktrace_format::layout::hdr::HEARTBEAT_NS;
        bytes[beat..beat + 8].copy_from_slice(&(60 * S).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let text = shared.scrape();
        assert_eq!(value(&text, "leaktrace_exporter_analyses_total"), 2.0, "{text}");

        // One trace grows, the junk goes: one analysis more, its figures move.
        std::fs::write(dir.0.join("trace.4242.lt"), service(10).build()).unwrap();
        std::fs::remove_file(dir.0.join("junk.lt")).unwrap();
        let text = shared.scrape();
        assert_eq!(value(&text, "leaktrace_exporter_analyses_total"), 3.0, "{text}");
        assert_eq!(value(&text, "leaktrace_exporter_trace_files"), 1.0, "{text}");
        assert_eq!(value(&text, &format!("leaktrace_events_sampled_total{p}}}")), 112.0);
        assert!(!text.contains(r#"pid="""#), "the junk is gone: {text}");
    }

    #[test]
    fn site_names_are_escaped_and_each_series_is_one_line() {
        let site = traces::SiteFigures {
            name: "operator\"odd\\name\nat x.cc:1".into(),
            id: "0123456789abcdef".into(),
            unfreed_bytes: 1.0,
            unfreed_bytes_ci95: 0.0,
            growing: true,
            growth_bytes_per_sec: 2.5,
            trend_confidence: 0.99,
        };
        let snap = Snapshot {
            path: "/x/trace.1.lt".into(),
            pid: "1".into(),
            exe: "a\"b".into(),
            health: traces::Health::Ok,
            running: Some(true),
            process: Some(traces::ProcessFigures::default()),
            sites: vec![site],
        };
        let figures = metrics::ExporterFigures {
            trace_files: 1,
            stale_traces: 0,
            max_staleness_seconds: 0.0,
            unreadable_paths: 0,
            last_refresh_seconds: 0.0,
            analyses: 1,
            symbol_cache_modules: 0,
        };
        let text = metrics::render(&[Arc::new(snap)], &figures, 0);
        let line = text.lines().find(|l| l.starts_with("leaktrace_site_growth_rate_bytes_per_second{")).unwrap();
        assert_eq!(
            line,
            r#"leaktrace_site_growth_rate_bytes_per_second{pid="1",exe="a\"b",site="operator\"odd\\name\nat x.cc:1",site_id="0123456789abcdef"} 2.5"#
        );
    }
}
