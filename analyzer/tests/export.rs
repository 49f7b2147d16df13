//! `leak-analyze report --format folded | pprof | html` on real traces of the bundled demo
//! service (scripts/demo/leaky_service.c) run under libleaktrace.so.
//!
//! Needs `cargo build --release` first (the preload library). The HTML is also rendered in
//! headless Chromium when `/usr/bin/chromium` exists (Debian: `apt-get install chromium`), and
//! the pprof file is read by `go tool pprof` when `go` is on PATH; each is skipped with a note
//! otherwise.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::Value;

#[path = "../src/export/proto.rs"]
mod proto;

const ANALYZER: &str = env!("CARGO_BIN_EXE_leak-analyze");
const CHROMIUM: &str = "/usr/bin/chromium";
/// A directory name that is valid HTML if pasted unescaped: the demo is compiled and run from
/// it, so it reaches the report through the executable path, the command line and DWARF paths.
const EVIL_DIR: &str = r#"evil<img src=x onerror="document.title='pwned'">&amp;'x"#;

// ---------------------------------------------------------------------------------------------
// Helpers

fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn preload() -> PathBuf {
    let root = root();
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => root.join(d),
        None => root.join("target"),
    };
    let so = target.join("release").join("libleaktrace.so");
    assert!(so.is_file(), "{} does not exist: run `cargo build --release` first", so.display());
    so
}

/// A fresh scratch directory for one trace.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("export-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Run a command to completion with a time limit, collecting its output without deadlocking on
/// full pipes.
fn run(mut cmd: Command, limit: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Compile the demo service into `dir` (from a copy of its source there, so DWARF names `dir`),
/// run it for `seconds` under the preload, and return its trace.
fn make_trace(dir: &Path, seconds: &str, extra_env: &[(&str, &str)]) -> PathBuf {
    let src = dir.join("leaky_service.c");
    std::fs::copy(root().join("scripts/demo/leaky_service.c"), &src).expect("copy the demo source");
    let exe = dir.join("leaky_service");
    let mut cc = Command::new("cc");
    cc.args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"]).arg(&exe).arg(&src);
    let out = run(cc, Duration::from_secs(120));
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));

    let mut cmd = Command::new(&exe);
    cmd.arg(seconds)
        .env("LD_PRELOAD", preload())
        .env("LEAKTRACE_FILE", dir.join("t.%p.lt"))
        .env("LEAKTRACE_FILE_SIZE", "4M")
        .env("LEAKTRACE_RSS_MS", "100")
        .env("LEAKTRACE_SEED", "12345")
        .env_remove("LEAKTRACE_SAMPLE_BYTES")
        .env_remove("LEAKTRACE_START");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = run(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "the demo service failed: {}", String::from_utf8_lossy(&out.stderr));
    let traces: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read scratch dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "lt"))
        .collect();
    assert_eq!(traces.len(), 1, "expected one trace in {}: {traces:?}", dir.display());
    traces.into_iter().next().expect("one trace")
}

/// The demo run for 3 s: one growing site (sessions) and one bounded cache.
fn demo_trace() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| make_trace(&scratch("demo"), "3", &[]))
}

/// The demo compiled and run from a directory whose name is an HTML injection.
fn evil_trace() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch("evil").join(EVIL_DIR);
        std::fs::create_dir_all(&dir).expect("create the hostile directory");
        make_trace(&dir, "1.5", &[])
    })
}

/// A trace with nothing in it: tracing starts dormant and is never resumed.
fn empty_trace() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| make_trace(&scratch("empty"), "0.3", &[("LEAKTRACE_START", "off")]))
}

/// `leak-analyze report TRACE --format FORMAT`, which must succeed; its stdout.
fn report(trace: &Path, format: &str) -> Vec<u8> {
    let mut cmd = Command::new(ANALYZER);
    cmd.arg("report").arg(trace).args(["--format", format]);
    let out = run(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "leak-analyze report --format {format} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json(trace: &Path) -> Value {
    serde_json::from_slice(&report(trace, "json")).expect("the JSON report parses")
}

fn site_function(site: &Value) -> Option<&str> {
    site["frames"].as_array()?.iter().find_map(|f| f["function"].as_str())
}

fn sessions_site(j: &Value) -> &Value {
    j["sites"]
        .as_array()
        .and_then(|s| s.iter().find(|s| site_function(s) == Some("remember_session")))
        .unwrap_or_else(|| panic!("no remember_session site in {j}"))
}

fn decode_pprof(gz: &[u8]) -> proto::Profile {
    assert!(gz.starts_with(&[0x1f, 0x8b]), "pprof output is not gzipped");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut raw).expect("gunzip");
    proto::Profile::decode(raw.as_slice()).expect("decodes as profile.proto")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

// ---------------------------------------------------------------------------------------------
// folded

#[test]
fn folded_has_one_line_per_stack_with_the_unfreed_bytes() {
    let trace = demo_trace();
    let text = String::from_utf8(report(trace, "folded")).expect("folded output is UTF-8");
    let j = json(trace);
    let mut stacks = Vec::new();
    let mut sum = 0u64;
    for line in text.lines() {
        let (stack, n) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no count in {line:?}"));
        let n: u64 = n.parse().unwrap_or_else(|_| panic!("count is not an integer in {line:?}"));
        assert!(n > 0 && !stack.is_empty(), "{line:?}");
        sum += n;
        stacks.push(stack.to_string());
    }
    let mut sorted = stacks.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(stacks, sorted, "stacks are sorted and merged");
    assert!(
        stacks.iter().any(|s| s.ends_with("main;handle_request;remember_session")),
        "outermost-first stack of the leak missing:\n{text}"
    );
    assert!(stacks.iter().any(|s| s.ends_with("main;handle_request;cache_response")), "{text}");
    let sessions = sessions_site(&j)["unfreed_bytes"].as_f64().expect("bytes") as u64;
    assert!(
        text.contains(&format!("remember_session {sessions}\n")),
        "the leak's line has its bytes ({sessions}):\n{text}"
    );
    let total = j["totals"]["unfreed_bytes"].as_f64().expect("totals") as u64;
    let sites = j["sites"].as_array().map_or(0, |s| s.len()) as u64;
    assert!(sum.abs_diff(total) <= sites, "folded total {sum} vs report total {total}");
    assert_eq!(report(trace, "folded"), text.as_bytes(), "folded output is deterministic");
}

// ---------------------------------------------------------------------------------------------
// pprof

#[test]
fn pprof_round_trips_with_the_report_numbers() {
    let trace = demo_trace();
    let gz = report(trace, "pprof");
    let p = decode_pprof(&gz);
    let j = json(trace);
    let s = |i: i64| -> &str {
        usize::try_from(i).ok().and_then(|i| p.string_table.get(i)).map_or("<bad index>", String::as_str)
    };

    assert_eq!(p.string_table.first().map(String::as_str), Some(""), "string table starts with \"\"");
    let types: Vec<(&str, &str)> = p.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect();
    assert_eq!(types, vec![("inuse_objects", "count"), ("inuse_space", "bytes")]);
    assert_eq!(s(p.default_sample_type), "inuse_space");
    assert_eq!(p.period, j["sampling"]["mean_bytes"].as_i64().expect("mean"));

    // IDs are 1.., unique; references resolve.
    let loc_ids: Vec<u64> = p.location.iter().map(|l| l.id).collect();
    assert_eq!(loc_ids, (1..=p.location.len() as u64).collect::<Vec<_>>());
    let fn_ids: HashSet<u64> = p.function.iter().map(|f| f.id).collect();
    assert_eq!(fn_ids.len(), p.function.len());
    assert!(!fn_ids.contains(&0));
    let keys: HashSet<(i64, i64)> = p.function.iter().map(|f| (f.name, f.filename)).collect();
    assert_eq!(keys.len(), p.function.len(), "functions are deduplicated by (name, file)");
    let map_ids: HashSet<u64> = p.mapping.iter().map(|m| m.id).collect();
    assert!(p.location.iter().all(|l| l.mapping_id == 0 || map_ids.contains(&l.mapping_id)));
    assert!(p.location.iter().flat_map(|l| &l.line).all(|l| fn_ids.contains(&l.function_id)));
    let addrs: HashSet<u64> = p.location.iter().map(|l| l.address).collect();
    assert_eq!(addrs.len(), p.location.len(), "one location per address");

    // Every sample is a site of the JSON report with the same numbers.
    let sites = j["sites"].as_array().expect("sites");
    assert_eq!(p.sample.len(), sites.len());
    let by_id: HashMap<i64, &Value> = sites.iter().map(|s| (s["id"].as_i64().expect("id"), s)).collect();
    let site_key = p.string_table.iter().position(|x| x == "site").expect("site label key") as i64;
    for sample in &p.sample {
        assert_eq!(sample.value.len(), 2);
        assert!(sample.location_id.iter().all(|id| (1..=p.location.len() as u64).contains(id)));
        let id = sample.label.iter().find(|l| l.key == site_key).expect("site label").num;
        let site = by_id[&id];
        assert_eq!(sample.value[0], site["unfreed_allocations"].as_f64().expect("count") as i64);
        assert_eq!(sample.value[1], site["unfreed_bytes"].as_f64().expect("bytes") as i64);
    }

    // The leak's leaf location is remember_session in leaky_service.c, in the executable's mapping.
    let sessions_id = sessions_site(&j)["id"].as_i64().expect("id");
    let leak = p
        .sample
        .iter()
        .find(|x| x.label.iter().any(|l| l.key == site_key && l.num == sessions_id))
        .expect("leak sample");
    let leaf = &p.location[(leak.location_id[0] - 1) as usize];
    let leaf_fn = |line: &proto::Line| p.function.iter().find(|f| f.id == line.function_id).expect("function");
    let innermost = leaf.line.first().expect("the leaf location is symbolized");
    let f = leaf_fn(innermost);
    assert_eq!(s(f.name), "remember_session");
    assert!(s(f.filename).ends_with("leaky_service.c"), "{}", s(f.filename));
    assert!(innermost.line > 0);
    let callers: Vec<&str> = leak
        .location_id
        .iter()
        .filter_map(|&id| p.location.get(id as usize - 1))
        .flat_map(|l| l.line.iter().map(|x| s(leaf_fn(x).name)))
        .collect();
    assert!(callers.starts_with(&["remember_session", "handle_request", "main"]), "leaf first: {callers:?}");
    let m = p.mapping.iter().find(|m| m.id == leaf.mapping_id).expect("leaf mapping");
    assert!(s(m.filename).ends_with("/leaky_service"), "{}", s(m.filename));
    assert!(m.memory_start <= leaf.address && leaf.address < m.memory_limit);
    assert!(!s(m.build_id).is_empty() && s(m.build_id).chars().all(|c| c.is_ascii_hexdigit()));
    assert!(m.has_functions && m.has_line_numbers);

    assert_eq!(report(trace, "pprof"), gz, "pprof output is byte-for-byte deterministic");

    if on_path("go") {
        let file = trace.with_extension("pb.gz");
        std::fs::write(&file, &gz).expect("write profile");
        let mut go = Command::new("go");
        go.args(["tool", "pprof", "-top", "-sample_index=inuse_space"]).arg(&file);
        let out = run(go, Duration::from_secs(300));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("remember_session"),
            "go tool pprof: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("note: `go` is not installed; skipped the `go tool pprof` check");
    }
}

// ---------------------------------------------------------------------------------------------
// html

/// What headless Chromium made of a page: the DOM after scripts ran, console messages, and a
/// screenshot.
struct Rendered {
    dom: String,
    console: Vec<String>,
    png: Vec<u8>,
}

fn chromium_available() -> bool {
    let ok = Path::new(CHROMIUM).is_file();
    if !ok {
        eprintln!("note: {CHROMIUM} is missing (apt-get install chromium); skipped rendering the HTML report");
    }
    ok
}

fn chromium_cmd(html: &Path, profile: &str) -> Command {
    let dir = html.parent().expect("html has a directory");
    let mut c = Command::new(CHROMIUM);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2000",
    ])
    .arg(format!("--user-data-dir={}", dir.join(profile).display()));
    c
}

/// The DOM after the page's scripts ran, and the console messages.
fn dump_dom(html: &Path, profile: &str) -> (String, Vec<String>) {
    let mut dump = chromium_cmd(html, profile);
    dump.arg("--dump-dom").arg(file_url(html));
    let out = run(dump, Duration::from_secs(120));
    assert!(out.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), console_lines(&out.stderr))
}

fn console_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr).lines().filter(|l| l.contains(":CONSOLE")).map(String::from).collect()
}

fn chromium(html: &Path, name: &str) -> Option<Rendered> {
    if !chromium_available() {
        return None;
    }
    let (dom, mut console) = dump_dom(html, &format!("{name}-profile-dom"));
    let png = html.with_file_name(format!("{name}.png"));
    let _ = std::fs::remove_file(&png);
    let mut shot = chromium_cmd(html, &format!("{name}-profile-shot"));
    shot.arg(format!("--screenshot={}", png.display())).arg(file_url(html));
    let out = run(shot, Duration::from_secs(120));
    assert!(out.status.success(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    console.extend(console_lines(&out.stderr));
    eprintln!("screenshot of the {name} report: {}", png.display());
    Some(Rendered { dom, console, png: std::fs::read(&png).unwrap_or_default() })
}

/// `file://` URL of a path, percent-encoding everything but unreserved characters and `/`.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 24, "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

fn write_html(trace: &Path, name: &str) -> (PathBuf, String) {
    let html = String::from_utf8(report(trace, "html")).expect("HTML is UTF-8");
    let path = trace.with_file_name(format!("{name}.html"));
    std::fs::write(&path, &html).expect("write html");
    (path, html)
}

/// Self-contained: nothing that could make a browser fetch anything.
fn assert_self_contained(html: &str) {
    for bad in ["http://", "https://", "<link", "src=\"", "url(", "@import"] {
        assert!(!html.contains(bad), "the page references something outside itself: {bad}");
    }
    assert!(html.contains("default-src 'none'"), "the page forbids fetching with a CSP");
}

#[test]
fn html_report_renders_with_table_charts_and_flame_graph() {
    let trace = demo_trace();
    let (path, html) = write_html(trace, "demo");
    assert_self_contained(&html);
    for needle in [
        r#"<table class="sites" id="sites">"#,
        r#"<svg id="memchart""#,
        r#"<svg id="flame""#,
        r#"<svg class="spark grow""#,
        "<details open>",
        "GROWING",
        "leaky_service.c:",
    ] {
        assert!(html.contains(needle), "the page lacks {needle}");
    }
    assert!(html.contains("<code>remember_session</code> at "), "the verdict names the leak");
    assert!(html.contains(" grows <b>") && html.contains("/min</b> with confidence "), "the verdict sentence");
    for bad in ["NaN", "inf\"", "-0 B"] {
        assert!(!html.contains(bad), "the page has {bad}");
    }
    assert_eq!(report(trace, "html"), html.as_bytes(), "HTML output is deterministic");

    if let Some(r) = chromium(&path, "demo") {
        assert!(r.dom.contains(r#"data-rendered="ok""#), "the page's script did not run to its end");
        assert!(
            r.dom.contains(r#"id="sites""#) && r.dom.contains(r#"id="memchart""#) && r.dom.contains(r#"id="flame""#)
        );
        assert!(r.dom.contains("remember_session"));
        assert!(r.console.is_empty(), "console messages: {:#?}", r.console);
        let (w, h) = png_size(&r.png);
        assert_eq!((w, h), (1280, 2000));
        assert!(r.png.len() > 40_000, "the screenshot is nearly blank ({} bytes)", r.png.len());

        // A click on the cache's box zooms the flame graph to it: the leak's box is hidden and
        // the cache's spans the width.
        let zoomed = path.with_file_name("demo-zoom.html");
        std::fs::write(&zoomed, html.replace("</body>", ZOOM_PROBE)).expect("write zoom probe");
        let (dom, console) = dump_dom(&zoomed, "demo-profile-zoom");
        assert!(dom.contains(r#"data-zoom="ok""#), "flame graph zoom did not work");
        assert!(console.is_empty(), "console messages: {console:#?}");
    }
}

/// Appended to a page: clicks the `cache_response` box and records whether the zoom happened.
const ZOOM_PROBE: &str = r#"<script>
(function () {
  var boxes = [].slice.call(document.querySelectorAll('#flame g.f'));
  var by = function (n) { return boxes.filter(function (g) { return g.getAttribute('data-n') === n; })[0]; };
  var cache = by('cache_response'), leak = by('remember_session');
  cache.dispatchEvent(new MouseEvent('click', { bubbles: true }));
  var w = +cache.querySelector('rect').getAttribute('width');
  var ok = leak.style.display === 'none' && w > 1000 && document.getElementById('flamecard').classList.contains('zoomed');
  document.body.setAttribute('data-zoom', ok ? 'ok' : 'fail');
})();
</script></body>"#;

#[test]
fn trace_strings_cannot_inject_markup() {
    let trace = evil_trace();
    let j = json(trace);
    assert!(j["process"]["exe"].as_str().is_some_and(|e| e.contains(EVIL_DIR)), "the hostile path reaches the report");
    let (path, html) = write_html(trace, "evil");
    assert_self_contained(&html);
    assert!(!html.contains("<img"), "a trace string was pasted unescaped");
    assert!(!html.contains("onerror=\""), "a trace string closed an attribute");
    // `'` stays as it is: every attribute of the page is quoted with `"`, which is escaped.
    assert!(html.contains("evil&lt;img src=x onerror=&quot;document.title='pwned'&quot;&gt;&amp;amp;'x"));

    // The other formats carry the string through intact.
    let p = decode_pprof(&report(trace, "pprof"));
    assert!(p.string_table.iter().any(|s| s.contains(EVIL_DIR)));
    let folded = String::from_utf8(report(trace, "folded")).expect("UTF-8");
    assert!(folded.lines().all(|l| l.rsplit_once(' ').is_some_and(|(_, n)| n.parse::<u64>().is_ok())));

    if let Some(r) = chromium(&path, "evil") {
        assert!(r.dom.contains(r#"data-rendered="ok""#));
        assert!(!r.dom.contains("<img"), "an <img> element was created from trace data");
        assert!(!r.dom.contains("<title>pwned</title>"));
        assert!(r.console.is_empty(), "console messages: {:#?}", r.console);
    }
}

#[test]
fn empty_trace_gives_empty_but_valid_outputs() {
    let trace = empty_trace();
    let j = json(trace);
    assert_eq!(j["sites"].as_array().map(Vec::len), Some(0), "a dormant run records no site");
    assert!(report(trace, "folded").is_empty());
    let p = decode_pprof(&report(trace, "pprof"));
    assert!(p.sample.is_empty() && p.location.is_empty());
    assert_eq!(p.string_table.first().map(String::as_str), Some(""));
    let (path, html) = write_html(trace, "empty");
    assert!(html.contains("No sampled allocation was left unfreed."));
    assert!(html.contains("Nothing unfreed to draw."));
    for bad in ["NaN", "-0 B"] {
        assert!(!html.contains(bad), "the page has {bad}");
    }
    if let Some(r) = chromium(&path, "empty") {
        assert!(r.dom.contains(r#"data-rendered="ok""#));
        assert!(r.console.is_empty(), "console messages: {:#?}", r.console);
    }
}

// ---------------------------------------------------------------------------------------------
// Damaged input

/// Truncated and bit-flipped copies of a real trace: every format either renders (the report
/// marked partial) or fails with one line and exit code 2. Never a panic.
#[test]
fn damaged_traces_never_panic_any_format() {
    let original = std::fs::read(demo_trace()).expect("read trace");
    let dir = scratch("damaged");
    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [0, 7, 64, 4096, original.len() / 3, original.len() / 2, original.len().saturating_sub(1)] {
        variants.push((format!("truncated at {cut}"), original[..cut.min(original.len())].to_vec()));
    }
    // A fixed xorshift stream, so a failure reproduces.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Damage concentrated in the first 256 KiB (header, metadata, stacks, live table) and spread
    // over the whole file.
    for (i, span) in [256usize << 10, 256 << 10, 256 << 10, 256 << 10, 256 << 10, 256 << 10, usize::MAX, usize::MAX]
        .into_iter()
        .enumerate()
    {
        let mut bytes = original.clone();
        let span = span.min(bytes.len()).max(1);
        // Keep the magic (the first 8 bytes) so the reader goes past its first check.
        for _ in 0..(16 << i.min(5)) {
            let at = 8 + (next() as usize) % span.saturating_sub(8).max(1);
            if let Some(b) = bytes.get_mut(at) {
                *b ^= (next() as u8) | 1;
            }
        }
        variants.push((format!("flipped #{i}"), bytes));
    }
    let mut seen = BTreeSet::new();
    for (name, bytes) in &variants {
        let file = dir.join("damaged.lt");
        std::fs::write(&file, bytes).expect("write variant");
        for format in ["folded", "pprof", "html", "text"] {
            let mut cmd = Command::new(ANALYZER);
            cmd.arg("report").arg(&file).args(["--format", format]);
            let out = run(cmd, Duration::from_secs(120));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{name}, --format {format}: {stderr}");
            let code = out.status.code();
            assert!(matches!(code, Some(0) | Some(2)), "{name}, --format {format}: exit {:?}: {stderr}", out.status);
            if code == Some(0) && format == "html" {
                let html = String::from_utf8_lossy(&out.stdout);
                assert!(html.ends_with("</html>\n") && !html.contains("NaN"), "{name}: broken page");
            }
            if code == Some(0) && format == "pprof" {
                decode_pprof(&out.stdout);
            }
            seen.insert(code);
        }
    }
    eprintln!("exit codes seen on damaged traces: {seen:?}");
}
