//! Format 1.1 on the reader's side: the new header fields, the own-memory series (region 5)
//! paired with the RSS samples, 1.0 files still reading with zeros there, and hostile values
//! in the new places. Traces are built with the `synth` writer.

use leaktrace_format::layout::{self, hdr, Region};
use leaktrace_format::synth::TraceBuilder;
use leaktrace_format::{FormatError, Header, Trace};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

fn golden() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/small-v1.lt")).expect("golden trace")
}

/// A 1.1 trace with every new header field set to a distinct value, a few events and an RSS
/// series with leaktrace's own share.
fn sample_1_1() -> TraceBuilder {
    let mut b = TraceBuilder::new(2 * MIB).exited_at(5_000_000_000);
    let h = &mut b.header;
    h.control_ack_seq = 7;
    h.control_result = layout::ControlResult::RefusedBudget as u32;
    h.reserved_bytes = 64 * 1024;
    h.rss_peak_bytes = 900 * MIB;
    h.rss_peak_ns = 2_500_000_000;
    h.children_traced = 3;
    h.children_untraced_budget = 312;
    h.children_removed = 40;
    h.tree_budget = 256 * MIB;
    h.tree_id = 0xdead_beef_cafe;
    let s = b.stack(&[0x401000, 0x402000]);
    b.alloc(1_000_000_000, 0x10000, 4096, s);
    b.alloc(2_000_000_000, 0x20000, 8192, s);
    b.free(3_000_000_000, 0x10000);
    for (i, (rss, own)) in [(10 * MIB, MIB), (900 * MIB, 2 * MIB), (12 * MIB, 3 * MIB)].into_iter().enumerate() {
        b.rss((i as u64 + 1) * 1_000_000_000, rss, own);
    }
    b
}

#[test]
fn new_header_fields_are_read() {
    let t = Trace::parse(&sample_1_1().build()).unwrap();
    let h = &t.header;
    assert_eq!((h.version_major, h.version_minor), (1, leaktrace_format::layout::VERSION_MINOR));
    assert!(!h.attached() && !h.detached(), "a preloaded trace is not attached");
    assert_eq!((h.control_ack_seq, h.control_result), (7, 3));
    assert_eq!(h.reserved_bytes, 64 * 1024);
    assert_eq!((h.rss_peak_bytes, h.rss_peak_ns), (900 * MIB, 2_500_000_000));
    assert_eq!((h.children_traced, h.children_untraced_budget, h.children_removed), (3, 312, 40));
    assert_eq!((h.tree_budget, h.tree_id), (256 * MIB, 0xdead_beef_cafe));
    assert!(!t.health.is_partial(), "{:?}", t.health);
    assert_eq!((t.readable_events, t.readable_frees, t.live.len()), (3, 1, 1));
}

#[test]
fn own_series_pairs_with_the_rss_samples_by_index() {
    let mut b = sample_1_1();
    // A sample out of order (a halving interrupted by a kill) is dropped with its own entry,
    // not shifting the pairing of the samples after it.
    b.rss(2_500_000_000, 50 * MIB, 49 * MIB);
    b.rss(4_000_000_000, 20 * MIB, 4 * MIB);
    let t = Trace::parse(&b.build()).unwrap();
    assert!(t.has_own_series);
    let got: Vec<(u64, u64, u64)> = t.rss.iter().map(|s| (s.t_ns / 1_000_000_000, s.rss_bytes, s.own_bytes)).collect();
    assert_eq!(got, [(1, 10 * MIB, MIB), (2, 900 * MIB, 2 * MIB), (3, 12 * MIB, 3 * MIB), (4, 20 * MIB, 4 * MIB)]);
    assert_eq!(t.health.bad_rss_samples, 1);
}

#[test]
fn a_1_0_file_reads_with_zeros_and_no_own_series() {
    let mut b = TraceBuilder::new(2 * MIB).version_1_0();
    let s = b.stack(&[0x401000]);
    b.alloc(1_000, 0x10000, 100, s);
    b.rss(1_000_000, 5 * MIB, 123);
    b.rss(2_000_000, 6 * MIB, 456);
    let bytes = b.build();
    let t = Trace::parse(&bytes).unwrap();
    assert_eq!(t.header.version_minor, 0);
    assert_eq!(t.header.region(Region::RssOwn), (0, 0));
    assert!(!t.has_own_series);
    assert_eq!(t.rss.len(), 2);
    assert!(t.rss.iter().all(|s| s.own_bytes == 0));
    assert_eq!(t.readable_events, 1);
    let h = &t.header;
    let v1_1 = [
        h.control_ack_seq as u64,
        h.control_result as u64,
        h.reserved_bytes,
        h.rss_peak_bytes,
        h.rss_peak_ns,
        h.children_traced,
        h.children_untraced_budget,
        h.children_removed,
        h.tree_budget,
        h.tree_id,
    ];
    assert_eq!(v1_1, [0; 10]);
}

#[test]
fn the_golden_1_0_trace_has_zeros_in_the_1_1_places() {
    let t = Trace::parse(&golden()).unwrap();
    assert_eq!(t.header.version_minor, 0);
    assert!(!t.has_own_series && !t.rss.is_empty());
    assert!(t.rss.iter().all(|s| s.own_bytes == 0));
    assert_eq!((t.header.rss_peak_bytes, t.header.children_traced, t.header.tree_budget), (0, 0, 0));
}

/// An own-memory region too short for the samples gives no own series rather than a partial
/// one; one whose entries exceed their sample is clamped to the sample.
#[test]
fn a_short_or_lying_own_series_is_not_believed() {
    let mut b = sample_1_1();
    let (off, _) = b.header.regions[Region::RssOwn as usize];
    b.header.regions[Region::RssOwn as usize] = (off, 16); // two entries for three samples
    let t = Trace::parse(&b.build()).unwrap();
    assert!(!t.has_own_series);
    assert!(t.rss.iter().all(|s| s.own_bytes == 0) && t.rss.len() == 3);

    let mut b = sample_1_1();
    b.rss[0].own_bytes = u64::MAX;
    let t = Trace::parse(&b.build()).unwrap();
    assert_eq!(t.rss[0].own_bytes, t.rss[0].rss_bytes);
}

#[test]
fn an_own_region_outside_the_file_is_refused() {
    for (off, len) in [(u64::MAX, 8), (8, u64::MAX), (2 * MIB - 8, 16), (4 * MIB, 0)] {
        let mut b = sample_1_1();
        b.header.regions[Region::RssOwn as usize] = (off, len);
        let err = Trace::parse(&b.build()).unwrap_err();
        assert!(matches!(err, FormatError::BadHeader(ref m) if m.contains("region 5")), "{err}");
    }
}

#[test]
fn a_truncated_own_series_reads_as_none() {
    let b = sample_1_1();
    let bytes = b.build();
    let (own_off, _) = b.header.regions[Region::RssOwn as usize];
    // Cut one byte into the own series: its three entries are no longer all there.
    let t = Trace::parse(&bytes[..own_off as usize + 8]).unwrap();
    assert!(t.health.truncated);
    assert!(!t.has_own_series && t.rss.len() == 3);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Header::encode is the inverse of Header::parse for every value of the live fields.
    #[test]
    fn live_header_fields_round_trip(words in proptest::collection::vec(any::<u64>(), 40)) {
        let mut h = sample_1_1().header;
        let mut w = words.into_iter();
        let mut next = || w.next().unwrap_or(0);
        h.state = next() as u32;
        h.end_reason = next() as u32;
        h.current_mean_bytes = next();
        h.ring_head = next();
        h.events_dropped = next();
        h.meta_used = next();
        h.stacks_used = next();
        h.live_count = next();
        h.live_dropped = next();
        h.stacks_dropped = next();
        h.rss_count = next();
        h.rss_interval_ms = next();
        h.heartbeat_ns = next();
        h.end_ns = next();
        h.sampled_allocs = next();
        h.sampled_frees = next();
        h.failure = next() as u32;
        h.unwinder = next() as u32;
        h.skipped_no_stack = next();
        h.cfi_stacks = next();
        h.libgcc_stacks = next();
        h.control_ack_seq = next() as u32;
        h.control_result = next() as u32;
        h.reserved_bytes = next();
        h.rss_peak_bytes = next();
        h.rss_peak_ns = next();
        h.children_traced = next();
        h.children_untraced_budget = next();
        h.children_removed = next();
        h.tree_budget = next();
        h.tree_id = next();
        prop_assert_eq!(Header::parse(&h.encode()).unwrap(), h);
    }

    /// Any region-5 entry and any bytes in it: an error or a trace, never a panic, and never
    /// an own share above its sample or a different number of samples.
    #[test]
    fn any_own_region_never_panics(
        off in prop_oneof![0u64..(2 * MIB), any::<u64>()],
        len in prop_oneof![0u64..(64 * 1024), any::<u64>()],
        fill in any::<u8>(),
        flips in proptest::collection::vec((0usize..(64 * 1024), any::<u8>()), 0..32),
    ) {
        let b = sample_1_1();
        let mut bytes = b.build();
        let (own_off, own_len) = b.header.regions[Region::RssOwn as usize];
        let own = &mut bytes[own_off as usize..(own_off + own_len) as usize];
        own.fill(fill);
        for (at, v) in flips {
            own[at % own.len()] ^= v;
        }
        bytes[hdr::REGIONS + 5 * 16..][..8].copy_from_slice(&off.to_le_bytes());
        bytes[hdr::REGIONS + 5 * 16 + 8..][..8].copy_from_slice(&len.to_le_bytes());
        if let Ok(t) = Trace::parse(&bytes) {
            prop_assert_eq!(t.rss.len(), 3);
            prop_assert!(t.rss.iter().all(|s| s.own_bytes <= s.rss_bytes));
            prop_assert!(!t.has_own_series || len >= 24);
        }
    }

    /// Flips anywhere in the 1.1 part of the header, the RSS series and the own series of a
    /// 1.1 trace never panic.
    #[test]
    fn flips_in_the_1_1_places_never_panic(
        flips in proptest::collection::vec((0usize..3, 0usize..(64 * 1024), any::<u8>()), 1..48),
        cut in prop_oneof![Just(usize::MAX), 0usize..(2 << 20)],
    ) {
        let b = sample_1_1();
        let mut bytes = b.build();
        let (rss_off, _) = b.header.regions[Region::Rss as usize];
        let (own_off, own_len) = b.header.regions[Region::RssOwn as usize];
        for (place, at, v) in flips {
            let at = match place {
                0 => hdr::CONTROL_ACK_SEQ + at % (hdr::LAST - hdr::CONTROL_ACK_SEQ),
                1 => rss_off as usize + at % 64,
                _ => own_off as usize + at % own_len as usize,
            };
            bytes[at] ^= v | 1;
        }
        let bytes = &bytes[..cut.min(bytes.len())];
        if let Ok(t) = Trace::parse(bytes) {
            prop_assert!(t.rss.iter().all(|s| s.own_bytes <= s.rss_bytes));
            prop_assert!(t.rss.len() <= 3);
            let _ = t.end_ns();
        }
    }
}

#[test]
fn an_attached_and_detached_trace_says_so() {
    let mut b = sample_1_1();
    b.header.attach_unix_ns = 1_796_000_000_000_000_000;
    b.header.end_reason = leaktrace_format::layout::EndReason::Detached as u32;
    b.header.end_ns = 2_000_000_000;
    let t = Trace::parse(&b.build()).unwrap();
    assert!(t.header.attached() && t.header.detached() && t.header.ended_cleanly());
    assert_eq!(t.header.attach_unix_ns, 1_796_000_000_000_000_000);
    assert_eq!(t.end_ns(), 2_000_000_000, "a detached trace ends at its detach");
}
