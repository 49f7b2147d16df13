//! Other renderings of the report: collapsed stacks for flame-graph tools (`folded`), a pprof
//! profile (`pprof`) and a self-contained HTML page (`html`).
//!
//! Everything here works from the finished [`Report`] (symbolized frames) plus the trace's module
//! map and the [`Analysis`] (raw addresses and live-bytes series). The trace is untrusted input:
//! nothing here indexes, divides or unwraps on values taken from it without a check, and every
//! output is built in a deterministic order (no hash-map iteration order reaches the output).

pub mod folded;
pub mod html;
pub mod pprof;
pub mod proto;

use crate::analysis::Analysis;
pub use crate::naming::{base_name, frame_label, module_of, LOST_STACK};
use crate::report::{FrameOut, SiteOut};

/// The frames of one return address: the inlined functions innermost first, the function that
/// holds the call instruction last. One entry, unresolved, when symbolization failed.
pub struct AddrFrames<'a> {
    pub addr: u64,
    pub frames: &'a [FrameOut],
}

/// Parse the `0x…` addresses the report writes. Never fails: garbage reads as 0.
pub fn parse_addr(s: &str) -> u64 {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    u64::from_str_radix(hex, 16).unwrap_or(0)
}

/// The raw return addresses of report site `s`, innermost first, if the analysis has them.
fn raw_frames<'a>(analysis: &'a Analysis, s: &SiteOut) -> Option<&'a [u64]> {
    // The report numbers its sites 1.. in the analysis's order.
    let i = s.id.checked_sub(1)?;
    analysis.sites.get(i).map(|site| site.frames.as_slice())
}

/// Split a site's flattened frames back into one group per return address, innermost first.
///
/// The report expands each raw address into its inlined frames, all carrying the same address
/// string. Grouping by the raw stack (rather than by runs of equal strings) keeps direct
/// recursion, where the same return address appears twice in a row, as two locations.
pub fn group_by_address<'a>(analysis: &Analysis, s: &'a SiteOut) -> Vec<AddrFrames<'a>> {
    raw_frames(analysis, s).and_then(|raw| group_with_raw(raw, &s.frames)).unwrap_or_else(|| {
        s.frames.chunks(1).map(|f| AddrFrames { addr: parse_addr(&f[0].address), frames: f }).collect()
    })
}

fn group_with_raw<'a>(raw: &[u64], frames: &'a [FrameOut]) -> Option<Vec<AddrFrames<'a>>> {
    let mut out = Vec::with_capacity(raw.len());
    let (mut i, mut k) = (0usize, 0usize);
    // Leading allocator entry points (operator new) are stripped from the report's frames but
    // not from the raw stack: start at the raw address of the first frame kept.
    let first = frames.first().map(|f| parse_addr(&f.address));
    while k < raw.len() && Some(raw[k]) != first {
        k += 1;
    }
    while k < raw.len() {
        let addr = raw[k];
        let repeats = raw[k..].iter().take_while(|&&a| a == addr).count();
        let run = frames.get(i..)?.iter().take_while(|f| parse_addr(&f.address) == addr).count();
        if run == 0 || run % repeats != 0 {
            return None;
        }
        let per = run / repeats;
        for r in 0..repeats {
            out.push(AddrFrames { addr, frames: frames.get(i + r * per..i + (r + 1) * per)? });
        }
        i += run;
        k += repeats;
    }
    (i == frames.len()).then_some(out)
}

/// A site's stack for flame graphs: frame labels outermost first (inlined frames after the
/// function they were inlined into).
pub fn stack_outermost_first(s: &SiteOut) -> Vec<String> {
    if s.frames.is_empty() {
        return vec![LOST_STACK.to_string()];
    }
    s.frames.iter().rev().map(frame_label).collect()
}

/// A finite, non-negative f64 as an integer (NaN and negatives read as 0, huge values saturate).
pub fn whole(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(addr: &str, func: Option<&str>) -> FrameOut {
        FrameOut {
            address: addr.into(),
            module: None,
            function: func.map(String::from),
            file: None,
            line: None,
            module_offset: None,
        }
    }

    #[test]
    fn groups_inlined_frames_and_keeps_recursion_apart() {
        let frames = vec![
            f("0x10", Some("inner")),
            f("0x10", Some("outer")),
            f("0x20", Some("rec")),
            f("0x20", Some("rec")),
            f("0x30", None),
        ];
        let g = group_with_raw(&[0x10, 0x20, 0x20, 0x30], &frames).expect("consistent");
        let shape: Vec<(u64, usize)> = g.iter().map(|a| (a.addr, a.frames.len())).collect();
        assert_eq!(shape, vec![(0x10, 2), (0x20, 1), (0x20, 1), (0x30, 1)]);
        // Inconsistent input is refused, not panicked on.
        assert!(group_with_raw(&[0x10, 0x99], &frames).is_none());
        assert!(group_with_raw(&[0x10], &frames).is_none());
        assert!(group_with_raw(&[0x10, 0x20, 0x20, 0x30, 0x40], &frames).is_none());
    }

    #[test]
    fn parses_addresses_without_trusting_them() {
        assert_eq!(parse_addr("0x1f"), 0x1f);
        assert_eq!(parse_addr("garbage"), 0);
        assert_eq!(parse_addr(""), 0);
        assert_eq!(whole(f64::NAN), 0);
        assert_eq!(whole(-3.0), 0);
        assert_eq!(whole(f64::INFINITY), 0);
        assert_eq!(whole(2.6), 3);
    }
}
