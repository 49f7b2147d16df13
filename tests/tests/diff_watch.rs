//! `leak-analyze diff` (two traces, and two moments of one trace) and `leak-analyze watch`.

use std::time::Duration;

use leaktrace_tests::{analyze, get_u64, Background, Settings, TestDir};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn diff_json(args: &[&str]) -> Value {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let out = analyze(&all, TIMEOUT);
    assert!(out.status.success(), "diff failed\n{}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("diff JSON does not parse ({e})\n{}", out.describe()))
}

/// The change `diff` reports for the site allocated in `function`.
fn delta_of(d: &Value, function: &str) -> Option<f64> {
    d["sites"]
        .as_array()?
        .iter()
        .find(|s| s["frames"][0]["function"].as_str() == Some(function))
        .and_then(|s| s["delta_bytes"].as_f64())
}

#[test]
fn diff_of_two_traces_finds_what_grew() {
    let dir = TestDir::new("diff_two_traces");
    let exe = dir.compile("sampled.c");
    let old = dir.run(&exe, &["1", "4"], &Settings::exact());
    let new = dir.run(&exe, &["3", "4"], &Settings::exact());
    let (old_small, new_small) = (
        get_u64(&old.program_json(), "/sites/leak_small/bytes"),
        get_u64(&new.program_json(), "/sites/leak_small/bytes"),
    );
    let d = diff_json(&[old.trace.to_str().unwrap(), new.trace.to_str().unwrap()]);
    // The same program in two processes (other addresses): sites are matched by meaning.
    assert_eq!(delta_of(&d, "leak_small"), Some((new_small - old_small) as f64), "{d:#}");
    assert_eq!(delta_of(&d, "leak_large"), None, "leak_large leaked the same in both runs: {d:#}");
    assert_eq!(d["sites"][0]["frames"][0]["function"], "leak_small", "the biggest growth comes first: {d:#}");
}

#[test]
fn diff_of_two_moments_of_one_trace() {
    let dir = TestDir::new("diff_two_moments");
    let exe = dir.compile("growth.c");
    let run = dir.run(&exe, &["4"], &Settings::exact());
    let truth = run.program_json();
    let trace = run.trace.to_str().unwrap();
    let d = diff_json(&[trace, "--from", "2s", "--to", "3.5s"]);
    for leak in ["leak_slow", "leak_fast"] {
        let expected = truth[leak]["bytes_per_sec"].as_f64().unwrap() * 1.5;
        let got = delta_of(&d, leak).unwrap_or(0.0);
        assert!(
            (got / expected - 1.0).abs() < 0.25,
            "{leak}: grew {got} between 2s and 3.5s, expected about {expected}\n{d:#}"
        );
    }
    // The plateau cache filled in the first quarter of the run and then only replaced entries.
    let cache = delta_of(&d, "cache_plateau").unwrap_or(0.0).abs();
    assert!(
        cache < 0.05 * delta_of(&d, "leak_slow").unwrap_or(0.0),
        "the plateau cache barely changes: {cache}\n{d:#}"
    );
    // Nonsense is refused with one line.
    let out = analyze(&["diff", trace, "--from", "3s", "--to", "1s"], TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
}

#[test]
fn watch_shows_a_running_process_and_stops_when_it_has_exited() {
    let dir = TestDir::new("watch_live");
    let exe = dir.compile("leak_loop.c");
    let mut settings = Settings::exact();
    settings.rss_ms = 50;
    let mut bg = Background::spawn(&mut dir.traced_command(&exe, &[] as &[&str], &settings));
    bg.wait_for_stdout("leaked", TIMEOUT);
    std::thread::sleep(Duration::from_millis(300));
    let trace = dir.trace_of(bg.pid);
    let out = analyze(&["watch", trace.to_str().unwrap(), "--iterations", "2", "--interval", "0.3"], TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains(&format!("pid {}", bg.pid)), "{}", out.describe());
    assert!(out.stdout.contains("[running"), "{}", out.describe());
    assert!(out.stdout.contains("leak_forever"), "the leaking site is listed: {}", out.describe());
    assert_eq!(out.stdout.matches("heap estimate").count(), 2, "two refreshes: {}", out.describe());
    assert!(!out.stdout.contains('\x1b'), "no terminal codes when stdout is not a terminal");
    bg.signal(SIGKILL);
    let _ = bg.wait(TIMEOUT);

    // A trace of a process that has exited: one refresh, then watch returns by itself.
    let done = dir.run(&dir.compile("sampled.c"), &["1", "1"], &Settings::exact());
    let out = analyze(&["watch", done.trace.to_str().unwrap(), "--interval", "0.2"], TIMEOUT);
    assert!(out.status.success() && out.stdout.contains("[exited"), "{}", out.describe());
    assert_eq!(out.stdout.matches("heap estimate").count(), 1, "{}", out.describe());
}

const SIGKILL: i32 = 9;
