//! Thread stack bounds without locks, and a bounds-checked frame-pointer walk: ~25-40 ns for 15
//! frames, against ~4-7 µs for DWARF unwinding (`backtrace::trace_unsynchronized`) on the
//! development machine (`bench_walk_against_dwarf` below prints both).
//!
//! # Why a walk cannot fault
//!
//! On x86_64 (SysV) and aarch64 (AAPCS64) a function built with frame pointers stores a
//! two-word frame record, `[caller's frame pointer, return address]`, and points its frame
//! pointer (rbp / x29) at it. [`frame_pointer_walk`] follows that chain from its own record. It
//! reads the two words of a record only after checking that the record
//! - lies in `[floor, hi - 16]`, where `hi` is the top of this thread's stack ([`StackBounds`])
//!   and `floor` an address in the walker's own frame, so at or above the stack pointer.
//!   Everything between the stack pointer and the top of the stack it is on is mapped: those
//!   reads cannot fault;
//! - is aligned (16 bytes on x86_64, where rbp is 16-aligned after `push rbp`; 8 on aarch64);
//! - lies at least 16 bytes above the previous record, so the chain strictly increases and a
//!   walk ends after at most `(hi - floor) / 16` steps even on a corrupt chain.
//!
//! It stops at the first violation, at a return address in the first page (the outermost
//! frame's is 0), or when `out` is full. A function built without frame pointers (most of
//! glibc, libstdc++, Rust's precompiled std) leaves rbp as its caller set it or uses it as a
//! general register: the walk then skips its caller, ends early, or records a few garbage
//! addresses at the outer end, but still reads nothing outside the stack and cannot loop.
//!
//! The walk is only as good as the frame pointers of *our own* frames (the hooks, the tracer,
//! this module): the crate must be built with `-C force-frame-pointers=yes`.
//! [`frame_pointers_usable`] checks that at start-up.
//!
//! # Stack bounds without locks
//!
//! `pthread_getattr_np` is not usable from a malloc hook: it holds the thread's own descriptor
//! lock while it calls `realloc` (for the affinity mask) and, on the main thread, `fopen` and
//! `getline` on /proc/self/maps. Programs call it on themselves — Rust's std does, for the
//! main thread and at the start of every thread it spawns — so a first sample taken inside that
//! `realloc` would call it again and deadlock on the non-recursive lock. (Verified with a small
//! interposer on this machine's glibc 2.36.) Its stdio calls are also cancellation points.
//!
//! [`current_thread_stack`] therefore reads /proc/self/maps itself, with raw `openat`/`read`
//! system calls into a small buffer on the stack: no allocation, no lock, no cancellation point, and
//! errno preserved. It runs once per thread; the result (or its failure) is cached in a
//! `const`-initialised thread-local without a destructor. The bounds are:
//! - on a thread created by glibc: from the start of the mapping that holds both the stack
//!   pointer and the thread descriptor (`pthread_self()`, which glibc places at the top of every
//!   thread stack, its own or a user-supplied one) up to the descriptor;
//! - on the main thread: the `[stack]` mapping, from `max(end of the mapping below it,
//!   top - RLIMIT_STACK)` (where it may yet grow to) up to its top;
//! - otherwise (first sample taken on a signal stack or a fiber): unavailable, for good.
//!
//! A walk first checks that the stack pointer lies within the bounds, so a walk from a signal
//! alternate stack or a fiber returns 0 frames: the caller then falls back to DWARF. A thread
//! whose first call happens on such a stack gets `None` for good, and uses DWARF throughout.
//!
//! Residual risk, accepted: on the main thread the bounds include the part below the stack it
//! may still grow into. A program that later maps memory *there* (MAP_FIXED inside the stack's
//! rlimit reservation, which the kernel's own placement avoids), runs a fiber on it, and has a
//! frame-pointer chain from that fiber pointing into an unmapped gap above it, could fault.
//!
//! # Where the walk is used
//!
//! Sampled stacks are unwound by CFI (cfi.rs), never by this walk alone: whether frame pointers
//! give the right stack depends on every frame between the allocation and `main`, the program's
//! own but also `operator new` in libstdc++ and glibc's `strdup` or `fopen`, which Debian builds
//! without frame pointers, and no check on some stacks proves it for the next. What stays is
//! the check that *our* frames keep frame pointers ([`frame_pointers_usable`]): cfi.rs steps
//! over them by their frame records.

use crate::sampler::{ThreadState, THREAD};
use std::ffi::c_long;
use std::marker::PhantomData;

/// Architectures with a frame-pointer walk; elsewhere [`frame_pointer_walk`] returns 0 and
/// [`frame_pointers_usable`] false.
pub const SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Bytes in a frame record: saved frame pointer, return address.
const RECORD: u64 = 16;

/// Required alignment of a frame record.
#[cfg(target_arch = "x86_64")]
const FRAME_ALIGN: u64 = 16;
#[cfg(not(target_arch = "x86_64"))]
const FRAME_ALIGN: u64 = 8;

/// Return addresses below this are not code: the walk stops there.
const MIN_CODE_ADDR: u64 = 4096;

mod check;
mod stack;
mod walk;

pub use check::*;
pub use stack::*;
pub use walk::*;

#[cfg(test)]
mod tests {
    use super::check::chain_matches;
    use super::stack::{cached_stack, StackFinder};
    use super::walk::walk_chain;
    use super::*;
    use std::ffi::c_void;
    use std::hint::black_box;

    /// An address in the calling function's frame.
    macro_rules! here {
        () => {{
            let marker = 0u8;
            black_box(&marker) as *const u8 as u64
        }};
    }

    fn names_at(ip: u64) -> Vec<String> {
        let mut names = Vec::new();
        backtrace::resolve(ip as *mut c_void, |s| {
            if let Some(n) = s.name() {
                names.push(n.to_string());
            }
        });
        names
    }

    fn assert_built_with_frame_pointers() {
        assert!(
            frame_pointers_usable(),
            "the frame-pointer walk disagrees with DWARF in this crate's own frames: built without \
             `-C force-frame-pointers=yes`? (RUSTFLAGS, if set, replaces .cargo/config.toml's rustflags)"
        );
    }

    // (1) A five-deep chain: the walk returns its frames, which resolve to its functions.
    #[inline(never)]
    fn level1(out: &mut [u64], b: StackBounds) -> usize {
        let n = frame_pointer_walk(out, b);
        black_box(n) ^ black_box(11) ^ 11
    }
    #[inline(never)]
    fn level2(out: &mut [u64], b: StackBounds) -> usize {
        let n = level1(out, b);
        black_box(n) ^ black_box(12) ^ 12
    }
    #[inline(never)]
    fn level3(out: &mut [u64], b: StackBounds) -> usize {
        let n = level2(out, b);
        black_box(n) ^ black_box(13) ^ 13
    }
    #[inline(never)]
    fn level4(out: &mut [u64], b: StackBounds) -> usize {
        let n = level3(out, b);
        black_box(n) ^ black_box(14) ^ 14
    }
    #[inline(never)]
    fn level5(out: &mut [u64], b: StackBounds) -> usize {
        let n = level4(out, b);
        black_box(n) ^ black_box(15) ^ 15
    }

    #[test]
    fn walk_returns_the_chain_in_order() {
        assert_built_with_frame_pointers();
        let b = current_thread_stack().expect("stack bounds");
        let mut out = [0u64; 64];
        let n = level5(&mut out, b);
        assert!(n >= 5, "{n} frames");
        for (i, &ip) in out[..5].iter().enumerate() {
            let want = format!("level{}", i + 1);
            let names = names_at(ip);
            assert!(names.iter().any(|s| s.contains(&want)), "frame {i} at {ip:#x}: {names:?}, want {want}");
        }
    }

    // (2) The same return addresses as backtrace::trace.
    #[inline(never)]
    fn both(fp: &mut [u64], dwarf: &mut Vec<(u64, u64)>) -> usize {
        let n = frame_pointer_walk(fp, current_thread_stack().unwrap());
        backtrace::trace(|f| {
            dwarf.push((f.ip() as u64, f.symbol_address() as u64));
            true
        });
        black_box(n) ^ black_box(21) ^ 21
    }
    #[inline(never)]
    fn both_1(fp: &mut [u64], dwarf: &mut Vec<(u64, u64)>) -> usize {
        let n = both(fp, dwarf);
        black_box(n) ^ black_box(22) ^ 22
    }
    #[inline(never)]
    fn both_2(fp: &mut [u64], dwarf: &mut Vec<(u64, u64)>) -> usize {
        let n = both_1(fp, dwarf);
        black_box(n) ^ black_box(23) ^ 23
    }
    #[inline(never)]
    fn both_3(fp: &mut [u64], dwarf: &mut Vec<(u64, u64)>) -> usize {
        let n = both_2(fp, dwarf);
        black_box(n) ^ black_box(24) ^ 24
    }

    #[test]
    fn walk_matches_backtrace_trace() {
        assert_built_with_frame_pointers();
        let mut fp = [0u64; 64];
        let mut dwarf = Vec::new();
        let n = both_3(&mut fp, &mut dwarf);
        // The chain (3), this test function, and its caller: this test's frame record exists,
        // so its return address is right whatever the harness above was built with.
        let depth = 5;
        assert!(
            chain_matches(&fp[..n], &dwarf, both as *const () as usize as u64, depth),
            "fp {:x?}\ndwarf {:x?}",
            &fp[..n],
            dwarf.iter().map(|d| d.0).collect::<Vec<_>>()
        );
        black_box(&mut fp);
    }

    #[test]
    fn start_up_check_passes() {
        assert_built_with_frame_pointers();
    }

    #[test]
    fn bounds_hold_this_frame_and_are_cached() {
        forget_current_thread_stack();
        let b = current_thread_stack().expect("stack bounds");
        let sp = here!();
        assert!(b.contains(sp), "{b:x?} vs {sp:#x}");
        assert!(b.hi() - b.lo() >= 16 << 10, "{b:x?}");
        assert_eq!(cached_stack(), (b.lo(), b.hi()));
        assert_eq!(current_thread_stack(), Some(b));
    }

    // (3) Bounds that are too small, or do not hold the stack pointer.
    #[test]
    fn too_small_bounds_stop_the_walk() {
        assert_built_with_frame_pointers();
        let b = current_thread_stack().unwrap();
        let mut full = [0u64; 64];
        let n_full = level5(&mut full, b);
        assert!(n_full >= 5);
        let sp = here!();
        for extra in [0u64, 16, 64, 256, 1024, 4096] {
            let small = b.narrowed(b.lo(), sp + extra);
            let mut out = [0u64; 64];
            let n = level5(&mut out, small);
            assert!(n <= n_full, "{n} > {n_full}");
            // The same frames, up to this function's (the calls are from different lines).
            assert_eq!(out[..n.min(5)], full[..n.min(5)], "a narrower walk is a prefix");
        }
        let mut out = [0u64; 64];
        assert_eq!(level5(&mut out, b.narrowed(sp + 4096, b.hi())), 0, "sp below lo");
        assert_eq!(level5(&mut out, b.narrowed(b.lo(), b.lo() + 64)), 0, "sp above hi");
        assert_eq!(level5(&mut out, b.narrowed(5, 5)), 0, "empty");
        assert_eq!(level5(&mut [], b), 0, "no room");
        let mut two = [0u64; 2];
        assert_eq!(level5(&mut two, b), 2);
        assert_eq!(two, full[..2]);
    }

    /// A fake stack of 16-aligned words for `walk_chain`.
    #[repr(C, align(16))]
    struct FakeStack([u64; 64]);

    impl FakeStack {
        fn addr(&self, word: usize) -> u64 {
            &self.0[word] as *const u64 as u64
        }
        fn record(&mut self, word: usize, next: u64, ret: u64) {
            self.0[word] = next;
            self.0[word + 1] = ret;
        }
        fn walk(&self, start: u64, out: &mut [u64]) -> usize {
            let (lo, hi) = (self.addr(0), self.addr(0) + 8 * 64);
            // SAFETY: [lo, hi) is `self.0`, readable.
            unsafe { walk_chain(start, lo, hi, out) }
        }
    }

    #[test]
    fn corrupt_chains_end_the_walk() {
        let mut s = FakeStack([0; 64]);
        let mut out = [0u64; 16];
        // A good chain of three, ended by a null return address.
        s.record(0, s.addr(4), 0x1000);
        s.record(4, s.addr(10), 0x2000);
        s.record(10, s.addr(20), 0x3000);
        s.record(20, s.addr(30), 0);
        assert_eq!(s.walk(s.addr(0), &mut out), 3);
        assert_eq!(out[..3], [0x1000, 0x2000, 0x3000]);
        // A return address in the first page ends it too.
        s.record(20, s.addr(30), 0xfff);
        assert_eq!(s.walk(s.addr(0), &mut out), 3);
        // A loop to itself, and a jump backwards.
        s.record(10, s.addr(10), 0x3000);
        assert_eq!(s.walk(s.addr(0), &mut out), 3);
        s.record(10, s.addr(4), 0x3000);
        assert_eq!(s.walk(s.addr(0), &mut out), 3);
        // A record overlapping the previous one (8 bytes above it).
        s.record(10, s.addr(11), 0x3000);
        assert_eq!(s.walk(s.addr(0), &mut out), 3);
        // Misaligned.
        s.record(10, s.addr(10) + 4, 0x3000);
        assert_eq!(s.walk(s.addr(0), &mut out), 3);
        if FRAME_ALIGN == 16 {
            s.record(10, s.addr(21), 0x3000);
            assert_eq!(s.walk(s.addr(0), &mut out), 3);
        }
        // Above the stack, partly above it, and a record exactly at its top.
        s.record(10, s.addr(0) + 8 * 64, 0x3000);
        assert_eq!(s.walk(s.addr(0), &mut out), 3);
        s.record(10, s.addr(63), 0x3000);
        assert_eq!(s.walk(s.addr(0), &mut out), 3);
        s.record(10, s.addr(62), 0x3000);
        s.record(62, 0, 0x4000);
        assert_eq!(s.walk(s.addr(0), &mut out), 4);
        assert_eq!(out[3], 0x4000);
        // Far away, and wrapping.
        s.record(10, u64::MAX - 7, 0x3000);
        assert_eq!(s.walk(s.addr(0), &mut out), 3);
        // A start outside the stack, and a full `out`.
        assert_eq!(s.walk(s.addr(0) - 16, &mut out), 0);
        s.record(10, s.addr(20), 0x3000);
        s.record(20, s.addr(30), 0x3100);
        assert_eq!(s.walk(s.addr(0), &mut out[..2]), 2);
        // A long chain that climbs 16 bytes at a time ends at the top.
        for w in (0..62).step_by(2) {
            s.record(w, s.addr(w + 2), 0x5000 + w as u64);
        }
        s.record(62, s.addr(62), 0x5000 + 62);
        let mut many = [0u64; 64];
        assert_eq!(s.walk(s.addr(0), &mut many), 32);
    }

    // A corrupt rbp in a live chain: a trampoline sets rbp to a chosen value, then calls back.
    #[cfg(target_arch = "x86_64")]
    std::arch::global_asm!(
        ".pushsection .text.leaktrace_unwind_test_with_rbp,\"ax\",@progbits",
        ".p2align 4",
        ".globl leaktrace_unwind_test_with_rbp",
        ".hidden leaktrace_unwind_test_with_rbp",
        ".type leaktrace_unwind_test_with_rbp,@function",
        "leaktrace_unwind_test_with_rbp:",
        ".cfi_startproc",
        "push rbp",
        ".cfi_def_cfa_offset 16",
        ".cfi_offset rbp, -16",
        "mov rbp, rdi",
        "mov rdi, rdx",
        "call rsi",
        "pop rbp",
        ".cfi_def_cfa_offset 8",
        "ret",
        ".cfi_endproc",
        ".size leaktrace_unwind_test_with_rbp, . - leaktrace_unwind_test_with_rbp",
        ".popsection",
    );

    #[cfg(target_arch = "x86_64")]
    struct Ctx {
        bounds: StackBounds,
        out: [u64; 16],
        n: usize,
    }

    #[cfg(target_arch = "x86_64")]
    extern "C" {
        fn leaktrace_unwind_test_with_rbp(rbp: u64, f: extern "C" fn(*mut c_void), ctx: *mut c_void);
    }

    #[cfg(target_arch = "x86_64")]
    extern "C" fn walk_into_ctx(ctx: *mut c_void) {
        // SAFETY: the test passes a valid, exclusive Ctx.
        let ctx = unsafe { &mut *ctx.cast::<Ctx>() };
        ctx.n = frame_pointer_walk(&mut ctx.out, ctx.bounds);
    }

    #[cfg(target_arch = "x86_64")]
    fn walk_with_rbp(rbp: u64) -> Vec<u64> {
        let mut ctx = Ctx { bounds: current_thread_stack().unwrap(), out: [0; 16], n: 0 };
        // SAFETY: the trampoline saves and restores rbp, keeps the stack aligned, and calls
        // `walk_into_ctx` with `ctx`, which outlives the call.
        unsafe { leaktrace_unwind_test_with_rbp(rbp, walk_into_ctx, (&mut ctx as *mut Ctx).cast()) };
        ctx.out[..ctx.n].to_vec()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn corrupt_rbp_ends_the_walk() {
        assert_built_with_frame_pointers();
        let heap = Box::new([0u64; 4]);
        let sp = here!();
        #[repr(C, align(16))]
        struct Rec([u64; 2]);
        let mut fake = Rec([0, 0x1234_5678]);
        let fake_addr = &fake as *const Rec as u64;
        for (what, rbp) in [
            ("null", 0),
            ("heap", heap.as_ptr() as u64),
            ("misaligned", (sp + 64) | 8),
            ("below the stack pointer", sp - 4096),
            ("in the first page", 64),
            ("kernel half", 0xffff_8000_0000_0000),
        ] {
            let frames = walk_with_rbp(rbp);
            // Return addresses into walk_into_ctx and the trampoline, and nothing after.
            assert_eq!(frames.len(), 2, "{what}: {frames:x?}");
        }
        // A record on our stack that points at itself: read once, then the walk stops.
        fake.0[0] = fake_addr;
        let frames = walk_with_rbp(black_box(fake_addr));
        assert_eq!(frames[2..], [0x1234_5678], "{frames:x?}");
        fake.0[1] = 0;
        assert_eq!(walk_with_rbp(black_box(fake_addr)).len(), 2);
        black_box(&mut fake);
    }

    // Threads: each has its own bounds; a small stack is walked like any other.
    /// Bounds, an address on the stack, a full walk and one cut off at that address.
    type ThreadWalk = (Option<(u64, u64)>, u64, Vec<u64>, Vec<u64>);

    fn walk_in_thread(stack_size: usize) -> ThreadWalk {
        std::thread::Builder::new()
            .stack_size(stack_size)
            .spawn(|| {
                let sp = here!();
                let Some(b) = current_thread_stack() else { return (None, sp, vec![], vec![]) };
                let mut out = [0u64; 32];
                let n = level5(&mut out, b);
                // Cut off at a local of this closure: the records below it remain (the walk's
                // own, level1-5's), those of this closure and its callers do not.
                let mut out2 = [0u64; 32];
                let n2 = level5(&mut out2, b.narrowed(b.lo(), sp));
                (Some((b.lo(), b.hi())), sp, out[..n].to_vec(), out2[..n2].to_vec())
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn threads_with_small_stacks() {
        assert_built_with_frame_pointers();
        let main = current_thread_stack().unwrap();
        for size in [16 << 10, 64 << 10, 8 << 20] {
            let (b, sp, frames, short) = walk_in_thread(size);
            let (lo, hi) = b.unwrap_or_else(|| panic!("no bounds in a thread with a {size}-byte stack"));
            assert!(lo <= sp && sp < hi, "{lo:#x} {sp:#x} {hi:#x}");
            assert!(hi - lo >= size as u64 / 2 && hi - lo <= size as u64 + (1 << 20), "{size}: {:#x}", hi - lo);
            assert!(!main.contains(sp));
            assert!(frames.len() >= 5, "{frames:x?}");
            assert_eq!(short.len(), 6, "{short:x?}");
            assert!(frames.len() > 6 && frames[..5] == short[..5], "{frames:x?} {short:x?}");
            for (i, &ip) in frames[..5].iter().enumerate() {
                assert!(names_at(ip).iter().any(|s| s.contains(&format!("level{}", i + 1))));
            }
        }
    }

    #[test]
    fn bounds_of_another_thread_do_not_walk_here() {
        let other = std::thread::spawn(|| current_thread_stack().map(|b| (b.lo(), b.hi()))).join().unwrap().unwrap();
        // SAFETY: used only to check that the walk refuses bounds without our stack pointer.
        let b = unsafe { StackBounds::new_unchecked(other.0, other.1) };
        let mut out = [0u64; 8];
        assert_eq!(level5(&mut out, b), 0);
    }

    #[test]
    fn maps_parser_finds_thread_and_main_stacks() {
        let maps = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 123  /usr/bin/x
7f0000000000-7f0000001000 ---p 00000000 00:00 0 
7f0000001000-7f0000801000 rw-p 00000000 00:00 0 
7f1000000000-7f1000010000 r-xp 00000000 08:01 9 /lib/ld.so
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
7ffc00022000-7ffc00024000 r-xp 00000000 00:00 0                          [vdso]
";
        let feed_all = |f: &mut StackFinder, step: usize| {
            for chunk in maps.as_bytes().chunks(step) {
                f.feed(chunk);
            }
        };
        for step in [1, 3, 7, 64, 4096] {
            // A glibc thread: sp and the descriptor in the same mapping.
            let mut f = StackFinder::new(0x7f00_0000_4000, 0x7f00_0080_0000);
            feed_all(&mut f, step);
            assert_eq!(f.bounds(8 << 20), Some((0x7f00_0000_1000, 0x7f00_0080_0000)), "step {step}");
            // The main thread: the [stack] mapping, down to the rlimit or the mapping below.
            let mut f = StackFinder::new(0x7ffc_0002_0000, 0x5555_0000);
            feed_all(&mut f, step);
            assert_eq!(f.bounds(8 << 20), Some((0x7ffc_0002_1000 - (8 << 20), 0x7ffc_0002_1000)));
            assert_eq!(f.bounds(u64::MAX), Some((0x7f10_0001_0000, 0x7ffc_0002_1000)));
            // An rlimit smaller than the stack already is never cuts off the current extent.
            assert_eq!(f.bounds(4096), Some((0x7ffc_0000_0000, 0x7ffc_0002_1000)));
            // On some other mapping (a fiber, a signal stack): unavailable.
            let mut f = StackFinder::new(0x7f00_0000_4000, 0x5555_0000);
            feed_all(&mut f, step);
            assert_eq!(f.bounds(8 << 20), None);
            // sp in a mapping that is not readable, or in none.
            let mut f = StackFinder::new(0x7f00_0000_0800, 0x7f00_0000_0900);
            feed_all(&mut f, step);
            assert_eq!(f.bounds(8 << 20), None);
            let mut f = StackFinder::new(0x10, 0x20);
            feed_all(&mut f, step);
            assert_eq!(f.bounds(8 << 20), None);
        }
        // Garbage lines are skipped.
        let mut f = StackFinder::new(0x7ffc_0002_0000, 0);
        f.feed(b"zz-10 rw-p\n1234567890abcdef01-2 rw-p\n\n-\n7ffc00000000-7ffc00021000 rw-p 0 0 0 [stack]\n");
        assert_eq!(f.bounds(1 << 20), Some((0x7ffc_0002_1000 - (1 << 20), 0x7ffc_0002_1000)));
    }

    #[test]
    fn errno_is_preserved() {
        forget_current_thread_stack();
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = 1234 };
        let _ = current_thread_stack();
        // SAFETY: as above.
        assert_eq!(unsafe { *libc::__errno_location() }, 1234);
    }

    // (5) Cost, printed rather than asserted: `cargo test --release -p leaktrace-preload unwind
    // -- --nocapture`.
    #[inline(never)]
    fn recurse(depth: usize, f: &mut dyn FnMut()) -> usize {
        if depth == 0 {
            f();
            return 0;
        }
        black_box(recurse(depth - 1, f)) + 1
    }

    #[test]
    fn bench_walk_against_dwarf() {
        const ITERS: u32 = 200_000;
        const DEPTH: usize = 15;
        forget_current_thread_stack();
        let t = std::time::Instant::now();
        let b = current_thread_stack().unwrap();
        let first = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..ITERS {
            black_box(current_thread_stack());
        }
        let cached = t.elapsed() / ITERS;
        // The walk sits under 12 recursion frames, the closure and this test: 15 frames above it.
        recurse(DEPTH - 3, &mut || {
            let mut out = [0u64; 64];
            let n = frame_pointer_walk(&mut out, b);
            let t = std::time::Instant::now();
            for _ in 0..ITERS {
                black_box(frame_pointer_walk(black_box(&mut out[..DEPTH]), b));
            }
            let fp = t.elapsed() / ITERS;
            let t = std::time::Instant::now();
            for _ in 0..ITERS {
                black_box(frame_pointer_walk(black_box(&mut out[..DEPTH]), current_thread_stack().unwrap()));
            }
            let fp_tls = t.elapsed() / ITERS;
            let dwarf_ns = |limit: usize| {
                for _ in 0..1000 {
                    // SAFETY: as below.
                    unsafe { backtrace::trace_unsynchronized(|f| black_box(f.ip()).is_null()) };
                }
                let t = std::time::Instant::now();
                let mut frames = 0;
                for _ in 0..ITERS / 20 {
                    frames = 0;
                    // SAFETY: no other thread unwinds through backtrace's state here; the libgcc
                    // unwinder keeps none that needs the lock.
                    unsafe {
                        backtrace::trace_unsynchronized(|f| {
                            black_box(f.ip());
                            frames += 1;
                            frames < limit
                        })
                    };
                }
                (t.elapsed() / (ITERS / 20), frames)
            };
            let (dwarf, dn) = dwarf_ns(DEPTH + 2);
            let (dwarf_all, dn_all) = dwarf_ns(usize::MAX);
            println!(
                "unwind bench: frame-pointer walk of {DEPTH} frames {fp:?}/capture ({fp_tls:?} with the \
                 thread-local bounds read; {n} frames to the end of the chain); \
                 backtrace::trace_unsynchronized {dwarf:?} for {dn} frames (its own 2 + {DEPTH}), \
                 {dwarf_all:?} for the whole stack ({dn_all} frames); current_thread_stack: first call \
                 {first:?}, cached {cached:?}"
            );
        });
    }
}
