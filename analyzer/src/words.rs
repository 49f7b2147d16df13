//! Words and numbers as every rendering writes them (sizes, times, the RSS sentence), so the
//! text report, the summary, watch and the HTML say the same things the same way.

use std::fmt::Write as _;

use crate::schema::{Children, Report, RssPeak, RssPoint, RssVsHeap};

/// Which stretch of the trace the RSS comparison covers, with its times: "over the whole
/// trace (0.0s to 8.0s)", or "since sampling last started (3.0s to 8.0s)" when it starts later
/// than the RSS series (sampling was paused, or the trace started dormant: the heap is unknown
/// before). The text's RSS line and the summary use the same words for the same span.
pub fn rss_span_words(r: &RssVsHeap, rss: &[RssPoint]) -> String {
    let times = format!("{} to {}", secs(r.from_ns), secs(r.to_ns));
    match rss.first() {
        Some(first) if r.from_ns > first.t_ns => format!("since sampling last started ({times})"),
        _ => format!("over the whole trace ({times})"),
    }
}

/// "RSS grew 156.0 MiB over the whole trace (0.0s to 8.0s; leaktrace's own 5.7 MiB excluded)",
/// with ", after a peak of 2.2 GiB at 31.0s" when the RSS peaked well above both ends.
pub fn rss_growth_words(r: &RssVsHeap, rss: &[RssPoint], peak: Option<RssPeak>) -> String {
    let span = rss_span_words(r, rss);
    let span = match tracer_words(r) {
        Some(t) => format!("{}; {t})", span.trim_end_matches(')')),
        None => span,
    };
    let peak = notable_peak(rss, peak).map_or(String::new(), |p| {
        format!(", after a peak of {} at {}", human_bytes(p.rss_bytes as f64), secs(p.t_ns))
    });
    format!("RSS grew {} {span}{peak}", human_bytes(r.rss_growth_bytes))
}

/// "leaktrace's own 2.3 MiB excluded" when the tracer's memory grew noticeably.
pub fn tracer_words(r: &RssVsHeap) -> Option<String> {
    (r.tracer_growth_bytes >= 64.0 * 1024.0)
        .then(|| format!("leaktrace's own {} excluded", human_bytes(r.tracer_growth_bytes)))
}

/// The RSS peak, when it stands well above both ends of the series (by a quarter and at least
/// 4 MiB): a process that peaked at 2.35 GB and fell back must not read as "RSS grew 8.6 MiB".
pub fn notable_peak(rss: &[RssPoint], peak: Option<RssPeak>) -> Option<RssPeak> {
    let ends = rss.first()?.rss_bytes.max(rss.last()?.rss_bytes);
    peak.filter(|p| p.rss_bytes as f64 >= ends as f64 * 1.25 && p.rss_bytes.saturating_sub(ends) >= 4 << 20)
}

pub fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    // `+ 0.0` turns -0 (an empty f64 sum) into 0, so nothing reads "-0 B"; NaN and infinities
    // (from a damaged trace) read as 0.
    let mut v = if b.is_finite() { b + 0.0 } else { 0.0 };
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// "children: 3 traced, 312 not traced (disk budget spent), 40 traces removed (nothing
/// unfreed)", or None for a process without forked children.
pub fn children_line(c: &Children) -> Option<String> {
    let mut parts = Vec::new();
    if c.traced > 0 {
        parts.push(format!("{} traced", c.traced));
    }
    if c.untraced_budget > 0 {
        parts.push(format!("{} not traced (disk budget spent: LEAKTRACE_TREE_BUDGET)", c.untraced_budget));
    }
    if c.removed_empty > 0 {
        parts.push(format!("{} traces removed (nothing unfreed)", c.removed_empty));
    }
    (!parts.is_empty()).then(|| format!("children: {}", parts.join(", ")))
}

pub fn secs(ns: u64) -> String {
    format!("{:.1}s", ns as f64 / 1e9)
}

/// The text report's RSS line: the series' ends over the whole trace, the peak and when, and
/// leaktrace's own share of the ends; when the heap comparison covers a shorter span (sampling
/// paused or dormant at first), that span's ends too, in the summary's words.
pub fn rss_line(r: &Report) -> Option<String> {
    let (first, last) = (r.rss.first()?, r.rss.last()?);
    let mut o = format!(
        "RSS {} -> {} over the whole trace ({} to {})",
        human_bytes(first.rss_bytes as f64),
        human_bytes(last.rss_bytes as f64),
        secs(first.t_ns),
        secs(last.t_ns)
    );
    if let Some(p) = r.rss_peak.filter(|p| p.rss_bytes > first.rss_bytes.max(last.rss_bytes)) {
        let _ = write!(o, ", peak {} at {}", human_bytes(p.rss_bytes as f64), secs(p.t_ns));
    }
    if first.tracer_bytes > 0 || last.tracer_bytes > 0 {
        let _ = write!(
            o,
            "; leaktrace's own {} -> {} of it",
            human_bytes(first.tracer_bytes as f64),
            human_bytes(last.tracer_bytes as f64)
        );
    }
    if let Some(v) = &r.rss_vs_heap {
        let from = r.rss.iter().find(|p| p.t_ns == v.from_ns);
        if let Some(from) = from.filter(|p| p.t_ns > first.t_ns) {
            let _ = write!(
                o,
                "; {} -> {} {}, the span the heap is compared over",
                human_bytes(from.rss_bytes as f64),
                human_bytes(last.rss_bytes as f64),
                rss_span_words(v, &r.rss)
            );
        }
    }
    Some(o)
}
