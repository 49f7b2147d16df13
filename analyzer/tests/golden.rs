//! Golden outputs: every rendering of the committed 1.0 trace `format/tests/data/small-v1.lt`,
//! without symbolization (so the same on every machine), compared byte for byte with the files
//! in `tests/golden/`. The JSON is a stable interface: a change here is a change users see.
//! `UPDATE_GOLDEN=1 cargo test -p leak-analyze --test golden` rewrites them after a deliberate
//! change; review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

const ANALYZER: &str = env!("CARGO_BIN_EXE_leak-analyze");

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn check(name: &str, args: &[&str]) {
    let trace = repo_file("../format/tests/data/small-v1.lt");
    let out = Command::new(ANALYZER).args(args).arg(&trace).arg("--no-symbols").output().expect("run leak-analyze");
    assert!(out.status.success(), "leak-analyze {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let golden = repo_file(&format!("tests/golden/{name}"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out.stdout).expect("write golden file");
        return;
    }
    let want =
        std::fs::read(&golden).unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", golden.display()));
    if out.stdout != want {
        let got = repo_file(&format!("target-golden-{name}"));
        let _ = std::fs::write(&got, &out.stdout);
        panic!(
            "leak-analyze {args:?} on small-v1.lt differs from {} (output saved as {}); if the change is \
             deliberate, rerun with UPDATE_GOLDEN=1 and review the diff",
            golden.display(),
            got.display()
        );
    }
}

#[test]
fn text_report() {
    check("small-v1.txt", &["report"]);
}

#[test]
fn json_report() {
    check("small-v1.json", &["report", "--format", "json"]);
}

#[test]
fn folded_report() {
    check("small-v1.folded", &["report", "--format", "folded"]);
}

#[test]
fn pprof_report() {
    check("small-v1.pb.gz", &["report", "--format", "pprof"]);
}

/// The JSON is one set of serde types (`leak_analyze::report::Report`): the golden report reads
/// back into them and writes out byte for byte the same, so a field the types lack, or one
/// they add without the JSON showing it, fails here.
#[test]
fn the_golden_json_round_trips_through_the_report_type() {
    let golden = std::fs::read_to_string(repo_file("tests/golden/small-v1.json")).expect("golden JSON");
    let typed: leak_analyze::report::Report = serde_json::from_str(&golden).expect("the golden JSON reads as a Report");
    let again = serde_json::to_string_pretty(&typed).expect("serializes") + "\n";
    assert_eq!(again, golden, "the Report type does not write the JSON it reads");
}
