//! Safety tests (issue 3, "Safe to leave in production"): the traced program is never harmed,
//! the evidence survives the ways leaking services die, tracing can be steered at runtime, and
//! the analyzer survives hostile input. Each test tries to break one guarantee; each would fail
//! without the behaviour it checks.
//!
//! Needs `cargo build --release` first (see tests/README.md). A few tests need root powers
//! (mount, setgid binaries); they print a note and pass when the sandbox forbids them.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use leaktrace_tests::{
    analyze, get_u64, repo, report_of, run_command, via_shell, Background, Outcome, Report, Settings, TestDir,
};
use serde_json::Value;

/// Most any traced program here may run: longer means a deadlock.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Most one analyzer run on a small or hostile file may take.
const ANALYZE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Shared checks

fn run(cmd: &mut Command) -> Outcome {
    run_command(cmd, RUN_TIMEOUT)
}

fn assert_success(out: &Outcome) {
    assert!(out.status.success(), "the program failed\n{}", out.describe());
}

/// No line of the preload on stderr.
fn assert_no_leaktrace_line(out: &Outcome) {
    let lines = out.stderr_lines_starting("leaktrace:");
    assert!(lines.is_empty(), "unexpected leaktrace: lines {lines:?}\n{}", out.describe());
}

/// The traced run behaved exactly as the untraced one: same stdout, same exit status.
fn assert_same_behaviour(traced: &Outcome, baseline: &Outcome, what: &str) {
    assert_eq!(
        traced.status.into_raw(),
        baseline.status.into_raw(),
        "{what}: the exit status differs from the run without the preload\n--- traced ---\n{}\n--- baseline ---\n{}",
        traced.describe(),
        baseline.describe()
    );
    assert_eq!(
        traced.stdout,
        baseline.stdout,
        "{what}: stdout differs from the run without the preload\n--- traced ---\n{}\n--- baseline ---\n{}",
        traced.describe(),
        baseline.describe()
    );
}

/// stderr is exactly one line, from the preload (`leaktrace: …`), mentioning one of `needles`.
fn assert_one_leaktrace_line(out: &Outcome, needles: &[&str], what: &str) {
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("leaktrace:"),
        "{what}: expected exactly one stderr line starting with `leaktrace:`, got {} line(s)\n{}",
        lines.len(),
        out.describe()
    );
    assert!(
        needles.iter().any(|n| lines[0].contains(n)),
        "{what}: the leaktrace: line names none of {needles:?}: {:?}\n{}",
        lines[0],
        out.describe()
    );
}

fn assert_absent(report: &Report, function: &str, why: &str) {
    if !report.sites_through(function).is_empty() {
        report.fail(format!("{function} must not appear: {why}"));
    }
}

fn not_leaking(json: &Value) -> Vec<String> {
    json["not_leaking"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn report_for(dir: &TestDir, trace: &Path) -> Report {
    let name = trace.file_name().unwrap().to_string_lossy().into_owned();
    let r = report_of(trace, &dir.path.join(format!("{name}.report.json")));
    r.check_invariants();
    r
}

/// Every trace file in `dir` analyses, and belongs to the process its name says: no process
/// wrote another's file.
fn check_every_trace(dir: &TestDir) -> Vec<(u32, Report)> {
    let mut out = Vec::new();
    for t in dir.trace_files() {
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        let pid: u32 = name
            .strip_prefix("trace.")
            .and_then(|s| s.strip_suffix(".lt"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected trace file name {name}"));
        let r = report_for(dir, &t);
        if r.int("/process/pid") != u64::from(pid) {
            r.fail(format!("{name} holds the trace of pid {}", r.at("/process/pid")));
        }
        out.push((pid, r));
    }
    out
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A tmpfs mounted for one test, unmounted when dropped. `None` when mounting is not permitted.
struct Mount {
    at: PathBuf,
}

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let out = run_command(
            Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(at),
            Duration::from_secs(10),
        );
        if !out.status.success() {
            eprintln!("NOTE: cannot mount a tmpfs here ({}); skipping this part", out.stderr.trim());
            return None;
        }
        Some(Mount { at: at.to_path_buf() })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. fork, exec, posix_spawn, system, vfork

fn fork_case(name: &str, mode: &str) {
    let dir = TestDir::new(name);
    let exe = dir.compile("fork.c");
    let out = run(&mut dir.traced_command(&exe, &[mode], &Settings::exact()));
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let json = out.json_line();
    assert_eq!(json["child_status"], "exit 0", "the child exits normally\n{}", out.describe());
    let child = get_u64(&json, "/child_pid") as u32;
    let (parent_trace, child_trace) = (dir.trace_of(out.pid), dir.trace_of(child));
    let mut expected = vec![parent_trace.clone(), child_trace.clone()];
    expected.sort();
    assert_eq!(
        dir.trace_files(),
        expected,
        "one trace for the parent and one for the child, each named with its pid\n{}",
        out.describe()
    );

    let parent = report_for(&dir, &parent_trace);
    assert_eq!(parent.int("/process/pid"), u64::from(out.pid));
    parent.assert_exact("parent_leak", get_u64(&json, "/sites/parent_leak/bytes"), 7);
    assert_absent(&parent, "child_leak", "the child's allocations belong to the child's trace");
    assert_eq!(parent.str("/process/ended"), "exit", "{}", parent.context);

    let child_r = report_for(&dir, &child_trace);
    assert_eq!(child_r.int("/process/pid"), u64::from(child), "{}", child_r.context);
    child_r.assert_exact("child_leak", get_u64(&json, "/sites/child_leak/bytes"), 5);
    assert_eq!(child_r.str("/process/ended"), "exit", "the child exited normally\n{}", child_r.context);
}

/// A forked child writes its own trace, named with its own pid, with its own leaks only; the
/// parent's trace never sees the child's allocations.
#[test]
fn fork_child_writes_its_own_trace() {
    fork_case("safety_fork", "fork");
}

/// The same with a child that exits right after leaking: its trace must still name its frames.
#[test]
fn short_lived_fork_child_symbolizes() {
    fork_case("safety_fork_quick", "fork-quick");
}

/// A child that only execs: the exec'd program (LD_PRELOAD inherited) is traced in its own
/// file, under the child's pid, and nothing fails.
#[test]
fn fork_then_exec_is_traced_again() {
    let dir = TestDir::new("safety_fork_exec");
    let exe = dir.compile("fork.c");
    let out = run(&mut dir.traced_command(&exe, &["exec"], &Settings::exact()));
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let json = out.json_line();
    assert_eq!(json["child_status"], "exit 0", "/bin/cat under the preload\n{}", out.describe());
    let child = get_u64(&json, "/child_pid") as u32;
    let traces = check_every_trace(&dir);
    let pids: Vec<u32> = traces.iter().map(|(p, _)| *p).collect();
    assert!(
        pids.contains(&out.pid) && pids.contains(&child) && pids.len() == 2,
        "traces of pids {pids:?}; expected the parent {} and the exec'd child {child}",
        out.pid
    );
    let (_, r) = traces.iter().find(|(p, _)| *p == child).unwrap();
    let exe_path = r.str("/process/exe");
    if !exe_path.ends_with("/cat") {
        r.fail(format!("the child's trace is of {exe_path:?}, expected the exec'd /bin/cat"));
    }
    assert_eq!(r.str("/process/ended"), "exit", "{}", r.context);
}

/// posix_spawn and system() under the preload: same output, same exit code as without it.
#[test]
fn posix_spawn_and_system_are_unaffected() {
    let dir = TestDir::new("safety_spawn");
    let exe = dir.compile("fork.c");
    let baseline = run(&mut dir.untraced_command(&exe, &["spawn"]));
    assert_eq!(baseline.status.code(), Some(4), "{}", baseline.describe());
    assert!(
        baseline.stdout.contains("spawned-echo") && baseline.stdout.contains("system: exit 3"),
        "{}",
        baseline.describe()
    );
    let out = run(&mut dir.traced_command(&exe, &["spawn"], &Settings::exact()));
    assert_same_behaviour(&out, &baseline, "posix_spawn + system");
    assert_no_leaktrace_line(&out);
    let traces = check_every_trace(&dir);
    assert!(traces.iter().any(|(p, _)| *p == out.pid), "the parent has a trace");
    // The parent, echo (posix_spawn), and the shell of system() plus its echo if not built in.
    assert!(traces.len() >= 3, "spawned programs inherit LD_PRELOAD and are traced: {} trace(s)", traces.len());
}

/// vfork + _exit and vfork + exec: same output and exit code as without the preload.
#[test]
fn vfork_exit_and_exec_are_unaffected() {
    let dir = TestDir::new("safety_vfork");
    let exe = dir.compile("fork.c");
    let baseline = run(&mut dir.untraced_command(&exe, &["vfork"]));
    assert_eq!(baseline.status.code(), Some(5), "{}", baseline.describe());
    assert_eq!(baseline.stdout, "vfork+_exit: exit 7\nvfork+exec: exit 0\n");
    let out = run(&mut dir.traced_command(&exe, &["vfork"], &Settings::exact()));
    assert_same_behaviour(&out, &baseline, "vfork");
    assert_no_leaktrace_line(&out);
    let traces = check_every_trace(&dir);
    assert!(traces.iter().any(|(p, _)| *p == out.pid), "the parent has a trace");
    assert_eq!(traces.len(), 2, "the parent and the exec'd /bin/cat have traces; the _exit child none");
}

/// A process a traced program runs that never reaches a sample point (here /bin/true, which
/// allocates nothing, run twice by a shell) leaves no trace file; the shell, the process the
/// user started, keeps its own.
#[test]
fn descendants_that_sample_nothing_leave_no_file() {
    let dir = TestDir::new("safety_no_sample_no_file");
    let mut cmd =
        dir.traced_command(Path::new("/bin/sh"), &["-c", "/bin/true; /bin/true; /bin/true"], &Settings::exact());
    let out = run(&mut cmd);
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let traces = check_every_trace(&dir);
    let pids: Vec<u32> = traces.iter().map(|(p, _)| *p).collect();
    assert_eq!(pids, [out.pid], "only the shell's trace is left");
}

// ---------------------------------------------------------------------------------------------
// 2. Threads

/// 32 threads allocate and free across threads for 3 s in exact mode, then each leaks a known
/// amount: no crash, no deadlock, exact totals.
#[test]
fn thirty_two_threads_free_across_threads() {
    let dir = TestDir::new("safety_threads32");
    let exe = dir.compile("thread_churn.c");
    let out = run(&mut dir.traced_command(&exe, &["3"], &Settings::exact().file_size("64M")));
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let json = out.json_line();
    let cross = get_u64(&json, "/cross_thread_frees");
    assert!(cross > 1000, "blocks must be freed by other threads than their allocator: {json}");
    let report = report_for(&dir, &dir.trace_of(out.pid));
    report.assert_exact(
        "final_leak",
        get_u64(&json, "/sites/final_leak/bytes"),
        get_u64(&json, "/sites/final_leak/count"),
    );
    report.assert_not_leaking(&not_leaking(&json));
    if report.int("/totals/dropped_events") != 0 {
        report.fail("nothing may be dropped: the counts would not be exact");
    }
    let events = report.int("/totals/sampled_events");
    let iterations = get_u64(&json, "/iterations");
    if events < 2 * iterations {
        report.fail(format!(
            "exact mode records every alloc and free: {events} events for {iterations} alloc+free pairs"
        ));
    }
}

/// Run `exe args` traced in exact mode: it must behave exactly as `baseline` did untraced, and
/// if `recorded_in` is given, every block the program says it leaked must be in that function's
/// sites.
fn traced_like_baseline(dir: &TestDir, exe: &Path, args: &[&str], baseline: &Outcome, recorded_in: Option<&str>) {
    let traced = run(&mut dir.traced_command(exe, args, &Settings::exact()));
    assert_same_behaviour(&traced, baseline, &format!("{} {}", exe.display(), args.join(" ")));
    if let Some(function) = recorded_in {
        let report = report_for(dir, &dir.trace_of(traced.pid));
        let (_, count) = report.exact_sum(&report.sites_allocated_in(function));
        let leaked = get_u64(&traced.json_line(), "/leaked_blocks");
        if count != leaked {
            report.fail(format!("{}: {count} of the {leaked} leaked blocks recorded", args.join(" ")));
        }
    }
}

/// Threads with small stacks that allocate with only a few KiB left: wherever the program runs
/// without the preload, it runs with it (the sampled path checks its stack headroom and drops
/// the sample when short; without that check a 20 KiB thread stack crashed here), and with
/// ample stack every block is recorded.
#[test]
fn small_thread_stacks_do_not_overflow() {
    let dir = TestDir::new("safety_small_stacks");
    let exe = dir.compile("small_stack.c");
    for stack in ["20480", "24576", "32768", "65536"] {
        let baseline = run(&mut dir.untraced_command(&exe, &[stack]));
        if !baseline.status.success() {
            continue; // the program alone overflows this stack: nothing to compare
        }
        let roomy = stack == "65536";
        traced_like_baseline(&dir, &exe, &[stack], &baseline, roomy.then_some("deep"));
    }
}

/// A signal handler allocating on a small alternate signal stack: the preload must not overflow
/// it (an 8 KiB sigaltstack with 5.5 KiB in use crashed before the headroom check knew about
/// alternate stacks); on a roomy one every block is recorded.
///
/// The sizes are on top of the kernel's own signal frame, which depends on the CPU (11,952
/// bytes with AVX-512, where a plain 8 KiB alternate stack overflows without any preload).
#[test]
fn small_signal_stacks_do_not_overflow() {
    let dir = TestDir::new("safety_altstack");
    let exe = dir.compile("altstack.c");
    let frame = kernel_signal_frame_bytes();
    for (room, pad, all_recorded) in [(8192, "5500", false), (8192, "1024", false), (65536, "5500", true)] {
        let alt = (frame + room).to_string();
        let args = [alt.as_str(), pad];
        let baseline = run(&mut dir.untraced_command(&exe, &args));
        if !baseline.status.success() {
            eprintln!(
                "NOTE: a {alt}-byte alternate stack fails without the preload here; skipped\n{}",
                baseline.describe()
            );
            continue;
        }
        traced_like_baseline(&dir, &exe, &args, &baseline, all_recorded.then_some("handler_leak"));
    }
}

/// The kernel's minimum signal frame on this CPU (AT_MINSIGSTKSZ, Linux 5.14+), or the
/// traditional MINSIGSTKSZ where the kernel does not say.
fn kernel_signal_frame_bytes() -> u64 {
    const AT_MINSIGSTKSZ: libc::c_ulong = 51;
    // SAFETY: getauxval has no preconditions; it returns 0 for an entry the kernel did not give.
    let v = unsafe { libc::getauxval(AT_MINSIGSTKSZ) };
    if v == 0 {
        2048
    } else {
        v
    }
}

/// Threads exiting while tracing, with pthread-key destructors that free (and allocate): no
/// crash, and the freed blocks are not leaks.
#[test]
fn thread_exit_with_tls_destructors() {
    let dir = TestDir::new("safety_tls_exit");
    let exe = dir.compile("tls_exit.c");
    let out = run(&mut dir.traced_command(&exe, &["20"], &Settings::exact()));
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let json = out.json_line();
    let threads = get_u64(&json, "/threads");
    assert_eq!(get_u64(&json, "/destructor_calls"), 3 * threads, "every destructor ran: {json}");
    let report = report_for(&dir, &dir.trace_of(out.pid));
    report.assert_exact("tls_marker_leak", get_u64(&json, "/sites/tls_marker_leak/bytes"), 3);
    report.assert_not_leaking(&not_leaking(&json));
}

/// Blocks allocated before the tracer started (in a linked library's constructor, which runs
/// before preloaded ones, while the forwarding table still holds its bootstrap functions) are
/// freed and reallocated later without harm, and are not reported: only the program's own
/// later leaks are, exactly (the blocks realloc moved them to among them).
#[test]
fn blocks_from_before_the_tracer_started_are_left_alone() {
    let dir = TestDir::new("safety_early_constructor");
    dir.compile_c_with("early_lib.c", "libearly.so", &["-shared", "-fPIC"]);
    let rpath = format!("-Wl,-rpath,{}", dir.path.display());
    let search = format!("-L{}", dir.path.display());
    let exe = dir.compile_c_with("early_main.c", "early_main", &[search.as_str(), "-learly", rpath.as_str()]);
    let out = run(&mut dir.traced_command(&exe, &[] as &[&str], &Settings::exact()));
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let json = out.json_line();
    assert_eq!(get_u64(&json, "/early_ready"), 1, "the library constructor ran");
    let report = report_for(&dir, &dir.trace_of(out.pid));
    for site in ["leak_after_start", "main"] {
        let (bytes, count) =
            (get_u64(&json, &format!("/sites/{site}/bytes")), get_u64(&json, &format!("/sites/{site}/count")));
        report.assert_exact(site, bytes, count);
    }
    assert_absent(&report, "early_init", "allocated before tracing started");
}

/// libleaktrace.so dlopened by a running program instead of preloaded. Its per-thread block is
/// initial-exec TLS, which a late dlopen must take from glibc's static TLS surplus: the dlopen
/// either succeeds or fails with the loader's error, and the program runs on, same results as
/// without it. Loaded late, the tracer's hooks are not the program's malloc (the program bound
/// to libc's first), so any trace it starts holds no allocations, and must still read.
#[test]
fn late_dlopen_of_the_tracer_is_harmless() {
    let dir = TestDir::new("safety_late_dlopen");
    let exe = dir.compile("late_dlopen.c");
    let baseline = run(&mut dir.untraced_command(&exe, &["/nonexistent/libleaktrace.so"]));
    assert_success(&baseline);
    let mut cmd = dir.untraced_command(&exe, &[repo().preload.as_os_str()]);
    cmd.env("LEAKTRACE_FILE", dir.path.join("trace.%p.lt")).env("LEAKTRACE_FILE_SIZE", "4M");
    let out = run(&mut cmd);
    assert_success(&out);
    let json = out.json_line();
    assert_eq!(json["checksum"], baseline.json_line()["checksum"], "same results as without the tracer");
    let loaded = json["loaded"].as_bool().expect("loaded flag");
    if !loaded {
        // glibc's message when the surplus is used up; anything else is a real failure.
        let error = json["error"].as_str().unwrap_or_default();
        assert!(error.contains("static TLS"), "dlopen failed for another reason: {error}");
        return;
    }
    assert_no_leaktrace_line(&out);
    for trace in dir.files_starting_with("trace.") {
        let info = analyze(&[OsString::from("info"), trace.into()], ANALYZE_TIMEOUT);
        assert!(info.status.success(), "a late-started trace must read\n{}", info.describe());
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Signals

/// SIGALRM at 10 kHz and SIGUSR1 from another thread, both handlers malloc and free, while the
/// main thread mallocs and frees in exact mode: it finishes (a timeout is a deadlock).
#[test]
fn allocating_signal_handlers_do_not_deadlock() {
    let dir = TestDir::new("safety_signals");
    let exe = dir.compile("signals.c");
    let out = run_command(&mut dir.traced_command(&exe, &["2"], &Settings::exact()), Duration::from_secs(30));
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let json = out.json_line();
    let (alrm, usr1) = (get_u64(&json, "/sigalrm"), get_u64(&json, "/sigusr1"));
    assert!(alrm > 100 && usr1 > 100, "the handlers must really run during the loop: {json}");
    let report = report_for(&dir, &dir.trace_of(out.pid));
    report.assert_not_leaking(&not_leaking(&json));
    if report.int("/totals/sampled_events") < get_u64(&json, "/iterations") {
        report.fail("exact mode: the main loop's allocations were not recorded");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. dlopen / dlclose

fn dlopen_case(name: &str, mode: &str, wait_ms: &str) {
    let dir = TestDir::new(name);
    let lib = dir.compile_c_with("plugin.c", "libplugin.so", &["-shared", "-fPIC"]);
    let exe = dir.compile_c_with("dlopen_main.c", "dlopen_main", &["-ldl"]);
    let lib_arg = lib.to_string_lossy().into_owned();
    let out = run(&mut dir.traced_command(&exe, &[lib_arg.as_str(), mode, wait_ms], &Settings::exact()));
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let json = out.json_line();
    assert_eq!(json["closed"], Value::Bool(mode == "close"));
    let report = report_for(&dir, &dir.trace_of(out.pid));
    report.assert_exact("plugin_leak", get_u64(&json, "/sites/plugin_leak/bytes"), 6);
    for site in report.sites_allocated_in("plugin_leak") {
        let f0 = &site.frames()[0];
        let file = f0["file"].as_str().unwrap_or("");
        let module = f0["module"].as_str().unwrap_or("");
        if !file.ends_with("plugin.c") || !module.ends_with("libplugin.so") {
            report.fail(format!("plugin_leak's frame is {f0}, expected file …/plugin.c in …/libplugin.so"));
        }
    }
    // Nothing may be symbolized wrongly: every frame of the plugin names plugin_leak or nothing.
    for site in report.sites() {
        for f in site.frames() {
            if f["module"].as_str().is_some_and(|m| m.ends_with("libplugin.so"))
                && f["function"].as_str() != Some("plugin_leak")
            {
                report.fail(format!("a frame in libplugin.so resolved to {f}"));
            }
        }
    }
}

#[test]
fn dlopened_library_frames_symbolize() {
    dlopen_case("safety_dlopen_keep", "keep", "200");
}

#[test]
fn dlclosed_library_frames_still_symbolize() {
    dlopen_case("safety_dlopen_close", "close", "200");
}

/// dlopen, leak and dlclose within one 50 ms poll of the module map: our dlclose records the
/// module map before the library goes.
#[test]
fn dlopen_and_dlclose_within_one_poll_symbolize() {
    dlopen_case("safety_dlopen_fast", "close", "0");
}

// ---------------------------------------------------------------------------------------------
// 5. Bad settings, unusable paths, file size limits

struct BadCase {
    label: &'static str,
    env: Vec<(&'static str, String)>,
    needles: Vec<String>,
    shell: Option<&'static str>,
    /// A path that must not exist afterwards (where the trace would have gone).
    must_not_exist: Option<PathBuf>,
}

fn check_bad_case(dir: &TestDir, plain: &Path, case: &BadCase) {
    let sub = dir.path.join(format!("case_{}", case.label));
    std::fs::create_dir_all(&sub).unwrap();
    let mut cmd = dir.traced_command(plain, &[] as &[&str], &Settings::exact());
    cmd.env("LEAKTRACE_FILE", sub.join("trace.%p.lt"));
    for (k, v) in &case.env {
        cmd.env(k, v);
    }
    let mut base = dir.untraced_command(plain, &[] as &[&str]);
    if let Some(script) = case.shell {
        cmd = via_shell(&cmd, script);
        base = via_shell(&base, script);
    }
    let baseline = run(&mut base);
    assert_eq!(baseline.status.code(), Some(3), "{}", baseline.describe());
    let out = run(&mut cmd);
    assert_same_behaviour(&out, &baseline, case.label);
    let needles: Vec<&str> = case.needles.iter().map(|s| s.as_str()).collect();
    assert_one_leaktrace_line(&out, &needles, case.label);
    let left: Vec<_> = std::fs::read_dir(&sub).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "{}: files left behind: {left:?}\n{}", case.label, out.describe());
    assert!(dir.trace_files().is_empty(), "{}: trace files left: {:?}", case.label, dir.trace_files());
    if let Some(p) = &case.must_not_exist {
        let p = PathBuf::from(p.to_string_lossy().replace("%p", &out.pid.to_string()));
        assert!(
            std::fs::symlink_metadata(&p).is_err(),
            "{}: {} was created\n{}",
            case.label,
            p.display(),
            out.describe()
        );
    }
}

fn var_case(label: &'static str, var: &'static str, value: &str) -> BadCase {
    BadCase {
        label,
        env: vec![(var, value.to_string())],
        needles: vec![var.to_string()],
        shell: None,
        must_not_exist: None,
    }
}

fn file_case(label: &'static str, pattern: PathBuf, needles: Vec<String>) -> BadCase {
    BadCase {
        label,
        env: vec![("LEAKTRACE_FILE", pattern.to_string_lossy().into_owned())],
        needles,
        shell: None,
        must_not_exist: Some(pattern),
    }
}

/// Garbage in any LEAKTRACE_* variable, an uncreatable or unwritable trace path, and a file
/// size limit below the trace size: the program's stdout and exit code are exactly as without
/// the preload, stderr has one `leaktrace:` line naming the problem, no file is left.
#[test]
fn bad_settings_leave_the_program_alone() {
    let dir = TestDir::new("safety_bad_settings");
    let plain = dir.compile("plain.c");
    let d = dir.path.to_string_lossy().into_owned();
    let regular = dir.path.join("a_regular_file");
    std::fs::write(&regular, b"not a directory\n").unwrap();
    let mut cases = vec![
        var_case("size_12", "LEAKTRACE_FILE_SIZE", "12"),
        var_case("size_lots", "LEAKTRACE_FILE_SIZE", "lots"),
        var_case("size_99999G", "LEAKTRACE_FILE_SIZE", "99999G"),
        var_case("sample_0", "LEAKTRACE_SAMPLE_BYTES", "0"),
        var_case("sample_abc", "LEAKTRACE_SAMPLE_BYTES", "abc"),
        var_case("rss_1", "LEAKTRACE_RSS_MS", "1"),
        var_case("start_maybe", "LEAKTRACE_START", "maybe"),
        var_case("seed_x", "LEAKTRACE_SEED", "x"),
        file_case("no_such_dir", dir.path.join("no/such/dir/trace.%p.lt"), vec![format!("{d}/no/such/dir")]),
        file_case("parent_is_file", regular.join("trace.%p.lt"), vec![regular.to_string_lossy().into_owned()]),
        file_case("in_proc", PathBuf::from("/proc/leaktrace-safety.%p.lt"), vec!["/proc/leaktrace-safety".into()]),
        file_case("in_sys", PathBuf::from("/sys/leaktrace-safety.%p.lt"), vec!["/sys/leaktrace-safety".into()]),
        BadCase {
            label: "ulimit_f",
            env: vec![],
            needles: vec!["LEAKTRACE_FILE_SIZE".into(), "ulimit".into(), "file size limit".into()],
            shell: Some("ulimit -f 1000"),
            must_not_exist: None,
        },
    ];
    // A read-only file system (root ignores permission bits, not a read-only mount).
    let ro_dir = dir.path.join("readonly_mount");
    let ro = Mount::tmpfs(&ro_dir, "ro,size=4m");
    if ro.is_some() {
        cases.push(file_case("read_only_fs", ro_dir.join("trace.%p.lt"), vec![ro_dir.to_string_lossy().into_owned()]));
    }
    for case in &cases {
        check_bad_case(&dir, &plain, case);
    }
    drop(ro);
}

// ---------------------------------------------------------------------------------------------
// 6. A full disk

/// An 8 MiB trace on a 2 MiB file system: found at start (one line), the program unaffected,
/// no file left, never a SIGBUS later.
#[test]
fn full_disk_is_found_at_start() {
    let dir = TestDir::new("safety_full_disk");
    let plain = dir.compile("plain.c");
    let mnt = dir.path.join("small_fs");
    let Some(m) = Mount::tmpfs(&mnt, "size=2m") else { return };
    let baseline = run(&mut dir.untraced_command(&plain, &[] as &[&str]));
    let mut cmd = dir.traced_command(&plain, &[] as &[&str], &Settings::exact().file_size("8M"));
    cmd.env("LEAKTRACE_FILE", mnt.join("trace.%p.lt"));
    let out = run(&mut cmd);
    assert_same_behaviour(&out, &baseline, "full disk");
    assert_one_leaktrace_line(&out, &[&mnt.to_string_lossy(), "space"], "full disk");
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "files left on the full file system: {left:?}");
    drop(m);
}

// ---------------------------------------------------------------------------------------------
// 7. Planted links, file mode

/// A symlink planted at a fixed trace path (LEAKTRACE_FILE without %p) must not redirect the
/// write: the victim is unchanged, a dangling link's target is not created, one line on stderr.
/// A planted hard link is not written through either. And a trace created normally is 0600,
/// whatever the umask.
#[test]
fn planted_links_do_not_redirect_the_trace() {
    let dir = TestDir::new("safety_symlink");
    let plain = dir.compile("plain.c");
    let baseline = run(&mut dir.untraced_command(&plain, &[] as &[&str]));
    let victim = dir.path.join("victim");
    let content = b"precious data, must stay as it is\n".repeat(100);
    std::fs::write(&victim, &content).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();

    // A symlink to an existing file.
    let link = dir.path.join("fixed.lt");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut cmd = dir.traced_command(&plain, &[] as &[&str], &Settings::exact());
    cmd.env("LEAKTRACE_FILE", &link);
    let out = run(&mut cmd);
    assert_same_behaviour(&out, &baseline, "symlink planted");
    assert_one_leaktrace_line(&out, &[&link.to_string_lossy()], "symlink planted");
    assert_eq!(std::fs::read(&victim).unwrap(), content, "the symlink's target was written");
    assert_eq!(mode_of(&victim), 0o644, "the symlink's target changed mode");
    assert_eq!(std::fs::read_link(&link).unwrap(), victim, "the planted link was replaced");

    // A dangling symlink: O_CREAT through it would create its target.
    let dangling = dir.path.join("dangling.lt");
    let target = dir.path.join("created_through_link");
    std::os::unix::fs::symlink(&target, &dangling).unwrap();
    let mut cmd = dir.traced_command(&plain, &[] as &[&str], &Settings::exact());
    cmd.env("LEAKTRACE_FILE", &dangling);
    let out = run(&mut cmd);
    assert_same_behaviour(&out, &baseline, "dangling symlink planted");
    assert_one_leaktrace_line(&out, &[&dangling.to_string_lossy()], "dangling symlink planted");
    assert!(std::fs::symlink_metadata(&target).is_err(), "the dangling link's target was created");

    // A hard link to the victim: whatever the preload does, the victim's bytes stay.
    let hard = dir.path.join("hard.lt");
    std::fs::hard_link(&victim, &hard).unwrap();
    let mut cmd = dir.traced_command(&plain, &[] as &[&str], &Settings::exact());
    cmd.env("LEAKTRACE_FILE", &hard);
    let out = run(&mut cmd);
    assert_same_behaviour(&out, &baseline, "hard link planted");
    assert_eq!(std::fs::read(&victim).unwrap(), content, "the trace was written through a planted hard link");

    // A normal trace is 0600 even with umask 000.
    let cmd = dir.traced_command(&plain, &[] as &[&str], &Settings::exact());
    let out = run(&mut via_shell(&cmd, "umask 000"));
    assert_same_behaviour(&out, &baseline, "umask 000");
    assert_no_leaktrace_line(&out);
    let trace = dir.trace_of(out.pid);
    assert!(trace.is_file(), "no trace {}\n{}", trace.display(), out.describe());
    assert_eq!(mode_of(&trace), 0o600, "the trace file's mode with umask 000");
}

// ---------------------------------------------------------------------------------------------
// 8. Secure execution

/// A setgid program (AT_SECURE) with libleaktrace.so loaded (linked in, since the loader drops
/// an LD_PRELOAD path in secure mode) and every LEAKTRACE_* set: no trace file. The same
/// binary without the setgid bit does write one, so the library is live in it.
#[test]
fn secure_execution_is_left_alone() {
    let dir = TestDir::new("safety_secure");
    let release = repo().preload.parent().unwrap().to_string_lossy().into_owned();
    let linked = dir.compile_c_with(
        "plain.c",
        "plain_linked",
        &[&format!("-L{release}"), "-Wl,--no-as-needed", "-lleaktrace", &format!("-Wl,-rpath,{release}")],
    );
    let env_cmd = |exe: &Path| {
        let mut c = dir.traced_command(exe, &["--at-secure"], &Settings::exact());
        c.env_remove("LD_PRELOAD");
        c
    };
    // Control: not secure, the linked library traces.
    let control = run(&mut env_cmd(&linked));
    assert_eq!(control.status.code(), Some(3), "{}", control.describe());
    assert!(control.stdout.starts_with("at_secure 0\n"), "{}", control.describe());
    let control_trace = dir.trace_of(control.pid);
    assert!(control_trace.is_file(), "the linked library must trace a normal run\n{}", control.describe());
    std::fs::remove_file(&control_trace).unwrap();

    let setgid = dir.path.join("plain_setgid");
    std::fs::copy(&linked, &setgid).unwrap();
    let chown = Command::new("chown").arg("0:65534").arg(&setgid).status();
    if !chown.is_ok_and(|s| s.success()) {
        eprintln!("NOTE: cannot chown a file to group 65534; secure-execution test skipped");
        return;
    }
    std::fs::set_permissions(&setgid, std::fs::Permissions::from_mode(0o2755)).unwrap();
    let out = run(&mut env_cmd(&setgid));
    if !out.stdout.starts_with("at_secure 1\n") {
        eprintln!(
            "NOTE: a setgid binary does not run with AT_SECURE here (nosuid mount?); test skipped\n{}",
            out.describe()
        );
        return;
    }
    assert_eq!(out.status.code(), Some(3), "{}", out.describe());
    assert_eq!(out.stdout.lines().skip(1).collect::<Vec<_>>(), control.stdout.lines().skip(1).collect::<Vec<_>>());
    assert_no_leaktrace_line(&out);
    assert!(dir.trace_files().is_empty(), "a secure-execution program was traced: {:?}", dir.trace_files());
}

// ---------------------------------------------------------------------------------------------
// 9. SIGKILL mid-leak, and reading a live trace

fn last_count(stdout: &str) -> u64 {
    stdout.lines().filter_map(|l| l.strip_prefix("leaked ")).rev().find_map(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// One program is SIGKILLed while leaking, without its cooperation: its trace analyses,
/// `ended` is "unknown", and the leak is there with the bytes it had leaked. Another instance
/// is still running while the analyzer reads its trace: valid JSON, "unknown", the leak so far.
#[test]
fn sigkill_mid_leak_and_live_trace() {
    let dir = TestDir::new("safety_sigkill");
    let exe = dir.compile("leak_loop.c");
    let settings = Settings::exact().file_size("64M");
    let mut killed = Background::spawn(&mut dir.traced_command(&exe, &[] as &[&str], &settings));
    let mut live = Background::spawn(&mut dir.traced_command(&exe, &[] as &[&str], &settings));
    killed.wait_for_stdout("leaked 1000\n", Duration::from_secs(20));
    live.wait_for_stdout("leaked 1000\n", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));

    killed.signal(9);
    let out = killed.wait(Duration::from_secs(10));
    assert_eq!(out.status.signal(), Some(9), "{}", out.describe());
    let printed = last_count(&out.stdout);
    let report = report_for(&dir, &dir.trace_of(out.pid));
    assert_eq!(report.str("/process/ended"), "unknown", "{}", report.context);
    let sites = report.sites_allocated_in("leak_forever");
    let (bytes, count) = report.exact_sum(&sites);
    // Everything printed had been leaked; at most the next batch of 100 was under way.
    if count < printed || count > printed + 100 || bytes != count * 1000 {
        report.fail(format!(
            "leak_forever: {bytes} bytes in {count} blocks; the program had printed {printed} blocks of 1000 bytes"
        ));
    }

    // The other one is still running: read its trace now.
    assert!(live.is_running(), "the second instance must still be running");
    let before = last_count(&live.stdout_now());
    let trace = dir.trace_of(live.pid);
    let mut counts = Vec::new();
    for round in 0..2 {
        let a = analyze(
            &[OsString::from("report"), trace.clone().into(), "--format".into(), "json".into()],
            ANALYZE_TIMEOUT,
        );
        assert!(a.status.success(), "report on a live trace failed\n{}", a.describe());
        let json: Value =
            serde_json::from_str(&a.stdout).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", a.describe()));
        let r = Report::typed(json, format!("live trace {}, round {round}\n{}", trace.display(), a.describe()));
        r.check_invariants();
        assert_eq!(r.str("/process/ended"), "unknown", "{}", r.context);
        let (b, c) = r.exact_sum(&r.sites_allocated_in("leak_forever"));
        if c < before || b != c * 1000 {
            r.fail(format!("live: {b} bytes in {c} blocks, but the program had already printed {before}"));
        }
        counts.push(c);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(counts[1] > counts[0], "the live trace grows between two reads: {counts:?}");
    let info = analyze(&[OsString::from("info"), trace.into()], ANALYZE_TIMEOUT);
    assert!(info.status.success() && !info.stdout.is_empty(), "info on a live trace\n{}", info.describe());
    assert!(live.is_running(), "reading the trace must not disturb the process");
    live.signal(9);
    let _ = live.wait(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// 10. Long-run bounds

/// 6 s of churn with a 1 MiB trace and RSS every 10 ms: the file is exactly 1 MiB while running
/// and after; the RSS series covers the whole run in at most 4096 points; the early leak
/// survives the ring's wraps.
#[test]
fn file_and_rss_series_stay_bounded() {
    let dir = TestDir::new("safety_long_run");
    let exe = dir.compile("churn.c");
    let mut settings = Settings::exact().file_size("1M");
    settings.rss_ms = 10;
    let started = Instant::now();
    let mut bg = Background::spawn(&mut dir.traced_command(&exe, &["6"], &settings));
    let trace = dir.trace_of(bg.pid);
    let mut sizes = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1000));
        if let Ok(md) = std::fs::metadata(&trace) {
            sizes.push(md.len());
        }
    }
    assert!(bg.is_running(), "6 s of churn still running after 5 s");
    let out = bg.wait(RUN_TIMEOUT);
    let wall = started.elapsed();
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    sizes.push(std::fs::metadata(&trace).unwrap().len());
    assert!(
        sizes.len() >= 5 && sizes.iter().all(|&s| s == 1 << 20),
        "the trace's size over the run: {sizes:?}; expected 1 MiB throughout"
    );

    let json = out.json_line();
    let report = report_for(&dir, &trace);
    report.assert_exact("early_leak", get_u64(&json, "/sites/early_leak/bytes"), 4);
    report.assert_not_leaking(&not_leaking(&json));
    let rss = report.at("/rss").as_array().cloned().unwrap_or_default();
    let t: Vec<u64> = rss.iter().filter_map(|s| s["t_ns"].as_u64()).collect();
    let duration = report.int("/process/duration_ns");
    if t.len() != rss.len() || t.len() < 2 || t.len() > 4096 {
        report.fail(format!("the RSS series has {} points ({} with t_ns); expected 2..=4096", rss.len(), t.len()));
    }
    if t.windows(2).any(|w| w[0] > w[1]) {
        report.fail("the RSS series is out of order");
    }
    let (first, last) = (t[0], *t.last().unwrap());
    if first > 200_000_000 || duration < 5_500_000_000 || last + 300_000_000 < duration {
        report.fail(format!(
            "the RSS series spans {first}..{last} ns of a {duration} ns run ({wall:?} wall): it must cover the whole run"
        ));
    }
    eprintln!("RSS series: {} points over {:.2} s (LEAKTRACE_RSS_MS=10)", t.len(), duration as f64 / 1e9);
}

/// LEAKTRACE_RSS_MS=10 gives an RSS sample about every 10 ms (until the series is halved, which
/// takes 4096 samples). The program has one thread, so no thread of ours takes the samples: its
/// allocations do, when one is due. churn.c allocates in rounds (a burst, then 10 ms of sleep),
/// so it gets a sample per round, at most one per 10 ms.
#[test]
fn rss_interval_is_honoured() {
    let dir = TestDir::new("safety_rss_interval");
    let exe = dir.compile("churn.c");
    let mut settings = Settings::exact().file_size("1M");
    settings.rss_ms = 10;
    let out = run(&mut dir.traced_command(&exe, &["1.5"], &settings));
    assert_success(&out);
    let rounds = get_u64(&out.json_line(), "/rounds") as f64;
    let report = report_for(&dir, &dir.trace_of(out.pid));
    let points = report.at("/rss").as_array().map_or(0, |a| a.len()) as f64;
    let expected = (report.num("/process/duration_ns") / 10e6).min(rounds);
    if points < 0.8 * expected {
        report.fail(format!(
            "{points} RSS samples over a run of {rounds} allocation rounds that should have about {expected:.0} at 10 ms"
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Runtime control

fn ctl(trace: &Path, args: &[&str]) -> Outcome {
    let mut a: Vec<OsString> = vec!["ctl".into(), trace.into()];
    a.extend(args.iter().map(OsString::from));
    analyze(&a, ANALYZE_TIMEOUT)
}

/// `ctl` to a program that is waiting for a flag file, so not allocating: the request is
/// pending (`--wait 0` does not wait for an answer that cannot come yet), and the program's next
/// allocation acts on it before anything is recorded. No sleep needed.
fn ctl_pending(trace: &Path, args: &[&str]) {
    let mut a = vec!["--wait", "0"];
    a.extend_from_slice(args);
    let c = ctl(trace, &a);
    assert!(c.status.success(), "ctl {args:?}\n{}", c.describe());
    assert!(c.stdout.contains("requested"), "ctl {args:?} to an idle program is pending\n{}", c.describe());
}

/// LEAKTRACE_START=off, then `ctl --resume`: only what was allocated after the resume is there.
#[test]
fn ctl_resume_after_dormant_start() {
    let dir = TestDir::new("safety_ctl_resume");
    let exe = dir.compile("ctl_prog.c");
    let (f1, f2) = (dir.path.join("flag1"), dir.path.join("flag2"));
    let mut settings = Settings::exact();
    settings.start = "off".into();
    let mut bg = Background::spawn(&mut dir.traced_command(&exe, &[&f1, &f2], &settings));
    bg.wait_for_stdout("phase 1 done", Duration::from_secs(20));
    let trace = dir.trace_of(bg.pid);
    ctl_pending(&trace, &["--resume"]);
    std::fs::write(&f1, b"").unwrap();
    bg.wait_for_stdout("phase 2 done", Duration::from_secs(20));
    std::fs::write(&f2, b"").unwrap();
    let out = bg.wait(RUN_TIMEOUT);
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let report = report_for(&dir, &trace);
    assert_absent(&report, "phase_one", "it ran while tracing was dormant (LEAKTRACE_START=off)");
    report.assert_exact("phase_two", 100_000, 1000);
    report.assert_exact("phase_three", 100_000, 1000);
}

/// `ctl --pause` stops recording; `ctl --resume` starts it again, exactly.
#[test]
fn ctl_pause_and_resume() {
    let dir = TestDir::new("safety_ctl_pause");
    let exe = dir.compile("ctl_prog.c");
    let (f1, f2) = (dir.path.join("flag1"), dir.path.join("flag2"));
    let mut bg = Background::spawn(&mut dir.traced_command(&exe, &[&f1, &f2], &Settings::exact()));
    bg.wait_for_stdout("phase 1 done", Duration::from_secs(20));
    let trace = dir.trace_of(bg.pid);
    ctl_pending(&trace, &["--pause"]);
    std::fs::write(&f1, b"").unwrap();
    bg.wait_for_stdout("phase 2 done", Duration::from_secs(20));
    ctl_pending(&trace, &["--resume"]);
    std::fs::write(&f2, b"").unwrap();
    let out = bg.wait(RUN_TIMEOUT);
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let report = report_for(&dir, &trace);
    report.assert_exact("phase_one", 100_000, 1000);
    assert_absent(&report, "phase_two", "it ran after ctl --pause");
    report.assert_exact("phase_three", 100_000, 1000);
}

/// Started with a mean of 64 MiB: `ctl --sample-bytes 1` makes the next phase exact from its
/// first allocation. The sampling change is in the report.
#[test]
fn ctl_sample_bytes_applies_at_once() {
    let dir = TestDir::new("safety_ctl_sample");
    let exe = dir.compile("ctl_prog.c");
    let (f1, f2) = (dir.path.join("flag1"), dir.path.join("flag2"));
    let mut settings = Settings::exact();
    settings.sample_bytes = "64M".into();
    let mut bg = Background::spawn(&mut dir.traced_command(&exe, &[&f1, &f2], &settings));
    bg.wait_for_stdout("phase 1 done", Duration::from_secs(20));
    let trace = dir.trace_of(bg.pid);
    ctl_pending(&trace, &["--sample-bytes", "1"]);
    std::fs::write(&f1, b"").unwrap();
    bg.wait_for_stdout("phase 2 done", Duration::from_secs(20));
    std::fs::write(&f2, b"").unwrap();
    let out = bg.wait(RUN_TIMEOUT);
    assert_success(&out);
    assert_no_leaktrace_line(&out);
    let report = report_for(&dir, &trace);
    report.assert_exact("phase_two", 100_000, 1000);
    report.assert_exact("phase_three", 100_000, 1000);
    let changes = report.at("/sampling/changes").as_array().cloned().unwrap_or_default();
    if !changes.iter().any(|c| c["mean_bytes"].as_u64() == Some(1) && c["t_ns"].as_u64().is_some_and(|t| t > 0)) {
        report.fail(format!("sampling.changes does not record the switch to 1 byte: {changes:?}"));
    }
}

/// ctl on things that are not a writable trace (a directory, text, a missing file, a trace the
/// caller may not write): exit code 2, one line, the file untouched.
#[test]
fn ctl_refuses_what_is_not_a_trace() {
    let dir = TestDir::new("safety_ctl_refuse");
    let text = dir.path.join("notes.txt");
    let content = b"just some text, not a trace\n".repeat(400);
    std::fs::write(&text, &content).unwrap();
    let short = dir.path.join("short.txt");
    std::fs::write(&short, b"LKTRACE\0").unwrap();
    for (target, args) in [
        (dir.path.clone(), &["--pause"][..]),
        (text.clone(), &["--pause"][..]),
        (text.clone(), &["--sample-bytes", "1"][..]),
        (short.clone(), &["--resume"][..]),
        (dir.path.join("missing.lt"), &["--resume"][..]),
        (PathBuf::from("/proc/self/status"), &["--pause"][..]),
    ] {
        let out = ctl(&target, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "ctl {} {args:?} must fail with 2\n{}",
            target.display(),
            out.describe()
        );
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("leak-analyze:"),
            "ctl {}: expected one `leak-analyze:` line\n{}",
            target.display(),
            out.describe()
        );
    }
    assert_eq!(std::fs::read(&text).unwrap(), content, "ctl wrote into a file that is not a trace");

    // A real trace the caller cannot write (0600, root's): run ctl as nobody.
    let plain = dir.compile("plain.c");
    let out = run(&mut dir.traced_command(&plain, &[] as &[&str], &Settings::exact().file_size("1M")));
    let trace = dir.trace_of(out.pid);
    assert!(trace.is_file(), "{}", out.describe());
    let before = std::fs::read(&trace).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&repo().analyzer)
        .arg("ctl")
        .arg(&trace)
        .arg("--pause");
    let out = run_command(&mut cmd, ANALYZE_TIMEOUT);
    if out.stderr.starts_with("setpriv:") {
        eprintln!("NOTE: cannot run as nobody here ({}); the unwritable-trace case is skipped", out.stderr.trim());
    } else {
        assert_eq!(out.status.code(), Some(2), "ctl by a user who cannot write the trace\n{}", out.describe());
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("leak-analyze:"),
            "one `leak-analyze:` line\n{}",
            out.describe()
        );
        assert!(std::fs::read(&trace).unwrap() == before, "the trace changed");
    }
    assert_eq!(std::fs::read(&short).unwrap(), b"LKTRACE\0", "ctl wrote into a file that is not a trace");
    assert!(!dir.path.join("missing.lt").exists(), "ctl created a file");
}

// ---------------------------------------------------------------------------------------------
// 12. Hostile analyzer input

/// Run `leak-analyze report X --format json` and `info X` under a 4 GiB address-space limit (an
/// allocation sized from a number in the file fails rather than swapping): each exits 0 with a
/// partial report, or 2 with one `leak-analyze:` line; never a panic, within a few seconds.
/// Returns whether `report` succeeded.
fn hostile(dir: &TestDir, label: &str, file: &Path, partial_if_ok: bool) -> bool {
    let mut ok = false;
    for sub in ["report", "info"] {
        let mut cmd = Command::new(&repo().analyzer);
        cmd.arg(sub).arg(file);
        if sub == "report" {
            cmd.args(["--format", "json"]);
        }
        let mut sh = via_shell(&cmd, "ulimit -v 4194304");
        let out = run_command(&mut sh, ANALYZE_TIMEOUT);
        let what = format!("{label}: leak-analyze {sub} {}", file.display());
        assert!(!out.stderr.contains("panicked"), "{what} panicked\n{}", out.describe());
        assert!(out.elapsed < Duration::from_secs(5), "{what} took {:?}", out.elapsed);
        match out.status.code() {
            Some(0) => {
                if sub == "report" {
                    let json: Value = serde_json::from_str(&out.stdout)
                        .unwrap_or_else(|e| panic!("{what}: exit 0 but not JSON ({e})\n{}", out.describe()));
                    if partial_if_ok {
                        assert_eq!(
                            json["partial"],
                            Value::Bool(true),
                            "{what}: a damaged trace's report must say partial\n{}",
                            out.describe()
                        );
                    }
                    let _ = std::fs::write(dir.path.join(format!("{label}.report.json")), &out.stdout);
                    ok = true;
                } else {
                    assert!(!out.stdout.is_empty(), "{what}: exit 0 with nothing on stdout\n{}", out.describe());
                    if partial_if_ok {
                        assert!(
                            out.stdout.contains("DAMAGED"),
                            "{what}: info must say the file is damaged\n{}",
                            out.describe()
                        );
                    }
                }
            }
            Some(2) => {
                let lines: Vec<&str> = out.stderr.lines().collect();
                assert!(
                    lines.len() == 1 && lines[0].starts_with("leak-analyze:"),
                    "{what}: exit 2 must come with exactly one `leak-analyze:` line\n{}",
                    out.describe()
                );
                assert!(
                    out.stdout.is_empty() || sub == "info",
                    "{what}: partial output before the error\n{}",
                    out.describe()
                );
            }
            _ => panic!("{what}: exit status {} (expected 0 or 2)\n{}", out.status, out.describe()),
        }
    }
    ok
}

#[test]
fn hostile_files_give_an_error_or_a_partial_report() {
    let dir = TestDir::new("safety_hostile");
    let plain = dir.compile("plain.c");
    let out = run(&mut dir.traced_command(&plain, &[] as &[&str], &Settings::exact().file_size("1M")));
    assert_eq!(out.status.code(), Some(3));
    let trace = dir.trace_of(out.pid);
    let real = std::fs::read(&trace).unwrap();
    assert_eq!(real.len(), 1 << 20);
    let h = dir.path.join("hostile");
    std::fs::create_dir_all(&h).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = h.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let patch = |name: &str, at: usize, bytes: &[u8]| {
        let mut v = real.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        write(name, &v)
    };

    // Not a trace at all: must be refused.
    hostile(&dir, "missing", &h.join("does-not-exist.lt"), false);
    hostile(&dir, "directory", &h, false);
    let empty = write("empty.lt", b"");
    assert!(!hostile(&dir, "empty", &empty, false), "an empty file is not a trace");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..100)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let rnd = write("random100.lt", &random);
    assert!(!hostile(&dir, "random100", &rnd, false), "100 random bytes are not a trace");

    // Truncated: an error, or a report marked partial.
    for cut in [100, 4096, real.len() / 2] {
        let p = write(&format!("truncated_{cut}.lt"), &real[..cut]);
        let ok = hostile(&dir, &format!("truncated_{cut}"), &p, true);
        if cut < 4096 {
            assert!(!ok, "a trace cut inside its header cannot be reported");
        }
    }
    // A newer major version: refused, not misread.
    let v2 = patch("version2.lt", 8, &2u16.to_le_bytes());
    assert!(!hostile(&dir, "version_major_2", &v2, false), "format version 2.x must be refused by a 1.x reader");
    // A header that claims 32 TiB: an error or a partial report, no 32 TiB allocation.
    let huge = patch("file_size_2_45.lt", 16, &(1u64 << 45).to_le_bytes());
    hostile(&dir, "file_size_2^45", &huge, true);
    // Layout fields pointing far past the end: an error or a partial report.
    for (label, at, value) in [
        ("live_capacity_huge", 160, 1u64 << 60),
        ("ring_capacity_huge", 168, 1u64 << 60),
        ("region0_offset_huge", 64, 1u64 << 50),
        ("region2_offset_huge", 64 + 2 * 16, 1u64 << 50),
        ("region4_size_huge", 64 + 4 * 16 + 8, 1u64 << 50),
    ] {
        let p = patch(&format!("{label}.lt"), at, &value.to_le_bytes());
        hostile(&dir, label, &p, true);
    }
    // Counters past their region: writers overshoot them transiently (reserve, then give back
    // when full), so a reader may clamp them; it must still neither panic nor over-allocate.
    for (label, at, value) in [
        ("ring_head_max", 288, u64::MAX),
        ("meta_used_huge", 304, 1u64 << 50),
        ("stacks_used_huge", 312, 1u64 << 50),
        ("rss_count_huge", 344, 1u64 << 50),
        ("live_count_huge", 320, u64::MAX),
    ] {
        let p = patch(&format!("{label}.lt"), at, &value.to_le_bytes());
        hostile(&dir, label, &p, false);
    }
}
