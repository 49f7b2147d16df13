//! A process without leaktrace's helper thread (one thread of its own) prefaults the trace
//! from its hooks: the ring's pages ahead of the writer are in the page tables before a hook
//! first writes them, so the hook takes no page fault there. Checked with /proc/self/pagemap,
//! not by timing (this runs on shared 2-CPU machines).

use leaktrace_tests::{Settings, TestDir};

#[test]
fn single_threaded_process_has_the_ring_prefaulted_ahead_of_its_head() {
    let dir = TestDir::new("prefault");
    let exe = dir.compile("prefault.c");
    // 16 MiB, every allocation recorded: a few MiB of ring, 20,000 pairs (40,000 events,
    // ~1.9 MiB) stay in its first pass. 32 KiB ahead is inside the lead the hooks keep (three
    // to four 16 KiB steps).
    let run = dir.run(&exe, &["20000", "32768"], &Settings::exact().file_size("16M"));
    let json = run.program_json();
    let (checked, absent) = (json["checked"].as_u64().unwrap(), json["absent"].as_u64().unwrap());
    assert!(checked > 10_000, "too few pairs checked: {json}\n{}", run.describe());
    assert_eq!(absent, 0, "ring pages 32 KiB ahead of the head were not yet resident: {json}\n{}", run.describe());
    run.report().check_invariants();
}
