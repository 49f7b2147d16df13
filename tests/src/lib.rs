//! Helpers for leaktrace's end-to-end tests (the pattern of ripgrep's `tests/util.rs`).
//!
//! A test makes a [`TestDir`] (a fresh scratch directory under `target/lt-tests/<name>/`),
//! compiles one of the small leaking programs of `tests/programs/` into it, runs it under
//! `libleaktrace.so` with every `LEAKTRACE_*` variable set explicitly ([`Settings`]), and reads
//! `leak-analyze report TRACE --format json` back as a [`Report`].
//!
//! Each program prints on stdout one JSON line of what it knows it leaked; tests compare the
//! report with those numbers rather than with constants repeated here.
//!
//! Every failure panics with enough context to diagnose it without re-running: the command,
//! the program's stderr, the analyzer's stderr, and the path of the saved report.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a traced program or the analyzer may run before the test gives up on it.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Most a JSON report or stderr is echoed into a panic message.
const ECHO_LIMIT: usize = 6000;

// ---------------------------------------------------------------------------------------------
// The repository and its build products

/// Paths of the workspace and of the two release build products under test.
pub struct Repo {
    pub root: PathBuf,
    /// Cargo's target directory; scratch directories go in `<target>/lt-tests/`.
    pub target: PathBuf,
    pub preload: PathBuf,
    pub analyzer: PathBuf,
    pub programs: PathBuf,
}

/// The repository, checked once: both build products must exist.
pub fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.parent().expect("tests/ has a parent directory").to_path_buf();
        let target = target_dir(&root);
        let release = target.join("release");
        let preload = release.join("libleaktrace.so");
        let analyzer = release.join("leak-analyze");
        for p in [&preload, &analyzer] {
            assert!(
                p.is_file(),
                "{} does not exist: run `cargo build --release` first (these tests use the release \
                 build products, whatever profile the tests themselves are built with)",
                p.display()
            );
        }
        // `cargo test -p leaktrace-tests` does not rebuild them: refuse to test stale ones.
        if std::env::var_os("LEAKTRACE_TESTS_ALLOW_STALE").is_none() {
            for (artifact, crates) in
                [(&preload, &["preload", "tracer", "format"][..]), (&analyzer, &["analyzer", "format"][..])]
            {
                let built = mtime(artifact);
                for c in crates {
                    if let Some((newer, t)) = newest_source(&root.join(c)) {
                        assert!(
                            t <= built,
                            "{} is older than {}: run `cargo build --release` first \
                             (or set LEAKTRACE_TESTS_ALLOW_STALE=1 to test it anyway)",
                            artifact.display(),
                            newer.display()
                        );
                    }
                }
            }
        }
        Repo { programs: manifest.join("programs"), root, target, preload, analyzer }
    })
}

/// `$CARGO_TARGET_DIR` if set (relative to the workspace root), else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH)
}

/// The most recently modified file a crate's library or binaries are built from: its
/// `Cargo.toml`, `build.rs` and the `*.rs` under `src/` (not its tests or benches).
fn newest_source(dir: &Path) -> Option<(PathBuf, std::time::SystemTime)> {
    let mut best: Option<(PathBuf, std::time::SystemTime)> = None;
    for f in ["Cargo.toml", "build.rs"] {
        let p = dir.join(f);
        if p.is_file() {
            let t = mtime(&p);
            if best.as_ref().map(|(_, bt)| t > *bt) != Some(false) {
                best = Some((p, t));
            }
        }
    }
    let mut stack = vec![dir.join("src")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let t = mtime(&p);
                let newer = match &best {
                    Some((_, bt)) => t > *bt,
                    None => true,
                };
                if newer {
                    best = Some((p, t));
                }
            }
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// Scratch directories and compilation

/// A scratch directory for one test, emptied when made: `target/lt-tests/<name>/` (under
/// `$CARGO_TARGET_DIR` when that is set).
/// Names must be unique across the suite so tests can run in parallel.
pub struct TestDir {
    pub path: PathBuf,
    pub name: String,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let path = repo().target.join("lt-tests").join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("cannot empty {}: {e}", path.display()));
        }
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TestDir { path, name: name.to_string() }
    }

    /// Compile `tests/programs/<source>` into this directory and return the executable.
    ///
    /// `.c` with `cc`, `.cpp` with `c++` (both `-g -O0 -fno-omit-frame-pointer -pthread`), `.rs`
    /// with `rustc -g -C opt-level=0 -C force-frame-pointers=yes`.
    pub fn compile(&self, source: &str) -> PathBuf {
        let src = repo().programs.join(source);
        assert!(src.is_file(), "no test program {}", src.display());
        let stem = Path::new(source).file_stem().unwrap().to_string_lossy().into_owned();
        let exe = self.path.join(&stem);
        let mut cmd = match Path::new(source).extension().and_then(|e| e.to_str()) {
            Some("c") => {
                let mut c = Command::new(env_or("CC", "cc"));
                c.args(["-g", "-O0", "-fno-omit-frame-pointer", "-pthread", "-Wall", "-o"]).arg(&exe).arg(&src);
                c
            }
            Some("cpp") => {
                let mut c = Command::new(env_or("CXX", "c++"));
                c.args(["-g", "-O0", "-fno-omit-frame-pointer", "-pthread", "-Wall", "-o"]).arg(&exe).arg(&src);
                c
            }
            Some("rs") => {
                let mut c = Command::new(env_or("RUSTC", "rustc"));
                c.args(["-g", "-C", "opt-level=0", "-C", "force-frame-pointers=yes", "--edition", "2021", "-o"])
                    .arg(&exe)
                    .arg(&src);
                c
            }
            _ => panic!("don't know how to compile {source}"),
        };
        run_compiler(&mut cmd, source);
        exe
    }

    /// Every file in the directory whose name starts with `prefix`, sorted.
    pub fn files_starting_with(&self, prefix: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }
}

/// Run a compiler command; a failure panics with its stderr.
fn run_compiler(cmd: &mut Command, source: &str) {
    let out = run_with_timeout(cmd, None);
    assert!(
        out.status.success(),
        "compiling {source} failed ({}):\n$ {}\n--- stderr ---\n{}",
        out.status,
        show_command(cmd),
        clip(&out.stderr)
    );
}

fn env_or(var: &str, default: &str) -> OsString {
    std::env::var_os(var).filter(|v| !v.is_empty()).unwrap_or_else(|| default.into())
}

// ---------------------------------------------------------------------------------------------
// Running a program under the preload

/// The `LEAKTRACE_*` settings of a run. Every one is passed explicitly, so nothing in the
/// environment of whoever runs `cargo test` can change what a test measures.
#[derive(Clone, Debug)]
pub struct Settings {
    pub file_size: String,
    pub sample_bytes: String,
    pub seed: u64,
    pub rss_ms: u64,
    pub start: String,
    /// `LEAKTRACE_UNWINDER`: auto, fp or dwarf.
    pub unwinder: String,
}

impl Settings {
    /// Record every allocation (`LEAKTRACE_SAMPLE_BYTES=1`): estimates are exact.
    pub fn exact() -> Settings {
        Settings {
            file_size: "32M".into(),
            sample_bytes: "1".into(),
            seed: 1,
            rss_ms: 100,
            start: "on".into(),
            unwinder: "auto".into(),
        }
    }

    /// Sample with the default mean of 512 KiB and the given seed.
    pub fn sampled(seed: u64) -> Settings {
        Settings {
            file_size: "16M".into(),
            sample_bytes: "524288".into(),
            seed,
            rss_ms: 100,
            start: "on".into(),
            unwinder: "auto".into(),
        }
    }

    pub fn unwinder(mut self, u: &str) -> Settings {
        self.unwinder = u.into();
        self
    }

    pub fn file_size(mut self, s: &str) -> Settings {
        self.file_size = s.into();
        self
    }
}

/// A finished run of a traced program.
pub struct Run {
    pub exe: PathBuf,
    pub args: Vec<String>,
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The trace file the run produced.
    pub trace: PathBuf,
    /// Wall-clock time (ns since the epoch) just before the spawn and just after the exit.
    pub spawned_unix_ns: u128,
    pub exited_unix_ns: u128,
    /// The test directory, where the report is saved.
    pub dir: PathBuf,
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

impl TestDir {
    /// Run `exe args` under `libleaktrace.so` with `settings`; the program must exit with
    /// status 0 and leave exactly one trace file.
    pub fn run(&self, exe: &Path, args: &[&str], settings: &Settings) -> Run {
        let run = self.run_any_status(exe, args, settings);
        assert!(run.status.success(), "{} exited with {}\n{}", exe.display(), run.status, run.describe());
        run
    }

    /// As [`TestDir::run`], but whatever the exit status.
    pub fn run_any_status(&self, exe: &Path, args: &[&str], settings: &Settings) -> Run {
        let pattern = self.path.join("trace.%p.lt");
        let mut cmd = Command::new(exe);
        cmd.args(args).current_dir(&self.path);
        apply_settings(&mut cmd, &pattern, settings);
        let before = self.files_starting_with("trace.");
        let spawned_unix_ns = unix_ns();
        let out = run_with_timeout(&mut cmd, None);
        let exited_unix_ns = unix_ns();
        let pid = out.pid;
        let mut run = Run {
            exe: exe.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            pid,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            trace: self.path.join(format!("trace.{pid}.lt")),
            spawned_unix_ns,
            exited_unix_ns,
            dir: self.path.clone(),
        };
        let new: Vec<PathBuf> =
            self.files_starting_with("trace.").into_iter().filter(|p| !before.contains(p)).collect();
        assert!(
            run.trace.is_file(),
            "the run produced no trace file {} (new trace files: {new:?}); settings {settings:?}\n{}",
            run.trace.display(),
            run.describe()
        );
        assert_eq!(
            new,
            vec![run.trace.clone()],
            "expected exactly one new trace file, named after the pid\n{}",
            run.describe()
        );
        run.trace = new.into_iter().next().unwrap();
        run
    }
}

impl Run {
    /// What to print when something about this run is wrong.
    pub fn describe(&self) -> String {
        format!(
            "$ {} {}\n(pid {}, {}; trace {})\n--- program stdout ---\n{}\n--- program stderr ---\n{}",
            self.exe.display(),
            self.args.join(" "),
            self.pid,
            self.status,
            self.trace.display(),
            clip(self.stdout.as_bytes()),
            clip(self.stderr.as_bytes())
        )
    }

    /// The program's own account of what it leaked: the last stdout line that is a JSON object.
    pub fn program_json(&self) -> Value {
        last_json_line(&self.stdout, || self.describe())
    }

    /// `leak-analyze report TRACE --format json`, parsed. The analyzer must succeed.
    pub fn report(&self) -> Report {
        let r = repo();
        let mut cmd = Command::new(&r.analyzer);
        cmd.arg("report").arg(&self.trace).args(["--format", "json"]);
        let out = run_with_timeout(&mut cmd, None);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "the analyzer failed ({}):\n$ {}\n--- analyzer stderr ---\n{}\n--- analyzer stdout ---\n{}\n{}",
            out.status,
            show_command(&cmd),
            clip(stderr.as_bytes()),
            clip(stdout.as_bytes()),
            self.describe()
        );
        let saved = self.dir.join(format!("report.{}.json", self.pid));
        let _ = std::fs::write(&saved, &stdout);
        let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "the analyzer's output is not JSON ({e}); saved in {}\n$ {}\n--- analyzer stderr ---\n{}\n--- analyzer stdout ---\n{}",
                saved.display(),
                show_command(&cmd),
                clip(stderr.as_bytes()),
                clip(stdout.as_bytes())
            )
        });
        let context = format!(
            "report saved in {}\n--- analyzer stderr ---\n{}\n{}",
            saved.display(),
            clip(stderr.as_bytes()),
            self.describe()
        );
        Report::typed(json, context)
    }

    /// The trace file's size in bytes.
    pub fn trace_len(&self) -> u64 {
        std::fs::metadata(&self.trace).unwrap().len()
    }

    /// A little-endian u64 of the trace file's header at byte `offset` (FORMAT.md; the offsets
    /// are `leaktrace_format::layout::hdr`).
    pub fn trace_header_u64(&self, offset: usize) -> u64 {
        let mut f = std::fs::File::open(&self.trace).unwrap();
        let mut head = vec![0u8; 4096];
        f.read_exact(&mut head).unwrap();
        u64::from_le_bytes(head[offset..offset + 8].try_into().unwrap())
    }
}

// ---------------------------------------------------------------------------------------------
// The report

/// A parsed `leak-analyze report --format json`, with the context to print on failure.
///
/// `typed` is the analyzer's own [`leak_analyze::report::Report`], the type that serializes the
/// JSON: a report that does not deserialize into it fails the test (the JSON is an interface).
/// The helpers below read it; `json` is kept for the odd field a test looks at directly.
pub struct Report {
    pub json: Value,
    pub typed: leak_analyze::report::Report,
    /// Where the report is saved, the analyzer's stderr, the program's output.
    pub context: String,
}

/// Does a symbolized function name denote `name`? Exact for C; for C++ the parameter list is
/// ignored (`leak_new()`), for both C++ and Rust the path (`ns::leak_box`).
pub fn function_is(function: &str, name: &str) -> bool {
    let base = match function.find('(') {
        Some(i) => &function[..i],
        None => function,
    };
    // A legacy-mangled Rust name may keep its hash: `crate::leak_box::h0123456789abcdef`.
    let base = match base.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => head,
        _ => base,
    };
    let base = base.rsplit("::").next().unwrap_or(base);
    base == name
}

impl Report {
    /// A report from the analyzer's JSON output; `what` says where it came from in failures.
    pub fn from_json(text: &str, what: &str) -> Report {
        let json: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e})\n{}", clip(text.as_bytes())));
        Report::typed(json, what.to_string())
    }

    /// The report whose JSON is `json`, read into the analyzer's own type too.
    pub fn typed(json: Value, context: String) -> Report {
        let typed = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("the JSON does not match the analyzer's Report type ({e})\n{context}"));
        Report { json, typed, context }
    }

    /// Panic with `msg` and the report's context.
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{msg}\n--- sites ---\n{}\n{}", self.site_summary(), self.context)
    }

    /// A JSON value at a `/`-separated pointer, which must exist.
    pub fn at(&self, pointer: &str) -> &Value {
        self.json.pointer(pointer).unwrap_or_else(|| self.fail(format!("the report has no {pointer}")))
    }

    pub fn num(&self, pointer: &str) -> f64 {
        let v = self.at(pointer);
        v.as_f64().unwrap_or_else(|| self.fail(format!("{pointer} is not a number: {v}")))
    }

    /// An integer-valued number (exact mode): `5` or `5.0`, never `5.5`.
    pub fn int(&self, pointer: &str) -> u64 {
        let v = self.at(pointer);
        as_exact_u64(v).unwrap_or_else(|| self.fail(format!("{pointer} is not a non-negative integer: {v}")))
    }

    pub fn str(&self, pointer: &str) -> &str {
        let v = self.at(pointer);
        v.as_str().unwrap_or_else(|| self.fail(format!("{pointer} is not a string: {v}")))
    }

    pub fn sites(&self) -> Vec<Site<'_>> {
        let arr = self.at("/sites").as_array().unwrap_or_else(|| self.fail("`sites` is not an array"));
        arr.iter().zip(&self.typed.sites).map(|(json, typed)| Site { json, typed }).collect()
    }

    /// Sites whose first frame (the caller of the allocation function) is in `function`.
    pub fn sites_allocated_in(&self, function: &str) -> Vec<Site<'_>> {
        self.sites().into_iter().filter(|s| s.top_function().is_some_and(|f| function_is(f, function))).collect()
    }

    /// Sites with `function` anywhere in their stack.
    pub fn sites_through(&self, function: &str) -> Vec<Site<'_>> {
        self.sites().into_iter().filter(|s| s.has_function(function)).collect()
    }

    /// Sum of `unfreed_bytes` and of `unfreed_allocations` over `sites`.
    pub fn sum(&self, sites: &[Site<'_>]) -> (f64, f64) {
        sites.iter().fold((0.0, 0.0), |(b, n), s| (b + s.unfreed_bytes(self), n + s.unfreed_allocations(self)))
    }

    /// As [`Report::sum`], every value required to be integer-valued (exact mode).
    pub fn exact_sum(&self, sites: &[Site<'_>]) -> (u64, u64) {
        sites.iter().fold((0, 0), |(b, n), s| (b + s.exact_bytes(self), n + s.exact_allocations(self)))
    }

    /// In exact mode the sites allocated in `function` hold exactly `bytes` in `count` blocks.
    pub fn assert_exact(&self, function: &str, bytes: u64, count: u64) {
        let sites = self.sites_allocated_in(function);
        if sites.is_empty() {
            self.fail(format!("no site for {function}, which leaked {bytes} bytes in {count} blocks"));
        }
        let got = self.exact_sum(&sites);
        if got != (bytes, count) {
            self.fail(format!(
                "{function}: the report says {} bytes in {} blocks; the program leaked {bytes} in {count}",
                got.0, got.1
            ));
        }
    }

    /// Properties every report must have, whatever the program:
    /// - the documented top-level fields exist;
    /// - every site has an id (unique), a non-empty stack, numbers where numbers are due;
    /// - every frame's address is `0x` hex and no frame belongs to libleaktrace.so (its frames
    ///   are stripped, so frames[0] is the caller of the allocation function);
    /// - growing sites come first, and the others are ordered by unfreed_bytes, largest first.
    pub fn check_invariants(&self) {
        // The documented fields exist: deserializing into the analyzer's own type checked that.
        // Counts and byte figures are integers in the JSON (README); rates and confidences may
        // be fractional.
        let fractional = non_integer_numbers(&self.json);
        if !fractional.is_empty() {
            self.fail(format!("counts and byte figures that are not integers: {}", fractional.join(", ")));
        }
        let mut ids = std::collections::HashSet::new();
        let sites = self.sites();
        for site in &sites {
            let id = site.typed.id;
            if !ids.insert(id) {
                self.fail(format!("site id {id} appears twice"));
            }
            if site.typed.frames.is_empty() {
                self.fail(format!("site {id} has no frames"));
            }
            for (f, raw) in site.typed.frames.iter().zip(site.frames()) {
                let hex_ok =
                    f.address.strip_prefix("0x").is_some_and(|h| !h.is_empty() && u64::from_str_radix(h, 16).is_ok());
                if !hex_ok {
                    self.fail(format!("site {id}: frame address {:?} is not 0x-prefixed hex", f.address));
                }
                if f.module.as_deref().is_some_and(|m| m.ends_with("libleaktrace.so")) {
                    self.fail(format!("site {id}: a frame of libleaktrace.so itself was not stripped: {raw}"));
                }
                // Unknown parts are written as null, not left out.
                for key in ["function", "file", "line"] {
                    if raw.get(key).is_none() {
                        self.fail(format!("site {id}: frame without `{key}` (null when unknown): {raw}"));
                    }
                }
            }
        }
        let mut seen_steady = false;
        let mut prev_bytes = f64::INFINITY;
        for site in &sites {
            let bytes = site.typed.unfreed_bytes;
            if site.typed.growing {
                if seen_steady {
                    self.fail("a growing site comes after a site that is not growing");
                }
                continue;
            }
            if seen_steady && bytes > prev_bytes {
                self.fail(format!("sites are not ordered by unfreed_bytes: {bytes} after {prev_bytes}"));
            }
            seen_steady = true;
            prev_bytes = bytes;
        }
    }

    /// None of `functions` may be on the stack of a site with unfreed memory: everything they
    /// allocated was freed.
    pub fn assert_not_leaking<S: AsRef<str>>(&self, functions: &[S]) {
        for f in functions {
            let f = f.as_ref();
            for site in self.sites_through(f) {
                if site.unfreed_allocations(self) > 0.0 || site.unfreed_bytes(self) > 0.0 {
                    self.fail(format!(
                        "{f} freed everything it allocated, yet a site through it is reported with {} bytes in {} allocations",
                        site.unfreed_bytes(self),
                        site.unfreed_allocations(self)
                    ));
                }
            }
        }
    }

    /// One line per site: bytes, allocations, and the first few frames.
    pub fn site_summary(&self) -> String {
        let mut s = String::new();
        for (i, site) in self.typed.sites.iter().enumerate() {
            if i == 40 {
                let _ = writeln!(s, "... {} more", self.typed.sites.len() - 40);
                break;
            }
            let frames: Vec<String> = site.frames.iter().take(6).map(frame_text).collect();
            let _ = writeln!(
                s,
                "#{} bytes={} allocs={} growing={} :: {}",
                site.id,
                site.unfreed_bytes,
                site.unfreed_allocations,
                site.growing,
                frames.join(" <- ")
            );
        }
        s
    }
}

fn frame_text(f: &leak_analyze::report::FrameOut) -> String {
    let func = f.function.as_deref().unwrap_or("?");
    match (&f.file, f.line) {
        (Some(file), Some(line)) => {
            let short = file.rsplit('/').next().unwrap_or(file);
            format!("{func} ({short}:{line})")
        }
        _ => format!("{func} [{}]", f.module.as_deref().unwrap_or("?")),
    }
}

/// The fields of a report or diff whose numbers may have fractions (README: rates and
/// confidences). Every other number is a count or a byte figure (or a time in ns): an integer.
pub const FRACTIONAL_FIELDS: &[&str] = &["growth_bytes_per_sec", "trend_confidence", "explained_fraction"];

/// Where `json` holds a number that is not written as an integer (`39.0` counts as not),
/// outside [`FRACTIONAL_FIELDS`]: JSON pointers with their values.
pub fn non_integer_numbers(json: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &str, key: &str, out: &mut Vec<String>) {
        match v {
            Value::Number(n) if !(n.is_u64() || n.is_i64() || FRACTIONAL_FIELDS.contains(&key)) => {
                out.push(format!("{path} = {n}"))
            }
            Value::Array(a) => a.iter().enumerate().for_each(|(i, e)| walk(e, &format!("{path}/{i}"), key, out)),
            Value::Object(o) => o.iter().for_each(|(k, e)| walk(e, &format!("{path}/{k}"), k, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(json, "", "", &mut out);
    out
}

/// `v` as a non-negative integer, accepting a float only if it has no fractional part (the
/// reports of analyzers before the JSON's figures were integers wrote `39.0`).
pub fn as_exact_u64(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f < 9.0e15).then_some(f as u64)
}

/// One entry of the report's `sites`: the analyzer's typed site, and its JSON.
#[derive(Clone, Copy)]
pub struct Site<'a> {
    pub json: &'a Value,
    pub typed: &'a leak_analyze::report::SiteOut,
}

impl<'a> Site<'a> {
    pub fn frames(&self) -> &'a [Value] {
        self.json.get("frames").and_then(|f| f.as_array()).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn top_function(&self) -> Option<&'a str> {
        self.typed.frames.first()?.function.as_deref()
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.typed.frames.iter().any(|f| f.function.as_deref().is_some_and(|s| function_is(s, name)))
    }

    pub fn unfreed_bytes(&self, _report: &Report) -> f64 {
        self.typed.unfreed_bytes
    }

    pub fn unfreed_allocations(&self, _report: &Report) -> f64 {
        self.typed.unfreed_allocations
    }

    pub fn exact_bytes(&self, report: &Report) -> u64 {
        exact(self.typed.unfreed_bytes)
            .unwrap_or_else(|| report.fail(format!("unfreed_bytes is not an integer in exact mode: {}", self.json)))
    }

    pub fn exact_allocations(&self, report: &Report) -> u64 {
        exact(self.typed.unfreed_allocations).unwrap_or_else(|| {
            report.fail(format!("unfreed_allocations is not an integer in exact mode: {}", self.json))
        })
    }

    pub fn unfreed_bytes_ci95(&self, _report: &Report) -> f64 {
        self.typed.unfreed_bytes_ci95
    }

    pub fn sampled_unfreed(&self, _report: &Report) -> u64 {
        self.typed.sampled_unfreed
    }
}

/// A figure that must be a whole non-negative number.
fn exact(v: f64) -> Option<u64> {
    (v >= 0.0 && v.fract() == 0.0 && v < 9.0e15).then_some(v as u64)
}

// ---------------------------------------------------------------------------------------------
// The program's JSON

/// `json[key]` as an integer, with a clear message when absent.
pub fn get_u64(json: &Value, pointer: &str) -> u64 {
    json.pointer(pointer)
        .and_then(as_exact_u64)
        .unwrap_or_else(|| panic!("the program's JSON has no integer at {pointer}: {json}"))
}

// ---------------------------------------------------------------------------------------------
// Processes

struct Output {
    pid: u32,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Spawn `cmd` with captured output and wait at most `timeout` (default [`TIMEOUT`]); a
/// program still running then is killed and the test fails.
fn run_with_timeout(cmd: &mut Command, timeout: Option<Duration>) -> Output {
    run_watching(cmd, timeout, &mut |_| {})
}

/// As [`run_with_timeout`], calling `watch` with the child's pid every few milliseconds while
/// it runs (and once more just before it is reaped).
fn run_watching(cmd: &mut Command, timeout: Option<Duration>, watch: &mut dyn FnMut(u32)) -> Output {
    let timeout = timeout.unwrap_or(TIMEOUT);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{}`: {e}", show_command(cmd)));
    let pid = child.id();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        watch(pid);
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "`{}` (pid {pid}) still running after {timeout:?}: killed\n--- stderr ---\n{}",
                show_command(cmd),
                clip(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output { pid, status, stdout: out_reader.join().unwrap_or_default(), stderr: err_reader.join().unwrap_or_default() }
}

fn show_command(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let _ = write!(s, "{}={} ", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    let _ = write!(s, "{}", cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let _ = write!(s, " {}", a.to_string_lossy());
    }
    s
}

fn clip(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() <= ECHO_LIMIT {
        return s.into_owned();
    }
    let mut cut = s.len() - ECHO_LIMIT;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[... {} bytes cut ...]\n{}", cut, &s[cut..])
}

// ---------------------------------------------------------------------------------------------
// Helpers for the safety tests (tests/safety.rs): arbitrary commands, several or no trace
// files, programs left running, the analyzer with any arguments.

/// A finished process: any command, any exit status, output captured.
pub struct Outcome {
    pub command: String,
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// What to print when something about this process is wrong.
    pub fn describe(&self) -> String {
        format!(
            "$ {}\n(pid {}, {}, {:.2?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.pid,
            self.status,
            self.elapsed,
            clip(self.stdout.as_bytes()),
            clip(self.stderr.as_bytes())
        )
    }

    /// The last stdout line that is a JSON object, parsed.
    pub fn json_line(&self) -> Value {
        last_json_line(&self.stdout, || self.describe())
    }

    /// The lines of stderr starting with `prefix`.
    pub fn stderr_lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with(prefix)).collect()
    }
}

/// The last line of `stdout` that is a JSON object, parsed; panics with `describe()` otherwise.
fn last_json_line(stdout: &str, describe: impl Fn() -> String) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line on stdout\n{}", describe()));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("stdout's JSON line does not parse ({e}): {line}\n{}", describe()))
}

/// Run `cmd` to completion, stdin from /dev/null, output captured; a process still running
/// after `timeout` is killed and the test fails (a hang is a failure, not a wait).
pub fn run_command(cmd: &mut Command, timeout: Duration) -> Outcome {
    run_command_watching(cmd, timeout, &mut |_| {})
}

/// As [`run_command`], calling `watch` with the child's pid while it runs (see [`run_watching`]).
fn run_command_watching(cmd: &mut Command, timeout: Duration, watch: &mut dyn FnMut(u32)) -> Outcome {
    let start = Instant::now();
    let out = run_watching(cmd, Some(timeout), watch);
    Outcome {
        command: show_command(cmd),
        pid: out.pid,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// `leak-analyze ARGS`, whatever its exit status, within `timeout`.
pub fn analyze<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> Outcome {
    let mut cmd = Command::new(&repo().analyzer);
    cmd.args(args);
    run_command(&mut cmd, timeout)
}

/// `leak-analyze ARGS`, as [`analyze`], and the most memory it held resident, in KiB: the
/// kernel's high-water mark (VmHWM), read from /proc every few milliseconds while it runs. A
/// peak reached in its last milliseconds could go unseen: this may read low, never high.
pub fn analyze_peak_rss<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> (Outcome, u64) {
    let mut cmd = Command::new(&repo().analyzer);
    cmd.args(args);
    let mut peak_kib = 0;
    let outcome =
        run_command_watching(&mut cmd, timeout, &mut |pid| peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0)));
    (outcome, peak_kib)
}

/// VmHWM of a running process, in KiB (None once it has exited: a zombie has no memory).
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// `leak-analyze report TRACE --format json`, which must succeed with JSON; saved as
/// `save_as` for inspection.
pub fn report_of(trace: &Path, save_as: &Path) -> Report {
    let out = analyze(&[OsString::from("report"), trace.into(), "--format".into(), "json".into()], TIMEOUT);
    let _ = std::fs::write(save_as, &out.stdout);
    assert!(out.status.success(), "the analyzer failed on {}\n{}", trace.display(), out.describe());
    let json: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!("the analyzer's output is not JSON ({e}); saved in {}\n{}", save_as.display(), out.describe())
    });
    let context = format!(
        "trace {}, report saved in {}\n--- analyzer stderr ---\n{}",
        trace.display(),
        save_as.display(),
        clip(out.stderr.as_bytes())
    );
    Report::typed(json, context)
}

/// Set `LD_PRELOAD` and every `LEAKTRACE_*` of `settings` on `cmd` (removing any other
/// `LEAKTRACE_*` of the caller's environment), with the trace path `file_pattern`.
pub fn apply_settings(cmd: &mut Command, file_pattern: &Path, settings: &Settings) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LEAKTRACE_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("LD_PRELOAD", &repo().preload)
        .env("LEAKTRACE_FILE", file_pattern)
        .env("LEAKTRACE_FILE_SIZE", &settings.file_size)
        .env("LEAKTRACE_SAMPLE_BYTES", &settings.sample_bytes)
        .env("LEAKTRACE_SEED", settings.seed.to_string())
        .env("LEAKTRACE_RSS_MS", settings.rss_ms.to_string())
        .env("LEAKTRACE_START", &settings.start)
        .env("LEAKTRACE_UNWINDER", &settings.unwinder);
}

/// `cmd` rebuilt as `/bin/sh -c 'SCRIPT; exec PROGRAM ARGS'`, same environment and working
/// directory, except that `LD_PRELOAD` applies only to PROGRAM (the shell itself is not traced).
pub fn via_shell(cmd: &Command, script: &str) -> Command {
    let mut sh = Command::new("/bin/sh");
    let mut preload = None;
    for (k, v) in cmd.get_envs() {
        if k == "LD_PRELOAD" {
            preload = v.map(|v| v.to_os_string());
            sh.env_remove(k);
            continue;
        }
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let exec = match preload {
        Some(p) => {
            sh.env("LT_TEST_PRELOAD", p);
            "LD_PRELOAD=\"$LT_TEST_PRELOAD\" exec \"$0\" \"$@\""
        }
        None => "exec \"$0\" \"$@\"",
    };
    sh.arg("-c").arg(format!("{script}; {exec}")).arg(cmd.get_program()).args(cmd.get_args());
    if let Some(d) = cmd.get_current_dir() {
        sh.current_dir(d);
    }
    sh
}

impl TestDir {
    /// A command for `exe args` under the preload with `settings`, in this directory, tracing
    /// to `trace.%p.lt` here. Callers may add or override environment variables.
    pub fn traced_command<S: AsRef<std::ffi::OsStr>>(&self, exe: &Path, args: &[S], settings: &Settings) -> Command {
        let mut cmd = Command::new(exe);
        cmd.args(args).current_dir(&self.path);
        apply_settings(&mut cmd, &self.path.join("trace.%p.lt"), settings);
        cmd
    }

    /// The same program without the preload and without any `LEAKTRACE_*`: the baseline.
    pub fn untraced_command<S: AsRef<std::ffi::OsStr>>(&self, exe: &Path, args: &[S]) -> Command {
        let mut cmd = Command::new(exe);
        cmd.args(args).current_dir(&self.path).env_remove("LD_PRELOAD");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LEAKTRACE_") {
                cmd.env_remove(&k);
            }
        }
        cmd
    }

    /// The trace files in this directory (`trace.*`, not the saved reports).
    pub fn trace_files(&self) -> Vec<PathBuf> {
        self.files_starting_with("trace.").into_iter().filter(|p| p.extension().is_none_or(|e| e != "json")).collect()
    }

    /// `trace.<pid>.lt` in this directory.
    pub fn trace_of(&self, pid: u32) -> PathBuf {
        self.path.join(format!("trace.{pid}.lt"))
    }

    /// Compile C `tests/programs/<source>` into `<dir>/<out>` with the usual flags
    /// (`-g -O0 -fno-omit-frame-pointer -pthread -Wall`) plus `extra` (e.g. `-shared -fPIC`).
    pub fn compile_c_with(&self, source: &str, out: &str, extra: &[&str]) -> PathBuf {
        let src = repo().programs.join(source);
        assert!(src.is_file(), "no test program {}", src.display());
        let exe = self.path.join(out);
        let mut c = Command::new(env_or("CC", "cc"));
        c.args(["-g", "-O0", "-fno-omit-frame-pointer", "-pthread", "-Wall", "-o"]).arg(&exe).arg(&src).args(extra);
        run_compiler(&mut c, source);
        exe
    }
}

/// A program running in the background, its output collected as it comes. Dropping it kills
/// the process (by its own pid) if it is still running.
pub struct Background {
    child: std::process::Child,
    pub pid: u32,
    command: String,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Background {
    pub fn spawn(cmd: &mut Command) -> Background {
        use std::sync::{Arc, Mutex};
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{}`: {e}", show_command(cmd)));
        let pid = child.id();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for (mut pipe, buf) in [
            (Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, stdout.clone()),
            (Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>, stderr.clone()),
        ] {
            readers.push(std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                    }
                }
            }));
        }
        Background { child, pid, command: show_command(cmd), stdout, stderr, readers, started: Instant::now() }
    }

    pub fn stdout_now(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr_now(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Wait until stdout contains `needle`; fails if the process exits first or `timeout` passes.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout_now().contains(needle) {
                return;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                // The readers may still hold the last bytes.
                std::thread::sleep(Duration::from_millis(50));
                if self.stdout_now().contains(needle) {
                    return;
                }
                panic!("`{}` exited ({st}) before printing {needle:?}\n{}", self.command, self.describe_now());
            }
            if Instant::now() > deadline {
                panic!("`{}` did not print {needle:?} within {timeout:?}\n{}", self.command, self.describe_now());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Send `signal` to the process (its pid only).
    pub fn signal(&self, signal: i32) {
        let rc = Command::new("kill").arg(format!("-{signal}")).arg(self.pid.to_string()).status();
        assert!(rc.is_ok_and(|s| s.success()), "kill -{signal} {} failed", self.pid);
    }

    /// Wait for the process to end (killing it and failing after `timeout`).
    pub fn wait(mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("`{}` still running after {timeout:?}: killed\n{}", self.command, self.describe_now());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Outcome {
            command: self.command.clone(),
            pid: self.pid,
            status,
            stdout: self.stdout_now(),
            stderr: self.stderr_now(),
            elapsed: self.started.elapsed(),
        }
    }

    fn describe_now(&self) -> String {
        format!(
            "--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
            clip(&self.stdout.lock().unwrap()),
            clip(&self.stderr.lock().unwrap())
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_match_across_languages() {
        assert!(function_is("leak_malloc", "leak_malloc"));
        assert!(!function_is("leak_malloc2", "leak_malloc"));
        assert!(function_is("leak_new()", "leak_new"));
        assert!(!function_is("leak_new_array()", "leak_new"));
        assert!(function_is("rust_box::leak_box", "leak_box"));
        assert!(function_is("ns::Widget::leak_new(int, char const*)", "leak_new"));
        assert!(function_is("rust_box::leak_box::h0123456789abcdef", "leak_box"));
    }

    #[test]
    fn integer_figures_are_told_from_fractional_ones() {
        let v = serde_json::json!({
            "totals": {"unfreed_bytes": 2121025, "unfreed_allocations": 39.0},
            "sites": [{"growth_bytes_per_sec": 12.5, "trend_confidence": 0.97, "unfreed_bytes": 1.5}],
            "rss_vs_heap": {"explained_fraction": 0.25}
        });
        assert_eq!(non_integer_numbers(&v), ["/sites/0/unfreed_bytes = 1.5", "/totals/unfreed_allocations = 39.0"]);
    }

    #[test]
    fn exact_integers() {
        assert_eq!(as_exact_u64(&serde_json::json!(5)), Some(5));
        assert_eq!(as_exact_u64(&serde_json::json!(5.0)), Some(5));
        assert_eq!(as_exact_u64(&serde_json::json!(5.5)), None);
        assert_eq!(as_exact_u64(&serde_json::json!(-1)), None);
    }
}
