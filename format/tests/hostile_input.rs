//! The reader against damaged and hostile files: it must never panic, never allocate in
//! proportion to a number read from the file, and either refuse with an error or return a
//! trace whose health says what was lost.

use leaktrace_format::layout::{self, ev, hdr, Region, EVENT_SIZE};
use leaktrace_format::{Event, FormatError, Trace};
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
    assert!(t.readable_events <= t.header.ring_capacity);
    assert!(t.events(&g).count() as u64 <= t.header.ring_capacity);
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
        let g = &g[..cut.min(g.len())];
        if let Ok(t) = Trace::parse(g) {
            prop_assert_eq!(t.events(g).count() as u64, t.readable_events);
        }
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
            for e in t.events(&g) {
                let _ = t.stack(e.stack_id);
            }
            let _ = t.end_ns();
        }
    }

    #[test]
    fn streamed_events_match_a_whole_ring_decode(
        flips in proptest::collection::vec((0usize..(1 << 20), any::<u8>()), 0..64),
        head_shift in -2000i64..2000,
    ) {
        let mut g = golden();
        let t = Trace::parse(&g).unwrap();
        let (off, len) = t.header.region(Region::Ring);
        for (at, v) in flips {
            let at = off as usize + at % len as usize;
            g[at] ^= v | 1;
        }
        // A head read before (or after) writers committed their records.
        let head = t.header.ring_head.saturating_add_signed(head_shift);
        g[hdr::RING_HEAD..hdr::RING_HEAD + 8].copy_from_slice(&head.to_le_bytes());
        let t = Trace::parse(&g).unwrap();
        let streamed: Vec<Event> = t.events(&g).collect();
        prop_assert_eq!(&streamed, &whole_ring_decode(&g, &t));
        prop_assert_eq!(streamed.len() as u64, t.readable_events);
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

/// The events of a trace as a reader holding the whole ring would find them: every record that
/// passes FORMAT.md's tests, sorted by sequence number.
fn whole_ring_decode(bytes: &[u8], t: &Trace) -> Vec<Event> {
    let (off, len) = t.header.region(Region::Ring);
    let (cap, head) = (t.header.ring_capacity, t.header.ring_head);
    let ring = &bytes[off as usize..(off + len) as usize];
    let mut out: Vec<Event> = ring
        .chunks_exact(EVENT_SIZE)
        .take(cap as usize)
        .enumerate()
        .filter_map(|(i, raw)| {
            let e = Event::decode(raw.try_into().unwrap())?;
            let seq = u64::from_le_bytes(raw[ev::SEQ..ev::SEQ + 8].try_into().unwrap());
            let ok = seq != 0
                && (seq - 1) % cap == i as u64
                && seq > head.saturating_sub(cap)
                && seq <= head.saturating_add(cap);
            ok.then_some(e)
        })
        .collect();
    out.sort_by_key(|e| e.seq);
    out
}

/// Everything a parse yields, for comparing two parses.
fn summary(t: &Trace, events: Vec<Event>) -> String {
    let stacks: Vec<_> = t.event_stack_ids.iter().map(|&id| t.stack(id)).collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{} {:?} {:?}\n{} {:?}\n{:?}",
        t.header,
        t.health,
        t.process,
        t.modules,
        t.sampling,
        t.live,
        t.rss,
        t.readable_events,
        t.event_stack_ids,
        stacks,
        t.end_ns(),
        t.unloaded,
        events
    )
}

#[test]
fn a_file_reads_as_its_bytes_do() {
    let g = golden();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Whole, and cut in the middle of the ring (a trace copied while it was being written).
    for cut in [g.len(), g.len() - g.len() / 7] {
        let bytes = &g[..cut];
        let path = dir.join(format!("t{cut}.lt"));
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let from_file = Trace::parse_from(&file).unwrap();
        let from_bytes = Trace::parse(bytes).unwrap();
        let events: Vec<Event> = from_bytes.events(bytes).collect();
        assert_eq!(events, from_bytes.events);
        assert!(events.len() > 1000, "the golden ring is full of events");
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "in sequence order");
        assert_eq!(events.len() as u64, from_bytes.readable_events);
        assert_eq!(summary(&from_file, from_file.events(&file).collect()), summary(&from_bytes, events));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn records_committed_after_the_header_was_read_come_last_in_order() {
    let mut g = golden();
    let t = Trace::parse(&g).unwrap();
    let all: Vec<Event> = t.events(&g).collect();
    // The header as a reader would have seen it before the last 100 events were reserved.
    let head = t.header.ring_head - 100;
    g[hdr::RING_HEAD..hdr::RING_HEAD + 8].copy_from_slice(&head.to_le_bytes());
    let t = Trace::parse(&g).unwrap();
    let late: Vec<Event> = t.events(&g).collect();
    assert_eq!(late, all);
    assert!(late.iter().rev().take(100).all(|e| e.seq > head));
    assert_eq!(t.health.torn_events, 0);
}
