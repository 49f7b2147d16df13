//! Real deployments (issue 10, "Done means"): leaktrace must never harm a service that drops
//! privileges, never flood the disk from a fork-per-connection tree, reach every process of a
//! dormant tree, trace services started as another user, and not count its own memory as the
//! program's RSS growth.
//!
//! Needs `cargo build --release` first, and root (privilege drops, `setpriv`,
//! `start-stop-daemon --chuid nobody`); the tests that need root print a note and pass without it.
//!
//! Status on main at 15959bb (before the issue-10 fixes), each failure as observed:
//! - `self_made_privilege_drop_survives`: FAILS, exit 134 (SIGABRT from glibc's setxid
//!   broadcast: leaktrace's background thread lost its capabilities at setresuid, its
//!   setresgid fails with EPERM) in all three modes, dormant included.
//! - `setpriv_started_programs_survive`: FAILS, `setpriv ... -- true` exits 134, every mode.
//! - `privilege_drop_after_the_program_made_a_thread`: passes today (a guard for a helper
//!   thread started later, once the program has threads of its own).
//! - `no_thread_of_ours_in_a_single_threaded_program`: FAILS, /proc/self/task counts 2 (the
//!   background thread), dormant and tracing.
//! - `ctl_pause_reaches_a_single_threaded_program`: FAILS, 2 threads (the pause itself is
//!   applied today, by that thread).
//! - `fork_per_connection_stays_within_the_tree_budget`: FAILS, the traces take 400 MiB
//!   (201 files of 2 MiB; LEAKTRACE_TREE_BUDGET is not known) against a budget of 8 MiB.
//! - `fork_per_connection_children_with_nothing_unfreed_leave_no_file`: FAILS, the same.
//! - `dormant_prefork_workers_can_be_resumed`: FAILS, the workers have no trace file (a dormant
//!   child never samples, so never creates one); `ctl DIR` exits 2 (not a trace).
//! - `child_forked_after_ctl_sample_bytes_keeps_the_mean`: FAILS, the child records 524288,
//!   the mean of the environment, from its start.
//! - `services_started_as_nobody_are_traced`: FAILS: under start-stop-daemon --chuid and the
//!   chuid_exec wrapper, "leaktrace: cannot create trace file ...: File exists (os error 17);
//!   tracing disabled" and no trace owned by nobody; under setpriv, exit 134.
//! - `rss_growth_of_a_known_leak_is_explained_by_the_heap`: FAILS, exact mode explains 0.63 of
//!   the RSS growth (13.3 MB of RSS growth for 8 MiB leaked), 4 KiB mode 0.75; the default
//!   mode (256 MiB leaked, see the test) passes today at 0.90-0.98.
//!
//! Assumed beyond the text: a trace's file name carries its pid as a dot-separated
//! component (`trace.<pid>.lt`; the service exec'd after a change of user is found by owner and
//! `process.pid` instead, whatever its name); the tree's ledger in the trace directory ends in
//! `.tree` and is not a trace; `process.children.traced` counts the children's traces that are
//! kept (in the leak case each kept file is one traced child).

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaktrace_tests::{analyze, get_u64, report_of, run_command, Background, Outcome, Report, Settings, TestDir};

/// Most any traced program here may run: longer means a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Most one `ctl` may take.
const CTL_TIMEOUT: Duration = Duration::from_secs(10);
/// uid and gid of nobody / nogroup.
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// True when `tool` is on PATH.
fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool} >/dev/null")).status().is_ok_and(|s| s.success())
}

/// The three modes a service may run in: dormant (`LEAKTRACE_START=off`), default sampling
/// (512 KiB mean) and exact (`LEAKTRACE_SAMPLE_BYTES=1`). Small files: these runs are short.
fn three_modes() -> Vec<(&'static str, Settings)> {
    let mut dormant = Settings::sampled(7).file_size("4M");
    dormant.start = "off".into();
    vec![
        ("dormant", dormant),
        ("default", Settings::sampled(7).file_size("4M")),
        ("exact", Settings::exact().file_size("8M")),
    ]
}

/// A directory `name` in the test directory that anyone may write (a process that dropped to
/// nobody creates its trace there).
fn world_writable(dir: &TestDir, name: &str) -> PathBuf {
    let p = dir.path.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
    p
}

/// `exe args` under the preload with `settings`, tracing to `<traces>/trace.%p.lt`, plus `extra`
/// environment variables.
fn traced_to<S: AsRef<std::ffi::OsStr>>(
    dir: &TestDir,
    exe: &Path,
    args: &[S],
    settings: &Settings,
    traces: &Path,
    extra: &[(&str, &str)],
) -> Command {
    let mut cmd = dir.traced_command(exe, args, settings);
    cmd.env("LEAKTRACE_FILE", traces.join("trace.%p.lt"));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

/// The trace files in `traces`: everything but the tree's ledger (`*.tree`) and saved reports.
fn trace_files_in(traces: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(traces)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| !p.extension().is_some_and(|e| e == "tree" || e == "json"))
        .collect();
    v.sort();
    v
}

/// The trace files in `traces` whose name carries `pid` as a dot-separated component
/// (`trace.<pid>.lt`, or `.<pid>` appended).
fn trace_files_of(traces: &Path, pid: u32) -> Vec<PathBuf> {
    let pid = pid.to_string();
    trace_files_in(traces)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().split('.').any(|part| part == pid))
        .collect()
}

/// The one trace file of `pid` in `traces` (panics with `context` otherwise).
fn the_trace_of(traces: &Path, pid: u32, context: &str) -> PathBuf {
    let found = trace_files_of(traces, pid);
    assert!(
        found.len() == 1,
        "expected one trace file of pid {pid} in {}, found {found:?}; every file there: {:?}\n{context}",
        traces.display(),
        listing(traces)
    );
    found.into_iter().next().unwrap()
}

/// Every file in `dir` with its size and allocated bytes, for messages.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) => format!(
                        "{} (uid {}, size {}, on disk {})",
                        e.file_name().to_string_lossy(),
                        m.uid(),
                        m.len(),
                        m.blocks() * 512
                    ),
                    Err(_) => format!("{} (gone)", e.file_name().to_string_lossy()),
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The report of `trace`, saved next to the test's other files, with the common invariants
/// checked.
fn report(dir: &TestDir, trace: &Path) -> Report {
    let name = trace.file_name().unwrap().to_string_lossy().into_owned();
    let r = report_of(trace, &dir.path.join(format!("{name}.report.json")));
    r.check_invariants();
    r
}

/// `leak-analyze ctl TARGET... ARGS`.
fn ctl(targets: &[&Path], args: &[&str]) -> Outcome {
    let mut a: Vec<OsString> = vec!["ctl".into()];
    a.extend(targets.iter().map(OsString::from));
    a.extend(args.iter().map(OsString::from));
    analyze(&a, CTL_TIMEOUT)
}

/// The traced run behaved as the untraced one: same exit status, same stdout, and no line of
/// the preload on stderr.
fn assert_like_baseline(traced: &Outcome, baseline: &Outcome, what: &str) {
    assert!(
        traced.status == baseline.status && traced.stdout == baseline.stdout,
        "{what}: the traced run differs from the run without the preload (exit status {} vs {})\n\
         --- traced ---\n{}\n--- baseline ---\n{}",
        traced.status,
        baseline.status,
        traced.describe(),
        baseline.describe()
    );
    let lines = traced.stderr_lines_starting("leaktrace:");
    assert!(lines.is_empty(), "{what}: unexpected leaktrace: lines {lines:?}\n{}", traced.describe());
}

/// `process.children` of a report: (traced, untraced_budget, removed_empty).
fn children(report: &Report) -> (u64, u64, u64) {
    (
        report.int("/process/children/traced"),
        report.int("/process/children/untraced_budget"),
        report.int("/process/children/removed_empty"),
    )
}

// ---------------------------------------------------------------------------------------------
// 1-2. Privilege drops

/// A daemon that drops privileges itself the way setpriv and postgres do (PR_SET_KEEPCAPS,
/// setresuid, capset to regain CAP_SETUID/CAP_SETGID, setresgid) runs as it does without the
/// preload, in dormant, default and exact mode: glibc applies setresuid/setresgid to every
/// thread and aborts if one fails, so a thread of ours that lost its capabilities kills it. In
/// exact mode the trace also names the leak it made after the drop.
#[test]
fn self_made_privilege_drop_survives() {
    if !is_root() {
        eprintln!("NOTE: not root; a privilege drop cannot be tested here");
        return;
    }
    let dir = TestDir::new("deploy_privdrop_self");
    let exe = dir.compile("privdrop.c");
    let traces = world_writable(&dir, "traces");
    let baseline = run_command(&mut dir.untraced_command(&exe, &["self"]), RUN_TIMEOUT);
    assert!(baseline.status.success(), "the program fails without the preload\n{}", baseline.describe());
    for (mode, settings) in three_modes() {
        let out = run_command(&mut traced_to(&dir, &exe, &["self"], &settings, &traces, &[]), RUN_TIMEOUT);
        assert_like_baseline(&out, &baseline, &format!("self-made privilege drop, {mode}"));
        if mode == "exact" {
            let trace = the_trace_of(&traces, out.pid, &out.describe());
            let r = report(&dir, &trace);
            assert_eq!(r.int("/process/pid"), u64::from(out.pid), "{}", r.context);
            let json = out.json_line();
            r.assert_exact(
                "drop_leak",
                get_u64(&json, "/sites/drop_leak/bytes"),
                get_u64(&json, "/sites/drop_leak/count"),
            );
        }
    }
}

/// `setpriv --reuid nobody --regid nogroup --init-groups -- PROGRAM` (how postgres and many
/// container entrypoints start), with `true` and with a program that checks it runs as nobody
/// and leaks: exit status and output as without the preload, in every mode.
#[test]
fn setpriv_started_programs_survive() {
    if !is_root() || !have("setpriv") {
        eprintln!("NOTE: not root or no setpriv; test skipped");
        return;
    }
    let dir = TestDir::new("deploy_setpriv");
    let exe = dir.compile("privdrop.c");
    // Anyone may run the program: the test directory is root's.
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let traces = world_writable(&dir, "traces");
    let setpriv = ["--reuid", "nobody", "--regid", "nogroup", "--init-groups", "--"];
    let exe_s = exe.to_string_lossy().into_owned();
    let cases: [(&str, Vec<&str>); 2] = [("true", vec!["true"]), ("privdrop plain", vec![exe_s.as_str(), "plain"])];
    for (what, program) in &cases {
        let args: Vec<&str> = setpriv.iter().copied().chain(program.iter().copied()).collect();
        let baseline = run_command(&mut dir.untraced_command(Path::new("setpriv"), &args), RUN_TIMEOUT);
        assert!(baseline.status.success(), "setpriv ... {what} fails without the preload\n{}", baseline.describe());
        for (mode, settings) in three_modes() {
            let out =
                run_command(&mut traced_to(&dir, Path::new("setpriv"), &args, &settings, &traces, &[]), RUN_TIMEOUT);
            assert!(
                out.status.success() && out.stdout == baseline.stdout,
                "setpriv ... {what}, {mode}: exit status {} (0 without the preload) or output differs\n--- traced ---\n{}\n--- baseline ---\n{}",
                out.status,
                out.describe(),
                baseline.describe()
            );
            assert!(
                !out.stderr.contains("cannot create trace file"),
                "setpriv ... {what}, {mode}: the exec'd program could not create its trace\n{}",
                out.describe()
            );
        }
    }
}

/// A program that first makes a thread of its own, then drops privileges the usual way
/// (setgroups, setresgid, setresuid): a helper thread leaktrace may start once the program is
/// multithreaded must take part in glibc's setxid broadcast correctly.
#[test]
fn privilege_drop_after_the_program_made_a_thread() {
    if !is_root() {
        eprintln!("NOTE: not root; a privilege drop cannot be tested here");
        return;
    }
    let dir = TestDir::new("deploy_privdrop_thread");
    let exe = dir.compile("privdrop.c");
    let traces = world_writable(&dir, "traces");
    let baseline = run_command(&mut dir.untraced_command(&exe, &["thread"]), RUN_TIMEOUT);
    assert!(baseline.status.success(), "the program fails without the preload\n{}", baseline.describe());
    for (mode, settings) in three_modes() {
        let out = run_command(&mut traced_to(&dir, &exe, &["thread"], &settings, &traces, &[]), RUN_TIMEOUT);
        assert_like_baseline(&out, &baseline, &format!("privilege drop with a thread, {mode}"));
        if mode == "exact" {
            let r = report(&dir, &the_trace_of(&traces, out.pid, &out.describe()));
            r.assert_exact("drop_leak", 50_000, 50);
            r.assert_exact("thread_leak", 30_000, 20);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. No thread of ours in a single-threaded program

/// The thread counts a `tasks` run printed.
fn task_counts(out: &Outcome) -> Vec<u64> {
    let json = out.json_line();
    json["tasks"].as_array().map(|a| a.iter().filter_map(|v| v.as_u64()).collect()).unwrap_or_default()
}

/// A single-threaded program that allocates for 1.2 s reads /proc/self/task three times: one
/// thread each time, dormant and tracing. While tracing, the trace still has an RSS series
/// (LEAKTRACE_RSS_MS=100) and its frames symbolize (the module map is there).
#[test]
fn no_thread_of_ours_in_a_single_threaded_program() {
    let dir = TestDir::new("deploy_no_thread");
    let exe = dir.compile("tasks.c");
    let baseline = run_command(&mut dir.untraced_command(&exe, &["run", "1200"]), RUN_TIMEOUT);
    assert!(baseline.status.success(), "{}", baseline.describe());
    assert_eq!(
        task_counts(&baseline),
        vec![1, 1, 1],
        "without the preload the program has one thread\n{}",
        baseline.describe()
    );

    let mut dormant = Settings::sampled(3).file_size("4M");
    dormant.start = "off".into();
    dormant.rss_ms = 100;
    // Tracing at a 64 KiB mean: the program's 16 KiB leaks are sampled often enough to name.
    let mut tracing = Settings::sampled(3).file_size("8M");
    tracing.sample_bytes = "65536".into();
    tracing.rss_ms = 100;
    for (mode, settings) in [("dormant", &dormant), ("tracing", &tracing)] {
        let out = run_command(&mut dir.traced_command(&exe, &["run", "1200"], settings), RUN_TIMEOUT);
        assert!(out.status.success(), "{mode}\n{}", out.describe());
        let counts = task_counts(&out);
        assert!(
            counts.len() == 3 && counts.iter().all(|&n| n == 1),
            "{mode}: /proc/self/task of a single-threaded traced program counted {counts:?}: \
             leaktrace must create no thread in a process that has only one\n{}",
            out.describe()
        );
        if mode == "tracing" {
            let r = report(&dir, &dir.trace_of(out.pid));
            let rss = r.at("/rss").as_array().cloned().unwrap_or_default();
            if rss.len() < 3 {
                r.fail(format!(
                    "a 1.2 s run with LEAKTRACE_RSS_MS=100 that allocates every 5 ms has {} RSS samples; expected at least 3",
                    rss.len()
                ));
            }
            if r.sites_allocated_in("task_leak").is_empty() {
                r.fail("no site names task_leak: the module map of a thread-less writer must still symbolize");
            }
        }
    }
}

/// `ctl --pause` reaches a running single-threaded program that keeps allocating, without a
/// thread of ours: the trace records the pause (a sampling change to 0 after the start), and the
/// program still has one thread at the end.
#[test]
fn ctl_pause_reaches_a_single_threaded_program() {
    let dir = TestDir::new("deploy_ctl_no_thread");
    let exe = dir.compile("tasks.c");
    let flag = dir.path.join("flag");
    let mut settings = Settings::sampled(5).file_size("8M");
    settings.sample_bytes = "65536".into();
    let mut bg =
        Background::spawn(&mut dir.traced_command(&exe, &[OsString::from("wait"), flag.clone().into()], &settings));
    bg.wait_for_stdout("running", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let trace = dir.trace_of(bg.pid);
    let c = ctl(&[&trace], &["--pause"]);
    assert!(c.status.success(), "ctl --pause on a running single-threaded program\n{}", c.describe());
    // The program allocates all the time: ctl waits for its answer.
    assert!(c.stdout.contains("applied"), "the running program applies the pause\n{}", c.describe());
    std::fs::write(&flag, b"").unwrap();
    let out = bg.wait(RUN_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    let counts = task_counts(&out);
    assert!(counts.iter().all(|&n| n == 1), "threads counted {counts:?}; expected 1 throughout\n{}", out.describe());
    let r = report(&dir, &trace);
    let changes = r.at("/sampling/changes").as_array().cloned().unwrap_or_default();
    if !changes.iter().any(|c| c["mean_bytes"].as_u64() == Some(0) && c["t_ns"].as_u64().is_some_and(|t| t > 0)) {
        r.fail(format!("sampling.changes records no pause (mean_bytes 0 after the start): {changes:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Fork per connection: the tree's disk budget

/// Budget of the fork tests, and the trace size: the parent's trace and three children's fit.
const TREE_BUDGET: u64 = 8 << 20;
const FORK_FILE_SIZE: &str = "2M";
/// Allowed above the budget: the tree's ledger (`*.tree`, 4 KiB) and filesystem rounding.
const LEDGER_SLACK: u64 = 64 << 10;
const CHILDREN: u64 = 200;

/// Polls a directory every 2 ms while a process runs: the most disk the files in it ever held
/// (the sum of st_blocks × 512), and what was there then. Over `limit`, it kills `pid` (with
/// SIGKILL, that pid only, if it is still the `forker` run) so a failing run does not go on
/// filling the disk.
struct DiskWatcher {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    peak_listing: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskWatcher {
    fn start(dir: &Path, pid: u32, limit: u64) -> DiskWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let peak_listing = Arc::new(Mutex::new(Vec::new()));
        let (dir, s, p, l) = (dir.to_path_buf(), stop.clone(), peak.clone(), peak_listing.clone());
        let thread = std::thread::spawn(move || {
            let mut killed = false;
            loop {
                let done = s.load(Ordering::Acquire);
                let mut total = 0u64;
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        if let Ok(m) = e.metadata() {
                            if m.is_file() {
                                total += m.blocks() * 512;
                            }
                        }
                    }
                }
                if total > p.load(Ordering::Relaxed) {
                    p.store(total, Ordering::Relaxed);
                    *l.lock().unwrap() = listing(&dir);
                }
                if total > limit && !killed {
                    killed = true;
                    // Only while that pid is still the forker (not reaped and reused).
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline).contains("forker") {
                        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                    }
                }
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        DiskWatcher { stop, peak, peak_listing, thread: Some(thread) }
    }

    /// Stop watching (after one last look); the peak and the listing at the peak.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (self.peak.load(Ordering::Relaxed), self.peak_listing.lock().unwrap().clone())
    }
}

/// Run `forker 200 MODE` with 2 MiB traces and an 8 MiB tree budget in a fresh directory,
/// watching its disk use. Returns the outcome, the trace directory and the parent's report.
fn fork_per_connection(name: &str, mode: &str) -> (TestDir, Outcome, PathBuf, Report) {
    let dir = TestDir::new(name);
    let exe = dir.compile("forker.c");
    let traces = dir.path.join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    let settings = Settings::exact().file_size(FORK_FILE_SIZE);
    let budget = TREE_BUDGET.to_string();
    let n = CHILDREN.to_string();
    let mut cmd =
        traced_to(&dir, &exe, &[n.as_str(), mode], &settings, &traces, &[("LEAKTRACE_TREE_BUDGET", budget.as_str())]);
    let bg = Background::spawn(&mut cmd);
    let watcher = DiskWatcher::start(&traces, bg.pid, TREE_BUDGET + LEDGER_SLACK);
    let out = bg.wait(RUN_TIMEOUT);
    let (peak, at_peak) = watcher.finish();
    if peak > TREE_BUDGET + LEDGER_SLACK {
        // Do not leave hundreds of megabytes behind: keep the parent's trace for inspection.
        let parent = dir.trace_of(out.pid);
        let left = trace_files_in(&traces).len();
        for f in trace_files_in(&traces) {
            if f.file_name() != parent.file_name() {
                let _ = std::fs::remove_file(&f);
            }
        }
        panic!(
            "the traces of one process tree held {peak} bytes on disk at their peak, over the budget of {TREE_BUDGET} \
             (+ {LEDGER_SLACK} for the ledger); {left} trace files at the end (children's removed now)\n\
             --- files at the peak ({} entries) ---\n{}\n{}",
            at_peak.len(),
            at_peak.iter().take(40).cloned().collect::<Vec<_>>().join("\n"),
            out.describe()
        );
    }
    assert!(out.status.success(), "{}", out.describe());
    let json = out.json_line();
    assert_eq!(get_u64(&json, "/failed"), 0, "every child must exit with 0\n{}", out.describe());
    let parent = the_trace_of(&traces, out.pid, &out.describe());
    let r = report(&dir, &parent);
    assert_eq!(r.int("/process/pid"), u64::from(out.pid), "{}", r.context);
    r.assert_exact(
        "parent_leak",
        get_u64(&json, "/sites/parent_leak/bytes"),
        get_u64(&json, "/sites/parent_leak/count"),
    );
    (dir, out, traces, r)
}

/// 200 children forked one after another, each leaking a little (so each trace is worth
/// keeping): the traces of the tree never hold more disk than LEAKTRACE_TREE_BUDGET (checked
/// every 2 ms while it runs); the parent's trace still names the parent's leak exactly; the
/// children the budget left untraced are counted in the parent's report.
#[test]
fn fork_per_connection_stays_within_the_tree_budget() {
    let (dir, out, traces, r) = fork_per_connection("deploy_fork_budget", "leak");
    let (traced, untraced, removed) = children(&r);
    if untraced == 0 {
        r.fail(format!(
            "process.children.untraced_budget is 0, but {CHILDREN} children of 2 MiB traces cannot fit an 8 MiB budget"
        ));
    }
    if traced + untraced + removed != CHILDREN {
        r.fail(format!("process.children: traced {traced} + untraced_budget {untraced} + removed_empty {removed} != {CHILDREN} children forked"));
    }
    // The children's traces kept are the ones counted as traced, and each holds its child's leak.
    let child_files: Vec<PathBuf> =
        trace_files_in(&traces).into_iter().filter(|f| !trace_files_of(&traces, out.pid).contains(f)).collect();
    if child_files.len() as u64 != traced {
        r.fail(format!(
            "{} children's trace files are left ({:?}), process.children.traced says {traced}",
            child_files.len(),
            listing(&traces)
        ));
    }
    for f in &child_files {
        let cr = report(&dir, f);
        cr.assert_exact("child_work", 3000, 3);
        if !cr.sites_through("parent_leak").is_empty() {
            cr.fail("a child's trace holds the parent's leak");
        }
    }
}

/// The same with children that free everything they allocate: none of their traces is left
/// behind, and the parent's report counts them as removed.
#[test]
fn fork_per_connection_children_with_nothing_unfreed_leave_no_file() {
    let (_dir, out, traces, r) = fork_per_connection("deploy_fork_clean", "clean");
    let left: Vec<PathBuf> =
        trace_files_in(&traces).into_iter().filter(|f| !trace_files_of(&traces, out.pid).contains(f)).collect();
    if !left.is_empty() {
        r.fail(format!(
            "children that ended with nothing unfreed left {} trace files: {:?}",
            left.len(),
            listing(&traces)
        ));
    }
    let (traced, untraced, removed) = children(&r);
    if removed != CHILDREN || untraced != 0 {
        r.fail(format!(
            "process.children: removed_empty {removed}, untraced_budget {untraced}; expected all {CHILDREN} children removed, none untraced"
        ));
    }
    // FORMAT.md's children_traced ("children that created a trace of their own") may or may not
    // include the ones that removed it again: either the three counts are disjoint and add up
    // to the children forked, or the removed ones are counted among the traced.
    if traced + untraced + removed != CHILDREN && !(traced + untraced == CHILDREN && removed <= traced) {
        r.fail(format!("process.children: traced {traced}, untraced_budget {untraced}, removed_empty {removed} do not account for {CHILDREN} children"));
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Dormant prefork trees and children forked after a ctl

/// prefork.c's dormant master and two workers, exact mode, `file_size` traces within a tree
/// budget of `budget`, 300 ms after the fork: the running master, the workers' pids, the trace
/// directory and the flag that lets the workers finish.
fn dormant_prefork(dir: &TestDir, file_size: &str, budget: &str) -> (Background, Vec<u32>, PathBuf, PathBuf) {
    let exe = dir.compile("prefork.c");
    let traces = dir.path.join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    let flag = dir.path.join("resumed");
    let mut settings = Settings::exact().file_size(file_size);
    settings.start = "off".into();
    let mut bg = Background::spawn(&mut traced_to(
        dir,
        &exe,
        &[OsString::from("workers"), flag.clone().into()],
        &settings,
        &traces,
        &[("LEAKTRACE_TREE_BUDGET", budget)],
    ));
    bg.wait_for_stdout("workers ", Duration::from_secs(20));
    let line = bg.stdout_now().lines().find(|l| l.starts_with("workers ")).unwrap().to_string();
    let workers: Vec<u32> = line.split_whitespace().skip(1).filter_map(|w| w.parse().ok()).collect();
    assert_eq!(workers.len(), 2, "cannot read the workers' pids from {line:?}");
    std::thread::sleep(Duration::from_millis(300));
    (bg, workers, traces, flag)
}

/// A dormant master (LEAKTRACE_START=off) forks two workers that leak in worker_leak. Each
/// worker has its own trace file from its fork; `leak-analyze ctl DIR --resume` on the trace
/// directory resumes them all; after 1.5 s more of leaking, each worker's trace names
/// worker_leak as growing.
#[test]
fn dormant_prefork_workers_can_be_resumed() {
    let dir = TestDir::new("deploy_prefork");
    let (bg, workers, traces, flag) = dormant_prefork(&dir, "4M", "64M");
    for &w in &workers {
        let found = trace_files_of(&traces, w);
        assert!(
            found.len() == 1,
            "dormant worker {w} has no trace file of its own 300 ms after its fork (found {found:?}), so nothing can resume it; \
             files: {:?}\n--- stderr so far ---\n{}",
            listing(&traces),
            bg.stderr_now()
        );
    }
    let c = ctl(&[&traces], &["--resume"]);
    assert!(
        c.status.success(),
        "ctl {} --resume (a directory of a whole tree's traces)\n{}",
        traces.display(),
        c.describe()
    );
    // Both workers allocate all the time: ctl waits for their answers (the idle master's stays
    // pending until it allocates).
    for &w in &workers {
        assert!(c.stdout.contains(&format!("(pid {w}): applied")), "worker {w} applies the resume\n{}", c.describe());
    }
    std::fs::write(&flag, b"").unwrap();
    let out = bg.wait(RUN_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    let json = out.json_line();
    assert_eq!(get_u64(&json, "/failed"), 0, "both workers exit normally\n{}", out.describe());
    for &w in &workers {
        let r = report(&dir, &the_trace_of(&traces, w, &out.describe()));
        assert_eq!(r.int("/process/pid"), u64::from(w), "{}", r.context);
        assert_eq!(r.str("/process/ended"), "exit", "the worker exited normally\n{}", r.context);
        let sites = r.sites_through("worker_leak");
        if sites.is_empty() {
            r.fail(format!("worker {w}: no site through worker_leak after the resume"));
        }
        if !sites.iter().any(|s| s.json["growing"].as_bool() == Some(true)) {
            r.fail(format!(
                "worker {w}: worker_leak leaked steadily for 1.5 s after the resume but is not reported growing"
            ));
        }
    }
}

/// `ctl --sample-bytes 65536` on a tracing parent (started at the default 512 KiB): a child it
/// forks afterwards samples at 65536 from its start.
#[test]
fn child_forked_after_ctl_sample_bytes_keeps_the_mean() {
    let dir = TestDir::new("deploy_fork_after_ctl");
    let exe = dir.compile("prefork.c");
    let flag = dir.path.join("changed");
    let settings = Settings::sampled(11).file_size("4M");
    let mut bg = Background::spawn(&mut dir.traced_command(
        &exe,
        &[OsString::from("late-fork"), flag.clone().into()],
        &settings,
    ));
    bg.wait_for_stdout("ready", Duration::from_secs(20));
    let parent_trace = dir.trace_of(bg.pid);
    let c = ctl(&[&parent_trace], &["--sample-bytes", "65536"]);
    assert!(c.status.success(), "ctl --sample-bytes 65536\n{}", c.describe());
    assert!(c.stdout.contains("applied"), "the allocating parent applies the change\n{}", c.describe());
    std::fs::write(&flag, b"").unwrap();
    let out = bg.wait(RUN_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    let json = out.json_line();
    assert_eq!(get_u64(&json, "/failed"), 0, "{}", out.describe());
    let parent = report(&dir, &parent_trace);
    let pchanges = parent.at("/sampling/changes").as_array().cloned().unwrap_or_default();
    if !pchanges.iter().any(|c| c["mean_bytes"].as_u64() == Some(65536)) {
        parent.fail(format!("the parent's trace does not record the change to 65536: {pchanges:?}"));
    }
    let child = get_u64(&json, "/child_pid") as u32;
    let r = report(&dir, &dir.trace_of(child));
    if r.num("/sampling/mean_bytes") != 65536.0 {
        r.fail(format!(
            "the child forked after `ctl --sample-bytes 65536` samples at {}",
            r.at("/sampling/mean_bytes")
        ));
    }
    let changes = r.at("/sampling/changes").as_array().cloned().unwrap_or_default();
    if changes.iter().any(|c| c["mean_bytes"].as_u64() != Some(65536)) {
        r.fail(format!("the child's sampling changes show another mean than 65536: {changes:?}"));
    }
    if r.sites_allocated_in("late_child_leak").is_empty() {
        r.fail("the child's 12.5 MiB leak in late_child_leak is not reported");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Services started as another user, exec'd under the same pid

/// A service started by a root wrapper that changes to nobody and execs it under the same pid
/// (`start-stop-daemon --start --chuid nobody --exec`, a tiny C wrapper doing setgroups, setgid,
/// setuid and execv, and `setpriv --reuid nobody`), the wrapper itself traced in exact mode (so
/// it creates its own trace first): the service is traced, in a file owned by nobody whose
/// report names its leak exactly, and no "cannot create trace file" line.
#[test]
fn services_started_as_nobody_are_traced() {
    if !is_root() {
        eprintln!("NOTE: not root; cannot start a service as nobody here");
        return;
    }
    let dir = TestDir::new("deploy_chuid");
    let service = dir.compile("service.c");
    let wrapper = dir.compile("chuid_exec.c");
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let service_s = service.to_string_lossy().into_owned();
    let mut launchers: Vec<(&str, PathBuf, Vec<String>)> = Vec::new();
    if have("start-stop-daemon") {
        let args = ["--start", "--chuid", "nobody", "--exec", &service_s, "--"];
        launchers.push((
            "start-stop-daemon",
            PathBuf::from("start-stop-daemon"),
            args.iter().map(|s| s.to_string()).collect(),
        ));
    } else {
        eprintln!("NOTE: no start-stop-daemon here; that launcher is skipped");
    }
    launchers.push(("chuid_exec", wrapper.clone(), vec![service_s.clone()]));
    if have("setpriv") {
        let args = ["--reuid", "nobody", "--regid", "nogroup", "--init-groups", "--", &service_s];
        launchers.push(("setpriv", PathBuf::from("setpriv"), args.iter().map(|s| s.to_string()).collect()));
    }
    let mut failures = Vec::new();
    for (name, exe, args) in &launchers {
        let traces = world_writable(&dir, &format!("traces-{name}"));
        let out =
            run_command(&mut traced_to(&dir, exe, args, &Settings::exact().file_size("4M"), &traces, &[]), RUN_TIMEOUT);
        if let Err(e) = check_service_run(&dir, &traces, &out) {
            failures.push(format!("=== {name}: {e}\nfiles: {:?}\n{}", listing(&traces), out.describe()));
        }
    }
    assert!(failures.is_empty(), "{} of {} launchers:\n{}", failures.len(), launchers.len(), failures.join("\n\n"));
}

/// The service ran as nobody and is traced: a trace owned by nobody, of the service's pid,
/// whose report names service_leak exactly.
fn check_service_run(dir: &TestDir, traces: &Path, out: &Outcome) -> Result<(), String> {
    if !out.status.success() {
        return Err(format!("exit status {}", out.status));
    }
    if !out.stdout.contains(&format!("service: uid={NOBODY} ")) {
        return Err("the service did not run as nobody".into());
    }
    if out.stderr.contains("cannot create trace file") || !out.stderr_lines_starting("leaktrace:").is_empty() {
        return Err("a leaktrace: line on stderr (the service's trace could not be created)".into());
    }
    let json = out.json_line();
    let pid = get_u64(&json, "/pid");
    let owned: Vec<PathBuf> =
        trace_files_in(traces).into_iter().filter(|f| std::fs::metadata(f).is_ok_and(|m| m.uid() == NOBODY)).collect();
    if owned.is_empty() {
        return Err("no trace file owned by nobody".into());
    }
    let mut seen = Vec::new();
    for f in &owned {
        let r = report(dir, f);
        let rpid = r.int("/process/pid");
        let (bytes, count) = r.exact_sum(&r.sites_allocated_in("service_leak"));
        if rpid == pid && (bytes, count) == (50_000, 50) {
            return Ok(());
        }
        seen.push(format!("{}: pid {rpid}, service_leak {bytes} bytes in {count} blocks", f.display()));
    }
    Err(format!("no trace owned by nobody names the service's leak (pid {pid}, 50000 bytes in 50 blocks): {seen:?}"))
}

// ---------------------------------------------------------------------------------------------
// 7. RSS growth explained by the heap

/// A program leaks a known amount, every byte touched, between quiet stretches: the report's
/// rss_vs_heap.explained_fraction is at least 0.85 in exact, 4 KiB and default mode: the
/// tracer's own memory (its mapped trace pages, its tables) is not counted as the program's
/// RSS growth.
///
/// Exact and 4 KiB: 8 MiB in 8192 blocks of 1024 bytes. Default (one sample per 512 KiB): an
/// estimate of 8 MiB rests on ~16 samples (±50% at 95%), which cannot test 85%; the leak there
/// is 256 MiB in 65536 blocks of 4 KiB (±9% at 95%, fixed seed), and the site's estimate must be
/// within twice its own 95% interval of the truth.
#[test]
fn rss_growth_of_a_known_leak_is_explained_by_the_heap() {
    let dir = TestDir::new("deploy_rss_explained");
    let exe = dir.compile("rss_leak.c");
    let mut k4 = Settings::sampled(1).file_size("16M");
    k4.sample_bytes = "4096".into();
    let cases = [
        ("exact", Settings::exact(), "8192", "1024"),
        ("4 KiB", k4, "8192", "1024"),
        ("default", Settings::sampled(1).file_size("16M"), "65536", "4096"),
    ];
    let mut failures = Vec::new();
    for (mode, mut settings, blocks, size) in cases {
        settings.rss_ms = 100;
        let out = run_command(&mut dir.traced_command(&exe, &[blocks, size], &settings), RUN_TIMEOUT);
        assert!(out.status.success(), "{mode}\n{}", out.describe());
        let json = out.json_line();
        let leaked = get_u64(&json, "/sites/leak_blocks/bytes") as f64;
        let r = report(&dir, &dir.trace_of(out.pid));
        let sites = r.sites_allocated_in("leak_blocks");
        if sites.is_empty() {
            r.fail(format!("{mode}: no site for leak_blocks"));
        }
        let est: f64 = sites.iter().map(|s| s.unfreed_bytes(&r)).sum();
        let ci: f64 = sites.iter().map(|s| s.json["unfreed_bytes_ci95"].as_f64().unwrap_or(0.0)).sum();
        if (est - leaked).abs() > 2.0 * ci + 0.5 {
            r.fail(format!("{mode}: leak_blocks estimated at {est} ± {ci} bytes; the program leaked {leaked}"));
        }
        let rvh = r.at("/rss_vs_heap");
        if rvh.is_null() {
            r.fail(format!("{mode}: rss_vs_heap is null: no RSS series around a {leaked}-byte leak"));
        }
        let explained = r.num("/rss_vs_heap/explained_fraction");
        let rss_growth = r.num("/rss_vs_heap/rss_growth_bytes");
        let heap_growth = r.num("/rss_vs_heap/heap_growth_bytes");
        let line = format!(
            "{mode}: leaked {leaked} bytes; RSS growth {rss_growth}, heap growth {heap_growth}, explained_fraction {explained} \
             (report {})",
            dir.path.join(format!("{}.report.json", dir.trace_of(out.pid).file_name().unwrap().to_string_lossy())).display()
        );
        eprintln!("{line}");
        // Below 0.85: RSS growth that is not the program's counted as if it were. Above 1.1 in
        // exact mode (where the heap growth is exact): more subtracted from the RSS than was
        // ours.
        if explained < 0.85 || (mode == "exact" && explained > 1.1) {
            failures.push(line);
        }
    }
    assert!(
        failures.is_empty(),
        "RSS growth not explained by the heap as it should be (>= 0.85; <= 1.1 when exact):\n{}",
        failures.join("\n")
    );
}

/// 7b. An RSS that peaked and fell back: the report gives the peak and when, beside start and
/// end, and the peak survives in the text.
#[test]
fn rss_peak_is_reported_beside_start_and_end() {
    let dir = TestDir::new("deploy_rss_peak");
    let exe = dir.compile("rss_peak.c");
    let mut settings = Settings::exact();
    settings.rss_ms = 50;
    let out = run_command(&mut dir.traced_command(&exe, &["96"], &settings), RUN_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    let peak_bytes = get_u64(&out.json_line(), "/peak_bytes");
    let trace = dir.trace_of(out.pid);
    let r = report(&dir, &trace);
    let peak = r.num("/rss_peak/rss_bytes");
    let last = r.at("/rss").as_array().and_then(|a| a.last()).and_then(|p| p["rss_bytes"].as_f64()).unwrap_or(0.0);
    if peak < peak_bytes as f64 || peak < last + 0.9 * peak_bytes as f64 {
        r.fail(format!("rss_peak {peak} does not show the {peak_bytes}-byte peak (last sample {last})"));
    }
    let t = r.num("/rss_peak/t_ns");
    let end = r.num("/process/duration_ns");
    if !(t > 0.0 && t < end) {
        r.fail(format!("rss_peak.t_ns {t} is not inside the run (0..{end})"));
    }
    let text = analyze(&[std::ffi::OsStr::new("report"), trace.as_os_str()], RUN_TIMEOUT);
    assert!(text.status.success(), "{}", text.describe());
    assert!(
        text.stdout.lines().any(|l| l.starts_with("RSS ") && l.contains(", peak ")),
        "no peak in the RSS line:\n{}",
        text.stdout
    );
}

/// 4c. Fork + exec per connection: each child samples (so its trace takes its full size), then
/// execs a program that samples nothing. The exec'd program replaces the child's trace under the
/// same pid and gives its disk back to the tree, and removes its own at exit: 20 children fit a
/// budget of four files, and only the parent's trace is left.
#[test]
fn fork_exec_children_give_their_disk_back() {
    let dir = TestDir::new("deploy_fork_exec");
    let exe = dir.compile("forker.c");
    let traces = dir.path.join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    let settings = Settings::exact().file_size(FORK_FILE_SIZE);
    let budget = TREE_BUDGET.to_string();
    let mut cmd =
        traced_to(&dir, &exe, &["20", "exec"], &settings, &traces, &[("LEAKTRACE_TREE_BUDGET", budget.as_str())]);
    let out = run_command(&mut cmd, RUN_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(get_u64(&out.json_line(), "/failed"), 0, "every child must exit with 0\n{}", out.describe());
    let r = report(&dir, &the_trace_of(&traces, out.pid, &out.describe()));
    let (_, untraced, _) = children(&r);
    assert_eq!(
        untraced, 0,
        "the exec'd children gave their disk back, yet {untraced} ran untraced for want of budget\n{}",
        r.context
    );
    let files = trace_files_in(&traces);
    assert_eq!(files.len(), 1, "only the parent's trace is left: {:?}", listing(&traces));
}

/// 5c. A resume the tree's disk budget cannot hold is refused, said by `ctl` (REFUSED, exit 1),
/// and the process runs on untouched, its trace still dormant and small.
#[test]
fn a_resume_the_budget_cannot_hold_is_refused() {
    let dir = TestDir::new("deploy_resume_refused");
    // Room for the three small dormant files and one full one: one resume fits, not two.
    let (bg, workers, traces, flag) = dormant_prefork(&dir, "2M", "3M");
    let c = ctl(&[&traces], &["--resume"]);
    assert_eq!(c.status.code(), Some(1), "a refused resume is exit status 1\n{}", c.describe());
    let refused = c.stdout.lines().filter(|l| l.contains("REFUSED") && l.contains("budget")).count();
    assert!(refused >= 1, "ctl says which resume the budget refused\n{}", c.describe());
    std::fs::write(&flag, b"").unwrap();
    let out = bg.wait(RUN_TIMEOUT);
    assert!(out.status.success(), "the service runs on after a refused resume\n{}", out.describe());
    assert_eq!(get_u64(&out.json_line(), "/failed"), 0, "{}", out.describe());
    // Every file stayed within the budget. A refused worker sampled nothing, so it removed its
    // small trace at exit; at most one worker holds a full one.
    let total: u64 = std::fs::read_dir(&traces).unwrap().flatten().map(|e| e.metadata().unwrap().blocks() * 512).sum();
    assert!(total <= (3 << 20) + LEDGER_SLACK, "{total} bytes on disk for a 3 MiB budget: {:?}", listing(&traces));
    let full = workers
        .iter()
        .filter_map(|&w| trace_files_of(&traces, w).into_iter().next())
        .filter(|f| f.metadata().unwrap().blocks() * 512 >= 2 << 20)
        .count();
    assert!(full <= 1, "two full worker traces do not fit a 3 MiB budget: {:?}", listing(&traces));
}
