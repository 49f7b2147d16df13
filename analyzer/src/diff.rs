//! `leak-analyze diff`: what grew between two traces, or between two moments of one trace.
//!
//! Sites of different traces are matched by what they mean, not by address (two runs load
//! their code at different addresses): each frame's module file name plus its function, file
//! and line, or, when it did not symbolize, its offset in its module.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::analysis::Analysis;
use crate::naming::SiteName;
use crate::report::{human_bytes, FrameOut, Report, SiteOut};

/// One side of a comparison: a trace's report, and the moment it is read at.
pub struct Side<'a> {
    pub label: String,
    pub analysis: &'a Analysis,
    pub report: &'a Report,
    /// None: the end of the trace (the live table); Some(k): live bytes from the history at the
    /// k-th probe time the analysis was made with.
    pub at_probe: Option<usize>,
}

#[derive(Serialize)]
pub struct Diff {
    pub old: String,
    pub new: String,
    #[serde(serialize_with = "crate::report::as_integer")]
    pub old_unfreed_bytes: f64,
    #[serde(serialize_with = "crate::report::as_integer")]
    pub new_unfreed_bytes: f64,
    /// Sites ordered by growth, largest first.
    pub sites: Vec<SiteDiff>,
}

#[derive(Serialize)]
pub struct SiteDiff {
    #[serde(serialize_with = "crate::report::as_integer")]
    pub old_unfreed_bytes: f64,
    #[serde(serialize_with = "crate::report::as_integer")]
    pub new_unfreed_bytes: f64,
    #[serde(serialize_with = "crate::report::as_integer")]
    pub delta_bytes: f64,
    /// The site's growth verdict in the newer trace (false if it is not there).
    pub growing_in_new: bool,
    pub frames: Vec<FrameOut>,
    #[serde(skip)]
    label: String,
}

fn frame_key(f: &FrameOut) -> String {
    match &f.function {
        Some(func) => format!(
            "{}|{func}|{}|{}",
            f.module.as_deref().unwrap_or(""),
            f.file.as_deref().unwrap_or(""),
            f.line.unwrap_or(0)
        ),
        // Unresolved: module + offset from its load bias, the same in every process.
        None => crate::naming::frame_label(f),
    }
}

fn site_key(s: &SiteOut) -> Vec<String> {
    s.frames.iter().map(frame_key).collect()
}

/// Unfreed bytes of every site of `side`, keyed by meaning.
fn bytes_by_key<'a>(side: &Side<'a>) -> BTreeMap<Vec<String>, (f64, bool, &'a SiteOut)> {
    let mut out = BTreeMap::new();
    for s in &side.report.sites {
        // The report numbers its sites 1.. in the analysis's order (suppressed ones included).
        let site = s.id.checked_sub(1).and_then(|i| side.analysis.sites.get(i));
        let bytes = match side.at_probe {
            None => s.unfreed_bytes,
            Some(k) => site.and_then(|site| site.live_at_probes.get(k)).map_or(0.0, |b| b.round()),
        };
        let e = out.entry(site_key(s)).or_insert((0.0, false, s));
        e.0 += bytes;
        e.1 |= s.growing;
    }
    out
}

pub fn diff(old: &Side<'_>, new: &Side<'_>) -> Diff {
    let (a, b) = (bytes_by_key(old), bytes_by_key(new));
    let mut sites: Vec<SiteDiff> = Vec::new();
    for (key, &(nb, growing, s)) in &b {
        let ob = a.get(key).map_or(0.0, |e| e.0);
        sites.push(SiteDiff {
            old_unfreed_bytes: ob,
            new_unfreed_bytes: nb,
            delta_bytes: nb - ob,
            growing_in_new: growing,
            frames: s.frames.clone(),
            label: SiteName::of(&s.frames).quoted(),
        });
    }
    for (key, &(ob, _, s)) in &a {
        if !b.contains_key(key) {
            sites.push(SiteDiff {
                old_unfreed_bytes: ob,
                new_unfreed_bytes: 0.0,
                delta_bytes: -ob,
                growing_in_new: false,
                frames: s.frames.clone(),
                label: SiteName::of(&s.frames).quoted(),
            });
        }
    }
    sites.retain(|s| s.delta_bytes != 0.0);
    sites.sort_by(|x, y| y.delta_bytes.total_cmp(&x.delta_bytes).then_with(|| x.label.cmp(&y.label)));
    Diff {
        old: old.label.clone(),
        new: new.label.clone(),
        old_unfreed_bytes: a.values().map(|e| e.0).sum::<f64>() + 0.0,
        new_unfreed_bytes: b.values().map(|e| e.0).sum::<f64>() + 0.0,
        sites,
    }
}

fn signed(b: f64) -> String {
    if b >= 0.0 {
        format!("+{}", human_bytes(b))
    } else {
        format!("-{}", human_bytes(-b))
    }
}

pub fn render_text(d: &Diff, top: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "leak-analyze diff: {} -> {}", d.old, d.new);
    let _ = writeln!(
        o,
        "unfreed: {} -> {} ({})\n",
        human_bytes(d.old_unfreed_bytes),
        human_bytes(d.new_unfreed_bytes),
        signed(d.new_unfreed_bytes - d.old_unfreed_bytes)
    );
    for s in d.sites.iter().take(top) {
        let _ = writeln!(
            o,
            "{:>12}  ({} -> {})  {}{}",
            signed(s.delta_bytes),
            human_bytes(s.old_unfreed_bytes),
            human_bytes(s.new_unfreed_bytes),
            s.label,
            if s.growing_in_new { "  [growing]" } else { "" }
        );
    }
    if d.sites.len() > top {
        let _ = writeln!(o, "... {} more sites changed (use --top or --format json)", d.sites.len() - top);
    }
    if d.sites.is_empty() {
        let _ = writeln!(o, "no site changed");
    }
    o
}

/// "90s", "1500ms", "2m", "1h", "12.5" (seconds) into nanoseconds.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1e6)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e9)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60e9)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600e9)
    } else {
        (s, 1e9)
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0 && v * scale < u64::MAX as f64).then_some((v * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_units() {
        assert_eq!(parse_time("90s"), Some(90_000_000_000));
        assert_eq!(parse_time("1500ms"), Some(1_500_000_000));
        assert_eq!(parse_time("2m"), Some(120_000_000_000));
        assert_eq!(parse_time("0.5"), Some(500_000_000));
        assert_eq!(parse_time("-1s"), None);
        assert_eq!(parse_time("soon"), None);
    }
}
