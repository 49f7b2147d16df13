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
/// under `auto`, `fp` and `dwarf`, each leak is counted exactly under the function that called
/// libc, and that function's caller comes next.
#[test]
fn library_callers_are_named() {
    callers_are_named(
        "stacks_library_callers",
        "library_callers.c",
        &[
            ("leak_strdup", "main"),
            ("leak_asprintf", "main"),
            ("leak_getline", "main"),
            ("leaky_compare", "leak_in_compare"),
        ],
    );
}

/// The same through libstdc++ (built without frame pointers): `new Obj`, `new std::string(200,
/// 'x')`, `std::vector<int>::reserve` and `std::map` inserts, each from its own function: exact
/// counts per function (operator new and libstdc++ frames before it), main next.
#[test]
fn cxx_library_callers_are_named() {
    callers_are_named(
        "stacks_cxx_callers",
        "cxx_callers.cpp",
        &[("leak_new_obj", "main"), ("leak_string", "main"), ("leak_vector_reserve", "main"), ("leak_map", "main")],
    );
}

/// Build `source` at -O2 with and without frame pointers; under every unwinder, in exact mode,
/// each (function, caller) leak must be counted exactly through `function`, and in each of its
/// sites the first program frame is `function`, the next `caller`.
fn callers_are_named(name: &str, source: &str, leaks: &[(&str, &str)]) {
    let dir = TestDir::new(name);
    let builds =
        [("with_fp", vec!["-O2", "-fno-omit-frame-pointer"]), ("without_fp", vec!["-O2", "-fomit-frame-pointer"])];
    let mut failures = Vec::new();
    for (build, flags) in &builds {
        let exe_name = format!("{}_{build}", source.split('.').next().unwrap_or(source));
        let exe = if source.ends_with(".cpp") {
            let exe = dir.path.join(&exe_name);
            let src = leaktrace_tests::repo().programs.join(source);
            let out = std::process::Command::new("c++")
                .args(["-g", "-Wall"])
                .args(flags)
                .arg("-o")
                .arg(&exe)
                .arg(&src)
                .output()
                .expect("run c++");
            assert!(out.status.success(), "c++ {source}: {}", String::from_utf8_lossy(&out.stderr));
            exe
        } else {
            dir.compile_c_with(source, &exe_name, flags)
        };
        for unwinder in ["auto", "fp", "dwarf"] {
            let run = dir.run(&exe, &[], &Settings::exact().unwinder(unwinder));
            let json = run.program_json();
            let report = run.report();
            report.check_invariants();
            // Allocator entry points are stripped like malloc's own frames: frames[0] is the code
            // that asked for memory, never operator new.
            for s in report.sites() {
                let top = s.top_function().unwrap_or("");
                if top.starts_with("operator new") || top.starts_with("_Znw") || top.starts_with("_Zna") {
                    failures.push(format!("{build}, {unwinder}: a site's frames[0] is {top:?}"));
                }
            }
            for &(function, caller) in leaks {
                // A block whose size is the library's business (fopen's FILE) has a count only.
                let bytes = json.pointer(&format!("/sites/{function}/bytes")).and_then(|b| b.as_u64());
                let want = (bytes, get_u64(&json, &format!("/sites/{function}/count")));
                let sites = report.sites_through(function);
                let (b, n) = report.exact_sum(&sites);
                let got = (bytes.map(|_| b), n);
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

/// `leak-analyze run -- CMD`: the program runs under the preload without LD_PRELOAD typed by
/// hand, its exit status passes through, and its trace (named with its pid, which `run` keeps
/// by exec'ing it) reports its leaks.
#[test]
fn run_traces_a_command_and_passes_its_exit_status() {
    use leaktrace_tests::{analyze, report_of};
    let dir = TestDir::new("stacks_run");
    let exe = dir.compile_c_with("library_callers.c", "library_callers", &["-O2"]);
    let pattern = dir.path.join("t.%p.lt");
    let timeout = std::time::Duration::from_secs(60);
    let out = analyze(
        &[
            std::ffi::OsStr::new("run"),
            "--sample-bytes".as_ref(),
            "1".as_ref(),
            "-o".as_ref(),
            pattern.as_os_str(),
            "--".as_ref(),
            exe.as_os_str(),
        ],
        timeout,
    );
    assert!(out.status.success(), "{}", out.describe());
    let json = out.json_line();
    let line =
        out.stderr_lines_starting("leak-analyze run: tracing").first().map(|l| l.to_string()).unwrap_or_default();
    let trace = std::path::PathBuf::from(line.rsplit(" into ").next().unwrap_or(""));
    assert!(trace.is_file(), "run named {} as the trace, which does not exist\n{}", trace.display(), out.describe());
    let report = report_of(&trace, &dir.path.join("run.report.json"));
    report.assert_exact(
        "leaky_compare",
        get_u64(&json, "/sites/leaky_compare/bytes"),
        get_u64(&json, "/sites/leaky_compare/count"),
    );
    let status = analyze(
        &[
            std::ffi::OsStr::new("run"),
            "-o".as_ref(),
            pattern.as_os_str(),
            "--".as_ref(),
            "/bin/sh".as_ref(),
            "-c".as_ref(),
            "exit 7".as_ref(),
        ],
        timeout,
    );
    assert_eq!(status.status.code(), Some(7), "{}", status.describe());
}

/// Sites are source locations: both arms of a conditional on one line, and a loop unrolled into
/// several call instructions, are one site each, with all of their bytes (exact mode, -O0 and
/// -O2). The raw stacks a site merges stay listed in the JSON.
#[test]
fn one_source_line_is_one_site() {
    let dir = TestDir::new("stacks_same_line");
    let mut failures = Vec::new();
    for opt in ["-O0", "-O2"] {
        let exe = dir.compile_c_with("same_line.c", &format!("same_line{opt}"), &[opt]);
        let run = dir.run(&exe, &[], &Settings::exact());
        let json = run.program_json();
        let report = run.report();
        report.check_invariants();
        for function in ["leak_both_arms", "leak_unrolled"] {
            let sites = report.sites_allocated_in(function);
            let want = (
                get_u64(&json, &format!("/sites/{function}/bytes")),
                get_u64(&json, &format!("/sites/{function}/count")),
            );
            let got = report.exact_sum(&sites);
            if sites.len() != 1 || got != want {
                failures.push(format!(
                    "{opt}: {function}: {} site(s) holding {got:?} (bytes, blocks); expected one holding {want:?}\n{}",
                    sites.len(),
                    report.site_summary()
                ));
            }
        }
        let merged = report.sites_allocated_in("leak_both_arms");
        if let Some(s) = merged.first() {
            let stacks = s.json["stacks"].as_array().map_or(0, Vec::len);
            if stacks < 2 {
                failures
                    .push(format!("{opt}: leak_both_arms merges two call instructions but lists {stacks} raw stacks"));
            }
            // The HTML lists them under the site's stack too.
            let html_path = dir.path.join(format!("report{opt}.html"));
            let html = leaktrace_tests::analyze(
                &[
                    std::ffi::OsStr::new("report"),
                    run.trace.as_os_str(),
                    "--format".as_ref(),
                    "html".as_ref(),
                    "-o".as_ref(),
                    html_path.as_os_str(),
                ],
                std::time::Duration::from_secs(60),
            );
            let page = std::fs::read_to_string(&html_path).unwrap_or_default();
            let first = s.json["stacks"][0][0].as_str().unwrap_or("?");
            if !html.status.success()
                || !page.contains(&format!("reached by {stacks} call stacks"))
                || !page.contains(first)
            {
                failures.push(format!("{opt}: the HTML does not list leak_both_arms's {stacks} raw stacks"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Suppressions: the runtime's one-time allocations (stdio's buffer here) are left out of the
/// list by a built-in rule and counted under `suppressed`, never out of the totals;
/// `--no-default-suppressions` lists them; `--suppressions FILE` leaves out the user's own.
#[test]
fn suppressed_sites_are_counted_apart() {
    use leaktrace_tests::{analyze, Report};
    let dir = TestDir::new("stacks_suppressions");
    let exe = dir.compile("entry_points.c");
    let run = dir.run(&exe, &[], &Settings::exact());
    let report = run.report();
    let timeout = std::time::Duration::from_secs(60);
    let json_of = |extra: &[&str]| -> Report {
        let mut args: Vec<std::ffi::OsString> =
            vec!["report".into(), run.trace.clone().into(), "--format".into(), "json".into()];
        args.extend(extra.iter().map(std::ffi::OsString::from));
        let out = analyze(&args, timeout);
        assert!(out.status.success(), "{}", out.describe());
        Report::from_json(&out.stdout, &format!("report {extra:?}"))
    };
    let stdio = |r: &Report| {
        r.sites_allocated_in("_IO_file_doallocate").len() + r.sites_allocated_in("__GI__IO_file_doallocate").len()
    };
    assert_eq!(stdio(&report), 0, "stdio's buffer is suppressed by default\n{}", report.site_summary());
    let suppressed = (report.int("/suppressed/bytes"), report.int("/suppressed/sites"));
    assert!(suppressed.0 >= 1024 && suppressed.1 >= 1, "suppressed: {suppressed:?}");
    let listed = report.exact_sum(&report.sites()).0;
    assert_eq!(listed + suppressed.0, report.int("/totals/unfreed_bytes"), "totals keep suppressed memory");

    let everything = json_of(&["--no-default-suppressions"]);
    assert!(stdio(&everything) >= 1, "--no-default-suppressions lists stdio's buffer\n{}", everything.site_summary());
    assert_eq!(everything.int("/suppressed/sites"), 0);

    let file = dir.path.join("mine.supp");
    std::fs::write(&file, "# the program's own, known and accepted\nfun:leak_valloc\nleak:leak_pvalloc\n").unwrap();
    let mine = json_of(&["--suppressions", file.to_str().unwrap()]);
    for f in ["leak_valloc", "leak_pvalloc"] {
        assert!(mine.sites_allocated_in(f).is_empty(), "{f} is suppressed by the file\n{}", mine.site_summary());
    }
    assert!(!mine.sites_allocated_in("leak_malloc").is_empty(), "leak_malloc is not\n{}", mine.site_summary());
    assert_eq!(mine.int("/totals/unfreed_bytes"), report.int("/totals/unfreed_bytes"));

    std::fs::write(&file, "nonsense\n").unwrap();
    let bad = analyze(
        &[std::ffi::OsStr::new("report"), run.trace.as_os_str(), "--suppressions".as_ref(), file.as_os_str()],
        timeout,
    );
    assert_eq!(bad.status.code(), Some(2), "{}", bad.describe());
    assert!(bad.stderr.contains("line 1"), "{}", bad.describe());
}

/// A site has one name in every output: the summary of the JSON, text and watch reports is one
/// sentence, and it, the HTML verdict, JSON `sites[].name` and the diff name the same site by
/// the same frame and line. The largest site of cxx_callers (vector<int>::reserve's storage)
/// reaches malloc through operator new, which every output skips alike.
#[test]
fn every_output_names_the_same_site() {
    use leaktrace_tests::analyze;
    let dir = TestDir::new("stacks_one_name");
    let exe = dir.path.join("cxx_callers");
    let src = leaktrace_tests::repo().programs.join("cxx_callers.cpp");
    let out = std::process::Command::new("c++").args(["-g", "-O2", "-o"]).arg(&exe).arg(&src).output().expect("c++");
    assert!(out.status.success(), "c++: {}", String::from_utf8_lossy(&out.stderr));
    let run = dir.run(&exe, &[], &Settings::exact());
    let report = run.report();
    report.check_invariants();
    let summary = report.str("/summary").to_string();
    let first = report.sites()[0];
    let name = first.json["name"].as_str().unwrap_or_else(|| report.fail("sites[0] has no name")).to_string();
    let top = first.top_function().unwrap_or("").to_string();
    let line = first.frames()[0]["line"].as_u64().unwrap_or(0);
    // The named frame is frames[0], past operator new: `std::__new_allocator<int>::allocate`
    // or the like, inlined into leak_vector_reserve, never operator new.
    assert!(!top.starts_with("operator new") && !top.is_empty(), "sites[0] frames[0] is {top:?}");
    assert!(name.starts_with(&format!("{top} at ")) && name.ends_with(&format!(":{line}")), "name {name:?}");
    let quoted = format!("`{top}` at {}", name.rsplit(" at ").next().unwrap_or(""));
    assert!(summary.contains(&quoted), "the summary {summary:?} does not name sites[0] ({quoted})");

    let timeout = std::time::Duration::from_secs(60);
    let text = analyze(&[std::ffi::OsStr::new("report"), run.trace.as_os_str()], timeout);
    assert!(text.status.success(), "{}", text.describe());
    assert!(
        text.stdout.lines().any(|l| l == summary),
        "the text report's summary differs from the JSON's\n{}",
        text.stdout
    );

    let watch = analyze(
        &[std::ffi::OsStr::new("watch"), run.trace.as_os_str(), "--iterations".as_ref(), "1".as_ref()],
        timeout,
    );
    assert!(watch.status.success(), "{}", watch.describe());
    assert!(watch.stdout.lines().any(|l| l == summary), "watch's summary differs from the JSON's\n{}", watch.stdout);
    assert!(watch.stdout.contains(&quoted), "watch names sites[0] otherwise\n{}", watch.stdout);

    let html_path = dir.path.join("report.html");
    let html = analyze(
        &[
            std::ffi::OsStr::new("report"),
            run.trace.as_os_str(),
            "--format".as_ref(),
            "html".as_ref(),
            "-o".as_ref(),
            html_path.as_os_str(),
        ],
        timeout,
    );
    assert!(html.status.success(), "{}", html.describe());
    let page = std::fs::read_to_string(&html_path).unwrap();
    let verdict = page.split(r#"id="verdict">"#).nth(1).and_then(|v| v.split("</section>").next()).unwrap_or("");
    let unescape = |s: &str| {
        s.replace("&lt;", "<").replace("&gt;", ">").replace("&#39;", "'").replace("&quot;", "\"").replace("&amp;", "&")
    };
    let label =
        verdict.split("<code>").nth(1).and_then(|s| s.split("</code>").next()).map(unescape).unwrap_or_default();
    assert_eq!(label, top, "the HTML verdict names {label:?}, the JSON and text {top:?}");
    let place = name.rsplit(" at ").next().unwrap_or("");
    assert!(verdict.contains(&format!(">{place}</span>")), "the HTML verdict does not place it at {place}: {verdict}");

    // diff from a trace of another program (same_line.c, C: none of these sites) names the
    // site as the report does.
    let other = dir.compile_c_with("same_line.c", "same_line", &["-O0"]);
    let before = dir.run(&other, &[], &Settings::exact());
    let diff = analyze(&[std::ffi::OsStr::new("diff"), before.trace.as_os_str(), run.trace.as_os_str()], timeout);
    assert!(diff.status.success(), "{}", diff.describe());
    assert!(diff.stdout.contains(&quoted), "diff names sites[0] otherwise than {quoted}\n{}", diff.stdout);
}

/// A site merges the history of every stack on its source location, those whose allocations were
/// all freed included: same_line.c `phases` holds ten blocks from one arm of a conditional for
/// a second, frees them, then leaks five from the other arm. Between the two moments, the site
/// (one, on the conditional's line) went from 10,000 bytes to 5,000, which `diff --from --to`
/// reads from the site's history; without the freed arm it would read 0 -> 5,000.
#[test]
fn a_site_keeps_the_history_of_its_freed_stacks() {
    use leaktrace_tests::analyze;
    let dir = TestDir::new("stacks_phases");
    let exe = dir.compile_c_with("same_line.c", "same_line_phases", &["-O0"]);
    let run = dir.run(&exe, &["phases"], &Settings::exact());
    let report = run.report();
    let sites = report.sites_allocated_in("alloc_either");
    assert_eq!(sites.len(), 1, "one site on alloc_either's line\n{}", report.site_summary());
    assert_eq!((sites[0].exact_bytes(&report), sites[0].exact_allocations(&report)), (5000, 5));
    let timeout = std::time::Duration::from_secs(60);
    let out = analyze(
        &[
            std::ffi::OsStr::new("diff"),
            run.trace.as_os_str(),
            "--from".as_ref(),
            "0.6s".as_ref(),
            "--format".as_ref(),
            "json".as_ref(),
        ],
        timeout,
    );
    assert!(out.status.success(), "{}", out.describe());
    let diff: serde_json::Value = serde_json::from_str(&out.stdout).expect("diff JSON");
    let site = diff["sites"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["frames"][0]["function"].as_str() == Some("alloc_either")))
        .unwrap_or_else(|| panic!("no alloc_either in the diff: {}", out.stdout));
    assert_eq!(
        (site["old_unfreed_bytes"].as_u64(), site["new_unfreed_bytes"].as_u64()),
        (Some(10_000), Some(5_000)),
        "alloc_either's site at 0.6s and at the end: {site}"
    );
}

/// The Debian package (scripts/package, cargo-deb): unpacked into a scratch root, its
/// `leak-analyze run` finds the packaged libleaktrace.so by itself and traces a program, its
/// `report` names the leak, and the man page and completions are there. Skipped, with a note,
/// where cargo-deb is not installed (CI installs it).
#[test]
fn the_debian_package_traces_from_its_installed_files() {
    use leaktrace_tests::{analyze, repo};
    use std::process::Command;
    if !Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success()) {
        eprintln!("NOTE: cargo-deb is not installed (cargo install cargo-deb --locked); the package test is skipped");
        return;
    }
    let dir = TestDir::new("stacks_package");
    let timeout = std::time::Duration::from_secs(300);
    let assets = repo().target.join("assets");
    let a = analyze(&[std::ffi::OsStr::new("assets"), assets.as_os_str()], timeout);
    assert!(a.status.success(), "{}", a.describe());
    let out_dir = dir.path.join("deb");
    let deb = Command::new("cargo")
        .current_dir(&repo().root)
        .args(["deb", "-p", "leak-analyze", "--no-build", "--output"])
        .arg(&out_dir)
        .output()
        .expect("run cargo deb");
    assert!(deb.status.success(), "cargo deb: {}", String::from_utf8_lossy(&deb.stderr));
    let package = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"));
    let package = package.expect("a .deb in the output directory");
    let root = dir.path.join("root");
    let x = Command::new("dpkg-deb").arg("-x").arg(&package).arg(&root).output().expect("run dpkg-deb");
    assert!(x.status.success(), "dpkg-deb -x: {}", String::from_utf8_lossy(&x.stderr));
    for f in [
        "usr/bin/leak-analyze",
        "usr/lib/leaktrace/libleaktrace.so",
        "usr/share/man/man1/leak-analyze.1.gz",
        "usr/share/bash-completion/completions/leak-analyze",
        "usr/share/zsh/vendor-completions/_leak-analyze",
        "usr/share/fish/vendor_completions.d/leak-analyze.fish",
        "usr/share/doc/leaktrace/examples/leaktrace.rules.yml",
        "usr/share/doc/leaktrace/examples/leaktrace-dashboard.json",
    ] {
        assert!(root.join(f).is_file(), "the package has no {f}");
    }
    let installed = root.join("usr/bin/leak-analyze");
    let exe = dir.compile_c_with("library_callers.c", "library_callers", &["-O2"]);
    let pattern = dir.path.join("t.%p.lt");
    let run = Command::new(&installed)
        .args(["run", "--sample-bytes", "1", "-o"])
        .arg(&pattern)
        .arg("--")
        .arg(&exe)
        .env_remove("LEAKTRACE_LIB")
        .output()
        .expect("run the packaged leak-analyze");
    assert!(run.status.success(), "packaged run: {}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    let trace = stderr.lines().find_map(|l| l.rsplit_once(" into ").map(|(_, p)| p.to_string())).unwrap_or_default();
    let report = Command::new(&installed).args(["report", "--format", "json"]).arg(&trace).output().expect("report");
    assert!(report.status.success(), "packaged report on {trace}: {}", String::from_utf8_lossy(&report.stderr));
    let r = leaktrace_tests::Report::from_json(&String::from_utf8_lossy(&report.stdout), "packaged report");
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).expect("the program's JSON line");
    r.assert_exact(
        "leaky_compare",
        get_u64(&json, "/sites/leaky_compare/bytes"),
        get_u64(&json, "/sites/leaky_compare/count"),
    );

    // attach and detach from the installed files too: the packaged library is found and loaded.
    use std::io::{BufRead, Write};
    let target = dir.compile("attach_target.c");
    let mut svc = Command::new(&target)
        .arg("read")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the attach target");
    let mut input = svc.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(svc.stdout.take().unwrap()).lines();
    let mut next_line = || output.next().and_then(Result::ok).unwrap_or_default();
    assert!(next_line().starts_with("ready"));
    let packaged = |args: &[String]| {
        let out = Command::new(&installed).args(args).env_remove("LEAKTRACE_LIB").output().expect("packaged");
        assert!(out.status.success(), "packaged {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string()
    };
    let pattern = dir.path.join("att.%p.lt").display().to_string();
    let pid = svc.id().to_string();
    let trace = packaged(&["attach".into(), pid.clone(), "-o".into(), pattern, "--sample-bytes".into(), "1".into()]);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(maps.contains("usr/lib/leaktrace/libleaktrace.so"), "the packaged library is not the one loaded");
    writeln!(input, "leak 6").unwrap();
    assert_eq!(next_line(), "leaked 6");
    assert_eq!(packaged(&["detach".into(), pid]), trace);
    writeln!(input, "quit").unwrap();
    let _ = next_line();
    assert!(svc.wait().unwrap().success());
    let report = Command::new(&installed).args(["report", "--format", "json"]).arg(&trace).output().expect("report");
    let r = leaktrace_tests::Report::from_json(&String::from_utf8_lossy(&report.stdout), "packaged attach report");
    r.assert_exact("remember_request", 6 * 128, 6);
}
