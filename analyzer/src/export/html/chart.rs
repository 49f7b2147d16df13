//! RSS and estimated live heap over time, and each site's sparkline: inline SVG.

use std::fmt::Write as _;

use maud::{html, Markup};

use super::{duration, fin};
use crate::report::human_bytes;

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

/// A coordinate as the SVG carries it: one decimal.
fn c1(v: f64) -> String {
    format!("{v:.1}")
}

/// 0, `step`, `2 * step`, … up to `end`, with a little slack so that rounding in the sums does
/// not drop the last tick.
fn ticks(step: f64, end: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut v = 0.0;
    while v <= end * 1.0001 {
        out.push(v);
        v += step;
    }
    out
}

const CHART_W: f64 = 1100.0;
const CHART_H: f64 = 300.0;

/// RSS and estimated live heap over time, as one inline SVG.
pub(super) fn memory_chart(rss: &[(u64, u64)], heap: &[(u64, f64)], end_ns: u64) -> Markup {
    let (l, r, t, b) = (84.0, 18.0, 14.0, 34.0);
    let (pw, ph) = (CHART_W - l - r, CHART_H - t - b);
    let x_max_ns = rss.iter().map(|p| p.0).chain(heap.iter().map(|p| p.0)).chain([end_ns]).max().unwrap_or(0).max(1);
    let x_max_s = x_max_ns as f64 / 1e9;
    let y_data = rss.iter().map(|p| p.1 as f64).chain(heap.iter().map(|p| fin(p.1))).fold(0.0f64, f64::max);
    let y_step = nice_bytes_step(y_data / 5.0);
    let y_max = ((y_data / y_step).ceil().max(1.0)) * y_step;
    let sx = |ns: u64| l + ns as f64 / x_max_ns as f64 * pw;
    let sy = |v: f64| t + ph - fin(v / y_max).clamp(0.0, 1.0) * ph;
    let x_step = nice_time_step(x_max_s);
    let (x0, y0) = (sx(0), sy(0.0));

    // Live heap: area and line, with a marker (and tooltip) per series point.
    let heap_pts: Vec<(f64, f64)> = heap.iter().map(|&(ns, v)| (sx(ns), sy(v))).collect();
    let heap_area = [vec![(x0, y0)], heap_pts.clone(), vec![(heap_pts.last().map_or(l, |p| p.0), y0)]].concat();
    let heap_line = [vec![(x0, y0)], heap_pts.clone()].concat();
    // Visible markers while they stay apart; past that, invisible hover targets only.
    let dot = if heap_pts.len() <= 60 { "heap-dot" } else { "heap-dot quiet" };
    let every = heap_pts.len().div_ceil(400).max(1);
    let rss_pts: Vec<(f64, f64)> = rss.iter().map(|&(ns, v)| (sx(ns), sy(v as f64))).collect();

    html! {
        svg id="memchart" class="chart" viewBox={ "0 0 " (CHART_W) " " (CHART_H) } width="100%" role="img"
            aria-label="RSS and estimated live heap over time" {
            // Grid and axes.
            @for v in ticks(y_step, y_max) {
                @let y = c1(sy(v));
                line class="grid" x1=(l) x2=(c1(l + pw)) y1=(y) y2=(y) {}
                text class="ylab" x=(c1(l - 8.0)) y=(c1(sy(v) + 4.0)) { (tick_bytes(v)) }
            }
            @for ts in ticks(x_step, x_max_s) {
                @let x = c1(l + ts / x_max_s * pw);
                line class="xtick" x1=(x) x2=(x) y1=(c1(t + ph)) y2=(c1(t + ph + 5.0)) {}
                text class="xlab" x=(x) y=(c1(t + ph + 20.0)) { (tick_time(ts, x_step)) }
            }
            line class="axis" x1=(l) x2=(c1(l + pw)) y1=(c1(t + ph)) y2=(c1(t + ph)) {}

            @if !heap.is_empty() {
                path class="heap-area" d={ (path_d(&heap_area)) "Z" } {}
                path class="heap-line" d=(path_d(&heap_line)) { title { "estimated live heap" } }
                @for (&(ns, val), &(x, y)) in heap.iter().zip(&heap_pts).step_by(every) {
                    circle class=(dot) cx=(c1(x)) cy=(c1(y)) r="2.6" {
                        title { (duration(ns)) ": live heap ≈ " (human_bytes(val)) }
                    }
                }
            }
            @if !rss.is_empty() {
                path class="rss-line" d=(path_d(&decimate(&rss_pts, 2000))) { title { "RSS" } }
            } @else {
                text class="note" x=(c1(l + pw / 2.0)) y=(c1(t + ph / 2.0)) { "no RSS samples in this trace" }
            }
            g class="legend" transform={ "translate(" (c1(l + 12.0)) "," (c1(t + 8.0)) ")" } {
                rect class="legend-bg" x="0" y="0" width="330" height="46" rx="4" {}
                line class="rss-line" x1="10" x2="34" y1="15" y2="15" {}
                text x="42" y="19" { "RSS (resident memory of the process)" }
                rect class="heap-area heap-swatch" x="10" y="27" width="24" height="10" {}
                text x="42" y="36" { "estimated live heap (sum of call sites)" }
            }
        }
    }
}

/// A small line of a site's live bytes over the trace.
pub(super) fn sparkline(series: &[f64], growing: bool) -> Markup {
    let (w, h, pad) = (150.0, 32.0, 2.0);
    let max = series.iter().copied().map(fin).fold(0.0f64, f64::max);
    let n = series.len();
    if n == 0 {
        return html! { span class="muted" { "—" } };
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
    let area = [vec![(pad, h - pad)], pts.clone(), vec![(pts.last().map_or(pad, |p| p.0), h - pad)]].concat();
    let first = series.first().copied().map_or(0.0, fin);
    let last = series.last().copied().map_or(0.0, fin);
    html! {
        svg class=(if growing { "spark grow" } else { "spark" }) viewBox={ "0 0 " (w) " " (h) } width=(w) height=(h) {
            title {
                "live bytes over the trace: " (human_bytes(first)) " → " (human_bytes(last))
                " (peak " (human_bytes(max)) ")"
            }
            path class="sa" d={ (path_d(&area)) "Z" } {}
            path class="sl" d=(path_d(&pts)) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let svg = svg.into_string();
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
        assert!(decimate(&[(0.0, 1.0); 10], 3).len() <= 3);
    }
}
