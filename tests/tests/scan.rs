//! Who holds it (issue 14): `leak-analyze ctl --scan` asks a running traced process to look
//! for what points at its sampled live objects; the report then tells a missing free from a
//! container that holds its objects, and names the holder.
//!
//! `tests/programs/holders.c` keeps 16 MiB in each of four ways (dropped pointers, a global
//! array, a sparse heap array grown by realloc and owned by a global, a linked list from a
//! global), then runs on with a 10 ms tick whose longest gap it reports.

use std::time::Duration;

use leaktrace_tests::{analyze, report_of, Background, Report, Settings, Site, TestDir};

const WAIT: Duration = Duration::from_secs(60);

fn retention<'a>(report: &'a Report, function: &str) -> (&'a serde_json::Value, Site<'a>) {
    let sites = report.sites_allocated_in(function);
    let site = sites.into_iter().next().unwrap_or_else(|| report.fail(format!("no site for {function}")));
    let r = site.json.get("retention").filter(|r| !r.is_null());
    (r.unwrap_or_else(|| report.fail(format!("{function}: no retention after a scan"))), site)
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

/// Run holders under the preload at the default sampling, scan once it has leaked, and return
/// the report and the program's JSON line.
fn scan_holders(
    name: &str,
    args: &[&str],
    scans: usize,
) -> (Report, serde_json::Value, Vec<String>, std::path::PathBuf) {
    let dir = TestDir::new(name);
    let exe = dir.compile("holders.c");
    let mut settings = Settings::sampled(7);
    settings.file_size = "32M".into();
    let mut bg = Background::spawn(&mut dir.traced_command(&exe, args, &settings));
    bg.wait_for_stdout("leaked", WAIT);
    let trace = dir.files_starting_with("trace.").into_iter().find(|p| p.extension().is_some_and(|e| e == "lt"));
    let trace = trace.expect("a trace file");
    let mut answers = Vec::new();
    for _ in 0..scans {
        let out = analyze(&["ctl".into(), trace.display().to_string(), "--scan".into()], WAIT);
        assert!(
            out.status.success() && out.stdout.contains("scanned"),
            "the scan did not answer\n{}\n--- the program's stderr ---\n{}",
            out.describe(),
            bg.stderr_now()
        );
        answers.push(out.stdout);
    }
    let done = bg.wait(WAIT);
    assert!(done.status.success(), "the program failed during the scan\n{}", done.describe());
    let json = done.json_line();
    (report_of(&trace, &dir.path.join("report.json")), json, answers, trace)
}

#[test]
fn a_scan_tells_a_missing_free_from_the_global_and_the_container_that_hold_objects() {
    let (report, program, answers, trace) = scan_holders("scan_holders", &["5", "0"], 1);
    eprintln!("{}", answers[0].trim());
    report.check_invariants();

    // Dropped pointers: referenced by nothing (one may be held by the global `sink`).
    let (lost, _) = retention(&report, "lost_request");
    let (objects, unreferenced) = (num(lost, "objects"), num(lost, "unreferenced"));
    assert!(objects >= 10, "too few sampled objects to judge: {lost}");
    assert!(unreferenced * 10 >= objects * 9, "lost_request: {unreferenced} of {objects} unreferenced: {lost}");
    assert_eq!(lost["verdict"], "unreferenced");
    let text = lost["samples"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("lost request #"), "the sample does not show the object's text: {lost}");

    // A global array: held by it, named.
    let (kept, _) = retention(&report, "keep_in_global");
    assert_eq!(num(kept, "unreferenced"), 0, "{kept}");
    let top = &kept["held_by"][0];
    assert_eq!((top["kind"].as_str(), top["symbol"].as_str()), (Some("global"), Some("g_kept")), "{kept}");
    assert_eq!(num(top, "objects"), num(kept, "objects"), "{kept}");
    assert!(top["file"].as_str().is_some_and(|f| f.ends_with("holders.c")) && top["line"].as_u64().is_some(), "{kept}");

    // Entries of a heap array: held by the array's site, itself held by the global g_table.
    let (entries, _) = retention(&report, "table_entry");
    let top = &entries["held_by"][0];
    assert_eq!(top["kind"], "site", "{entries}");
    assert!(top["name"].as_str().is_some_and(|n| n.contains("table_grow")), "{entries}");
    assert!(top["held_by"].as_str().is_some_and(|h| h.contains("g_table")), "no chain to g_table: {entries}");
    let (array, _) = retention(&report, "table_grow");
    assert_eq!(array["held_by"][0]["symbol"], "g_table", "{array}");

    // A linked list from a global: every node is referenced (by its predecessor or the head).
    let (list, _) = retention(&report, "list_node");
    assert_eq!(num(list, "unreferenced"), 0, "{list}");

    // The program's 10 ms tick went on while the process was scanned.
    let worst = program["worst_tick_ms"].as_f64().unwrap();
    assert!(worst < 300.0, "the program stalled {worst} ms");
    // The headline names the holder of the largest site.
    assert!(report.str("/summary").contains("held by") || report.str("/summary").contains("referenced by nothing"));
    // The text report and the HTML page show it next to each site.
    let text = analyze(&["report".into(), trace.display().to_string()], WAIT);
    assert!(text.stdout.contains("referenced by nothing: a missing free"), "{}", text.describe());
    assert!(text.stdout.contains("most by global `g_kept`"), "{}", text.describe());
    let html = analyze(&["report".into(), trace.display().to_string(), "--format".into(), "html".into()], WAIT);
    assert!(
        html.stdout.contains("class=\"retention lost\"") && html.stdout.contains("g_kept"),
        "no retention in the HTML"
    );
}

#[test]
fn a_scan_under_32_allocating_threads_and_mapping_churn_neither_crashes_nor_stalls() {
    let (report, program, answers, _) = scan_holders("scan_threads", &["8", "32"], 3);
    for a in &answers {
        eprintln!("{}", a.trim());
    }
    let worst = program["worst_tick_ms"].as_f64().unwrap();
    assert!(worst < 500.0, "the program's tick stalled {worst} ms during the scans");
    let (lost, _) = retention(&report, "lost_request");
    let (objects, unreferenced) = (num(lost, "objects"), num(lost, "unreferenced"));
    assert!(unreferenced * 10 >= objects * 9, "lost_request: {unreferenced} of {objects} unreferenced: {lost}");
    let (kept, _) = retention(&report, "keep_in_global");
    assert_eq!(kept["held_by"][0]["symbol"], "g_kept", "{kept}");
}

#[test]
fn an_attached_process_can_be_scanned_too() {
    let dir = TestDir::new("scan_attached");
    let exe = dir.compile("holders.c");
    let mut bg =
        Background::spawn(std::process::Command::new(&exe).args(["6", "2", "trickle"]).env_remove("LD_PRELOAD"));
    bg.wait_for_stdout("leaked", WAIT);
    // Attached after the first leaks, in exact mode: what it drops and links from here on is
    // traced, and judged by the scan.
    let pattern = dir.path.join("att.%p.lt");
    let out = analyze(
        &[
            "attach".into(),
            bg.pid.to_string(),
            "-o".into(),
            pattern.display().to_string(),
            "--sample-bytes".into(),
            "1".into(),
        ],
        WAIT,
    );
    assert!(out.status.success(), "{}", out.describe());
    let trace = std::path::PathBuf::from(out.stdout.lines().last().unwrap());
    std::thread::sleep(Duration::from_secs(2));
    let scan = analyze(&["ctl".into(), trace.display().to_string(), "--scan".into()], WAIT);
    assert!(scan.status.success() && scan.stdout.contains("scanned"), "{}", scan.describe());
    let detached = analyze(&["detach".into(), bg.pid.to_string()], WAIT);
    assert!(detached.status.success(), "{}", detached.describe());
    let done = bg.wait(WAIT);
    assert!(done.status.success(), "{}", done.describe());
    let report = report_of(&trace, &dir.path.join("report.json"));
    let json = std::fs::read_to_string(dir.path.join("report.json")).unwrap();
    assert!(
        json.contains("\"scanned_at_ns\""),
        "no retention in the attached trace's report: {}",
        report.site_summary()
    );
}

/// The running scan children of `pid` (named leaktrace-scan; a child that has exited but is
/// not reaped yet, a zombie, is not running).
fn scan_children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // "pid (comm) state ppid ..."
            let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            let mut fields = after.split_whitespace();
            let (state, ppid) = (fields.next(), fields.next());
            stat.contains("(leaktrace-scan)") && state != Some("Z") && ppid == Some(&pid.to_string())
        })
        .collect()
}

#[test]
fn a_pause_stops_a_running_scan_at_once() {
    let dir = TestDir::new("scan_pause");
    let exe = dir.compile("holders.c");
    let mut cmd = dir.traced_command(&exe, &["6", "0"], &Settings::sampled(3));
    // Slow enough that the scan is still running when the pause comes.
    cmd.env("LEAKTRACE_SCAN_RATE", "1M");
    let mut bg = Background::spawn(&mut cmd);
    bg.wait_for_stdout("leaked", WAIT);
    let trace =
        dir.files_starting_with("trace.").into_iter().find(|p| p.extension().is_some_and(|e| e == "lt")).unwrap();
    let t = trace.display().to_string();
    let scan = analyze(&["ctl".into(), t.clone(), "--scan".into(), "--wait".into(), "300".into()], WAIT);
    assert!(scan.stdout.contains("no results within the wait"), "{}", scan.describe());
    assert_eq!(scan_children(bg.pid).len(), 1, "no scan child running");
    let pause = analyze(&["ctl".into(), t, "--pause".into()], WAIT);
    assert!(pause.status.success() && pause.stdout.contains("applied"), "{}", pause.describe());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !scan_children(bg.pid).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the scan went on after the pause");
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = bg.wait(WAIT);
    assert!(done.status.success(), "{}", done.describe());
    let report = report_of(&trace, &dir.path.join("report.json"));
    for site in report.sites() {
        assert!(site.json["retention"].is_null(), "a stopped scan left findings: {}", site.json);
    }
}
