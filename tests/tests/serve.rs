//! `leak-analyze serve` (issue 16): the Prometheus exporter, its alert rules and dashboard.
//!
//! - the shipped rules pass `promtool check rules` and their unit tests (`promtool test rules`);
//! - a real Prometheus server scrapes the exporter while a leaking program runs: the leaking site
//!   comes back through the query API as growing at the program's rate, the plateau cache as not
//!   growing, with the process's RSS series;
//! - the exporter survives a traced process SIGKILLed, a trace deleted, a corrupt and a
//!   truncated trace, and a new trace appearing, all while it runs;
//! - 50 traced processes are scraped within a second each.
//!
//! The Prometheus tests need Debian's `prometheus` package (`promtool`, `/usr/bin/prometheus`);
//! `.ci/run` installs it. Outside CI a machine without it skips them with a note; under CI
//! (`CI` set) its absence fails them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use leaktrace_tests::{repo, report_of, run_command, Background, Settings, TestDir};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);
const SIGKILL: i32 = 9;

fn contrib() -> PathBuf {
    repo().root.join("contrib")
}

/// The path of a Prometheus tool, or None (with a note) where it is missing outside CI.
fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let path = ["/usr/bin", "/usr/local/bin", "/bin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file());
    if path.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed: .ci/run installs Debian's prometheus package, which has it"
        );
        eprintln!("note: {name} not installed (Debian package prometheus): test skipped outside CI");
    }
    path
}

// ---------------------------------------------------------------------------------------------
// HTTP on loopback, by hand: one GET, the whole answer.

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// The exporter

struct Exporter {
    bg: Background,
    addr: String,
}

impl Exporter {
    fn start(args: &[&Path]) -> Exporter {
        let mut cmd = Command::new(&repo().analyzer);
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        Exporter::spawn(cmd)
    }

    /// `leak-analyze serve --listen 127.0.0.1:0 ...` as `cmd` runs it; waits for it to listen.
    fn spawn(mut cmd: Command) -> Exporter {
        let mut bg = Background::spawn(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let err = bg.stderr_now();
            if let Some(line) = err.lines().find(|l| l.contains("listening on http://")) {
                let addr = line.split("http://").nth(1).unwrap().trim_end_matches("/metrics").to_string();
                return Exporter { bg, addr };
            }
            assert!(bg.is_running(), "leak-analyze serve exited early\n{err}");
            assert!(Instant::now() < deadline, "leak-analyze serve did not start listening\n{err}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One scrape, which must succeed; its text and how long it took.
    fn scrape(&mut self) -> (Scrape, Duration) {
        let t = Instant::now();
        let (status, body) = http_get(&self.addr, "/metrics");
        let took = t.elapsed();
        assert!(self.bg.is_running(), "the exporter died\n{}", self.bg.stderr_now());
        assert_eq!(status, 200, "{body}\n--- exporter stderr ---\n{}", self.bg.stderr_now());
        (Scrape::parse(&body), took)
    }
}

/// One sample of a scrape: its name, labels and value.
type Sample = (String, Vec<(String, String)>, f64);

struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Scrape { text: text.to_string(), samples }
    }

    /// Values of `name` whose labels include every one of `want`.
    fn values(&self, name: &str, want: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|s| s.2)
            .collect()
    }

    fn one(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let v = self.values(name, want);
        assert_eq!(v.len(), 1, "expected one {name} with {want:?}, found {v:?}\n{}", self.text);
        v[0]
    }

    fn pids(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .samples
            .iter()
            .filter(|(n, _, _)| n == "leaktrace_trace_health")
            .filter_map(|(_, l, _)| l.iter().find(|(k, _)| k == "pid").map(|(_, v)| v.clone()))
            .collect();
        p.sort();
        p.dedup();
        p
    }

    fn health(&self, pid: &str) -> String {
        let states: Vec<&str> = self
            .samples
            .iter()
            .filter(|(n, l, v)| {
                n == "leaktrace_trace_health" && *v == 1.0 && l.iter().any(|(k, x)| k == "pid" && x == pid)
            })
            .filter_map(|(_, l, _)| l.iter().find(|(k, _)| k == "state").map(|(_, v)| v.as_str()))
            .collect();
        assert_eq!(states.len(), 1, "pid {pid}: one health state is 1, found {states:?}\n{}", self.text);
        states[0].to_string()
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_string(), value));
        rest = &after[end..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A Prometheus server of the test's own: loopback, a free port, its own storage, killed at
// the end (by dropping it).

struct Prometheus {
    bg: Background,
    addr: String,
}

impl Prometheus {
    fn start(dir: &TestDir, target: &str) -> Option<Prometheus> {
        let bin = prometheus_tool("prometheus")?;
        let rules = contrib().join("prometheus/leaktrace.rules.yml");
        let config = dir.path.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: leaktrace\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path.join("prometheus-data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(&dir.path);
        let mut bg = Background::spawn(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(bg.is_running(), "prometheus exited\n{}", bg.stderr_now());
            if TcpStream::connect(&addr).is_ok() && http_get(&addr, "/-/ready").0 == 200 {
                return Some(Prometheus { bg, addr });
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 60 s\n{}", bg.stderr_now());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `/api/v1/query` (instant, now), which must succeed: the result vector.
    fn query(&self, q: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", url_encode(q)))["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.addr, path);
        assert_eq!(status, 200, "GET {path}: {body}\n--- prometheus stderr ---\n{}", self.bg.stderr_now());
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {body}");
        v
    }

    /// Poll `q` until `ok` accepts its result (every second, at most `timeout`).
    fn wait_for(&self, q: &str, timeout: Duration, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(q);
            if ok(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "{q}: no acceptable answer within {timeout:?}; last: {r:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn value_of(sample: &Value) -> f64 {
    sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = prometheus_tool("promtool") else { return };
    let dir = contrib().join("prometheus");
    let check =
        run_command(Command::new(&promtool).args(["check", "rules", "leaktrace.rules.yml"]).current_dir(&dir), TIMEOUT);
    assert!(check.status.success(), "promtool check rules failed\n{}", check.describe());
    assert!(check.stdout.contains("SUCCESS: 6 rules found"), "{}", check.describe());
    let test = run_command(
        Command::new(&promtool).args(["test", "rules", "leaktrace.rules.test.yml"]).current_dir(&dir),
        TIMEOUT,
    );
    assert!(test.status.success(), "promtool test rules failed\n{}", test.describe());
    assert!(test.stdout.contains("SUCCESS"), "{}", test.describe());
}

#[test]
fn prometheus_sees_the_leak_growing_at_its_rate_and_the_cache_not_growing() {
    let dir = TestDir::new("serve_prometheus");
    let exe = dir.compile("growth.c");
    // Sampling finer than the default, so that the rate measured over a few seconds is close.
    let mut settings = Settings::sampled(7).file_size("32M");
    settings.sample_bytes = "65536".into();
    let mut exporter = Exporter::start(&[&dir.path]);
    let Some(prom) = Prometheus::start(&dir, &exporter.addr) else { return };
    let program = Background::spawn(&mut dir.traced_command(&exe, &["16"], &settings));
    let pid = program.pid.to_string();
    let leak = format!("leaktrace_site_growing{{pid=\"{pid}\",site=~\"leak_slow at growth.c:[0-9]+\"}}");
    // Growing, through Prometheus, while the program runs.
    prom.wait_for(&leak, Duration::from_secs(30), |r| r.len() == 1 && value_of(&r[0]) == 1.0);
    prom.wait_for(&format!("leaktrace_process_start_time_seconds{{pid=\"{pid}\"}} < time() - 10"), TIMEOUT, |r| {
        !r.is_empty()
    });
    let rate_q =
        format!("leaktrace_site_growth_rate_bytes_per_second{{pid=\"{pid}\",site=~\"leak_slow at growth.c:[0-9]+\"}}");
    let live_rate = prom.query(&rate_q);
    let rules = prom.api("/api/v1/rules");

    let out = program.wait(TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    let truth = out.json_line();
    let true_rate = truth["leak_slow"]["bytes_per_sec"].as_f64().unwrap();

    assert_eq!(live_rate.len(), 1, "{live_rate:?}");
    let rate = value_of(&live_rate[0]);
    eprintln!(
        "leak_slow: exported {rate:.0} B/s while running, the program's own rate {true_rate:.0} B/s ({:+.1}%)",
        (rate / true_rate - 1.0) * 100.0
    );
    assert!((rate - true_rate).abs() <= 0.4 * true_rate, "exported rate {rate} vs the program's {true_rate}");
    // The site label is the report's one-line name.
    let site = live_rate[0]["metric"]["site"].as_str().unwrap();
    assert!(site.starts_with("leak_slow at growth.c:"), "{site}");
    assert_eq!(live_rate[0]["metric"]["exe"], "growth");
    assert_eq!(live_rate[0]["metric"]["site_id"].as_str().map(str::len), Some(16));

    // The process's RSS series: a point a second or so, rising with the leaks.
    let rss = prom.query(&format!("leaktrace_process_rss_bytes{{pid=\"{pid}\"}}[60s]"));
    assert_eq!(rss.len(), 1, "{rss:?}");
    let points: Vec<f64> =
        rss[0]["values"].as_array().unwrap().iter().map(|p| p[1].as_str().unwrap().parse().unwrap()).collect();
    assert!(points.len() >= 8, "RSS series points: {points:?}");
    assert!(points.last().unwrap() > &(points[0] + 50e6), "RSS rises with the leaks: {points:?}");

    // The shipped rules load into a real server.
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["name"] == "leaktrace" && g["rules"].as_array().unwrap().iter().all(|r| r["health"] != "err")),
        "{rules}"
    );
    // After the exit: the trace is final, the process exported as exited, and the plateau cache
    // (filled in the first quarter of the run, flat since) as not growing. Judged on the whole
    // run rather than at a moment of it: a loaded machine slows the program, not its schedule.
    prom.wait_for(
        &format!("leaktrace_trace_health{{pid=\"{pid}\",state=\"exited\"}} == 1"),
        Duration::from_secs(20),
        |r| r.len() == 1,
    );
    prom.wait_for(&format!("leaktrace_process_running{{pid=\"{pid}\"}} == 0"), Duration::from_secs(20), |r| {
        r.len() == 1
    });
    let cache = format!("leaktrace_site_growing{{pid=\"{pid}\",site=~\"cache_plateau at growth.c:[0-9]+\"}}");
    let cache_now = prom.query(&cache);
    assert_eq!(cache_now.len(), 1, "the plateau cache is exported: {cache_now:?}");
    assert_eq!(value_of(&cache_now[0]), 0.0, "the plateau cache is not growing: {cache_now:?}");
    let leak_now = prom.query(&leak);
    assert_eq!(leak_now.len(), 1, "{leak_now:?}");
    assert_eq!(value_of(&leak_now[0]), 1.0, "the leak is still growing over the whole run: {leak_now:?}");
    // Every exported site carries the report's own name for it, the top 20 and every growing
    // site are there, and each site_id is distinct.
    let report = report_of(&dir.trace_of(out.pid), &dir.path.join("report.json"));
    let (s, _) = exporter.scrape();
    let names: Vec<&str> = report.sites().iter().map(|x| x.json["name"].as_str().unwrap()).collect();
    let mut exported = Vec::new();
    for (name, labels, _) in &s.samples {
        if name == "leaktrace_site_unfreed_bytes" && labels.iter().any(|(k, v)| k == "pid" && *v == pid) {
            let site = &labels.iter().find(|(k, _)| k == "site").unwrap().1;
            assert!(names.contains(&site.as_str()), "exported site {site:?} is not a report site: {names:?}");
            exported.push(labels.iter().find(|(k, _)| k == "site_id").unwrap().1.clone());
        }
    }
    assert_eq!(exported.len(), names.len().min(20), "{}", s.text);
    exported.sort();
    exported.dedup();
    assert_eq!(exported.len(), names.len().min(20), "site ids are distinct: {exported:?}");
    drop(prom);
    drop(exporter);
}

#[test]
fn exporter_survives_a_kill_a_deletion_damage_and_new_traces() {
    let dir = TestDir::new("serve_survives");
    let traces = dir.path.join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    let exe = dir.compile("leak_loop.c");
    let mut settings = Settings::sampled(3);
    settings.rss_ms = 50;
    let run = |settings: &Settings| {
        let mut cmd = dir.traced_command(&exe, &[] as &[&str], settings);
        cmd.env("LEAKTRACE_FILE", traces.join("trace.%p.lt"));
        let mut bg = Background::spawn(&mut cmd);
        bg.wait_for_stdout("leaked", TIMEOUT);
        bg
    };
    let mut exporter = Exporter::start(&[&traces]);
    let (s, _) = exporter.scrape();
    assert_eq!(s.one("leaktrace_exporter_trace_files", &[]), 0.0, "{}", s.text);

    // A process appears while the exporter runs.
    let a = run(&settings);
    let a_pid = a.pid.to_string();
    std::thread::sleep(Duration::from_millis(300));
    let (s, _) = exporter.scrape();
    assert_eq!(s.health(&a_pid), "ok", "{}", s.text);
    assert!(s.one("leaktrace_process_rss_bytes", &[("pid", &a_pid), ("exe", "leak_loop")]) > 0.0);
    assert!(s.one("leaktrace_last_record_age_seconds", &[("pid", &a_pid)]) < 5.0, "{}", s.text);
    assert_eq!(s.one("leaktrace_process_running", &[("pid", &a_pid)]), 1.0, "{}", s.text);
    assert!(!s.values("leaktrace_site_unfreed_bytes", &[("pid", &a_pid)]).is_empty(), "{}", s.text);

    // SIGKILLed: its trace stays, and its age grows from then on.
    a.signal(SIGKILL);
    let _ = a.wait(TIMEOUT);
    std::thread::sleep(Duration::from_millis(1500));
    let (s, _) = exporter.scrape();
    assert_ne!(s.health(&a_pid), "exited", "a killed process did not exit cleanly\n{}", s.text);
    assert!(s.one("leaktrace_last_record_age_seconds", &[("pid", &a_pid)]) >= 1.0, "{}", s.text);
    assert_eq!(s.one("leaktrace_process_running", &[("pid", &a_pid)]), 0.0, "{}", s.text);

    // Damage: garbage named like a trace, an empty one, and the killed process's trace cut in
    // half (as a copy taken while it grew would be).
    std::fs::write(traces.join("trace.999999.lt"), b"not a trace at all").unwrap();
    std::fs::write(traces.join("trace.999997.lt"), b"").unwrap();
    let a_trace = traces.join(format!("trace.{a_pid}.lt"));
    let len = std::fs::metadata(&a_trace).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&a_trace).unwrap().set_len(len / 2).unwrap();
    let (s, _) = exporter.scrape();
    assert_eq!(s.health("999999"), "corrupt", "{}", s.text);
    assert_eq!(s.health("999997"), "corrupt", "{}", s.text);
    assert_eq!(s.health(&a_pid), "partial", "{}", s.text);
    assert_eq!(s.one("leaktrace_exporter_trace_files", &[]), 3.0, "{}", s.text);

    // Deleted: its series go.
    std::fs::remove_file(&a_trace).unwrap();
    for f in ["trace.999999.lt", "trace.999997.lt"] {
        std::fs::remove_file(traces.join(f)).unwrap();
    }
    let (s, _) = exporter.scrape();
    assert!(s.pids().is_empty(), "{}", s.text);

    // Another appears.
    let b = run(&settings);
    let b_pid = b.pid.to_string();
    let (s, _) = exporter.scrape();
    assert_eq!(s.pids(), vec![b_pid.clone()], "{}", s.text);
    // A trace deleted while its process still writes it.
    std::fs::remove_file(traces.join(format!("trace.{b_pid}.lt"))).unwrap();
    let (s, _) = exporter.scrape();
    assert!(s.pids().is_empty(), "{}", s.text);
    drop(b);
    let (status, _) = http_get(&exporter.addr, "/nothing-here");
    assert_eq!(status, 404);
    assert!(exporter.bg.is_running());
}

#[test]
fn an_unreadable_trace_is_skipped_with_one_log_line() {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root: the exporter cannot be run as another user; test skipped");
        return;
    }
    let dir = TestDir::new("serve_unreadable");
    let run = dir.run(&dir.compile("service.c"), &[], &Settings::exact());
    // Under /tmp, with a copy of the analyzer: nobody may not reach into the checkout (under
    // /root in CI, say).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let scratch = std::env::temp_dir().join(format!("leaktrace-serve-unreadable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let traces = scratch.join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    mode(&scratch, 0o755);
    mode(&traces, 0o755);
    let analyzer = scratch.join("leak-analyze");
    std::fs::copy(&repo().analyzer, &analyzer).unwrap();
    mode(&analyzer, 0o755);
    std::fs::copy(&run.trace, traces.join("open.lt")).unwrap();
    std::fs::copy(&run.trace, traces.join("secret.lt")).unwrap();
    mode(&traces.join("open.lt"), 0o644);
    mode(&traces.join("secret.lt"), 0o600);
    // The exporter as nobody, which may read one of the two.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&analyzer)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(&traces);
    let mut exporter = Exporter::spawn(cmd);
    for _ in 0..3 {
        let (s, _) = exporter.scrape();
        assert_eq!(s.pids(), vec![run.pid.to_string()], "{}", s.text);
        assert_eq!(s.one("leaktrace_exporter_unreadable_paths", &[]), 1.0, "{}", s.text);
        assert_eq!(s.one("leaktrace_exporter_trace_files", &[]), 1.0, "{}", s.text);
    }
    let err = exporter.bg.stderr_now();
    let skipped: Vec<&str> = err.lines().filter(|l| l.contains("secret.lt")).collect();
    assert_eq!(skipped.len(), 1, "one line for the unreadable trace, whatever the scrapes:\n{err}");
    assert!(skipped[0].contains("skipping") && skipped[0].contains("ermission denied"), "{err}");
    drop(exporter);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn fifty_traced_processes_are_scraped_within_a_second() {
    let dir = TestDir::new("serve_fifty");
    let exe = dir.compile("fleet.c");
    let mut settings = Settings::sampled(11).file_size("8M");
    settings.sample_bytes = "16384".into();
    settings.rss_ms = 200;
    let fleet: Vec<Background> =
        (0..50).map(|_| Background::spawn(&mut dir.traced_command(&exe, &["14", "256"], &settings))).collect();
    std::thread::sleep(Duration::from_secs(2));
    let mut exporter = Exporter::start(&[&dir.path]);
    let mut times = Vec::new();
    let mut last = None;
    for i in 0..8 {
        let (s, took) = exporter.scrape();
        let stale = s.one("leaktrace_exporter_stale_traces", &[]);
        let refresh = s.one("leaktrace_exporter_last_refresh_duration_seconds", &[]);
        eprintln!(
            "scrape {i}: {:.0} ms, {} traces, {stale} stale, last full refresh {:.0} ms",
            took.as_secs_f64() * 1e3,
            s.pids().len(),
            refresh * 1e3
        );
        times.push(took);
        last = Some(s);
        std::thread::sleep(Duration::from_secs(1));
    }
    let s = last.unwrap();
    assert_eq!(s.pids().len(), 50, "{}", s.text);
    for pid in s.pids() {
        assert!(
            !s.values("leaktrace_site_unfreed_bytes", &[("pid", &pid), ("exe", "fleet")]).is_empty(),
            "{pid}: {}",
            s.text
        );
    }
    let slowest = times.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(1), "a scrape of 50 traces took {slowest:?}: {times:?}");
    drop(fleet);
}

#[test]
fn the_grafana_dashboard_is_valid_json_with_its_panels() {
    let path = contrib().join("grafana/leaktrace-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let panels = d["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in ["RSS vs estimated heap", "Top growing sites", "Growth rate by site", "Tracer health"] {
        assert!(titles.contains(&want), "no panel {want:?} in {titles:?}");
    }
    // Every query names only metrics the exporter serves.
    let exported = include_str!("../../analyzer/src/serve/metrics.rs");
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or("");
            for name in metric_names(expr) {
                let base = name.trim_start_matches("leaktrace_");
                assert!(
                    exported_name(exported, base),
                    "panel {:?} queries {name}, which the exporter does not serve",
                    p["title"]
                );
            }
        }
    }
}

#[test]
fn the_rules_name_only_metrics_the_exporter_serves() {
    let text = std::fs::read_to_string(contrib().join("prometheus/leaktrace.rules.yml")).unwrap();
    let exported = include_str!("../../analyzer/src/serve/metrics.rs");
    for name in metric_names(&text) {
        assert!(
            exported_name(exported, name.trim_start_matches("leaktrace_")),
            "the rules use {name}, which the exporter does not serve"
        );
    }
}

/// Every `leaktrace_*` identifier in a PromQL text.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("leaktrace_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out.sort();
    out.dedup();
    out
}

/// Does metrics.rs register `base` (the name after `leaktrace_`), with its unit or counter suffix?
fn exported_name(source: &str, base: &str) -> bool {
    let suffixes = ["_bytes_per_second", "_bytes", "_seconds", "_total"];
    let stems: Vec<&str> = std::iter::once(base).chain(suffixes.iter().filter_map(|s| base.strip_suffix(s))).collect();
    stems.iter().any(|stem| source.contains(&format!("\"{stem}\"")))
}
