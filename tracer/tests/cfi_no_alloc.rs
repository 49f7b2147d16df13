//! The CFI unwinder (`src/cfi.rs`) runs inside malloc: once the background thread has built
//! the unwinder and its caches, an unwind must not allocate, on a thread's first unwind included,
//! through this crate's frames and through glibc's (qsort, built without frame pointers).
//!
//! Like `unwind_no_alloc.rs`, this binary links the tracer library (no exported malloc, no
//! constructor) and defines malloc itself to count every allocation at the libc level.

#![deny(unsafe_op_in_unsafe_fn)]
// The malloc family below has the C functions' contracts.
#![allow(clippy::missing_safety_doc)]

use leaktrace_tracer::{cfi, unwind};

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;
use common::count_allocations;

fn trace_many(times: usize) -> usize {
    let mut total = 0;
    let mut out = [0u64; 80];
    for _ in 0..times {
        total += cfi::trace(&mut out, (0, 0));
    }
    total
}

#[test]
fn no_allocation_during_unwind() {
    cfi::refresh_until_ready();
    let mut frames = 0;
    let n = count_allocations(|| {
        unwind::forget_current_thread_stack();
        frames = trace_many(1000);
    });
    assert_eq!(n, 0, "allocations during 1000 unwinds");
    assert!(frames >= 1000 * 5, "the unwinds found {frames} frames");
}

#[test]
fn no_allocation_in_a_new_thread() {
    cfi::refresh_until_ready();
    let (n, frames) = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(|| {
            let mut frames = 0;
            let n = count_allocations(|| frames = trace_many(1000));
            (n, frames)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(n, 0);
    assert!(frames >= 1000 * 3);
}

static IN_QSORT_FRAMES: AtomicUsize = AtomicUsize::new(0);
static IN_QSORT_ALLOCS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn compare_and_unwind(a: *const c_void, b: *const c_void) -> c_int {
    let mut out = [0u64; 80];
    let mut frames = 0;
    let n = count_allocations(|| frames = cfi::trace(&mut out, (0, 0)));
    IN_QSORT_FRAMES.fetch_add(frames, Ordering::Relaxed);
    IN_QSORT_ALLOCS.fetch_add(n, Ordering::Relaxed);
    // SAFETY: qsort passes pointers to elements of the u32 array below.
    let (a, b) = unsafe { (*a.cast::<u32>(), *b.cast::<u32>()) };
    a.cmp(&b) as c_int
}

#[test]
fn no_allocation_through_glibc_frames() {
    cfi::refresh_until_ready();
    let mut v: Vec<u32> = (0..256u32).map(|i| i.wrapping_mul(2_654_435_761) >> 7).collect();
    // Only the unwinds are counted (qsort itself may allocate its temporary array). The first
    // ones fill the caches: parsing FDEs must not allocate either.
    // SAFETY: a valid array of u32 and a comparator for u32.
    unsafe { libc::qsort(v.as_mut_ptr().cast(), v.len(), 4, Some(compare_and_unwind)) };
    assert_eq!(IN_QSORT_ALLOCS.load(Ordering::Relaxed), 0, "allocations while unwinding from a qsort comparator");
    assert!(IN_QSORT_FRAMES.load(Ordering::Relaxed) >= 256 * 5);
    assert!(v.windows(2).all(|w| w[0] <= w[1]));
}

#[inline(never)]
fn trace_with(own_text: (u64, u64)) -> Vec<u64> {
    let mut out = [0u64; 80];
    let n = cfi::trace(&mut out, own_text);
    std::hint::black_box(out[..n].to_vec())
}

#[inline(never)]
fn trace_via(own_text: (u64, u64)) -> Vec<u64> {
    std::hint::black_box(trace_with(own_text))
}

/// Unwinds the same stack twice from one loop: in full, then stepping over the frames
/// whose return addresses are the full unwind's `full[1..=skip]` (into trace_with, trace_via),
/// as the sampled path steps over leaktrace's own frames.
#[inline(never)]
fn unwind_both_ways(skip: usize) -> Vec<Vec<u64>> {
    let mut unwinds = Vec::new();
    let mut own_text = (0, 0);
    for _ in 0..2 {
        let frames = trace_via(own_text);
        if own_text == (0, 0) && frames.len() > skip {
            let own = &frames[1..=skip];
            own_text = (*own.iter().min().unwrap(), own.iter().max().unwrap() + 1);
        }
        unwinds.push(frames);
    }
    unwinds
}

#[inline(never)]
fn middle(skip: usize) -> Vec<Vec<u64>> {
    std::hint::black_box(unwind_both_ways(skip))
}

#[inline(never)]
fn outer(skip: usize) -> Vec<Vec<u64>> {
    std::hint::black_box(middle(skip))
}

#[test]
fn stepping_over_own_frames_gives_the_rest_of_the_unwind() {
    cfi::refresh_until_ready();
    for skip in [1usize, 2] {
        let unwinds = outer(skip);
        let (full, stepped) = (&unwinds[0], &unwinds[1]);
        assert!(full.len() >= 6, "full unwind: {full:x?}");
        let (lo, hi) = (full[1..=skip].iter().min().unwrap(), full[1..=skip].iter().max().unwrap() + 1);
        if full[skip + 1..].iter().any(|a| (*lo..hi).contains(a)) {
            // The range spanning these return addresses holds an outer one too; the case
            // cannot be set up with this layout.
            continue;
        }
        // full[3] is the return address into unwind_both_ways, whose first loop iteration the
        // compiler may peel into a call site of its own; every other frame must match exactly.
        assert_eq!(stepped.len(), full.len() - skip - 1, "stepped {stepped:x?} full {full:x?}");
        for (i, (s, f)) in stepped.iter().zip(&full[skip + 1..]).enumerate() {
            if i + skip + 1 != 3 {
                assert_eq!(s, f, "frame {i}: stepped {stepped:x?} full {full:x?}");
            }
        }
    }
}
