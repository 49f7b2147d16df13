//! Stacks a user can trust (issue 11): the first program frame after a library frame is the
//! function that really called the library, whatever the unwinder and however the program was
//! built.

use leaktrace_tests::{function_is, get_u64, Settings, Site, TestDir};

/// The program's own frames of a site, outermost last: its module is the executable, and its
/// source is not a system header (glibc's `getline` is an inline wrapper from <stdio.h>,
/// compiled into the program).
fn program_functions(site: &Site<'_>, exe_name: &str) -> Vec<String> {
    site.frames()
        .iter()
        .filter(|f| f["module"].as_str().is_some_and(|m| m.rsplit('/').next() == Some(exe_name)))
        .filter(|f| !f["file"].as_str().is_some_and(|file| file.starts_with("/usr/include/")))
        .filter_map(|f| f["function"].as_str().map(str::to_string))
        .collect()
}

/// Leaks through strdup, asprintf, getline and a qsort comparator, after 3,000 deep direct
/// allocations that make frame pointers look usable: built with and without frame pointers,
/// under `auto` and `dwarf`, each leak is counted exactly under the function that called libc,
/// and that function's caller comes next.
#[test]
fn library_callers_are_named() {
    let dir = TestDir::new("stacks_library_callers");
    let builds =
        [("with_fp", vec!["-O2", "-fno-omit-frame-pointer"]), ("without_fp", vec!["-O2", "-fomit-frame-pointer"])];
    let mut failures = Vec::new();
    for (build, flags) in &builds {
        let exe_name = format!("library_callers_{build}");
        let exe = dir.compile_c_with("library_callers.c", &exe_name, flags);
        for unwinder in ["auto", "dwarf"] {
            let run = dir.run(&exe, &[], &Settings::exact().unwinder(unwinder));
            let json = run.program_json();
            let report = run.report();
            report.check_invariants();
            for (function, caller) in [
                ("leak_strdup", "main"),
                ("leak_asprintf", "main"),
                ("leak_getline", "main"),
                ("leaky_compare", "leak_in_compare"),
            ] {
                let want = (
                    get_u64(&json, &format!("/sites/{function}/bytes")),
                    get_u64(&json, &format!("/sites/{function}/count")),
                );
                let sites = report.sites_through(function);
                let got = report.exact_sum(&sites);
                if got != want {
                    failures.push(format!(
                        "{build}, {unwinder}: {function} leaked {want:?} (bytes, blocks), the report has {got:?} through it\n{}",
                        report.site_summary()
                    ));
                    continue;
                }
                for s in &sites {
                    let own = program_functions(s, &exe_name);
                    let at = own.iter().position(|f| function_is(f, function));
                    let next = at.and_then(|i| own.get(i + 1));
                    if at != Some(0) || !next.is_some_and(|n| function_is(n, caller)) {
                        failures.push(format!(
                            "{build}, {unwinder}: a site of {function} has program frames {own:?}; expected {function} first, then {caller}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
