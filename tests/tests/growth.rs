//! The growth verdict on sampled data (default LEAKTRACE_SAMPLE_BYTES): steady leaks at two
//! rates and a late leak are growing, with about the right rate; a cache that plateaus, a cache
//! that is emptied and refilled, and churn in flight at exit are not.
//!
//! The run is compressed: "a few MB per minute over ten minutes" is the same number of samples
//! spread over a shorter time, and the verdict depends on the samples, not on the clock.

use leaktrace_tests::{get_u64, Report, Settings, TestDir};

fn site_verdict(report: &Report, function: &str) -> (bool, f64, f64) {
    let sites = report.sites_allocated_in(function);
    if sites.len() != 1 {
        report.fail(format!("expected one site allocated in {function}, found {}", sites.len()));
    }
    let j = sites[0].json;
    let growing = j["growing"].as_bool().unwrap_or_else(|| report.fail("growing is not a bool"));
    let rate = j["growth_bytes_per_sec"].as_f64().unwrap_or_else(|| report.fail("no rate"));
    let conf = j["trend_confidence"].as_f64().unwrap_or_else(|| report.fail("no confidence"));
    (growing, rate, conf)
}

fn check_seed(seed: u64) {
    let dir = TestDir::new(&format!("growth_seed_{seed}"));
    let exe = dir.compile("growth.c");
    let run = dir.run(&exe, &["8"], &Settings::sampled(seed).file_size("32M"));
    let truth = run.program_json();
    let report = run.report();
    report.check_invariants();
    for leak in ["leak_slow", "leak_fast", "late_leak"] {
        let (growing, rate, conf) = site_verdict(&report, leak);
        let true_rate = truth[leak]["bytes_per_sec"].as_f64().unwrap_or(0.0);
        if !growing || conf < 0.95 {
            report.fail(format!(
                "{leak} leaks {} bytes at {true_rate:.0} B/s but is not growing (confidence {conf})",
                get_u64(&truth, &format!("/{leak}/bytes"))
            ));
        }
        if (rate / true_rate - 1.0).abs() > 0.4 {
            report.fail(format!("{leak}: reported {rate:.0} B/s, the program leaked {true_rate:.0} B/s"));
        }
    }
    for not_leak in ["cache_plateau", "cache_refill", "churn"] {
        let (growing, rate, conf) = site_verdict(&report, not_leak);
        if growing {
            report.fail(format!("{not_leak} is flagged growing ({rate:.0} B/s, confidence {conf})"));
        }
    }
    // Growing sites come first, and the summary names one of the leaks.
    let summary = report.str("/summary");
    if !["leak_slow", "leak_fast", "late_leak"].iter().any(|l| summary.contains(l)) {
        report.fail(format!("the summary does not name a leak: {summary}"));
    }
}

#[test]
fn growth_verdicts_seed_11() {
    check_seed(11);
}

#[test]
fn growth_verdicts_seed_4242() {
    check_seed(4242);
}
