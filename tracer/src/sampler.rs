//! Per-thread Poisson sampling by bytes, and the re-entrancy guard that shares its cache line.
//!
//! Each thread counts down the bytes to its next sample point; the distance is drawn from an
//! exponential distribution with the configured mean T, so every byte is equally likely to be
//! the sample point and an allocation of s bytes is sampled with probability 1 - exp(-s/T).
//! The exponential is memoryless, so drawing afresh after each sample keeps that probability
//! exact whatever came before (see `leaktrace_format::sample_weight` for the estimator).
//! The unsampled path is one subtraction and one compare on thread-local memory: no atomics,
//! no floating point. T = 1 means "record everything": the distance is then always 0.

use leaktrace_format::layout;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// `LEAKTRACE_SEED`, or a time-based value; each thread mixes in its creation number.
pub static SEED: AtomicU64 = AtomicU64::new(0x5eed);

/// Thread-local state of the hooks. All zero when new and without a destructor, so reaching it
/// never allocates and is valid during thread start-up and teardown.
#[repr(C)]
pub struct ThreadState {
    /// Set while this thread runs leaktrace code: allocations it makes pass straight through.
    in_hook: Cell<bool>,
    /// Bytes left before the next sample point; the allocation that brings it to <= 0 is sampled.
    bytes_until_sample: Cell<i64>,
    /// The mean the current distance was drawn with; a sample is credited with it.
    /// The gate word the current distance was drawn under (0: none drawn yet).
    mean_of_draw: Cell<u64>,
    rng: Cell<u64>,
    tid: Cell<u32>,
    /// Sampled allocations and frees this thread recorded but has not yet added to the header's
    /// counters: they are added in batches, so threads do not take turns owning those lines.
    unflushed_allocs: Cell<u16>,
    unflushed_frees: Cell<u16>,
    /// This thread's stack as `(lo, hi)`, for the unwinders (see `unwind::current_thread_stack`):
    /// `(0, 0)` not yet computed, `(1, 0)` unavailable. Here rather than in a `thread_local!`,
    /// which costs a `__tls_get_addr` call on each of the two reads per sample.
    stack_bounds: Cell<(u64, u64)>,
}

/// Recorded allocations (or frees) a thread adds to the header's counter at once.
pub const COUNT_BATCH: u16 = 64;

/// The calling thread's [`ThreadState`]: `THREAD.with(|t| ...)`.
pub static THREAD: ThreadKey = ThreadKey;

pub struct ThreadKey;

impl ThreadKey {
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(&ThreadState) -> R) -> R {
        f(this_thread())
    }
}

/// Where the hooks keep their per-thread state. On x86-64 it is a block of static TLS reached
/// with the initial-exec model: two instructions, where Rust's `thread_local!` in a shared
/// library calls `__tls_get_addr` on every malloc (about 15 instructions, when the whole
/// unsampled malloc+free pair now costs about 40). Static TLS suits a library that is preloaded, so
/// present before any thread starts; a later dlopen gets the loader's reserved surplus, which
/// 64 bytes fit in. Elsewhere `thread_local!` does the job.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod tls {
    use super::ThreadState;

    const _: () = assert!(std::mem::size_of::<ThreadState>() <= 64 && std::mem::align_of::<ThreadState>() <= 64);

    // 64 zero bytes of .tbss per thread; hidden, so no other object can bind to it.
    std::arch::global_asm!(
        ".pushsection .tbss,\"awT\",@nobits",
        ".p2align 6",
        ".globl leaktrace_thread_state",
        ".hidden leaktrace_thread_state",
        ".type leaktrace_thread_state,@object",
        ".size leaktrace_thread_state,64",
        "leaktrace_thread_state:",
        ".zero 64",
        ".popsection",
    );

    #[inline(always)]
    pub fn this_thread() -> &'static ThreadState {
        let block: usize;
        // SAFETY: reads the thread pointer (fs:0 holds its own address on x86-64 Linux) and adds
        // our block's offset from it, which the loader stored in the GOT; touches nothing else.
        unsafe {
            std::arch::asm!(
                "mov {block}, qword ptr fs:[0]",
                "add {block}, qword ptr [rip + leaktrace_thread_state@GOTTPOFF]",
                block = out(reg) block,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        // SAFETY: `block` is this thread's 64-byte, 64-aligned block, zeroed by the loader when
        // the thread's TLS was set up, and all-zero bytes are a valid `ThreadState::new()`
        // (checked by a test). It lives as long as the thread; the reference is `!Send`
        // (ThreadState holds Cells), so it never outlives the thread it was taken on.
        unsafe { &*(block as *const ThreadState) }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod tls {
    use super::ThreadState;

    thread_local! {
        static STATE: ThreadState = const { ThreadState::new() };
    }

    #[inline(always)]
    pub fn this_thread() -> &'static ThreadState {
        // SAFETY: the const-initialised, destructor-free thread local lives as long as the
        // thread, and the `!Send` reference cannot leave it.
        STATE.with(|s| unsafe { &*(s as *const ThreadState) })
    }
}

use tls::this_thread;

/// Proof that the current thread is inside leaktrace; recording functions take `&Guard`.
/// Restores the previous state when dropped, so nested guards are harmless.
pub struct Guard<'a> {
    state: &'a ThreadState,
    was_in_hook: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.state.in_hook.set(self.was_in_hook);
    }
}

/// Outcome of charging an allocation to the thread's sampler.
pub enum Charge {
    Skip,
    /// Sample it, crediting the allocation with this mean.
    Sample {
        mean_bytes: u64,
    },
}

impl Default for ThreadState {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadState {
    pub const fn new() -> ThreadState {
        ThreadState {
            in_hook: Cell::new(false),
            // 0 (with no mean drawn yet) sends the thread's first allocation to the slow path,
            // which seeds the generator.
            bytes_until_sample: Cell::new(0),
            mean_of_draw: Cell::new(0),
            rng: Cell::new(0),
            tid: Cell::new(0),
            unflushed_allocs: Cell::new(0),
            unflushed_frees: Cell::new(0),
            stack_bounds: Cell::new((0, 0)),
        }
    }

    pub fn enter(&self) -> Guard<'_> {
        let was_in_hook = self.in_hook.replace(true);
        Guard { state: self, was_in_hook, _not_send: std::marker::PhantomData }
    }

    #[inline(always)]
    pub fn in_hook(&self) -> bool {
        self.in_hook.get()
    }

    /// Charge `size` bytes: `try_skip`, then `on_sample_point` if it did not. The hooks call
    /// the two apart (the real allocator runs in between); the tests call this.
    #[cfg(test)]
    pub fn charge(&self, size: usize, mean_now: u64) -> Charge {
        if self.try_skip(size, mean_now) {
            Charge::Skip
        } else {
            self.on_sample_point(size, mean_now)
        }
    }

    /// The fast path: charge `size` bytes and return true if that does not reach the sample
    /// point. When it returns false nothing was charged, and the caller goes on to
    /// [`ThreadState::on_sample_point`]. `gate` is the trace's gate word (see
    /// `layout::hdr::GATE`): the sampling mean in its low 32 bits, an epoch above.
    #[inline(always)]
    pub fn try_skip(&self, size: usize, gate: u64) -> bool {
        // No overflow: the distance is never negative, and a block that was really allocated
        // is at most isize::MAX bytes (a larger `size`, impossible here, would merely skip).
        let left = self.bytes_until_sample.get().wrapping_sub(size as i64);
        // A changed gate word (a new mean, or `ctl` asking for attention) sends the thread to
        // the slow path, which redraws: the old distance may be far longer than the new mean.
        if left > 0 && gate == self.mean_of_draw.get() {
            self.bytes_until_sample.set(left);
            return true;
        }
        false
    }

    /// Charge `size` bytes that reach the sample point (or meet a changed gate word, or are the
    /// thread's first): redraw the distance, and say whether to sample.
    #[inline(never)]
    pub fn on_sample_point(&self, size: usize, gate: u64) -> Charge {
        let gate = gate.max(1);
        let mean = layout::gate_mean(gate);
        if self.mean_of_draw.get() == gate {
            // The distance ran out under the gate it was drawn with (every sample but a thread's
            // first and those after a `ctl` request): what the general case below comes to then,
            // without its register saves.
            self.bytes_until_sample.set(self.draw(mean));
            return Charge::Sample { mean_bytes: mean };
        }
        self.on_new_gate(size, gate, mean)
    }

    /// [`ThreadState::on_sample_point`] for a thread's first allocation, or a gate word changed
    /// since the distance was drawn.
    #[cold]
    #[inline(never)]
    fn on_new_gate(&self, size: usize, gate: u64, mean: u64) -> Charge {
        let drawn_with = self.mean_of_draw.get();
        if drawn_with != 0 && drawn_with != gate && self.bytes_until_sample.get() > size as i64 {
            // The mean changed before the old distance ran out: start a fresh distance under
            // the new mean (memorylessness keeps the estimate unbiased) and charge this
            // allocation against it.
            self.mean_of_draw.set(0);
        }
        if self.mean_of_draw.get() == 0 {
            // First allocation of this thread: seed, draw, and charge it against the fresh distance.
            self.seed(SEED.load(Ordering::Relaxed));
            let left = self.draw(mean).saturating_sub(size.min(i64::MAX as usize) as i64);
            self.mean_of_draw.set(gate);
            if left > 0 {
                self.bytes_until_sample.set(left);
                return Charge::Skip;
            }
        }
        let mean_bytes = layout::gate_mean(self.mean_of_draw.get());
        self.bytes_until_sample.set(self.draw(mean));
        self.mean_of_draw.set(gate);
        Charge::Sample { mean_bytes }
    }

    fn seed(&self, seed: u64) {
        static THREADS: AtomicU64 = AtomicU64::new(0);
        let n = THREADS.fetch_add(1, Ordering::Relaxed);
        let s = leaktrace_format::layout::mix(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        self.rng.set(s | 1);
    }

    fn next_u64(&self) -> u64 {
        // xorshift64*: fast, and good enough to drive an exponential draw.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// An exponential variate with mean `mean` bytes, at least 1; 0 when every allocation is
    /// to be recorded.
    #[inline(always)]
    fn draw(&self, mean: u64) -> i64 {
        if mean <= 1 {
            return 0;
        }
        self.draw_exponential(mean)
    }

    #[inline(never)]
    fn draw_exponential(&self, mean: u64) -> i64 {
        // u in (0, 1]: 53 random bits, +1 so that ln(u) is finite.
        let u = ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let d = -u.ln() * mean as f64;
        (d as i64).saturating_add(1)
    }

    /// The kernel thread id, cached: gettid is a syscall.
    pub fn tid(&self) -> u32 {
        let t = self.tid.get();
        if t != 0 {
            return t;
        }
        // SAFETY: gettid takes no arguments and cannot fail.
        let t = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        self.tid.set(t);
        t
    }

    /// The cached stack bounds; only `unwind` interprets them.
    #[inline(always)]
    pub fn stack_bounds(&self) -> (u64, u64) {
        self.stack_bounds.get()
    }

    pub fn set_stack_bounds(&self, bounds: (u64, u64)) {
        self.stack_bounds.set(bounds);
    }

    /// Forget per-process state in a forked child: its thread id changed, and its counts
    /// belong to the parent's trace.
    pub fn reset_after_fork(&self) {
        self.tid.set(0);
        self.unflushed_allocs.set(0);
        self.unflushed_frees.set(0);
    }

    /// Count one recorded allocation (`free` false) or free; returns a batch to add to the
    /// header's counter when one is complete.
    pub fn count_recorded(&self, free: bool) -> Option<u64> {
        let cell = if free { &self.unflushed_frees } else { &self.unflushed_allocs };
        let n = cell.get() + 1;
        if n < COUNT_BATCH {
            cell.set(n);
            return None;
        }
        cell.set(0);
        Some(u64::from(n))
    }

    /// The counts not yet added to the header, taken (at exit).
    pub fn take_unflushed(&self) -> (u64, u64) {
        (u64::from(self.unflushed_allocs.replace(0)), u64::from(self.unflushed_frees.replace(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> ThreadState {
        ThreadState::new()
    }

    #[test]
    fn every_allocation_is_sampled_at_mean_one() {
        let t = fresh();
        for size in [0usize, 1, 7, 1 << 20] {
            assert!(matches!(t.charge(size, 1), Charge::Sample { mean_bytes: 1 }));
        }
    }

    #[test]
    fn sampled_bytes_estimate_is_unbiased() {
        // Allocate 200 MB in 1000-byte blocks at T = 64 KiB: the weighted sum of the samples
        // must come within a few percent of the truth.
        let t = fresh();
        let (size, mean, n) = (1000usize, 65536u64, 200_000u64);
        let mut estimate = 0.0;
        for _ in 0..n {
            if let Charge::Sample { mean_bytes } = t.charge(size, mean) {
                estimate += leaktrace_format::sample_weight(size as u64, mean_bytes);
            }
        }
        let truth = (size as u64 * n) as f64;
        assert!((estimate / truth - 1.0).abs() < 0.05, "estimate {estimate} vs {truth}");
    }

    #[test]
    fn sample_count_follows_the_rate() {
        // 10000 allocations of 100 bytes at T = 4096: about 1 - exp(-100/4096) ≈ 2.4% sampled.
        let t = fresh();
        let n = (0..10_000).filter(|_| matches!(t.charge(100, 4096), Charge::Sample { .. })).count();
        assert!((170..320).contains(&n), "{n}");
    }

    #[test]
    fn a_zeroed_state_is_a_new_state() {
        // The static TLS block starts as zero bytes; that must be what `new` builds.
        // SAFETY: every field is a Cell of an integer or bool, for which zero bytes are valid.
        let zeroed: ThreadState = unsafe { std::mem::zeroed() };
        let new = ThreadState::new();
        let fields = |t: &ThreadState| {
            (
                t.in_hook.get(),
                t.bytes_until_sample.get(),
                t.mean_of_draw.get(),
                t.rng.get(),
                t.tid.get(),
                t.take_unflushed(),
            )
        };
        assert_eq!(fields(&zeroed), fields(&new));
    }

    #[test]
    fn each_thread_has_its_own_state() {
        let here = THREAD.with(|t| t as *const ThreadState as usize);
        THREAD.with(|t| t.bytes_until_sample.set(12345));
        let there =
            std::thread::spawn(|| THREAD.with(|t| (t as *const ThreadState as usize, t.bytes_until_sample.get())))
                .join()
                .unwrap();
        assert_ne!(here, there.0);
        assert_eq!(there.1, 0, "a new thread starts from a zeroed state");
        assert_eq!(THREAD.with(|t| t.bytes_until_sample.get()), 12345);
        THREAD.with(|t| t.bytes_until_sample.set(0));
    }

    #[test]
    fn guard_restores_nesting() {
        let t = fresh();
        {
            let _a = t.enter();
            assert!(t.in_hook());
            {
                let _b = t.enter();
            }
            assert!(t.in_hook());
        }
        assert!(!t.in_hook());
    }
}
