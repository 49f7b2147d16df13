//! `leak-analyze attach` and `detach` (issue 13): a service started without the preload is
//! traced from the moment of the attach, given its allocator back at the detach, and never
//! notices either: no corrupted block, no EINTR, the same output and exit status.
//!
//! The target (`tests/programs/attach_target.c`) has 4 churning threads that check a pattern in
//! every block before freeing it, threads parked in epoll_wait, nanosleep, read, accept and a
//! condition variable, and a main thread that leaks on command, so the test knows exactly how
//! much it leaked while attached.
//!
//! Needs ptrace rights over a child (root, or kernel.yama.ptrace_scope 0 or 1 for a child of
//! ours: attach uses the caller's rights, and the target is the test's child).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use leaktrace_tests::{analyze, report_of, Outcome, TestDir};

const WAIT: Duration = Duration::from_secs(30);

/// The target, running, with a line-by-line conversation on its stdin and stdout.
struct Service {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pid: u32,
}

impl Service {
    fn start(exe: &Path, mode: &str) -> Service {
        let mut cmd = Command::new(exe);
        cmd.arg(mode);
        Service::spawn(cmd)
    }

    /// Start `cmd`, which runs the target (itself, or through a wrapper that execs it).
    fn spawn(mut cmd: Command) -> Service {
        let exe = PathBuf::from(cmd.get_program());
        let mut child = cmd
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Service { child, stdin, lines, pid: 0 };
        // The target's own pid: a wrapper may have forked it.
        let ready = s.expect("ready");
        s.pid = ready.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("ready PID");
        s
    }

    /// The next line, which must start with `prefix`.
    fn expect(&mut self, prefix: &str) -> String {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no line from the target ({e}); wanted {prefix:?}"));
        assert!(line.starts_with(prefix), "the target said {line:?}, wanted {prefix:?}");
        line
    }

    fn ask(&mut self, command: &str, answer: &str) -> String {
        writeln!(self.stdin, "{command}").expect("the target's stdin");
        self.stdin.flush().unwrap();
        self.expect(answer)
    }

    /// Quit; the JSON line and the exit status.
    fn quit(mut self) -> (serde_json::Value, std::process::ExitStatus) {
        let _ = writeln!(self.stdin, "quit");
        let line = self.expect("{");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "the target did not exit after quit");
            std::thread::sleep(Duration::from_millis(5));
        };
        (serde_json::from_str(&line).unwrap(), status)
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attach(pid: u32, args: &[&str]) -> Outcome {
    let mut all = vec!["attach".to_string(), pid.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    analyze(&all, WAIT)
}

fn detach(pid: u32) -> Outcome {
    analyze(&["detach".to_string(), pid.to_string()], WAIT)
}

/// The trace path: the last line of stdout.
fn trace_of(out: &Outcome) -> PathBuf {
    assert!(out.status.success(), "attach/detach failed\n{}", out.describe());
    PathBuf::from(out.stdout.lines().last().unwrap_or_else(|| panic!("no output\n{}", out.describe())))
}

/// The stop time attach reports ("stopped for 12.3 ms").
fn stop_ms(out: &Outcome) -> f64 {
    let text = &out.stdout;
    let at = text.find("stopped for ").unwrap_or_else(|| panic!("no stop time\n{}", out.describe())) + 12;
    text[at..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn attach_in_exact_mode_counts_what_leaked_between_attach_and_detach() {
    let dir = TestDir::new("attach_exact");
    let exe = dir.compile("attach_target.c");
    let mut svc = Service::start(&exe, "read");
    svc.ask("leak 300", "leaked 300"); // before the attach: unknown to the trace
    let pattern = dir.path.join("att.%p.lt");
    let out = attach(svc.pid, &["-o", pattern.to_str().unwrap(), "--sample-bytes", "1", "--rss-ms", "100"]);
    let trace = trace_of(&out);
    assert_eq!(trace, dir.path.join(format!("att.{}.lt", svc.pid)), "{}", out.describe());
    assert!(stop_ms(&out) < 500.0, "the thread stopped too long\n{}", out.describe());
    for _ in 0..10 {
        svc.ask("leak 20", "leaked 20");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = detach(svc.pid);
    assert_eq!(trace_of(&out), trace, "{}", out.describe());
    svc.ask("leak 50", "leaked 50"); // after the detach: not traced
    let (result, status) = svc.quit();
    assert_eq!(result["bad"], 0, "a block was corrupted: {result}");
    assert_eq!(result["eintr"], 0, "a wait surfaced EINTR: {result}");
    assert_eq!(result["leaked"], 550);
    assert!(status.success(), "the target exited {status}");

    let report = report_of(&trace, &dir.path.join("report.json"));
    report.check_invariants();
    assert_eq!(report.str("/process/ended"), "detached");
    assert_eq!(report.at("/process/attached"), &serde_json::Value::Bool(true));
    // 200 entries of 128 bytes, exactly, and no more: the 300 before and 50 after are unknown.
    report.assert_exact("remember_request", 200 * 128, 200);
    let site = &report.sites_allocated_in("remember_request")[0];
    let frame = &site.frames()[0];
    assert!(
        frame["file"].as_str().is_some_and(|f| f.ends_with("attach_target.c")) && frame["line"].as_u64().is_some(),
        "frames[0] has no file:line: {frame}"
    );
    assert!(site.json["growing"].as_bool() == Some(true), "the leak is not growing: {}", report.site_summary());
    // The churning threads hold up to 32 blocks each at any moment: some unfreed, none growing.
    for site in report.sites_allocated_in("churn") {
        assert!(site.json["growing"].as_bool() != Some(true), "churn reported growing: {}", report.site_summary());
    }
    let info = analyze(&["info".into(), trace.display().to_string()], WAIT);
    assert!(info.stdout.contains("attached to the running process"), "{}", info.describe());
    assert!(info.stdout.contains("detached at"), "{}", info.describe());
}

#[test]
fn twenty_attach_detach_cycles_leave_the_service_unharmed() {
    let dir = TestDir::new("attach_cycles");
    let exe = dir.compile("attach_target.c");
    // epoll_wait is the wait that returns EINTR after a ptrace stop unless it is rewound.
    for mode in ["epoll", "sleep"] {
        let mut svc = Service::start(&exe, mode);
        let cycles = if mode == "epoll" { 20 } else { 5 };
        let mut stops = Vec::new();
        for i in 0..cycles {
            let pattern = dir.path.join(format!("{mode}.{i}.%p.lt"));
            let out = attach(svc.pid, &["-o", pattern.to_str().unwrap(), "--file-size", "2M"]);
            let trace = trace_of(&out);
            stops.push(stop_ms(&out));
            svc.ask("leak 10", "leaked 10");
            std::thread::sleep(Duration::from_millis(30));
            let out = detach(svc.pid);
            assert_eq!(trace_of(&out), trace, "{}", out.describe());
            assert!(svc.is_running(), "the target died in cycle {i}");
            std::fs::remove_file(&trace).unwrap();
        }
        let (result, status) = svc.quit();
        assert_eq!(result["bad"], 0, "{mode}: a block was corrupted: {result}");
        assert_eq!(result["eintr"], 0, "{mode}: a wait surfaced EINTR: {result}");
        assert!(status.success(), "{mode}: the target exited {status}");
        stops.sort_by(f64::total_cmp);
        eprintln!(
            "{mode}: attach stop times (ms): median {:.1}, max {:.1}",
            stops[stops.len() / 2],
            stops[stops.len() - 1]
        );
    }
}

#[test]
fn a_library_loaded_after_the_attach_is_traced_and_a_forked_child_gets_its_own_trace() {
    let dir = TestDir::new("attach_dlopen_fork");
    let exe = dir.compile("attach_target.c");
    let plugin = dir.path.join("libplugin.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(cc)
        .args(["-shared", "-fPIC", "-g", "-O0", "-o"])
        .arg(&plugin)
        .arg(leaktrace_tests::repo().programs.join("plugin.c"))
        .status()
        .unwrap();
    assert!(built.success());
    let mut svc = Service::start(&exe, "poll");
    let pattern = dir.path.join("att.%p.lt");
    let trace = trace_of(&attach(svc.pid, &["-o", pattern.to_str().unwrap(), "--sample-bytes", "1"]));
    svc.ask(&format!("dlopen {}", plugin.display()), "dlopen ok");
    // Housekeeping redirects the new object's GOT within a tick (50 ms).
    std::thread::sleep(Duration::from_millis(300));
    svc.ask("plugin 5", "plugin 21605");
    let forked = svc.ask("fork", "forked");
    let child: u32 = forked.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(forked.ends_with(" 0"), "the child failed: {forked}");
    let out = detach(svc.pid);
    trace_of(&out);
    let (result, status) = svc.quit();
    assert!(status.success() && result["bad"] == 0 && result["eintr"] == 0, "{result} {status}");

    let report = report_of(&trace, &dir.path.join("report.json"));
    report.assert_exact("plugin_leak", 5 * 4321, 5);
    let site = &report.sites_allocated_in("plugin_leak")[0];
    assert!(
        site.frames()[0]["module"].as_str().is_some_and(|m| m.ends_with("libplugin.so")),
        "plugin frame not named: {}",
        report.site_summary()
    );
    // The child forked while attached traces itself, like a preloaded child: its own file.
    let child_trace = dir.path.join(format!("att.{child}.lt"));
    let child_report = report_of(&child_trace, &dir.path.join("child.json"));
    child_report.assert_exact("remember_request", 7 * 128, 7);
    // It left with _exit: no exit handlers, so the trace cannot say it ended cleanly.
    assert_eq!(child_report.str("/process/ended"), "unknown");
    assert_eq!(child_report.at("/process/attached"), &serde_json::Value::Bool(true));
}

#[test]
fn attach_refuses_what_cannot_work_and_leaves_the_process_running() {
    let dir = TestDir::new("attach_refusals");
    let exe = dir.compile("attach_target.c");

    let refused = |out: &Outcome, needle: &str| {
        assert_eq!(out.status.code(), Some(2), "not refused with exit 2\n{}", out.describe());
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.starts_with("note:")).collect();
        assert_eq!(lines.len(), 1, "not one line\n{}", out.describe());
        assert!(lines[0].contains(needle), "the reason does not say {needle:?}\n{}", out.describe());
    };

    // No such process.
    refused(&attach(4_000_000, &[]), "no process 4000000");

    // A statically linked program.
    let static_src = dir.path.join("static_sleeper.c");
    std::fs::write(&static_src, "#include <unistd.h>\nint main(void){ for(;;) sleep(1); }\n").unwrap();
    let static_exe = dir.path.join("static_sleeper");
    let built = Command::new("cc").args(["-static", "-O1", "-o"]).arg(&static_exe).arg(&static_src).status().unwrap();
    assert!(built.success(), "cannot build a static program (libc6-dev has libc.a)");
    let mut sleeper = Command::new(&static_exe).spawn().unwrap();
    refused(&attach(sleeper.id(), &[]), "statically linked");
    assert!(sleeper.try_wait().unwrap().is_none(), "the static program died");
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // A process traced already by the preload.
    let mut preloaded = Command::new(&exe)
        .arg("read")
        .env("LD_PRELOAD", &leaktrace_tests::repo().preload)
        .env("LEAKTRACE_FILE", dir.path.join("pre.%p.lt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pre_out = BufReader::new(preloaded.stdout.take().unwrap());
    let mut line = String::new();
    pre_out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "{line}");
    refused(&attach(preloaded.id(), &[]), "traced by leaktrace already");
    let _ = preloaded.kill();
    let _ = preloaded.wait();

    // A second attach, and a detach of a process never attached.
    let mut svc = Service::start(&exe, "read");
    refused(&detach(svc.pid), "is not attached");
    let pattern = dir.path.join("att.%p.lt");
    trace_of(&attach(svc.pid, &["-o", pattern.to_str().unwrap()]));
    refused(&attach(svc.pid, &["-o", pattern.to_str().unwrap()]), "attached already");
    svc.ask("leak 1", "leaked 1");
    trace_of(&detach(svc.pid));

    // A process some debugger holds: the test itself seizes it.
    // SAFETY: PTRACE_SEIZE of our own child, with no options; it keeps running.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, svc.pid as libc::pid_t, 0, 0) };
    assert_eq!(rc, 0, "cannot seize the target: {}", std::io::Error::last_os_error());
    refused(&attach(svc.pid, &[]), "already traced by process");
    svc.ask("leak 1", "leaked 1");
    assert!(svc.is_running());
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The mappings of `path` in the process, as (start, perms) pairs.
fn mappings_of(pid: u32, path: &Path) -> Vec<(String, String)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let path = path.to_str().unwrap();
    maps.lines()
        .filter(|l| l.ends_with(path))
        .map(|l| {
            let mut f = l.split_whitespace();
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect()
}

#[test]
fn a_full_relro_program_keeps_its_got_read_only_and_is_traced_exactly() {
    let dir = TestDir::new("attach_relro");
    let exe = dir.path.join("attach_target_now");
    let built = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-g", "-O0", "-pthread", "-Wl,-z,relro,-z,now", "-o"])
        .arg(&exe)
        .arg(leaktrace_tests::repo().programs.join("attach_target.c"))
        .status()
        .unwrap();
    assert!(built.success());
    let mut svc = Service::start(&exe, "read");
    let before = mappings_of(svc.pid, &exe);
    assert!(before.iter().any(|(_, perms)| perms == "r--p"), "no read-only mapping (RELRO): {before:?}");
    let pattern = dir.path.join("att.%p.lt");
    let trace = trace_of(&attach(svc.pid, &["-o", pattern.to_str().unwrap(), "--sample-bytes", "1"]));
    assert_eq!(mappings_of(svc.pid, &exe), before, "the attach left the program's protections changed");
    svc.ask("leak 40", "leaked 40");
    trace_of(&detach(svc.pid));
    assert_eq!(mappings_of(svc.pid, &exe), before, "the detach left the program's protections changed");
    let (result, status) = svc.quit();
    assert!(status.success() && result["bad"] == 0 && result["eintr"] == 0, "{result} {status}");
    report_of(&trace, &dir.path.join("report.json")).assert_exact("remember_request", 40 * 128, 40);
}

#[test]
fn another_user_is_refused_with_the_reason_and_a_user_attaches_to_its_own_process() {
    if !is_root() {
        eprintln!("note: not root: cannot run the analyzer as another user; skipped");
        return;
    }
    let dir = TestDir::new("attach_users");
    let exe = dir.compile("attach_target.c");
    std::fs::set_permissions(&dir.path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let as_nobody = |args: &[String]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
            .arg(&leaktrace_tests::repo().analyzer)
            .args(args);
        leaktrace_tests::run_command(&mut cmd, WAIT)
    };
    // A root process: refused, saying whose it is.
    let mut root_svc = Service::start(&exe, "read");
    let out = as_nobody(&["attach".into(), root_svc.pid.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(out.stderr.contains("runs as user 0, you are user 65534"), "{}", out.describe());
    root_svc.ask("leak 1", "leaked 1");
    assert!(root_svc.is_running());

    // nobody's own process, attached by nobody: no privilege needed beyond ptrace's own rule.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"]).arg(&exe).arg("epoll");
    let mut svc = Service::spawn(cmd);
    // A directory the process's user cannot write: refused before it is touched, saying so.
    let private = dir.path.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = attach(svc.pid, &["-o", private.join("t.%p.lt").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(out.stderr.contains("runs as user 65534, which cannot write to"), "{}", out.describe());
    svc.ask("leak 1", "leaked 1");
    let pattern = dir.path.join("nobody.%p.lt");
    let out = as_nobody(&[
        "attach".into(),
        svc.pid.to_string(),
        "-o".into(),
        pattern.display().to_string(),
        "--sample-bytes".into(),
        "1".into(),
    ]);
    let trace = trace_of(&out);
    svc.ask("leak 12", "leaked 12");
    trace_of(&as_nobody(&["detach".into(), svc.pid.to_string()]));
    svc.ask("leak 3", "leaked 3");
    let (result, status) = svc.quit();
    assert!(status.success() && result["eintr"] == 0, "{result} {status}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&trace).unwrap().uid(), 65534, "the trace is not the process's user's");
    report_of(&trace, &dir.path.join("report.json")).assert_exact("remember_request", 12 * 128, 12);
}

#[test]
fn a_process_in_another_mount_namespace_gets_a_copy_of_the_library_it_cannot_see() {
    if !is_root() {
        eprintln!("note: not root: cannot make a mount namespace; skipped");
        return;
    }
    let dir = TestDir::new("attach_namespace");
    let exe = dir.compile("attach_target.c");
    let lib_dir = leaktrace_tests::repo().preload.parent().unwrap().to_path_buf();
    // The target's namespace hides the directory the library is in (its /tmp stays: a checkout
    // under /tmp would hide the target itself).
    let script = format!("mount -t tmpfs none {} && exec {} read", lib_dir.display(), exe.display());
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", &script]);
    let mut svc = Service::spawn(cmd);
    // Twice: the second attach reuses the copy the process has mapped (never rewrites it).
    let mut shown = Vec::new();
    for round in 0..2 {
        let pattern = dir.path.join(format!("ns{round}.%p.lt"));
        let out = attach(svc.pid, &["-o", pattern.to_str().unwrap(), "--sample-bytes", "1"]);
        let path = trace_of(&out);
        assert!(
            path.starts_with(format!("/proc/{}/root", svc.pid)),
            "the path is not given through the process's root\n{}",
            out.describe()
        );
        let copies: Vec<String> = std::fs::read_dir(format!("/proc/{}/root/tmp", svc.pid))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&format!("libleaktrace-{}-", svc.pid)))
            .collect();
        assert_eq!(copies.len(), 1, "not one copy of the library in the process's /tmp: {copies:?}");
        svc.ask("leak 9", "leaked 9");
        trace_of(&detach(svc.pid));
        shown.push(path);
    }
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", svc.pid)).unwrap();
    for copy in std::fs::read_dir(format!("/proc/{}/root/tmp", svc.pid)).unwrap().filter_map(|e| e.ok()) {
        if copy.file_name().to_string_lossy().starts_with(&format!("libleaktrace-{}-", svc.pid)) {
            let _ = std::fs::remove_file(copy.path());
        }
    }
    let loaded: std::collections::BTreeSet<&str> =
        maps.lines().filter(|l| l.contains("libleaktrace")).filter_map(|l| l.split_whitespace().nth(4)).collect();
    assert_eq!(loaded.len(), 1, "the library is loaded more than once: {maps}");
    let (result, status) = svc.quit();
    assert!(status.success() && result["eintr"] == 0 && result["bad"] == 0, "{result} {status}");
    // The test directory is the same in both namespaces.
    for path in shown {
        let trace = dir.path.join(path.file_name().unwrap());
        report_of(&trace, &dir.path.join("report.json")).assert_exact("remember_request", 9 * 128, 9);
    }
}

#[test]
fn a_dormant_attach_traces_from_the_ctl_resume() {
    let dir = TestDir::new("attach_dormant");
    let exe = dir.compile("attach_target.c");
    let mut svc = Service::start(&exe, "poll");
    let pattern = dir.path.join("att.%p.lt");
    let trace = trace_of(&attach(svc.pid, &["-o", pattern.to_str().unwrap(), "--sample-bytes", "1", "--start", "off"]));
    svc.ask("leak 5", "leaked 5"); // dormant: passes through
    let ctl = analyze(&["ctl".into(), trace.display().to_string(), "--resume".into()], WAIT);
    assert!(ctl.status.success() && ctl.stdout.contains("applied"), "{}", ctl.describe());
    svc.ask("leak 7", "leaked 7");
    trace_of(&detach(svc.pid));
    let (result, status) = svc.quit();
    assert!(status.success() && result["eintr"] == 0 && result["bad"] == 0, "{result} {status}");
    report_of(&trace, &dir.path.join("report.json")).assert_exact("remember_request", 7 * 128, 7);
}
