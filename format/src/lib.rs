//! The leaktrace trace file: one fixed-size, memory-mapped file per traced process.
//!
//! Framing in one sentence: a 4 KiB little-endian header with a region table, then a metadata
//! log of length-framed postcard records, an append-only table of deduplicated stacks, an
//! open-addressing table of the sampled allocations still live, a downsampled RSS series, and a
//! ring of fixed 48-byte event records, each self-checking. `FORMAT.md` specifies every byte.
//!
//! The writer (libleaktrace.so) uses [`layout`] and [`encode_meta`]; the analyzer uses
//! [`reader::Trace::parse_from`] and [`reader::Trace::events`]. Both use [`sample_weight`] so estimates agree with the sampler.

#![cfg(target_endian = "little")]

pub mod layout;
pub mod reader;
pub mod records;
#[cfg(any(test, feature = "synth"))]
pub mod synth;

pub use reader::{Event, Events, Header, Health, LiveAllocation, ParsedTrace, RssSample, Trace, TraceSource};
pub use records::{
    HeldByGlobal, HeldBySite, MetaKind, ModuleRecord, ModuleUnloaded, ObjectSample, ObjectSampleOut, ProcessInfo,
    Retention, RetentionOut, SamplingChange, ScanOutcome, ScanSummary, Segment, RETENTION_GLOBALS, RETENTION_SAMPLES,
    RETENTION_SAMPLE_BYTES, RETENTION_SITES,
};

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a leaktrace trace (bad magic number)")]
    NotATrace,
    #[error("file is only {len} bytes: too short for a leaktrace header")]
    TooShort { len: u64 },
    #[error("trace format version {major}.{minor} is not supported by this reader (it reads {}.x); use a newer leak-analyze", layout::VERSION_MAJOR)]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("corrupt header: {0}")]
    BadHeader(String),
}

/// Encode a metadata record (head + postcard payload) into `out`, without allocating.
/// Returns the number of bytes used, a multiple of 8, or `None` if `out` is too small.
pub fn encode_meta<T: serde::Serialize>(kind: MetaKind, value: &T, out: &mut [u8]) -> Option<usize> {
    let head = layout::META_HEAD_SIZE;
    if out.len() < head {
        return None;
    }
    let (head_bytes, body) = out.split_at_mut(head);
    let len = postcard::to_slice(value, body).ok()?.len();
    let total = head + layout::align_up(len as u64, 8) as usize;
    if total > head_bytes.len() + body.len() {
        return None;
    }
    let check = layout::meta_check(&body[..len]);
    head_bytes[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    head_bytes[4..6].copy_from_slice(&(kind as u16).to_le_bytes());
    head_bytes[6..8].fill(0);
    head_bytes[8..12].copy_from_slice(&check.to_le_bytes());
    head_bytes[12..16].fill(0);
    body[len..total - head].fill(0);
    Some(total)
}

/// How many bytes one sampled allocation of `size` bytes stands for, when allocations are sampled
/// by a Poisson process with one sample per `mean_bytes` bytes on average.
///
/// An allocation of `s` bytes is sampled with probability `p = 1 - exp(-s/T)`; crediting each
/// sampled allocation with `s / p` makes the sum an unbiased estimate of the bytes allocated
/// (Horvitz–Thompson). `mean_bytes <= 1` means every allocation was recorded: the weight is `s`.
pub fn sample_weight(size: u64, mean_bytes: u64) -> f64 {
    let s = size as f64;
    if mean_bytes <= 1 {
        return s;
    }
    let p = sample_probability(size, mean_bytes);
    if p <= 0.0 {
        0.0
    } else {
        s / p
    }
}

/// Probability that an allocation of `size` bytes is sampled at mean interval `mean_bytes`.
pub fn sample_probability(size: u64, mean_bytes: u64) -> f64 {
    if mean_bytes <= 1 {
        return 1.0;
    }
    -(-(size as f64) / mean_bytes as f64).exp_m1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_roundtrip_through_parser_framing() {
        let m = ModuleRecord {
            path: "/usr/lib/libfoo.so".into(),
            base: 0x7f00_0000_0000,
            build_id: vec![1, 2, 3],
            segments: vec![Segment { vaddr: 0, memsz: 4096, flags: 5 }],
            seen_ns: 7,
            is_tracer: false,
        };
        let mut buf = [0u8; 256];
        let n = encode_meta(MetaKind::Module, &m, &mut buf).expect("fits");
        assert_eq!(n % 8, 0);
        let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
        let (back, _) = postcard::take_from_bytes::<ModuleRecord>(&buf[16..16 + len]).unwrap();
        assert_eq!(back, m);
        assert!(encode_meta(MetaKind::Module, &m, &mut buf[..20]).is_none());
    }

    #[test]
    fn weights_are_unbiased_in_the_limits() {
        assert_eq!(sample_weight(100, 1), 100.0);
        // Huge allocations are always sampled and count as themselves.
        let w = sample_weight(100 << 20, 512 << 10);
        assert!((w - (100 << 20) as f64).abs() < 1.0);
        // Tiny ones stand for about one mean interval each.
        let w = sample_weight(16, 512 << 10);
        assert!((w - (512 << 10) as f64).abs() / ((512 << 10) as f64) < 0.001);
    }
}
