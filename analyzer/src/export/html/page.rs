//! The page around the charts: header, verdict, key figures, the table of sites with their
//! stacks, notes and footer.

use leaktrace_format::Trace;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::chart::{memory_chart, sparkline};
use super::flame::{flame_color, flame_graph};
use super::{duration, fin, group, utc, without_control_chars};
use crate::analysis::Analysis;
use crate::export::{base_name, frame_label, whole, LOST_STACK};
use crate::naming::{naming_frame, per_min, rss_clause, Headline, Place, SiteName};
use crate::report::{human_bytes, secs, FrameOut, Report, RssPeak, SiteOut};

pub(super) const STYLE: &str = include_str!("style.css");
pub(super) const SCRIPT: &str = include_str!("script.js");

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:";

// ---------------------------------------------------------------------------------------------
// Frames

/// `file:line` of a frame, with the file shortened to its name; the full path goes in a title.
fn loc(f: &FrameOut) -> Markup {
    match (&f.file, f.line) {
        (Some(file), line) => {
            let line = line.map_or(String::new(), |l| format!(":{l}"));
            html! { span class="loc" title={ (file) (line) } { (base_name(file)) (line) } }
        }
        // An unresolved frame's label already names its module.
        (None, _) => match (&f.module, &f.function) {
            (Some(m), Some(_)) => html! { span class="loc" { "in " (m) } },
            _ => html! {},
        },
    }
}

/// How a site is named in one line: its name (`naming::SiteName`, as every output names it),
/// with the full path of its file in a title.
fn site_title(s: &SiteOut) -> Markup {
    let name = SiteName::of(&s.frames);
    html! {
        code { (name.label) }
        @match (name.frame, name.place) {
            (Some(f), Place::Line { .. }) => { " at " (loc(f)) }
            (_, Place::Module(m)) => { " " span class="loc" { "in " (m) } }
            _ => {}
        }
    }
}

/// The few callers after the named frame, for context in the collapsed row.
fn callers_preview(s: &SiteOut) -> Markup {
    let start = naming_frame(&s.frames).and_then(|n| s.frames.iter().position(|f| std::ptr::eq(f, n))).unwrap_or(0);
    let names: Vec<String> = s.frames.iter().skip(start + 1).take(3).map(frame_label).collect();
    if names.is_empty() {
        return html! {};
    }
    let more = if s.frames.len() > start + 4 { " ← …" } else { "" };
    html! { div class="callers" { "← " (names.join(" ← ")) (more) } }
}

/// Most raw stacks listed under a site that merges several.
const MAX_LISTED_STACKS: usize = 16;

/// The raw stacks a site merges (one source location, several call instructions), when more
/// than one: the return addresses of each, innermost first (JSON `sites[].stacks`).
fn raw_stacks(s: &SiteOut) -> Markup {
    if s.stacks.len() < 2 {
        return html! {};
    }
    html! {
        div class="rawstacks muted" {
            "One source location reached by " (s.stacks.len()) " call stacks (return addresses, innermost first):"
            ol {
                @for st in s.stacks.iter().take(MAX_LISTED_STACKS) {
                    li class="addr" { (st.join(" ")) }
                }
                @if s.stacks.len() > MAX_LISTED_STACKS {
                    li { "… " (s.stacks.len() - MAX_LISTED_STACKS) " more" }
                }
            }
        }
    }
}

fn stack(s: &SiteOut) -> Markup {
    if s.frames.is_empty() {
        return html! { p class="muted" { (LOST_STACK) ": the stack of these allocations could not be read." } };
    }
    html! {
        ol class="stack" {
            @for (i, f) in s.frames.iter().enumerate() {
                li {
                    code class=(if f.function.is_some() { "fn" } else { "fn unres" }) { (frame_label(f)) }
                    " " (loc(f))
                    @if s.frames.get(i + 1).is_some_and(|next| next.address == f.address) {
                        " " span class="tag" { "inlined" }
                    }
                    span class="addr" { (f.address) }
                }
            }
        }
        (raw_stacks(s))
    }
}

// ---------------------------------------------------------------------------------------------
// The verdict

/// The report's RSS-versus-heap comparison as a sentence, if RSS grew (the summary's clause).
fn rss_sentence(report: &Report) -> Option<Markup> {
    let r = report.rss_vs_heap.as_ref();
    let clause = rss_clause(r, &report.rss, report.rss_peak)?;
    let outside = r.is_some_and(|r| r.growth_outside_heap && r.rss_growth_bytes > 0.0);
    Some(html! {
        (clause) "."
        @if outside {
            " " b { "Most of the growth is outside malloc'd memory" } " (fragmentation, mmap, thread stacks)."
        }
    })
}

/// The one-sentence verdict (the report's `summary`, with markup, of the same site: see
/// `naming::Headline`): the first growing site, its rate and confidence; else the largest site.
/// Then the RSS sentence, if any; and the section's class.
fn verdict(report: &Report) -> (Markup, &'static str) {
    let (sentence, class) = match Headline::of(&report.sites) {
        Headline::Growing { site: s, others } => {
            let ci = if s.unfreed_bytes_ci95 > 0.0 {
                format!(" ± {}", human_bytes(s.unfreed_bytes_ci95))
            } else {
                String::new()
            };
            let sentence = html! {
                (site_title(s)) " grows " b { (per_min(s.growth_bytes_per_sec)) }
                " with confidence " (format!("{:.2}", fin(s.trend_confidence))) "."
                " " span class="sub" {
                    "It holds " (human_bytes(s.unfreed_bytes)) (ci) " unfreed in "
                    (group(whole(s.unfreed_allocations))) " allocations at the end of the trace"
                    @match others {
                        0 => { "." }
                        1 => { "; 1 other site grows too." }
                        n => { "; " (n) " other sites grow too." }
                    }
                }
            };
            (sentence, "leak")
        }
        Headline::Largest { site: s } => (
            html! {
                "No call site's live memory grows steadily. The largest unfreed site is " (site_title(s))
                " with " b { (human_bytes(s.unfreed_bytes)) } "."
            },
            "calm",
        ),
        Headline::Nothing => (html! { "No sampled allocation was left unfreed." }, "calm"),
    };
    let markup = html! {
        (sentence)
        @if let Some(rss) = rss_sentence(report) {
            span class="sub" { (rss) }
        }
    };
    (markup, class)
}

// ---------------------------------------------------------------------------------------------
// The page

/// Who, when, how: the items of the header's line of facts, joined by " · ".
fn facts(report: &Report, hostname: &str) -> Vec<Markup> {
    let p = &report.process;
    let mut meta = Vec::new();
    if !hostname.is_empty() {
        meta.push(html! { "on " b { (hostname) } });
    }
    if p.start_unix_ns > 0 {
        meta.push(html! { "started " b { (utc(p.start_unix_ns)) } });
    }
    meta.push(html! { "ran " b { (duration(p.duration_ns)) } });
    let ended = match p.ended.as_str() {
        "exit" => "normal exit",
        "detached" => "detached (the process ran on untraced)",
        _ => "unknown (still running, or killed)",
    };
    meta.push(html! { "ended: " b { (ended) } });
    meta.push(html! { "sampling mean " b { (human_bytes(report.sampling.mean_bytes as f64)) } });
    meta.push(html! {
        b { (group(report.totals.sampled_events)) } " sampled events, "
        b { (group(report.totals.dropped_events)) } " dropped"
    });
    meta
}

fn stats(report: &Report) -> Markup {
    let growing = report.sites.iter().filter(|s| s.growing).count();
    let rss_first = report.rss.first().map(|r| r.rss_bytes);
    let rss_last = report.rss.last().map(|r| r.rss_bytes);
    let rss_peak = report.rss_peak.or_else(|| {
        report.rss.iter().max_by_key(|r| r.rss_bytes).map(|r| RssPeak { rss_bytes: r.rss_bytes, t_ns: r.t_ns })
    });
    let growth: f64 = report.sites.iter().filter(|s| s.growing).map(|s| fin(s.growth_bytes_per_sec)).sum();
    let rss_note = match (rss_first, rss_peak) {
        (Some(f), Some(pk)) if rss_last.is_some_and(|l| pk.rss_bytes > l) => format!(
            "at end, from {} (peak {} at {})",
            human_bytes(f as f64),
            human_bytes(pk.rss_bytes as f64),
            secs(pk.t_ns)
        ),
        (Some(f), Some(_)) => format!("at end, from {} at start", human_bytes(f as f64)),
        _ => "no RSS samples".to_string(),
    };
    let stat = |k: &str, v: String, s: String| {
        html! { div class="stat" { div class="k" { (k) } div class="v" { (v) } div class="s" { (s) } } "\n" }
    };
    html! {
        section class="stats" {
            "\n"
            (stat(
                "Unfreed at end",
                human_bytes(report.totals.unfreed_bytes),
                format!("in {} allocations", group(whole(report.totals.unfreed_allocations))),
            ))
            (stat("Call sites", group(report.sites.len() as u64), format!("{} growing", group(growing as u64))))
            (stat("RSS", rss_last.map_or("—".to_string(), |b| human_bytes(b as f64)), rss_note))
            (stat(
                "Growth of growing sites",
                if growing > 0 { per_min(growth) } else { "none".to_string() },
                if growing > 0 { format!("{}/s", human_bytes(growth)) } else { "no site grows steadily".to_string() },
            ))
        }
        "\n"
    }
}

/// What the last heap scan (`ctl --scan`) found holds the site's objects, and a few of them.
fn retention(s: &SiteOut) -> Markup {
    let Some(r) = &s.retention else { return html! {} };
    let class = if r.verdict == "unreferenced" { "retention lost" } else { "retention held" };
    html! {
        div class=(class) {
            (crate::retention::describe(r))
            @for h in r.held_by.iter().skip(1).take(3) {
                div class="small" { (h.objects()) " held by " (h.describe()) }
            }
            @for sample in r.samples.iter().filter(|x| !x.text.is_empty()).take(2) {
                div class="small sample" { "e.g. " (sample.size) " bytes at " (sample.address) ": " code { (sample.text) } }
            }
        }
    }
}

fn site_row(s: &SiteOut, row: usize, analysis: &Analysis) -> Markup {
    let series: &[f64] = s.id.checked_sub(1).and_then(|i| analysis.sites.get(i)).map_or(&[], |a| a.series.as_slice());
    let ci = if s.unfreed_bytes_ci95 > 0.0 {
        format!("± {}", human_bytes(s.unfreed_bytes_ci95))
    } else {
        "exact".to_string()
    };
    let confidence = format!("{:.2}", fin(s.trend_confidence));
    html! {
        tr class=(if s.growing { "growing" } else { "flat" }) {
            td class="id" { (s.id) }
            td class="site" {
                details open[row == 0] { summary { (site_title(s)) } (stack(s)) }
                (callers_preview(s))
                (retention(s))
            }
            td class="num" {
                div class="big" { (human_bytes(s.unfreed_bytes)) }
                div class="small" { (ci) }
            }
            td class="num" {
                (group(whole(s.unfreed_allocations)))
                div class="small" { (group(s.sampled_unfreed)) " sampled" }
            }
            td class="trend" {
                @if s.growing {
                    span class="badge grow" { "GROWING" }
                    div class="small" { "+" (per_min(s.growth_bytes_per_sec)) }
                    div class="small" { "confidence " (confidence) }
                } @else {
                    span class="badge flat" { "not growing" }
                    div class="small" { "trend confidence " (confidence) }
                }
            }
            td { (sparkline(series, s.growing)) }
        }
        "\n"
    }
}

fn sites_table(report: &Report, analysis: &Analysis, top: usize) -> Markup {
    let shown = report.sites.len().min(top);
    html! {
        section class="card" id="sites-card" {
            h2 { "Call sites holding unfreed memory" } "\n"
            p class="hint" {
                "Growing sites first, then by unfreed bytes. Estimates carry a 95% sampling interval; click a site for its full stack."
            }
            "\n"
            table class="sites" id="sites" {
                thead {
                    tr {
                        th { "#" } th { "Site" } th class="num" { "Unfreed" } th class="num" { "Allocations" }
                        th { "Trend" } th { "Live bytes over time" }
                    }
                }
                tbody {
                    "\n"
                    @for (row, s) in report.sites.iter().take(shown).enumerate() {
                        (site_row(s, row, analysis))
                    }
                    @if report.sites.is_empty() {
                        tr { td {} td colspan="5" class="muted" { "No call site holds sampled unfreed memory." } }
                    }
                }
            }
            @if report.sites.len() > shown {
                p class="hint" style="margin-top:10px" {
                    (group((report.sites.len() - shown) as u64)) " more sites are not listed (use "
                    code { "--top N" } "); the flame graph below includes them."
                }
            }
        }
        "\n"
    }
}

/// The whole page. `top`: how many sites the table lists (the flame graph has them all).
pub fn render(report: &Report, analysis: &Analysis, trace: &Trace, top: usize) -> String {
    let p = &report.process;
    let exe_name = if p.exe.is_empty() { "unknown executable" } else { base_name(&p.exe) };
    let hostname = trace.process.as_ref().map_or("", |pi| pi.hostname.as_str());
    let (verdict, verdict_class) = verdict(report);
    let rss: Vec<(u64, u64)> = report.rss.iter().map(|r| (r.t_ns, r.rss_bytes)).collect();
    let heap: Vec<(u64, f64)> = analysis.series_times().into_iter().zip(analysis.heap_series()).collect();
    // The line breaks ("\n") only keep the source of the page readable.
    let page = html! {
        (DOCTYPE) "\n"
        html lang="en" {
            head {
                meta charset="utf-8"; "\n"
                meta name="viewport" content="width=device-width, initial-scale=1"; "\n"
                meta http-equiv="Content-Security-Policy" content=(CSP); "\n"
                title { "leaktrace: " (exe_name) " (pid " (p.pid) ")" } "\n"
                style { (PreEscaped(STYLE)) }
            }
            "\n"
            body {
                "\n"
                header class="top" {
                    div class="wrap" {
                        div class="brand" { "leaktrace · memory leak report" } "\n"
                        h1 { (exe_name) " " span class="pid" { "pid " (p.pid) } } "\n"
                        div class="cmd mono" title=(p.exe) { (p.cmdline.join(" ")) } "\n"
                        div class="meta" {
                            @for (i, item) in facts(report, hostname).into_iter().enumerate() {
                                @if i > 0 { " · " }
                                (item)
                            }
                        }
                    }
                }
                "\n"
                main class="wrap" {
                    "\n"
                    section class={ "card verdict " (verdict_class) } id="verdict" { (verdict) } "\n"

                    // Damage and symbolization problems.
                    @if report.partial || !report.health_notes.is_empty() {
                        section class="card alert" id="health" {
                            @if report.partial {
                                b { "Partial trace:" }
                                " the file is damaged (truncated or torn records); the figures cover what could be read."
                            } @else {
                                b { "Trace notes" }
                            }
                            ul { @for n in &report.health_notes { li { (n) } } }
                        }
                        "\n"
                    }

                    (stats(report))

                    section class="card" id="memory" {
                        h2 { "Memory over time" } "\n"
                        p class="hint" {
                            "RSS as the process saw it, and the live heap estimated from the sampled allocations \
                             (allocations freed before the ring buffer's window are counted from its start)."
                        }
                        "\n"
                        (memory_chart(&rss, &heap, p.duration_ns))
                    }
                    "\n"

                    (sites_table(report, analysis, top))

                    section class="card" id="flamecard" {
                        div class="flamebar" {
                            h2 { "Where the unfreed memory was allocated" }
                            button class="reset" id="flamereset" type="button" { "Reset zoom" }
                        }
                        "\n"
                        p class="hint" {
                            "Icicle graph: callers above callees, the allocating function at the bottom of each \
                             column, widths proportional to unfreed bytes. Click a box to zoom."
                            br;
                            span class="key" style={ "background:" (flame_color("", 1.0)) } {}
                            "from growing sites"
                            span class="key" style={ "background:" (flame_color("", 0.0)) } {}
                            "from other sites"
                        }
                        "\n"
                        (flame_graph(report))
                    }
                    "\n"

                    @if !report.symbolization_warnings.is_empty() {
                        section class="card alert" id="warnings" {
                            b { "Symbolization warnings" }
                            " (frames that could not be named are shown as module+offset)"
                            ul { @for w in &report.symbolization_warnings { li { (w) } } }
                        }
                        "\n"
                    }

                    footer {
                        "Generated by leak-analyze " (env!("CARGO_PKG_VERSION")) " from a trace in format "
                        (report.format_version) ". Totals: " (human_bytes(report.totals.unfreed_bytes))
                        " unfreed in " (group(whole(report.totals.unfreed_allocations))) " allocations, "
                        (group(report.sites.len() as u64)) " call sites."
                    }
                    "\n"
                }
                "\n"
                script { (PreEscaped(SCRIPT)) }
                "\n"
            }
        }
        "\n"
    };
    without_control_chars(page.into_string())
}
