//! End-to-end tests: small leaking programs (tests/programs/) run under libleaktrace.so, their
//! traces read back with `leak-analyze report --format json`, and the report compared with what
//! each program says it leaked.
//!
//! Needs `cargo build --release` first (see tests/README.md).

use std::os::unix::process::ExitStatusExt;

use leaktrace_tests::{get_u64, Report, Run, Settings, TestDir};
use serde_json::Value;

/// Allocations libc makes on its own (the stdout buffer, thread bookkeeping) may add to the
/// totals, but not more than this.
const LIBC_SLACK_BYTES: u64 = 64 << 10;

/// The leaking functions a program listed in its JSON `sites`, with their numbers.
fn program_sites(json: &Value) -> Vec<(String, u64, u64)> {
    let sites = json["sites"].as_object().unwrap_or_else(|| panic!("program JSON without sites: {json}"));
    assert!(!sites.is_empty(), "the program leaked nothing: {json}");
    sites
        .keys()
        .map(|name| {
            (
                name.clone(),
                get_u64(json, &format!("/sites/{name}/bytes")),
                get_u64(json, &format!("/sites/{name}/count")),
            )
        })
        .collect()
}

fn not_leaking(json: &Value) -> Vec<String> {
    json["not_leaking"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// In exact mode, the sites allocated in each leaking function add up to exactly what the
/// program says it leaked there. `through`: match the function anywhere in the stack (C++ and
/// Rust have operator new / the allocator shims between malloc and it) instead of frames[0].
fn assert_exact_sites(report: &Report, json: &Value, through: bool) {
    for (name, bytes, count) in program_sites(json) {
        let sites = if through { report.sites_through(&name) } else { report.sites_allocated_in(&name) };
        if sites.is_empty() {
            report.fail(format!("no site for {name}, which leaked {bytes} bytes in {count} blocks"));
        }
        for site in &sites {
            let ci95 = site.json["unfreed_bytes_ci95"].as_f64();
            if ci95 != Some(0.0) {
                report.fail(format!("{name}: unfreed_bytes_ci95 is {ci95:?}, documented as 0 when exact"));
            }
        }
        let got = report.exact_sum(&sites);
        if got != (bytes, count) {
            report.fail(format!(
                "{name}: the report says {} bytes in {} allocations over {} site(s); the program leaked {bytes} bytes in {count} blocks",
                got.0,
                got.1,
                sites.len()
            ));
        }
    }
    report.assert_not_leaking(&not_leaking(json));
}

fn run_exact(dir: &TestDir, source: &str, args: &[&str]) -> (Run, Report, Value) {
    let exe = dir.compile(source);
    let run = dir.run(&exe, args, &Settings::exact());
    let json = run.program_json();
    let report = run.report();
    report.check_invariants();
    assert_eq!(report.num("/sampling/mean_bytes"), 1.0, "LEAKTRACE_SAMPLE_BYTES=1\n{}", report.context);
    (run, report, json)
}

// ---------------------------------------------------------------------------------------------
// 1. Every entry point, exact mode

#[test]
fn every_entry_point_is_recorded_exactly() {
    let dir = TestDir::new("every_entry_point");
    let (_run, report, json) = run_exact(&dir, "entry_points.c", &[]);

    // The program's own checks of the glibc behaviour the test relies on.
    assert_eq!(get_u64(&json, "/failed_allocations"), 9, "every impossible allocation must fail: {json}");
    assert_eq!(json["realloc_zero_returned_null"], Value::Bool(true), "glibc's realloc(p, 0) frees p: {json}");

    // One call site per function, so one site each, with exactly the bytes and blocks leaked.
    for (name, bytes, count) in program_sites(&json) {
        let sites = report.sites_allocated_in(&name);
        if sites.len() != 1 {
            report.fail(format!("{name} allocates from one call stack: expected one site, found {}", sites.len()));
        }
        let (b, n) = (sites[0].exact_bytes(&report), sites[0].exact_allocations(&report));
        if (b, n) != (bytes, count) {
            report.fail(format!("{name}: report {b} bytes in {n} allocations; program leaked {bytes} in {count}"));
        }
        if sites[0].sampled_unfreed(&report) != count {
            report.fail(format!("{name}: in exact mode every one of the {count} blocks is a sample"));
        }
        let module = sites[0].frames()[0]["module"].as_str().unwrap_or("");
        if !module.ends_with("/entry_points") && module != "entry_points" {
            report.fail(format!("{name}: frames[0].module is {module:?}, not the program"));
        }
    }

    // Sites are source locations: a line with two call instructions (both arms of a
    // conditional, a statement written twice) is one site above, and lists both raw stacks.
    for name in ["leak_both_arms", "leak_twice_per_line"] {
        let sites = report.sites_allocated_in(name);
        let stacks = sites.first().and_then(|s| s.json["stacks"].as_array()).map_or(0, Vec::len);
        if stacks < 2 {
            report.fail(format!("{name} reaches the allocator from two call instructions on one line; its site lists {stacks} raw stacks"));
        }
    }

    // A failed allocation records nothing; realloc(p, 0) and the churn free what they got.
    assert_exact_sites(&report, &json, false);
    if !report.sites_through("leak_failed").is_empty() {
        report.fail("leak_failed's allocations all failed, yet it has a site");
    }

    // Totals: the program's leaks, plus at most a few small allocations of libc's own.
    let (prog_bytes, prog_count) = (get_u64(&json, "/total_bytes"), get_u64(&json, "/total_count"));
    let (bytes, count) = (report.int("/totals/unfreed_bytes"), report.int("/totals/unfreed_allocations"));
    if bytes < prog_bytes || bytes >= prog_bytes + LIBC_SLACK_BYTES || count < prog_count || count > prog_count + 16 {
        report.fail(format!(
            "totals: {bytes} bytes in {count} allocations; the program leaked {prog_bytes} in {prog_count} (libc may add < {LIBC_SLACK_BYTES} bytes)"
        ));
    }
    // The listed sites and the suppressed ones (stdio's buffer here) make up the totals.
    let listed = report.exact_sum(&report.sites());
    let suppressed = (report.int("/suppressed/bytes"), report.int("/suppressed/allocations"));
    let all = (listed.0 + suppressed.0, listed.1 + suppressed.1);
    if all != (bytes, count) {
        report.fail(format!(
            "the sites add up to {listed:?}, the suppressed ones to {suppressed:?}; the totals say ({bytes}, {count})"
        ));
    }
    if report.int("/totals/dropped_events") != 0 {
        report.fail("nothing should be dropped in a 32 MiB trace of this program");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. File and line

#[test]
fn first_frame_is_the_allocation_call_with_file_and_line() {
    let dir = TestDir::new("file_and_line");
    let (_run, report, json) = run_exact(&dir, "entry_points.c", &[]);
    for (name, _, _) in program_sites(&json) {
        let line = get_u64(&json, &format!("/sites/{name}/line"));
        let sites = report.sites_allocated_in(&name);
        // One source location, one site: leak_both_arms and leak_twice_per_line reach the
        // allocator from two call instructions on one line.
        if sites.len() != 1 {
            report.fail(format!(
                "{name}: {} sites for one allocation call on line {line}; sites are source locations",
                sites.len()
            ));
        }
        for site in sites {
            let f0 = &site.frames()[0];
            let file = f0["file"].as_str().unwrap_or("");
            if !(file == "entry_points.c" || file.ends_with("/entry_points.c")) {
                report.fail(format!("{name}: frames[0].file is {:?}, expected …/entry_points.c", f0["file"]));
            }
            if f0["line"].as_u64() != Some(line) {
                report.fail(format!("{name}: frames[0].line is {}, the allocation call is on line {line}", f0["line"]));
            }
            // The caller of each leak_* function is main, in the same file.
            let f1 = site.frames().get(1).unwrap_or(&Value::Null);
            if f1["function"].as_str() != Some("main") || !f1["file"].as_str().unwrap_or("").ends_with("entry_points.c")
            {
                report.fail(format!("{name}: frames[1] should be main in entry_points.c: {f1}"));
            }
        }
    }
}

/// Both unwinders, forced, give the same sites: exact bytes per leak_* function and the same
/// first two frames (the frame-pointer walk may lack the outermost start-up frames).
#[test]
fn both_unwinders_agree_on_every_site() {
    let mut tops: Vec<Vec<(String, u64, u64, String)>> = Vec::new();
    for unwinder in ["fp", "dwarf"] {
        let dir = TestDir::new(&format!("unwinder_{unwinder}"));
        let exe = dir.compile("entry_points.c");
        let run = dir.run(&exe, &[], &Settings::exact().unwinder(unwinder));
        let json = run.program_json();
        let report = run.report();
        report.check_invariants();
        assert_exact_sites(&report, &json, false);
        let mut top: Vec<(String, u64, u64, String)> = program_sites(&json)
            .into_iter()
            .map(|(name, _, _)| {
                let sites = report.sites_allocated_in(&name);
                if sites.len() != 1 {
                    report.fail(format!("{unwinder}: expected one site for {name}, found {}", sites.len()));
                }
                let f = sites[0].frames();
                let line = f[0]["line"].as_u64().unwrap_or(0);
                let caller = f.get(1).and_then(|c| c["function"].as_str()).unwrap_or("").to_string();
                (name, line, sites[0].exact_bytes(&report), caller)
            })
            .collect();
        top.sort();
        tops.push(top);
    }
    assert_eq!(tops[0], tops[1], "frame pointers and DWARF disagree on the sites of entry_points.c");
}

// ---------------------------------------------------------------------------------------------
// 3. C++ new / new[] and Rust's system allocator reach the preload through malloc

#[test]
fn cxx_new_and_new_array_are_recorded() {
    let dir = TestDir::new("cxx_new");
    let (_run, report, json) = run_exact(&dir, "cxx_new.cpp", &[]);
    assert_exact_sites(&report, &json, false);
    // operator new (plain, array, aligned) is an allocator entry point, stripped like malloc:
    // frames[0] is the function that said `new`, in every site.
    for name in ["leak_new", "leak_new_array", "leak_new_aligned", "leak_new_dtor_array", "leak_new_nothrow"] {
        for site in report.sites_through(name) {
            let top = site.top_function().unwrap_or("");
            if !leaktrace_tests::function_is(top, name) {
                report.fail(format!("{name}: frames[0] is {top:?}, expected {name} (operator new stripped)"));
            }
        }
    }
    if report
        .sites()
        .iter()
        .any(|s| s.frames().iter().any(|f| f["function"].as_str().is_some_and(|n| n.starts_with("operator new"))))
    {
        report.fail("a site still shows operator new");
    }
}

#[test]
fn rust_box_and_vec_are_recorded() {
    let dir = TestDir::new("rust_box");
    let (_run, report, json) = run_exact(&dir, "rust_box.rs", &[]);
    assert_exact_sites(&report, &json, true);
}

/// Every count and byte figure of the JSON report and of the JSON diff is an integer, estimates
/// rounded (README); only rates and confidences have fractions. Sampled mode, where every
/// estimate is a sum of fractional weights (before, `"unfreed_allocations": 39.0`).
#[test]
fn json_counts_and_bytes_are_integers() {
    use leaktrace_tests::{analyze, non_integer_numbers};
    let dir = TestDir::new("json_integers");
    let exe = dir.compile("sampled.c");
    let run = dir.run(&exe, &["96", "128"], &Settings::sampled(7));
    let report = run.report();
    let rounded = report.sites().iter().any(|s| {
        s.unfreed_allocations(&report) != s.sampled_unfreed(&report) as f64 && s.unfreed_bytes_ci95(&report) > 0.0
    });
    assert!(rounded, "no site has an estimated (not exact) figure to round\n{}", report.site_summary());
    for key in ["unfreed_bytes", "unfreed_allocations", "unfreed_bytes_ci95", "sampled_unfreed"] {
        for s in report.sites() {
            assert!(s.json[key].is_u64(), "site {}: {key} is {}", s.json["id"], s.json[key]);
        }
    }
    for p in ["/totals/unfreed_bytes", "/totals/unfreed_allocations", "/suppressed/bytes", "/suppressed/allocations"] {
        assert!(report.at(p).is_u64(), "{p} is {}", report.at(p));
    }
    let bad = non_integer_numbers(&report.json);
    assert!(bad.is_empty(), "not integers in the report: {bad:?}");

    let end = report.int("/process/duration_ns") as f64 / 1e9;
    let from = format!("{:.3}s", end / 3.0);
    let out = analyze(
        &[
            std::ffi::OsStr::new("diff"),
            run.trace.as_os_str(),
            "--from".as_ref(),
            from.as_ref(),
            "--format".as_ref(),
            "json".as_ref(),
        ],
        std::time::Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.describe());
    let diff: Value = serde_json::from_str(&out.stdout).expect("diff JSON");
    assert!(diff["sites"].as_array().is_some_and(|a| !a.is_empty()), "the diff lists no site: {}", out.stdout);
    let bad = non_integer_numbers(&diff);
    assert!(bad.is_empty(), "not integers in the diff: {bad:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. Sampled mode

/// Two sites leak 96 MiB in 4 KiB blocks and 125 MiB in 100 KiB blocks amid heavy churn, at the
/// default mean of one sample per 512 KiB. The volumes are chosen so ±25% is about 3.5 standard
/// deviations of the estimator for either site (relative sd ≈ sqrt(T·(1-p)·s / (p·B)) for B
/// bytes in blocks of s, sampled with p = 1 - exp(-s/T)): a seed that fails means a bias, not
/// bad luck.
fn sampled_estimates_are_within_25_percent(seed: u64) {
    let dir = TestDir::new(&format!("sampled_seed_{seed}"));
    let exe = dir.compile("sampled.c");
    let run = dir.run(&exe, &["96", "128"], &Settings::sampled(seed));
    let json = run.program_json();
    let report = run.report();
    report.check_invariants();
    assert_eq!(report.num("/sampling/mean_bytes"), 524288.0, "{}", report.context);

    let mut total_truth = 0u64;
    for (name, bytes, count) in program_sites(&json) {
        total_truth += bytes;
        let sites = report.sites_allocated_in(&name);
        if sites.is_empty() {
            report.fail(format!("no site for {name} ({bytes} bytes leaked)"));
        }
        let (est_bytes, est_count) = report.sum(&sites);
        let sampled: u64 = sites.iter().map(|s| s.sampled_unfreed(&report)).sum();
        let block = get_u64(&json, &format!("/sites/{name}/block")) as f64;
        for (what, est, truth) in [("bytes", est_bytes, bytes as f64), ("allocations", est_count, count as f64)] {
            if (est / truth - 1.0).abs() > 0.25 {
                report.fail(format!(
                    "seed {seed}, {name}: estimated {est:.0} {what}, truth {truth} (off by {:+.1}%)",
                    (est / truth - 1.0) * 100.0
                ));
            }
        }
        // The estimate of a site of one block size is its samples scaled by one weight, so
        // bytes = allocations × block size (up to the rounding of the allocation estimate).
        if (est_bytes - est_count * block).abs() > block {
            report.fail(format!("{name}: {est_bytes} bytes is not {est_count} allocations × the block size {block}"));
        }
        // The reported 95% interval is about 2 standard deviations: the truth lies within two
        // half-widths (about 4 sd) of the estimate, and the interval is not absurdly wide.
        let ci95: f64 = sites.iter().map(|s| s.json["unfreed_bytes_ci95"].as_f64().unwrap_or(f64::NAN)).sum();
        if !(ci95 > 0.0 && ci95 < 0.25 * est_bytes && (est_bytes - bytes as f64).abs() <= 2.0 * ci95) {
            report.fail(format!(
                "seed {seed}, {name}: estimate {est_bytes:.0} ± {ci95:.0} (95%) vs truth {bytes}: the interval is wrong"
            ));
        }
        // It really sampled: far fewer samples than blocks, but some.
        if sampled == 0 || sampled >= count {
            report.fail(format!("{name}: {sampled} samples of {count} blocks is not sampling at 512 KiB"));
        }
    }
    let total = report.num("/totals/unfreed_bytes");
    if (total / total_truth as f64 - 1.0).abs() > 0.25 {
        report.fail(format!("seed {seed}: totals.unfreed_bytes {total:.0} vs {total_truth} leaked"));
    }
    report.assert_not_leaking(&not_leaking(&json));

    // The 4 KiB blocks are all touched by malloc's headers: the RSS at exit covers them.
    let small = get_u64(&json, "/sites/leak_small/bytes");
    let rss = report.at("/rss").as_array().cloned().unwrap_or_default();
    let max_rss = rss.iter().filter_map(|s| s["rss_bytes"].as_u64()).max().unwrap_or(0);
    if max_rss < small {
        report.fail(format!("the RSS series peaks at {max_rss} bytes, below the {small} bytes of touched leaks"));
    }
    let times: Vec<u64> = rss.iter().filter_map(|s| s["t_ns"].as_u64()).collect();
    if times.len() != rss.len() || times.windows(2).any(|w| w[0] > w[1]) {
        report.fail("the RSS series' t_ns are missing or out of order");
    }
}

#[test]
fn sampled_seed_1() {
    sampled_estimates_are_within_25_percent(1);
}

#[test]
fn sampled_seed_20240601() {
    sampled_estimates_are_within_25_percent(20240601);
}

#[test]
fn sampled_seed_deadbeef() {
    sampled_estimates_are_within_25_percent(0xdead_beef);
}

// ---------------------------------------------------------------------------------------------
// 5. Threads

#[test]
fn eight_threads_leak_exactly_their_sum() {
    let dir = TestDir::new("threads");
    let exe = dir.compile("threads.c");
    let run = dir.run(&exe, &[], &Settings::exact().file_size("64M"));
    let json = run.program_json();
    let report = run.report();
    report.check_invariants();
    let threads = get_u64(&json, "/threads");
    let (per_bytes, per_count) = (get_u64(&json, "/per_thread_bytes"), get_u64(&json, "/per_thread_count"));
    assert_eq!(threads, 8);
    let sites = report.sites_allocated_in("thread_leak");
    let got = report.exact_sum(&sites);
    if got != (threads * per_bytes, threads * per_count) {
        report.fail(format!(
            "thread_leak: {} bytes in {} allocations; expected {threads} threads × {per_bytes} bytes in {per_count} blocks",
            got.0, got.1
        ));
    }
    report.assert_not_leaking(&not_leaking(&json));
}

// ---------------------------------------------------------------------------------------------
// 6. Ring wrap

/// Offsets in the trace header (FORMAT.md, `leaktrace_format::layout::hdr`).
const HDR_RING_CAPACITY: usize = 168;
const HDR_RING_HEAD: usize = 288;

#[test]
fn early_leak_survives_many_ring_wraps() {
    let dir = TestDir::new("ring_wrap");
    let exe = dir.compile("ring_wrap.c");
    let run = dir.run(&exe, &["1000000"], &Settings::exact().file_size("1M"));
    assert_eq!(run.trace_len(), 1 << 20, "LEAKTRACE_FILE_SIZE=1M gives a file of exactly 1 MiB\n{}", run.describe());

    // Evidence the ring wrapped many times: events reserved vs ring slots.
    let (capacity, head) = (run.trace_header_u64(HDR_RING_CAPACITY), run.trace_header_u64(HDR_RING_HEAD));
    assert!(capacity > 1000 && capacity < 20_000, "ring capacity {capacity} for a 1 MiB trace");
    assert!(head >= 2_000_000, "2 million alloc+free events were recorded, the ring head says {head}");
    assert!(head > 100 * capacity, "the ring wrapped {} times, expected > 100", head / capacity);

    let json = run.program_json();
    let report = run.report();
    report.check_invariants();
    assert_exact_sites(&report, &json, false);
    // Overwritten ring events are by design, not drops ("lost to a full table").
    if report.int("/totals/dropped_events") != 0 {
        report.fail("ring wraps are not dropped events");
    }
    let sampled = report.int("/totals/sampled_events");
    if sampled < 2_000_000 {
        report.fail(format!(
            "totals.sampled_events is {sampled}; exact mode recorded every one of > 2 million allocations and frees"
        ));
    }
}

/// The analyzer's memory follows the live allocations and the distinct stacks, not the events
/// or the file size: on a 64 MiB trace whose ring wrapped it holds no more than on a trace of
/// the same program with a few thousand events (both symbolize the same binaries, which costs
/// what their debug info costs), and reading the trace alone takes a fraction of the file.
#[test]
fn analyzer_memory_does_not_follow_the_ring() {
    const MIB: u64 = 1024;
    let dir = TestDir::new("analyzer_memory");
    let exe = dir.compile("ring_wrap.c");
    let settings = Settings::exact().file_size("64M");
    let full = dir.run(&exe, &["1000000"], &settings);
    let few = dir.run(&exe, &["1000"], &settings);
    let (capacity, head) = (full.trace_header_u64(HDR_RING_CAPACITY), full.trace_header_u64(HDR_RING_HEAD));
    assert!(head > 2 * capacity, "the ring wrapped: {head} events for {capacity} slots\n{}", full.describe());
    let peak = |args: &[&std::ffi::OsStr]| -> u64 {
        let (out, kib) = leaktrace_tests::analyze_peak_rss(args, std::time::Duration::from_secs(60));
        assert!(out.status.success() && kib > 0, "peak RSS {kib} KiB\n{}", out.describe());
        kib
    };
    let report = |run: &Run| peak(&["report".as_ref(), run.trace.as_os_str(), "--format".as_ref(), "json".as_ref()]);
    let (full_kib, few_kib) = (report(&full), report(&few));
    assert!(
        full_kib < few_kib + 12 * MIB,
        "report on a full ring: peak RSS {full_kib} KiB, on a few events: {few_kib} KiB; the events should cost next to nothing"
    );
    let info_kib = peak(&["info".as_ref(), full.trace.as_os_str()]);
    assert!(info_kib < 24 * MIB, "info on a 64 MiB trace: peak RSS {info_kib} KiB");
    // And the report of the full trace is still right.
    let report = full.report();
    assert_exact_sites(&report, &full.program_json(), false);
}

// ---------------------------------------------------------------------------------------------
// 7. Process fields

fn assert_process_fields(report: &Report, run: &Run, marker: &str, ended: &str) {
    if report.int("/process/pid") != u64::from(run.pid) {
        report.fail(format!("process.pid {} is not the child's pid {}", report.at("/process/pid"), run.pid));
    }
    let exe = report.str("/process/exe");
    if !exe.ends_with("/entry_points") {
        report.fail(format!("process.exe {exe:?} does not end with the program's name"));
    }
    let cmdline = report.at("/process/cmdline");
    let has_marker = match cmdline {
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(marker)),
        Value::String(s) => s.split_whitespace().any(|w| w == marker),
        _ => false,
    };
    if !has_marker {
        report.fail(format!("process.cmdline {cmdline} does not contain the argument {marker:?}"));
    }
    if report.str("/process/ended") != ended {
        report.fail(format!("process.ended is {:?}, expected {ended:?}", report.at("/process/ended")));
    }
    let start = report.int("/process/start_unix_ns") as u128;
    if start < run.spawned_unix_ns || start > run.exited_unix_ns {
        report.fail(format!(
            "process.start_unix_ns {start} is outside the run ({} ..= {})",
            run.spawned_unix_ns, run.exited_unix_ns
        ));
    }
    let duration = report.int("/process/duration_ns") as u128;
    if duration > run.exited_unix_ns - run.spawned_unix_ns {
        report.fail(format!("process.duration_ns {duration} is longer than the run"));
    }
}

#[test]
fn process_fields_after_normal_exit() {
    let dir = TestDir::new("process_exit");
    let marker = "--marker=lt-e2e-normal-exit";
    let (run, report, json) = run_exact(&dir, "entry_points.c", &[marker, "second-arg"]);
    assert_eq!(get_u64(&json, "/pid"), u64::from(run.pid), "the program's own getpid()");
    assert_process_fields(&report, &run, marker, "exit");
    if report.int("/process/duration_ns") == 0 {
        report.fail("process.duration_ns is 0 after a clean exit");
    }
}

/// A process killed before its exit handlers: the trace says so, and its leaks, which live in
/// the mapped file, are all still there.
#[test]
fn process_fields_after_sigkill() {
    let dir = TestDir::new("process_killed");
    let marker = "--then-kill";
    let exe = dir.compile("entry_points.c");
    let run = dir.run_any_status(&exe, &[marker], &Settings::exact());
    assert_eq!(run.status.signal(), Some(9), "the program kills itself\n{}", run.describe());
    let json = run.program_json();
    let report = run.report();
    report.check_invariants();
    assert_process_fields(&report, &run, marker, "unknown");
    assert_exact_sites(&report, &json, false);
}
