//! The frame-pointer unwinder runs inside malloc: neither the walk nor the per-thread stack
//! bounds (first call included) may allocate. Also checks the main thread, from a constructor
//! that runs before `main` as leaktrace's own does.
//!
//! It links the tracer library, which (unlike libleaktrace.so) exports no malloc and has no
//! constructor, so this binary defines malloc itself and counts every allocation at the libc
//! level (glibc's internal ones included, which a `#[global_allocator]` would not see).
//!
//! Run with frame pointers: `RUSTFLAGS="-C force-frame-pointers=yes" cargo test -p
//! leaktrace-tracer --test unwind_no_alloc` (or with .cargo/config.toml setting it).

#![deny(unsafe_op_in_unsafe_fn)]
// The malloc family below has the C functions' contracts.
#![allow(clippy::missing_safety_doc)]

use leaktrace_tracer::unwind;

use std::sync::atomic::{AtomicU64, Ordering};

mod common;
use common::count_allocations;

fn walk_many(times: usize) -> u64 {
    let mut total = 0u64;
    let mut out = [0u64; 64];
    for _ in 0..times {
        if let Some(b) = unwind::current_thread_stack() {
            total += unwind::frame_pointer_walk(&mut out, b) as u64;
        }
    }
    total
}

#[test]
fn no_allocation_during_unwind() {
    let mut frames = 0;
    // The first call per thread reads /proc/self/maps: allowed to allocate by the hook's
    // contract, but it does not.
    let n = count_allocations(|| {
        unwind::forget_current_thread_stack();
        frames = walk_many(1000);
    });
    assert_eq!(n, 0, "allocations during 1000 walks");
    assert!(frames >= 1000, "the walks found {frames} frames");
}

#[test]
fn no_allocation_in_a_new_thread() {
    let (n, frames) = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(|| {
            let mut frames = 0;
            let n = count_allocations(|| frames = walk_many(1000));
            (n, frames)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(n, 0);
    assert!(frames >= 1000);
}

// ---------------------------------------------------------------------------------------------
// The main thread, before main (test functions run on other threads).

static MAIN_SP: AtomicU64 = AtomicU64::new(0);
static MAIN_LO: AtomicU64 = AtomicU64::new(0);
static MAIN_HI: AtomicU64 = AtomicU64::new(0);
static MAIN_FRAMES: AtomicU64 = AtomicU64::new(0);
static MAIN_ALLOCS: AtomicU64 = AtomicU64::new(u64::MAX);
static MAIN_USABLE: AtomicU64 = AtomicU64::new(2);

extern "C" fn on_main_thread_before_main() {
    let marker = 0u8;
    MAIN_SP.store(std::hint::black_box(&marker) as *const u8 as u64, Ordering::Relaxed);
    let mut frames = 0;
    let n = count_allocations(|| frames = walk_many(100));
    MAIN_ALLOCS.store(n as u64, Ordering::Relaxed);
    MAIN_FRAMES.store(frames, Ordering::Relaxed);
    if let Some(b) = unwind::current_thread_stack() {
        MAIN_LO.store(b.lo(), Ordering::Relaxed);
        MAIN_HI.store(b.hi(), Ordering::Relaxed);
    }
    MAIN_USABLE.store(u64::from(unwind::frame_pointers_usable()), Ordering::Relaxed);
}

#[used]
#[link_section = ".init_array"]
static ON_MAIN_THREAD: extern "C" fn() = on_main_thread_before_main;

#[test]
fn main_thread_bounds_from_a_constructor() {
    let (sp, lo, hi) =
        (MAIN_SP.load(Ordering::Relaxed), MAIN_LO.load(Ordering::Relaxed), MAIN_HI.load(Ordering::Relaxed));
    assert!(lo <= sp && sp < hi, "main thread: sp {sp:#x} outside [{lo:#x}, {hi:#x})");
    assert!(hi - lo >= 128 << 10, "[{lo:#x}, {hi:#x})");
    assert_eq!(MAIN_ALLOCS.load(Ordering::Relaxed), 0);
    assert!(MAIN_FRAMES.load(Ordering::Relaxed) >= 100);
    assert_eq!(MAIN_USABLE.load(Ordering::Relaxed), 1, "frame_pointers_usable() in a constructor");
    // This test runs on another thread: different bounds.
    let b = unwind::current_thread_stack().unwrap();
    assert!(!b.contains(sp));
}
