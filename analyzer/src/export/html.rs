//! `--format html`: one self-contained page (inline CSS, SVG and a few lines of JS; nothing is
//! fetched, and a Content-Security-Policy forbids fetching anything) with the verdict, RSS and
//! estimated live heap over time, the table of sites with sparklines and expandable stacks, and an
//! icicle flame graph of the unfreed bytes.
//!
//! Every string from the trace (paths, command line, function and file names) goes through
//! [`esc`]; no trace string is ever placed inside the script. All geometry is computed here and
//! checked to be finite, so the page reads the same with JavaScript disabled (the script only
//! adds zooming to the flame graph).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use leaktrace_format::Trace;

use super::{base_name, frame_label, stack_outermost_first, whole};
use crate::analysis::Analysis;
use crate::naming::{naming_frame, per_min, Headline, Place, SiteName};
use crate::report::{human_bytes, secs, FrameOut, Report, SiteOut};

// ---------------------------------------------------------------------------------------------
// Text helpers

/// Escape text for HTML content and quoted attribute values. Control characters (other than
/// tab and newline) become U+FFFD so that no byte of the trace can change how the page parses.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\t' | '\n' => o.push(c),
            c if c.is_control() => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// 1234567 -> "1,234,567".
fn group(n: u64) -> String {
    let digits: Vec<char> = n.to_string().chars().collect();
    let groups: Vec<String> = digits.rchunks(3).rev().map(|g| g.iter().collect()).collect();
    groups.join(",")
}

/// A finite number or 0: every coordinate written into the SVG goes through this.
fn fin(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

fn duration(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else if s < 2.0 * 86400.0 {
        format!("{:.0} h {:.0} min", (s / 3600.0).floor(), (s % 3600.0 / 60.0).floor())
    } else {
        format!("{:.0} d {:.0} h", (s / 86400.0).floor(), (s % 86400.0 / 3600.0).floor())
    }
}

/// Unix time in ns as "YYYY-MM-DD hh:mm:ss UTC" (proleptic Gregorian, no time-zone database).
fn utc(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ---------------------------------------------------------------------------------------------
// Frames

/// `file:line` of a frame, with the file shortened to its name; the full path goes in a title.
fn loc_html(f: &FrameOut) -> String {
    match (&f.file, f.line) {
        (Some(file), line) => {
            let line = line.map_or(String::new(), |l| format!(":{l}"));
            format!(
                r#"<span class="loc" title="{}{}">{}{}</span>"#,
                esc(file),
                esc(&line),
                esc(base_name(file)),
                esc(&line)
            )
        }
        // An unresolved frame's label already names its module.
        (None, _) => match (&f.module, &f.function) {
            (Some(m), Some(_)) => format!(r#"<span class="loc">in {}</span>"#, esc(m)),
            _ => String::new(),
        },
    }
}

/// How a site is named in one line: its name (`naming::SiteName`, as every output names it),
/// with the full path of its file in a title.
fn site_title(s: &SiteOut) -> String {
    let name = SiteName::of(&s.frames);
    let label = format!("<code>{}</code>", esc(&name.label));
    match (name.frame, name.place) {
        (Some(f), Place::Line { .. }) => format!("{label} at {}", loc_html(f)),
        (_, Place::Module(m)) => format!(r#"{label} <span class="loc">in {}</span>"#, esc(m)),
        _ => label,
    }
}

/// The few callers after the named frame, for context in the collapsed row.
fn callers_preview(s: &SiteOut) -> String {
    let start = naming_frame(&s.frames).and_then(|n| s.frames.iter().position(|f| std::ptr::eq(f, n))).unwrap_or(0);
    let names: Vec<String> = s.frames.iter().skip(start + 1).take(3).map(|f| esc(&frame_label(f))).collect();
    if names.is_empty() {
        return String::new();
    }
    let more = if s.frames.len() > start + 4 { " ← …" } else { "" };
    format!(r#"<div class="callers">← {}{more}</div>"#, names.join(" ← "))
}

/// Most raw stacks listed under a site that merges several.
const MAX_LISTED_STACKS: usize = 16;

/// The raw stacks a site merges (one source location, several call instructions), when more
/// than one: the return addresses of each, innermost first (JSON `sites[].stacks`).
fn raw_stacks_html(s: &SiteOut) -> String {
    if s.stacks.len() < 2 {
        return String::new();
    }
    let mut o = format!(
        r#"<div class="rawstacks muted">One source location reached by {} call stacks (return addresses, innermost first):<ol>"#,
        s.stacks.len()
    );
    for st in s.stacks.iter().take(MAX_LISTED_STACKS) {
        let _ = write!(o, r#"<li class="addr">{}</li>"#, esc(&st.join(" ")));
    }
    if s.stacks.len() > MAX_LISTED_STACKS {
        let _ = write!(o, "<li>… {} more</li>", s.stacks.len() - MAX_LISTED_STACKS);
    }
    o.push_str("</ol></div>");
    o
}

fn stack_html(s: &SiteOut) -> String {
    if s.frames.is_empty() {
        return format!(
            r#"<p class="muted">{}: the stack of these allocations could not be read.</p>"#,
            super::LOST_STACK
        );
    }
    let mut o = String::from(r#"<ol class="stack">"#);
    for (i, f) in s.frames.iter().enumerate() {
        let inlined = s.frames.get(i + 1).is_some_and(|next| next.address == f.address);
        let class = if f.function.is_some() { "fn" } else { "fn unres" };
        let _ = write!(
            o,
            r#"<li><code class="{class}">{}</code> {}{}<span class="addr">{}</span></li>"#,
            esc(&frame_label(f)),
            loc_html(f),
            if inlined { r#" <span class="tag">inlined</span>"# } else { "" },
            esc(&f.address)
        );
    }
    o.push_str("</ol>");
    o.push_str(&raw_stacks_html(s));
    o
}

// ---------------------------------------------------------------------------------------------
// The verdict

/// The report's RSS-versus-heap comparison as a sentence, if RSS grew (the summary's clause).
fn rss_sentence(report: &Report) -> Option<String> {
    let r = report.rss_vs_heap.as_ref();
    let clause = crate::naming::rss_clause(r, &report.rss, report.rss_peak)?;
    let outside = if r.is_some_and(|r| r.growth_outside_heap && r.rss_growth_bytes > 0.0) {
        " <b>Most of the growth is outside malloc'd memory</b> (fragmentation, mmap, thread stacks)."
    } else {
        ""
    };
    Some(format!("{}.{outside}", esc(&clause)))
}

fn verdict_html(report: &Report) -> (String, &'static str) {
    let (mut html, class) = verdict_sentence(report);
    if let Some(rss) = rss_sentence(report) {
        let _ = write!(html, r#"<span class="sub">{rss}</span>"#);
    }
    (html, class)
}

/// The one-sentence verdict (the report's `summary`, with markup, of the same site: see
/// `naming::Headline`): the first growing site, its rate and confidence; else the largest site.
fn verdict_sentence(report: &Report) -> (String, &'static str) {
    match Headline::of(&report.sites) {
        Headline::Growing { site: s, others } => {
            let mut o = format!(
                "{} grows <b>{}</b> with confidence {:.2}.",
                site_title(s),
                per_min(s.growth_bytes_per_sec),
                fin(s.trend_confidence)
            );
            let ci = if s.unfreed_bytes_ci95 > 0.0 {
                format!(" ± {}", human_bytes(s.unfreed_bytes_ci95))
            } else {
                String::new()
            };
            let _ = write!(
                o,
                r#" <span class="sub">It holds {}{} unfreed in {} allocations at the end of the trace"#,
                human_bytes(s.unfreed_bytes),
                ci,
                group(whole(s.unfreed_allocations))
            );
            match others {
                0 => o.push_str(".</span>"),
                n => {
                    let _ = write!(
                        o,
                        "; {n} other site{} grow{} too.</span>",
                        if n == 1 { "" } else { "s" },
                        if n == 1 { "s" } else { "" }
                    );
                }
            }
            (o, "leak")
        }
        Headline::Largest { site: s } => (
            format!(
                "No call site's live memory grows steadily. The largest unfreed site is {} with <b>{}</b>.",
                site_title(s),
                human_bytes(s.unfreed_bytes)
            ),
            "calm",
        ),
        Headline::Nothing => ("No sampled allocation was left unfreed.".to_string(), "calm"),
    }
}

// ---------------------------------------------------------------------------------------------
// Charts

/// A step of 1, 2 or 5 times a power of `base`'s units, at least `raw`.
fn nice_bytes_step(raw: f64) -> f64 {
    let raw = if raw.is_finite() && raw > 1.0 { raw } else { 1.0 };
    let mut unit = 1.0f64;
    while raw >= unit * 1024.0 && unit < 1024f64.powi(5) {
        unit *= 1024.0;
    }
    for m in [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1024.0] {
        if unit * m >= raw {
            return unit * m;
        }
    }
    unit * 1024.0
}

/// Axis label for a byte value that is a round multiple of its unit.
fn tick_bytes(v: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = fin(v);
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A tick step in seconds for a span of `span_s`, and how to label a tick.
fn nice_time_step(span_s: f64) -> f64 {
    let raw = fin(span_s / 8.0).max(1e-3);
    const STEPS: [f64; 27] = [
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
        600.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 21600.0, 43200.0, 86400.0,
    ];
    STEPS.iter().copied().find(|&s| s >= raw).unwrap_or_else(|| (raw / 86400.0).ceil() * 86400.0)
}

fn tick_time(t_s: f64, step: f64) -> String {
    let t = fin(t_s);
    if step < 1.0 {
        let decimals = fin((-step.log10()).ceil()).clamp(1.0, 3.0) as usize;
        format!("{t:.decimals$}s")
    } else if step < 60.0 {
        format!("{t:.0}s")
    } else if step < 3600.0 {
        format!("{:.0}m", t / 60.0)
    } else if step < 86400.0 {
        format!("{:.0}h", t / 3600.0)
    } else {
        format!("{:.0}d", t / 86400.0)
    }
}

/// At most `max` points: the largest value of each run of consecutive points, so peaks survive.
fn decimate(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points.chunks(per).filter_map(|c| c.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1))).collect()
}

fn path_d(points: &[(f64, f64)]) -> String {
    let mut d = String::with_capacity(points.len() * 16);
    for (i, (x, y)) in points.iter().enumerate() {
        let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, fin(*x), fin(*y));
    }
    d
}

const CHART_W: f64 = 1100.0;
const CHART_H: f64 = 300.0;

/// RSS and estimated live heap over time, as one inline SVG.
fn memory_chart(rss: &[(u64, u64)], heap: &[(u64, f64)], end_ns: u64) -> String {
    let (l, r, t, b) = (84.0, 18.0, 14.0, 34.0);
    let (pw, ph) = (CHART_W - l - r, CHART_H - t - b);
    let x_max_ns = rss.iter().map(|p| p.0).chain(heap.iter().map(|p| p.0)).chain([end_ns]).max().unwrap_or(0).max(1);
    let x_max_s = x_max_ns as f64 / 1e9;
    let y_data = rss.iter().map(|p| p.1 as f64).chain(heap.iter().map(|p| fin(p.1))).fold(0.0f64, f64::max);
    let y_step = nice_bytes_step(y_data / 5.0);
    let y_max = ((y_data / y_step).ceil().max(1.0)) * y_step;
    let sx = |ns: u64| l + ns as f64 / x_max_ns as f64 * pw;
    let sy = |v: f64| t + ph - fin(v / y_max).clamp(0.0, 1.0) * ph;

    let mut o = format!(
        r#"<svg id="memchart" class="chart" viewBox="0 0 {CHART_W} {CHART_H}" width="100%" role="img" aria-label="RSS and estimated live heap over time">"#
    );
    // Grid and axes.
    let mut v = 0.0;
    while v <= y_max * 1.0001 {
        let y = sy(v);
        let _ = write!(
            o,
            r#"<line class="grid" x1="{l}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/><text class="ylab" x="{:.1}" y="{:.1}">{}</text>"#,
            l + pw,
            l - 8.0,
            y + 4.0,
            tick_bytes(v)
        );
        v += y_step;
    }
    let x_step = nice_time_step(x_max_s);
    let mut ts = 0.0;
    while ts <= x_max_s * 1.0001 {
        let x = l + ts / x_max_s * pw;
        let _ = write!(
            o,
            r#"<line class="xtick" x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}"/><text class="xlab" x="{x:.1}" y="{:.1}">{}</text>"#,
            t + ph,
            t + ph + 5.0,
            t + ph + 20.0,
            tick_time(ts, x_step)
        );
        ts += x_step;
    }
    let _ = write!(o, r#"<line class="axis" x1="{l}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/>"#, l + pw, t + ph, t + ph);

    // Live heap: area and line, with a marker (and tooltip) per series point.
    if !heap.is_empty() {
        let pts: Vec<(f64, f64)> = heap.iter().map(|&(ns, v)| (sx(ns), sy(v))).collect();
        let mut area = vec![(sx(0), sy(0.0))];
        area.extend(pts.iter().copied());
        area.push((pts.last().map_or(l, |p| p.0), sy(0.0)));
        let _ = write!(o, r#"<path class="heap-area" d="{}Z"/>"#, path_d(&area));
        let mut line = vec![(sx(0), sy(0.0))];
        line.extend(pts.iter().copied());
        let _ = write!(o, r#"<path class="heap-line" d="{}"><title>estimated live heap</title></path>"#, path_d(&line));
        // Visible markers while they stay apart; past that, invisible hover targets only.
        let dot = if pts.len() <= 60 { "heap-dot" } else { "heap-dot quiet" };
        let every = pts.len().div_ceil(400).max(1);
        for (&(ns, val), &(x, y)) in heap.iter().zip(&pts).step_by(every) {
            let _ = write!(
                o,
                r#"<circle class="{dot}" cx="{x:.1}" cy="{y:.1}" r="2.6"><title>{}: live heap ≈ {}</title></circle>"#,
                duration(ns),
                human_bytes(val)
            );
        }
    }
    // RSS line.
    if !rss.is_empty() {
        let pts: Vec<(f64, f64)> = rss.iter().map(|&(ns, v)| (sx(ns), sy(v as f64))).collect();
        let pts = decimate(&pts, 2000);
        let _ = write!(o, r#"<path class="rss-line" d="{}"><title>RSS</title></path>"#, path_d(&pts));
    } else {
        let _ = write!(
            o,
            r#"<text class="note" x="{:.1}" y="{:.1}">no RSS samples in this trace</text>"#,
            l + pw / 2.0,
            t + ph / 2.0
        );
    }
    // Legend.
    let _ = write!(
        o,
        r#"<g class="legend" transform="translate({:.1},{:.1})"><rect class="legend-bg" x="0" y="0" width="330" height="46" rx="4"/><line class="rss-line" x1="10" x2="34" y1="15" y2="15"/><text x="42" y="19">RSS (resident memory of the process)</text><rect class="heap-area heap-swatch" x="10" y="27" width="24" height="10"/><text x="42" y="36">estimated live heap (sum of call sites)</text></g>"#,
        l + 12.0,
        t + 8.0
    );
    o.push_str("</svg>");
    o
}

/// A small line of a site's live bytes over the trace.
fn sparkline(series: &[f64], growing: bool) -> String {
    let (w, h, pad) = (150.0, 32.0, 2.0);
    let max = series.iter().copied().map(fin).fold(0.0f64, f64::max);
    let n = series.len();
    if n == 0 {
        return String::from(r#"<span class="muted">—</span>"#);
    }
    let pts: Vec<(f64, f64)> = series
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let x = if n > 1 { pad + i as f64 / (n - 1) as f64 * (w - 2.0 * pad) } else { w / 2.0 };
            let y = if max > 0.0 { h - pad - fin(v).max(0.0) / max * (h - 2.0 * pad) } else { h - pad };
            (x, y)
        })
        .collect();
    let mut area = vec![(pad, h - pad)];
    area.extend(pts.iter().copied());
    area.push((pts.last().map_or(pad, |p| p.0), h - pad));
    let class = if growing { "spark grow" } else { "spark" };
    let first = series.first().copied().map_or(0.0, fin);
    let last = series.last().copied().map_or(0.0, fin);
    format!(
        r#"<svg class="{class}" viewBox="0 0 {w} {h}" width="{w}" height="{h}"><title>live bytes over the trace: {} → {} (peak {})</title><path class="sa" d="{}Z"/><path class="sl" d="{}"/></svg>"#,
        human_bytes(first),
        human_bytes(last),
        human_bytes(max),
        path_d(&area),
        path_d(&pts)
    )
}

// ---------------------------------------------------------------------------------------------
// Flame graph (icicle: all at the top, outermost callers below it, allocating frames deepest)

struct Node {
    name: String,
    bytes: u64,
    growing_bytes: u64,
    children: BTreeMap<String, usize>,
}

const FLAME_W: f64 = 1100.0;
const FLAME_ROW: f64 = 20.0;
/// Deeper frames are cut off (a trace allows 128 return addresses, each with inlined frames).
const FLAME_MAX_DEPTH: usize = 160;
/// Narrower boxes are not drawn (in viewBox units; the page is about 1100 px wide).
const FLAME_MIN_W: f64 = 0.1;
const FLAME_MAX_BOXES: usize = 20_000;
/// Advance of one character of the 12-unit monospace label font.
const FLAME_CHAR_W: f64 = 7.3;

/// Warm colours, redder as more of the box's bytes come from growing sites; a little variation
/// by name keeps neighbours apart.
fn flame_color(name: &str, growing_share: f64) -> String {
    let h = leaktrace_format::layout::fnv1a_32(name.as_bytes());
    let share = fin(growing_share).clamp(0.0, 1.0);
    let hue = 44.0 - 40.0 * share + f64::from(h % 9) - 4.0;
    let sat = 70.0 + f64::from((h >> 8) % 16);
    let light = 62.0 + f64::from((h >> 16) % 10) - 6.0 * share;
    format!("hsl({hue:.0},{sat:.0}%,{light:.0}%)")
}

fn fit_label(name: &str, width: f64) -> String {
    let chars = ((width - 6.0) / FLAME_CHAR_W).floor();
    if chars.is_nan() || chars < 3.0 {
        return String::new();
    }
    let chars = chars as usize;
    if name.chars().count() <= chars {
        name.to_string()
    } else {
        name.chars().take(chars.saturating_sub(2)).chain("..".chars()).collect()
    }
}

fn flame_graph(report: &Report) -> String {
    let mut nodes = vec![Node { name: "all".into(), bytes: 0, growing_bytes: 0, children: BTreeMap::new() }];
    for s in &report.sites {
        let b = whole(s.unfreed_bytes);
        if b == 0 {
            continue;
        }
        let g = if s.growing { b } else { 0 };
        let mut cur = 0usize;
        nodes[0].bytes = nodes[0].bytes.saturating_add(b);
        nodes[0].growing_bytes = nodes[0].growing_bytes.saturating_add(g);
        for label in stack_outermost_first(s).into_iter().take(FLAME_MAX_DEPTH) {
            let next = match nodes[cur].children.get(&label) {
                Some(&i) => i,
                None => {
                    nodes.push(Node { name: label.clone(), bytes: 0, growing_bytes: 0, children: BTreeMap::new() });
                    let i = nodes.len() - 1;
                    nodes[cur].children.insert(label, i);
                    i
                }
            };
            nodes[next].bytes = nodes[next].bytes.saturating_add(b);
            nodes[next].growing_bytes = nodes[next].growing_bytes.saturating_add(g);
            cur = next;
        }
    }
    let total = nodes[0].bytes;
    if total == 0 {
        return String::from(r#"<p class="muted">Nothing unfreed to draw.</p>"#);
    }

    // Lay out depth-first, biggest child first, without recursion.
    let mut boxes: Vec<(usize, f64, f64, usize)> = Vec::new(); // (node, x, width, depth)
    let mut todo = vec![(0usize, 0.0f64, 0usize)];
    let mut max_depth = 0;
    while let Some((n, x, depth)) = todo.pop() {
        let w = nodes[n].bytes as f64 / total as f64 * FLAME_W;
        if w < FLAME_MIN_W || boxes.len() >= FLAME_MAX_BOXES {
            continue;
        }
        boxes.push((n, x, w, depth));
        max_depth = max_depth.max(depth);
        let mut kids: Vec<usize> = nodes[n].children.values().copied().collect();
        kids.sort_by(|&a, &b| nodes[b].bytes.cmp(&nodes[a].bytes).then_with(|| nodes[a].name.cmp(&nodes[b].name)));
        let mut cx = x;
        let mut placed = Vec::with_capacity(kids.len());
        for k in kids {
            placed.push((k, cx, depth + 1));
            cx += nodes[k].bytes as f64 / total as f64 * FLAME_W;
        }
        todo.extend(placed.into_iter().rev());
    }

    let height = (max_depth + 1) as f64 * FLAME_ROW;
    let mut o = format!(
        r#"<svg id="flame" class="flame" viewBox="0 0 {FLAME_W} {height}" width="100%" data-w="{FLAME_W}" role="img" aria-label="flame graph of unfreed bytes">"#
    );
    for (n, x, w, depth) in boxes {
        let node = &nodes[n];
        let share = node.growing_bytes as f64 / node.bytes.max(1) as f64;
        let color = if n == 0 { "#c9ced6".to_string() } else { flame_color(&node.name, share) };
        let y = depth as f64 * FLAME_ROW;
        let pct = node.bytes as f64 / total as f64 * 100.0;
        let grow_note = if node.growing_bytes > 0 {
            format!(", {} in growing sites", human_bytes(node.growing_bytes as f64))
        } else {
            String::new()
        };
        let _ = write!(
            o,
            r#"<g class="f" data-x="{x:.3}" data-w="{w:.3}" data-d="{depth}" data-n="{name}"><title>{name}
{} ({pct:.1}% of unfreed){grow_note}</title><rect x="{x:.2}" y="{y:.1}" width="{:.2}" height="{:.1}" fill="{color}" rx="2"/><text x="{:.2}" y="{:.1}">{}</text></g>"#,
            human_bytes(node.bytes as f64),
            (w - 0.5).max(0.05),
            FLAME_ROW - 1.0,
            x + 3.0,
            y + 14.0,
            esc(&fit_label(&node.name, w)),
            name = esc(&node.name),
        );
    }
    o.push_str("</svg>");
    o
}

// ---------------------------------------------------------------------------------------------
// The page

const STYLE: &str = r#"
:root{--fg:#1c2230;--muted:#5d6677;--bg:#f4f5f7;--card:#fff;--line:#e2e5ea;--red:#c8371f;--redbg:#fdebe7;--blue:#2f6fdb;--heap:#e8871e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans","DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
code,.mono{font-family:ui-monospace,"SFMono-Regular","DejaVu Sans Mono","Liberation Mono",Menlo,monospace;font-size:.92em}
header.top{background:#1c2230;color:#fff;padding:22px 0 20px}
.wrap{max-width:1200px;margin:0 auto;padding:0 28px}
.brand{font-size:12px;letter-spacing:.12em;text-transform:uppercase;color:#9aa6bd}
h1{margin:4px 0 6px;font-size:26px;font-weight:650;word-break:break-all}
h1 .pid{font-weight:400;color:#9aa6bd;font-size:20px}
.cmd{color:#d7dcea;word-break:break-all;margin-bottom:8px}
.meta{color:#9aa6bd;font-size:13px}
.meta b{color:#e4e8f2;font-weight:600}
h2{font-size:17px;margin:0 0 10px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:18px 0;box-shadow:0 1px 2px rgba(20,30,50,.04)}
.verdict{font-size:18px;line-height:1.5;border-left:6px solid var(--red);background:linear-gradient(90deg,var(--redbg),#fff 60%)}
.verdict.calm{border-left-color:#3a9a5b;background:linear-gradient(90deg,#e9f6ee,#fff 60%)}
.verdict code{font-size:17px;background:rgba(255,255,255,.7);padding:1px 5px;border-radius:4px}
.verdict .sub{display:block;font-size:14px;color:var(--muted);margin-top:4px}
.verdict .loc{color:var(--muted)}
.alert{border-left:6px solid #d39a00;background:#fff8e1}
.alert ul{margin:6px 0 0;padding-left:20px}
.stats{display:grid;grid-template-columns:repeat(4,1fr);gap:14px;margin:18px 0}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 18px}
.stat .k{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.06em}
.stat .v{font-size:22px;font-weight:650;margin-top:2px;white-space:nowrap}
.stat .s{font-size:13px;color:var(--muted)}
.muted{color:var(--muted)}
.hint{color:var(--muted);font-size:13px;margin:-4px 0 10px}
svg text{font-family:system-ui,"Liberation Sans","DejaVu Sans",sans-serif}
.chart .grid{stroke:#e8ebf0}
.chart .axis{stroke:#9aa3b2}
.chart .xtick{stroke:#9aa3b2}
.chart .ylab{font-size:12px;fill:var(--muted);text-anchor:end}
.chart .xlab{font-size:12px;fill:var(--muted);text-anchor:middle}
.chart .note{font-size:14px;fill:var(--muted);text-anchor:middle}
.chart .rss-line{fill:none;stroke:var(--blue);stroke-width:2.2;stroke-linejoin:round}
.chart .heap-line{fill:none;stroke:var(--heap);stroke-width:2.2;stroke-linejoin:round}
.chart .heap-area{fill:var(--heap);fill-opacity:.18;stroke:none}
.chart .heap-swatch{fill-opacity:.35;stroke:var(--heap);stroke-width:1.5}
.chart .heap-dot{fill:#fff;stroke:var(--heap);stroke-width:1.5}
.chart .heap-dot:hover{fill:var(--heap)}
.chart .heap-dot.quiet{fill:transparent;stroke:transparent}
.chart .heap-dot.quiet:hover{fill:var(--heap);stroke:var(--heap)}
.chart .legend text{font-size:12.5px;fill:var(--fg)}
.chart .legend-bg{fill:#fff;fill-opacity:.9;stroke:var(--line)}
table.sites{border-collapse:collapse;width:100%}
.sites th{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);font-weight:600;text-align:left;padding:8px 10px;border-bottom:2px solid var(--line);white-space:nowrap}
.sites td{padding:10px 10px;border-bottom:1px solid var(--line);vertical-align:top}
.sites tr.growing td:first-child{box-shadow:inset 4px 0 0 var(--red)}
.sites td.num,.sites th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.sites td.id{color:var(--muted);width:36px}
.sites td.site{width:46%;word-break:break-word}
.sites .big{font-weight:650;font-size:15px}
.sites .small{font-size:12px;color:var(--muted)}
.sites td.trend .small{white-space:nowrap}
.badge{display:inline-block;font-size:11px;font-weight:700;letter-spacing:.05em;padding:2px 8px;border-radius:10px;white-space:nowrap}
.badge.grow{background:var(--redbg);color:var(--red)}
.badge.flat{background:#edf0f4;color:var(--muted)}
details summary{cursor:pointer;list-style-position:outside}
details summary:hover code{text-decoration:underline}
.callers{font-size:12px;color:var(--muted);margin:2px 0 0 2px}
.loc{color:var(--muted);font-size:13px}
ol.stack{margin:8px 0 2px;padding-left:26px;font-size:13px}
ol.stack li{padding:1px 0}
ol.stack .fn{color:#1b3f8f}
ol.stack .fn.unres{color:var(--muted)}
ol.stack .addr{color:#a1a8b6;font-size:11px;margin-left:6px;font-family:ui-monospace,"DejaVu Sans Mono",monospace}
.rawstacks{font-size:12px;margin-top:6px}
.rawstacks ol{margin:4px 0;padding-left:22px;font-size:11px;font-family:ui-monospace,"DejaVu Sans Mono",monospace;word-break:break-all}
.tag{font-size:10.5px;background:#eef2fb;color:#3b5aa6;border-radius:3px;padding:0 4px}
svg.spark{display:block}
.spark .sl{fill:none;stroke:#7d8797;stroke-width:1.6}
.spark .sa{fill:#7d8797;fill-opacity:.15}
.spark.grow .sl{stroke:var(--red)}
.spark.grow .sa{fill:var(--red)}
.flame{display:block;cursor:pointer}
.flame text{font:12px ui-monospace,"DejaVu Sans Mono","Liberation Mono",monospace;fill:#1c2230;pointer-events:none}
.flame g.f:hover rect{stroke:#1c2230;stroke-width:1}
.flamebar{display:flex;justify-content:space-between;align-items:baseline}
button.reset{display:none;font:inherit;font-size:13px;padding:3px 10px;border:1px solid var(--line);border-radius:6px;background:#fff;cursor:pointer}
.zoomed button.reset{display:inline-block}
.key{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin:0 5px 0 0}
.hint .key~.key{margin-left:14px}
details[open]+.callers{display:none}
footer{color:var(--muted);font-size:12px;padding:8px 0 40px}
"#;

/// Zoom for the flame graph: a click on a box makes it full width; a click on "all" (or the
/// button) resets. The page is complete without it. It ends by marking the body as rendered.
const SCRIPT: &str = r#"
(function () {
  var svg = document.getElementById('flame');
  if (svg) {
    var W = +svg.getAttribute('data-w');
    var boxes = Array.prototype.slice.call(svg.querySelectorAll('g.f'));
    var card = document.getElementById('flamecard');
    var fit = function (name, w) {
      var c = Math.floor((w - 6) / 7.3);
      if (!(c >= 3)) return '';
      return name.length <= c ? name : name.slice(0, c - 2) + '..';
    };
    var zoom = function (target) {
      var x0 = +target.getAttribute('data-x'), w0 = +target.getAttribute('data-w'), d0 = +target.getAttribute('data-d');
      boxes.forEach(function (g) {
        var x = +g.getAttribute('data-x'), w = +g.getAttribute('data-w'), d = +g.getAttribute('data-d');
        var eps = 1e-3, nx, nw;
        if (d < d0 && x <= x0 + eps && x + w >= x0 + w0 - eps) { nx = 0; nw = W; }
        else if (d >= d0 && x >= x0 - eps && x + w <= x0 + w0 + eps) { nx = (x - x0) / w0 * W; nw = w / w0 * W; }
        else { g.style.display = 'none'; return; }
        g.style.display = '';
        var r = g.querySelector('rect'), t = g.querySelector('text');
        r.setAttribute('x', nx.toFixed(2));
        r.setAttribute('width', Math.max(nw - 0.5, 0.05).toFixed(2));
        t.setAttribute('x', (nx + 3).toFixed(2));
        t.textContent = fit(g.getAttribute('data-n') || '', nw);
      });
      if (card) card.classList.toggle('zoomed', d0 > 0);
    };
    boxes.forEach(function (g) { g.addEventListener('click', function () { zoom(g); }); });
    var reset = document.getElementById('flamereset');
    if (reset && boxes.length) reset.addEventListener('click', function () { zoom(boxes[0]); });
  }
  document.body.setAttribute('data-rendered', 'ok');
})();
"#;

/// The whole page. `top`: how many sites the table lists (the flame graph has them all).
pub fn render(report: &Report, analysis: &Analysis, trace: &Trace, top: usize) -> String {
    let p = &report.process;
    let exe_name = if p.exe.is_empty() { "unknown executable".to_string() } else { base_name(&p.exe).to_string() };
    let hostname = trace.process.as_ref().map(|pi| pi.hostname.clone()).unwrap_or_default();
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>leaktrace: {} (pid {})</title>
<style>{STYLE}</style></head>
<body>
"#,
        esc(&exe_name),
        p.pid
    );

    // Header: who, when, how.
    let _ = write!(
        o,
        r#"<header class="top"><div class="wrap"><div class="brand">leaktrace · memory leak report</div>
<h1>{} <span class="pid">pid {}</span></h1>
<div class="cmd mono" title="{}">{}</div>
<div class="meta">"#,
        esc(&exe_name),
        p.pid,
        esc(&p.exe),
        esc(&p.cmdline.join(" "))
    );
    let mut meta = Vec::new();
    if !hostname.is_empty() {
        meta.push(format!("on <b>{}</b>", esc(&hostname)));
    }
    if p.start_unix_ns > 0 {
        meta.push(format!("started <b>{}</b>", utc(p.start_unix_ns)));
    }
    meta.push(format!("ran <b>{}</b>", duration(p.duration_ns)));
    meta.push(format!(
        "ended: <b>{}</b>",
        if p.ended == "exit" { "normal exit" } else { "unknown (still running, or killed)" }
    ));
    meta.push(format!("sampling mean <b>{}</b>", human_bytes(report.sampling.mean_bytes as f64)));
    meta.push(format!(
        "<b>{}</b> sampled events, <b>{}</b> dropped",
        group(report.totals.sampled_events),
        group(report.totals.dropped_events)
    ));
    o.push_str(&meta.join(" · "));
    o.push_str("</div></div></header>\n<main class=\"wrap\">\n");

    // Verdict.
    let (verdict, class) = verdict_html(report);
    let _ = writeln!(o, r#"<section class="card verdict {class}" id="verdict">{verdict}</section>"#);

    // Damage and symbolization problems.
    if report.partial || !report.health_notes.is_empty() {
        o.push_str(r#"<section class="card alert" id="health">"#);
        if report.partial {
            o.push_str("<b>Partial trace:</b> the file is damaged (truncated or torn records); the figures cover what could be read.");
        } else {
            o.push_str("<b>Trace notes</b>");
        }
        o.push_str("<ul>");
        for n in &report.health_notes {
            let _ = write!(o, "<li>{}</li>", esc(n));
        }
        o.push_str("</ul></section>\n");
    }

    // Key figures.
    let growing = report.sites.iter().filter(|s| s.growing).count();
    let rss_first = report.rss.first().map(|r| r.rss_bytes);
    let rss_last = report.rss.last().map(|r| r.rss_bytes);
    let rss_peak = report.rss_peak.or_else(|| {
        report
            .rss
            .iter()
            .max_by_key(|r| r.rss_bytes)
            .map(|r| crate::report::RssPeak { rss_bytes: r.rss_bytes, t_ns: r.t_ns })
    });
    let growth: f64 = report.sites.iter().filter(|s| s.growing).map(|s| fin(s.growth_bytes_per_sec)).sum();
    let _ = write!(
        o,
        r#"<section class="stats">
<div class="stat"><div class="k">Unfreed at end</div><div class="v">{}</div><div class="s">in {} allocations</div></div>
<div class="stat"><div class="k">Call sites</div><div class="v">{}</div><div class="s">{} growing</div></div>
<div class="stat"><div class="k">RSS</div><div class="v">{}</div><div class="s">{}</div></div>
<div class="stat"><div class="k">Growth of growing sites</div><div class="v">{}</div><div class="s">{}</div></div>
</section>
"#,
        human_bytes(report.totals.unfreed_bytes),
        group(whole(report.totals.unfreed_allocations)),
        group(report.sites.len() as u64),
        group(growing as u64),
        rss_last.map_or("—".to_string(), |b| human_bytes(b as f64)),
        match (rss_first, rss_peak) {
            (Some(f), Some(pk)) if rss_last.is_some_and(|l| pk.rss_bytes > l) => format!(
                "at end, from {} (peak {} at {})",
                human_bytes(f as f64),
                human_bytes(pk.rss_bytes as f64),
                secs(pk.t_ns)
            ),
            (Some(f), Some(_)) => format!("at end, from {} at start", human_bytes(f as f64)),
            _ => "no RSS samples".to_string(),
        },
        if growing > 0 { per_min(growth) } else { "none".to_string() },
        if growing > 0 { format!("{}/s", human_bytes(growth)) } else { "no site grows steadily".to_string() },
    );

    // Memory over time.
    let rss: Vec<(u64, u64)> = report.rss.iter().map(|r| (r.t_ns, r.rss_bytes)).collect();
    let heap: Vec<(u64, f64)> = analysis.series_times().into_iter().zip(analysis.heap_series()).collect();
    let _ = write!(
        o,
        r#"<section class="card" id="memory"><h2>Memory over time</h2>
<p class="hint">RSS as the process saw it, and the live heap estimated from the sampled allocations (allocations freed before the ring buffer's window are counted from its start).</p>
{}</section>
"#,
        memory_chart(&rss, &heap, p.duration_ns)
    );

    // Sites.
    let shown = report.sites.len().min(top);
    let _ = write!(
        o,
        r#"<section class="card" id="sites-card"><h2>Call sites holding unfreed memory</h2>
<p class="hint">Growing sites first, then by unfreed bytes. Estimates carry a 95% sampling interval; click a site for its full stack.</p>
<table class="sites" id="sites"><thead><tr><th>#</th><th>Site</th><th class="num">Unfreed</th><th class="num">Allocations</th><th>Trend</th><th>Live bytes over time</th></tr></thead><tbody>
"#
    );
    for (row, s) in report.sites.iter().take(shown).enumerate() {
        let series: &[f64] =
            s.id.checked_sub(1).and_then(|i| analysis.sites.get(i)).map_or(&[], |a| a.series.as_slice());
        let ci = if s.unfreed_bytes_ci95 > 0.0 {
            format!("± {}", human_bytes(s.unfreed_bytes_ci95))
        } else {
            "exact".to_string()
        };
        let trend = if s.growing {
            format!(
                r#"<span class="badge grow">GROWING</span><div class="small">+{}</div><div class="small">confidence {:.2}</div>"#,
                per_min(s.growth_bytes_per_sec),
                fin(s.trend_confidence)
            )
        } else {
            format!(
                r#"<span class="badge flat">not growing</span><div class="small">trend confidence {:.2}</div>"#,
                fin(s.trend_confidence)
            )
        };
        let _ = writeln!(
            o,
            r#"<tr class="{}"><td class="id">{}</td><td class="site"><details{}><summary>{}</summary>{}</details>{}</td><td class="num"><div class="big">{}</div><div class="small">{}</div></td><td class="num">{}<div class="small">{} sampled</div></td><td class="trend">{}</td><td>{}</td></tr>"#,
            if s.growing { "growing" } else { "flat" },
            s.id,
            if row == 0 { " open" } else { "" },
            site_title(s),
            stack_html(s),
            callers_preview(s),
            human_bytes(s.unfreed_bytes),
            ci,
            group(whole(s.unfreed_allocations)),
            group(s.sampled_unfreed),
            trend,
            sparkline(series, s.growing)
        );
    }
    if report.sites.is_empty() {
        o.push_str(
            r#"<tr><td></td><td colspan="5" class="muted">No call site holds sampled unfreed memory.</td></tr>"#,
        );
    }
    o.push_str("</tbody></table>");
    if report.sites.len() > shown {
        let _ = write!(
            o,
            r#"<p class="hint" style="margin-top:10px">{} more sites are not listed (use <code>--top N</code>); the flame graph below includes them.</p>"#,
            group((report.sites.len() - shown) as u64)
        );
    }
    o.push_str("</section>\n");

    // Flame graph.
    let _ = write!(
        o,
        r#"<section class="card" id="flamecard"><div class="flamebar"><h2>Where the unfreed memory was allocated</h2><button class="reset" id="flamereset" type="button">Reset zoom</button></div>
<p class="hint">Icicle graph: callers above callees, the allocating function at the bottom of each column, widths proportional to unfreed bytes. Click a box to zoom.<br><span class="key" style="background:{}"></span>from growing sites<span class="key" style="background:{}"></span>from other sites</p>
{}</section>
"#,
        flame_color("", 1.0),
        flame_color("", 0.0),
        flame_graph(report)
    );

    if !report.symbolization_warnings.is_empty() {
        o.push_str(r#"<section class="card alert" id="warnings"><b>Symbolization warnings</b> (frames that could not be named are shown as module+offset)<ul>"#);
        for w in &report.symbolization_warnings {
            let _ = write!(o, "<li>{}</li>", esc(w));
        }
        o.push_str("</ul></section>\n");
    }

    let _ = write!(
        o,
        r#"<footer>Generated by leak-analyze {} from a trace in format {}. Totals: {} unfreed in {} allocations, {} call sites.</footer>
</main>
<script>{SCRIPT}</script>
</body></html>
"#,
        env!("CARGO_PKG_VERSION"),
        esc(&report.format_version),
        human_bytes(report.totals.unfreed_bytes),
        group(whole(report.totals.unfreed_allocations)),
        group(report.sites.len() as u64)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_change_the_markup() {
        assert_eq!(
            esc(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(esc("a\u{0}b\u{1b}c"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(esc("std::map<int, int>::operator[]"), "std::map&lt;int, int&gt;::operator[]");
    }

    #[test]
    fn numbers_and_dates() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_000_000_000), "2023-11-14 22:13:20 UTC");
        assert!(utc(u64::MAX).ends_with("UTC"));
        assert_eq!(duration(6_100_000_000), "6.1 s");
        assert_eq!(duration(3 * 3600 * 1_000_000_000 + 60_000_000_000), "3 h 1 min");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_bytes_step(0.0), 1.0);
        assert_eq!(nice_bytes_step(f64::NAN), 1.0);
        assert_eq!(nice_bytes_step(3.0 * 1024.0 * 1024.0), 5.0 * 1024.0 * 1024.0);
        assert_eq!(nice_bytes_step(1000.0), 1024.0);
        assert_eq!(tick_bytes(20.0 * 1024.0 * 1024.0), "20 MiB");
        assert_eq!(nice_time_step(6.0), 1.0);
        assert_eq!(nice_time_step(3600.0 * 24.0 * 30.0), 4.0 * 86400.0);
        assert_eq!(tick_time(120.0, 60.0), "2m");
        assert_eq!(tick_time(0.15, 0.05), "0.15s");
        assert_eq!(tick_time(0.4, 0.2), "0.4s");
        assert_eq!(tick_time(3.0, 1.0), "3s");
    }

    #[test]
    fn charts_stay_finite_on_degenerate_input() {
        for svg in [
            memory_chart(&[], &[], 0),
            memory_chart(&[(0, 0)], &[(0, f64::NAN)], 0),
            memory_chart(&[(5, u64::MAX)], &[(u64::MAX, f64::INFINITY)], u64::MAX),
            sparkline(&[], true),
            sparkline(&[0.0, 0.0], false),
            sparkline(&[f64::NAN, 1.0, f64::INFINITY], true),
            sparkline(&[7.0], true),
        ] {
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn labels_fit_their_boxes() {
        assert_eq!(fit_label("remember_session", 400.0), "remember_session");
        assert_eq!(fit_label("remember_session", 60.0), "remem..");
        assert_eq!(fit_label("remember_session", 10.0), "");
        assert_eq!(fit_label("ééééé", 30.0), "é..");
        assert!(decimate(&[(0.0, 1.0); 10], 3).len() <= 3);
    }
}
