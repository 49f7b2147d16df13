//! The reader against damaged and hostile files: it must never panic, never allocate in
//! proportion to a number read from the file, and either refuse with an error or return a
//! trace whose health says what was lost.

use leaktrace_format::layout::{self, hdr};
use leaktrace_format::{FormatError, Trace};
use proptest::prelude::*;

/// A real 1 MiB trace: exact mode, a program leaking 1000 blocks of 10001 bytes while churning
/// enough to wrap the ring 14 times.
fn golden() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/small-v1.lt")).expect("golden trace")
}

#[test]
fn golden_trace_reads_cleanly() {
    let t = Trace::parse(&golden()).unwrap();
    assert!(!t.health.is_partial(), "{:?}", t.health);
    assert!(t.health.overwritten_events > 0, "the golden trace has wrapped");
    let leaked = t.live.iter().filter(|a| a.size == 10001).count();
    assert_eq!(leaked, 1000, "the early leak survived the wraps");
    assert!(t.process.as_ref().is_some_and(|p| p.exe.ends_with("/leak")));
    assert!(!t.modules.is_empty());
    assert!(t.live.iter().all(|a| t.stack(a.stack_id).is_some()));
}

#[test]
fn foreign_and_tiny_files_are_refused() {
    assert_eq!(Trace::parse(b"").unwrap_err(), FormatError::NotATrace);
    assert_eq!(Trace::parse(b"\x7fELF\x02\x01\x01\0").unwrap_err(), FormatError::NotATrace);
    assert!(matches!(Trace::parse(&layout::MAGIC).unwrap_err(), FormatError::TooShort { .. }));
}

#[test]
fn newer_major_version_is_refused_by_name() {
    let mut g = golden();
    g[hdr::VERSION_MAJOR..hdr::VERSION_MAJOR + 2].copy_from_slice(&2u16.to_le_bytes());
    let e = Trace::parse(&g).unwrap_err();
    assert!(e.to_string().contains("version 2.0"), "{e}");
}

#[test]
fn absurd_sizes_are_refused_without_allocating() {
    let mut g = golden();
    g[hdr::FILE_SIZE..hdr::FILE_SIZE + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(matches!(Trace::parse(&g).unwrap_err(), FormatError::BadHeader(_)));
    let mut g = golden();
    g[hdr::RING_CAPACITY..hdr::RING_CAPACITY + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(Trace::parse(&g).unwrap_err(), FormatError::BadHeader(_)));
    let mut g = golden();
    // Counters are only believed up to what the region holds.
    for f in [hdr::META_USED, hdr::STACKS_USED, hdr::RSS_COUNT, hdr::RING_HEAD] {
        g[f..f + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    }
    let t = Trace::parse(&g).unwrap();
    assert!(t.events.len() as u64 <= t.header.ring_capacity);
}

#[test]
fn truncation_is_reported_as_partial() {
    let g = golden();
    let t = Trace::parse(&g[..g.len() / 2]).unwrap();
    assert!(t.health.truncated && t.health.is_partial());
    assert_eq!(t.health.missing_bytes, (g.len() - g.len() / 2) as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_truncation_never_panics(cut in 0usize..(1 << 20)) {
        let g = golden();
        let _ = Trace::parse(&g[..cut.min(g.len())]);
    }

    #[test]
    fn any_byte_flips_never_panic(flips in proptest::collection::vec((0usize..(1 << 20), any::<u8>()), 1..64)) {
        let mut g = golden();
        for (at, v) in flips {
            let at = at % g.len();
            g[at] ^= v | 1;
        }
        if let Ok(t) = Trace::parse(&g) {
            for a in &t.live {
                let _ = t.stack(a.stack_id);
            }
            let _ = t.end_ns();
        }
    }

    #[test]
    fn header_flips_never_panic(flips in proptest::collection::vec((0usize..512, any::<u8>()), 1..16)) {
        let mut g = golden();
        for (at, v) in flips {
            g[at] ^= v | 1;
        }
        let _ = Trace::parse(&g);
    }

    #[test]
    fn random_bytes_behind_a_valid_magic_never_panic(body in proptest::collection::vec(any::<u8>(), 0..8192)) {
        let mut g = layout::MAGIC.to_vec();
        g.extend_from_slice(&body);
        let _ = Trace::parse(&g);
    }
}
