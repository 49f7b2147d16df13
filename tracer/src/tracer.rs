//! The tracer: process-wide state, start-up, the record paths behind the hooks, fork and exit.
//!
//! Cost budget per hook, from `scripts/hookcost` (callgrind, instructions per malloc(64..176)+
//! free pair above no preload, which takes 150): a bare pass-through interposer 4, leaktrace
//! dormant 24, tracing at the default mean 42 (a sample every ~4000 such pairs), recording
//! every allocation 1733 (2109 at the crate split, 1838 before the unwinder's memo shrank; its
//! stack is 4 frames deep, and the unwinder takes 801 of it). Wall-clock figures: scripts/bench.
//! - unsampled malloc: a load of `HOOK.gate` and of the word it points at (the trace file's
//!   gate: the mean and an epoch), a subtract-and-compare on the thread's static-TLS block,
//!   then a tail call to the real malloc: no frame kept, nothing saved across the call. No
//!   atomics written, no floating point, no `__tls_get_addr`. Dormant, only the two loads.
//! - free of an unsampled pointer: the real free plus, once anything was sampled, one relaxed
//!   byte load from the 32 KiB counting filter (`mapped::maybe_sampled`).
//! - sampled allocation (one per ~512 KiB allocated by default): a stack unwind (frame pointers
//!   if the program keeps them, else the caching CFI unwinder, which steps over leaktrace's own
//!   frames and reuses the unchanged outer part of the thread's previous unwind), a lock-free
//!   stack-table lookup, a live-table insert and a 48-byte ring append, all in the mapping;
//!   ~0.4 µs in all on a shallow stack here.
//!
//! Nothing on these paths takes a lock, so a signal handler that allocates, or a fork from
//! another thread, cannot find one held.

use std::collections::HashSet;
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::num::NonZeroU64;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use leaktrace_format::layout::{self, hdr, Api, Control, ControlResult, EventKind, TraceState};
use leaktrace_format::{encode_meta, Event, MetaKind, ProcessInfo, SamplingChange};

use crate::budget::{self, Ledger};
use crate::cfi::FrameBuf;
use crate::config::{Config, Unwinder};
use crate::mapped::{self, LiveEntry, Mapped, Prefaulter};
use crate::sampler::{Charge, Guard, ThreadState, THREAD};
use crate::unwind;
use crate::{file, modules, warn};

/// What the allocation hook reads on every call, kept on one cache line of its own: a program
/// that churns through memory evicts the hook's data between calls, and each line it touches is
/// then a miss.
#[repr(C, align(64))]
struct HookSettings {
    /// The word every allocation hook reads: zero while the hooks only forward, else the
    /// sampling mean and an epoch (`layout::gate_mean`). It points at [`GATE_CLOSED`] before
    /// start-up and after a failure, at [`PENDING_GATE`] in a process whose trace starts
    /// at its first sample point, and otherwise at the trace file's `gate` word, which
    /// `leak-analyze ctl` changes from outside. So a process notices a request at its next
    /// allocation without any thread of ours watching the file.
    gate: AtomicPtr<AtomicU64>,
    /// The sampling mean in force, in bytes: what the gate carries while sampling.
    mean: AtomicU64,
    /// Set before the first sampled allocation is recorded. Until then no pointer can be in
    /// the live table, and `free` skips the filter lookup: a process started dormant pays one
    /// load of this line per free, not a likely cache miss on the filter.
    recorded_any: AtomicBool,
    /// True while new allocations are being sampled (not dormant, not paused, not failed).
    /// Read only past the gate: the gate may be open for a pending request alone.
    sampling: AtomicBool,
}

static GATE_CLOSED: AtomicU64 = AtomicU64::new(0);
/// The gate of a process whose trace starts at its first sample point ([`START_PENDING`]):
/// the mean, as the trace's own word will carry it.
static PENDING_GATE: AtomicU64 = AtomicU64::new(0);

static HOOK: HookSettings = HookSettings {
    gate: AtomicPtr::new(&GATE_CLOSED as *const AtomicU64 as *mut AtomicU64),
    mean: AtomicU64::new(crate::config::DEFAULT_SAMPLE_BYTES),
    recorded_any: AtomicBool::new(false),
    sampling: AtomicBool::new(false),
};

/// Point the hooks' gate at `word`, which must live for the rest of the process (a static, or a
/// header word of a trace mapping, which is never unmapped).
fn set_gate(word: &'static AtomicU64) {
    HOOK.gate.store(word as *const AtomicU64 as *mut AtomicU64, Ordering::Release);
}

/// The gate word the hooks read now.
#[inline(always)]
fn gate_word() -> u64 {
    // SAFETY: the gate only ever points at a static or at a header word of a trace mapping,
    // which is never unmapped (`set_gate`).
    unsafe { &*HOOK.gate.load(Ordering::Acquire) }.load(Ordering::Relaxed)
}

/// The active trace; null before start-up, after a failure to start, and in a forked child
/// until it starts its own trace.
static TRACER: AtomicPtr<Tracer> = AtomicPtr::new(std::ptr::null_mut());
/// Settings read once at start-up (or given by each attach); a forked child reuses them rather
/// than reading the environment (std's environment lock may have been held by another thread at
/// the fork). Null before, else a leaked `Config` that is never freed.
static CONFIG: AtomicPtr<Config> = AtomicPtr::new(std::ptr::null_mut());

fn config() -> Option<&'static Config> {
    // SAFETY: CONFIG only ever holds null or a pointer from `Box::leak`, never freed.
    unsafe { CONFIG.load(Ordering::Acquire).as_ref() }
}

fn set_config(config: Config) -> &'static Config {
    let leaked: &'static Config = Box::leak(Box::new(config));
    CONFIG.store(leaked as *const Config as *mut Config, Ordering::Release);
    leaked
}
/// Set in a forked child of a tracing process: its own trace starts at its first sample point,
/// so a child that only execs never creates a file.
static START_PENDING: AtomicBool = AtomicBool::new(false);
/// When this process started (library load, or the fork), on the trace clock and on
/// CLOCK_REALTIME: the zero of the trace's times, whenever its file is created.
static PROCESS_START_MONO: AtomicU64 = AtomicU64::new(0);
static PROCESS_START_UNIX: AtomicU64 = AtomicU64::new(0);

fn mark_process_start() {
    PROCESS_START_MONO.store(trace_clock_ns(), Ordering::Relaxed);
    PROCESS_START_UNIX.store(unix_ns(), Ordering::Relaxed);
}
/// Set in a forked child: another thread of the parent may have held the loader's lock at the
/// fork, so the child never walks the module list at exit (its map came from the parent).
static IS_FORKED_CHILD: AtomicBool = AtomicBool::new(false);
/// This library's code range; frames inside it are trimmed from the top of every stack.
static TRACER_TEXT: OnceLock<(u64, u64)> = OnceLock::new();
/// The `ctl` request the running (or last) scan answers.
static SCAN_SEQ: AtomicU32 = AtomicU32::new(0);

/// Most frames captured per sample.
const MAX_CAPTURE: usize = 64;

pub struct Tracer {
    pub mapped: Mapped,
    file: file::TraceFile,
    start_mono_ns: u64,
    /// Which modules this trace has recorded. Only ever `try_lock`ed: its holders are
    /// housekeeping, start-up and exit, and a forked child may find it held forever.
    modules: Mutex<ModuleLog>,
    /// Held by whoever is doing housekeeping ([`Tracer::tick`]): a hook or the helper thread.
    ticking: AtomicBool,
    /// When housekeeping is next due, ns since start.
    next_tick_ns: AtomicU64,
    /// When the next RSS sample is due, ns since start.
    next_rss_ns: AtomicU64,
    /// The last `hdr::CONTROL_SEQ` acted on.
    control_seen: AtomicU32,
    rss_ms: u64,
    /// How far the trace file is prefaulted ahead of the hooks.
    prefault: crate::mapped::PrefaultProgress,
}

#[derive(Default)]
struct ModuleLog {
    recorded: HashSet<(u64, String)>,
    generation: Option<modules::Generation>,
}

/// The newest module snapshot any walk produced, so that a forked child (which must not walk
/// the module list from inside a hook) can record its parent's map at once.
static LAST_SNAPSHOT: Mutex<Vec<leaktrace_format::ModuleRecord>> = Mutex::new(Vec::new());

/// CLOCK_MONOTONIC, exact: start-up times, and the scan child's rate cap and duration.
pub(crate) fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The trace's clock. CLOCK_MONOTONIC_COARSE is the kernel's last tick (1-4 ms resolution):
/// 8 ns a read here against 30 ns for CLOCK_MONOTONIC, which matters at two reads per recorded
/// allocation and free. Leak analysis works at the scale of the run (96 points over it), so
/// millisecond timestamps lose nothing; the order of events is the ring's sequence numbers.
fn trace_clock_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; both clocks exist on every Linux since 2.6.32.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// 64 random bits from the kernel (a ledger's id); the clock and pid if that fails.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: `b` is writable for its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == 8 {
        u64::from_le_bytes(b)
    } else {
        layout::mix(mono_ns() ^ u64::from(std::process::id()) << 40)
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Tracer {
    pub fn now_ns(&self) -> u64 {
        trace_clock_ns().saturating_sub(self.start_mono_ns)
    }

    /// Append a metadata record. Small ones (sampling changes, applied from a hook) are encoded
    /// on the stack: no allocation that a program's allocating signal handler could interrupt.
    fn append_meta<T: serde::Serialize>(&self, kind: MetaKind, value: &T) -> bool {
        let mut small = [0u8; 256];
        if let Some(n) = encode_meta(kind, value, &mut small) {
            return self.mapped.append_meta(&small[..n]);
        }
        let mut buf = vec![0u8; 64 << 10];
        match encode_meta(kind, value, &mut buf) {
            Some(n) => self.mapped.append_meta(&buf[..n]),
            None => false,
        }
    }

    /// Record the modules of `mods` this trace has not recorded yet. Never blocks.
    fn record_modules(&self, mods: &[leaktrace_format::ModuleRecord], generation: Option<modules::Generation>) {
        let Ok(mut log) = self.modules.try_lock() else {
            return;
        };
        if generation.is_some() {
            log.generation = generation;
        }
        for m in mods {
            if log.recorded.insert((m.base, m.path.clone())) && !self.append_meta(MetaKind::Module, m) {
                self.mapped.header(hdr::EVENTS_DROPPED).fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Walk the loaded modules if the loader's counters moved, and record new ones.
    /// Takes the loader lock: never call it from a hook.
    pub fn refresh_modules(&self) {
        let Some(generation) = modules::generation() else {
            return;
        };
        if self.modules.try_lock().is_ok_and(|log| log.generation == Some(generation)) {
            return;
        }
        let Some((mods, generation)) = modules::snapshot(self.now_ns()) else {
            return;
        };
        self.record_modules(&mods, Some(generation));
        if let Ok(mut last) = LAST_SNAPSHOT.try_lock() {
            *last = mods;
        }
    }
}

/// True while new allocations are being sampled.
pub fn is_sampling() -> bool {
    HOOK.sampling.load(Ordering::Relaxed)
}

/// How often housekeeping runs at most: control requests are seen within this, and module
/// changes are looked for.
const TICK_NS: u64 = 50_000_000;

pub fn current() -> Option<&'static Tracer> {
    let p = TRACER.load(Ordering::Acquire);
    // SAFETY: TRACER only ever holds null or a pointer from `Box::leak`, never freed.
    unsafe { p.as_ref() }
}

// ---------------------------------------------------------------------------------------------
// Hook paths

/// The allocation hooks' fast path, run before the real allocator: true unless tracing is on
/// and this allocation reaches the thread's sample point. When true, the bytes are charged and
/// the hook just tail-calls the real allocator; when false, it goes to [`sampled_alloc`].
#[inline(always)]
pub(crate) fn unsampled(size: usize) -> bool {
    let gate = gate_word();
    gate == 0 || THREAD.with(|t| t.try_skip(size, gate))
}

/// A block [`sample_point`] chose to record.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    /// The sampling mean to credit it with.
    mean_bytes: NonZeroU64,
    /// The trace clock ([`trace_clock_ns`]) as the sample point read it, for the record's time;
    /// 0 if it read none (no trace yet: a forked child's starts at this sample).
    clock_ns: u64,
}

/// After [`unsampled`] said no: charge `size` bytes and say whether to record the block. None
/// for the tracer's own allocations, which pass through, and for a thread's first allocation,
/// which only seeds its sampler.
///
/// Past the gate is also where a process without a thread of ours does its housekeeping: a
/// pending `ctl` request, the RSS series, module changes ([`Tracer::tick`]).
#[inline]
pub(crate) fn sample_point(size: usize) -> Option<Sample> {
    THREAD.with(|t| {
        let mut clock_ns = 0;
        if !t.in_hook() {
            if let Some(tracer) = current() {
                // The clock read for the housekeeping check also dates the record: one read per
                // sample, not two (the trace clock has the kernel tick's resolution anyway).
                clock_ns = trace_clock_ns();
                // Housekeeping walks modules and may build an unwinder: only on a stack with room
                // for it (not a signal handler's small alternate stack); another call will do it.
                if tracer.housekeeping_due(clock_ns) {
                    // Raised first: a thread's first stack check reads /proc/self/maps, which
                    // allocates.
                    let _guard = t.enter();
                    if enough_stack_left(HOUSEKEEPING_STACK) {
                        tracer.tick(Caller::Hook);
                    }
                } else if tracer.mapped.prefault_due(&tracer.prefault) {
                    tracer.prefault_from_hook(t);
                }
            }
        }
        if !HOOK.sampling.load(Ordering::Relaxed) {
            return None;
        }
        match t.on_sample_point(size, gate_word()) {
            Charge::Sample { mean_bytes } if !t.in_hook() => {
                Some(Sample { mean_bytes: NonZeroU64::new(mean_bytes).unwrap_or(NonZeroU64::MIN), clock_ns })
            }
            _ => None,
        }
    })
}

impl Tracer {
    /// A process without the helper thread prefaults from its hooks, a bounded step at a time
    /// (see `Mapped::prefault_step`); with the helper, the helper does it.
    #[cold]
    #[inline(never)]
    fn prefault_from_hook(&self, t: &ThreadState) {
        if HOOK.sampling.load(Ordering::Relaxed) && self.mapped.fully_reserved() && !crate::background::running() {
            let _guard = t.enter();
            self.mapped.prefault_step(&self.prefault, Prefaulter::Hook);
        }
    }
}

/// Record the block `p` (null if the allocation failed) of an allocation [`sample_point`] chose.
pub(crate) fn record_sample(p: *mut c_void, size: usize, api: Api, sample: Sample) {
    if !p.is_null() {
        on_sample(p as u64, size as u64, api, sample);
    }
}

/// An allocation [`unsampled`] said no to: charge it, run `alloc` (the real allocator) and
/// record the block if it is a sample.
#[inline(never)]
pub(crate) fn sampled_alloc(size: usize, api: Api, alloc: impl FnOnce() -> *mut c_void) -> *mut c_void {
    let sample = sample_point(size);
    let p = alloc();
    if let Some(sample) = sample {
        record_sample(p, size, api, sample);
    }
    p
}

/// An allocation hook: `alloc` (the real allocator) straight away if this allocation is not a
/// sample point, a tail call; through [`sampled_alloc`] if it is.
#[inline(always)]
pub(crate) fn traced_alloc(size: usize, api: Api, alloc: impl FnOnce() -> *mut c_void) -> *mut c_void {
    if unsampled(size) {
        return alloc();
    }
    sampled_alloc(size, api, alloc)
}

/// The free hook's fast path: false unless `p` may be a recorded block (a false positive costs
/// one live-table lookup). Until the first sample nothing can be recorded, and the filter,
/// likely a cache miss, is not read.
#[inline(always)]
pub(crate) fn maybe_recorded(p: *mut c_void) -> bool {
    // A thread freeing a block another thread recorded got the pointer through the program's
    // own synchronisation, which orders the flag's store (made before the insert) before it.
    !p.is_null() && HOOK.recorded_any.load(Ordering::Relaxed) && mapped::maybe_sampled(p as u64)
}

/// Free a block [`maybe_recorded`] flagged: record the free if it was recorded, then run `free`
/// (the real one). Recorded first: afterwards another thread may be handed the same address.
#[inline(never)]
pub(crate) fn free_flagged(p: *mut c_void, api: Api, free: impl FnOnce()) {
    record_free(p as u64, api);
    free();
}

/// Take `p` out of the live table ahead of a realloc that may move it; the caller puts it back
/// with [`restore_live`] if the realloc fails. Removing first means no other thread can be handed
/// `p` by the allocator while it is still in the table.
pub(crate) fn take_live(p: *mut c_void) -> Option<LiveEntry> {
    if !maybe_recorded(p) {
        return None;
    }
    current()?.mapped.live_remove(p as u64)
}

pub(crate) fn restore_live(p: *mut c_void, e: LiveEntry) {
    if let Some(t) = current() {
        t.mapped.live_insert(p as u64, e);
    }
}

/// Record the end of a sampled allocation taken out with [`take_live`].
pub(crate) fn record_taken_free(p: *mut c_void, e: LiveEntry, api: Api) {
    if let Some(t) = current() {
        push_free(t, p as u64, e, api);
    }
}

/// The sampled path's entry: a small frame that checks there is stack to spare before calling
/// into the large one. Unwinding needs several KiB; a thread near the end of a small stack would
/// overflow it (seen: a 20 KiB thread stack that the program itself fits in). Such a sample is
/// counted as dropped instead.
#[cold]
#[inline(never)]
fn on_sample(addr: u64, size: u64, api: Api, sample: Sample) {
    THREAD.with(|thread| {
        // The first check on a thread reads /proc/self/maps, which allocates: pass that through.
        let guard = thread.enter();
        if enough_stack_left(SAMPLED_PATH_STACK) {
            record_alloc(thread, &guard, addr, size, api, sample);
        } else if let Some(t) = current() {
            t.mapped.header(hdr::SKIPPED_NO_STACK).fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[cold]
#[inline(never)]
fn record_alloc(thread: &ThreadState, guard: &Guard<'_>, addr: u64, size: u64, api: Api, sample: Sample) {
    let tracer = match current() {
        Some(t) => t,
        None if enough_stack_left(HOUSEKEEPING_STACK) && START_PENDING.swap(false, Ordering::AcqRel) => {
            match start_pending(guard) {
                Some(t) => t,
                None => return,
            }
        }
        None => return,
    };
    if !tracer.mapped.fully_reserved() && !tracer.reserve_for_first_sample() {
        return;
    }
    let mut buf = [MaybeUninit::uninit(); MAX_CAPTURE];
    let mut frames = FrameBuf::new(&mut buf);
    let own_text = TRACER_TEXT.get().copied().unwrap_or((0, 0));
    capture_stack(guard, &mut frames, own_text);
    let frames = frames.frames();
    let n = keep_program_frames(frames, own_text);
    let stack_id = tracer.mapped.intern_stack(&frames[..n]);
    let time_ns = match sample.clock_ns {
        0 => tracer.now_ns(),
        clock_ns => clock_ns.saturating_sub(tracer.start_mono_ns),
    };
    let mean32 = sample.mean_bytes.get().min(u64::from(u32::MAX)) as u32;
    let entry = LiveEntry { size, time_ns, stack_id, mean_bytes: mean32 };
    if !HOOK.recorded_any.load(Ordering::Relaxed) {
        HOOK.recorded_any.store(true, Ordering::Relaxed);
    }
    if !tracer.mapped.live_insert(addr, entry) {
        // Without a live entry the free could not be matched; an event alone would read as a leak.
        return;
    }
    tracer.mapped.push_event(&Event {
        seq: 0,
        time_ns,
        addr,
        size,
        stack_id,
        mean_bytes: mean32,
        tid: thread.tid(),
        kind: EventKind::Alloc,
        api,
    });
    if let Some(batch) = thread.count_recorded(false) {
        tracer.mapped.header(hdr::SAMPLED_ALLOCS).fetch_add(batch, Ordering::Relaxed);
    }
}

fn record_free(addr: u64, api: Api) {
    let Some(tracer) = current() else { return };
    if let Some(e) = tracer.mapped.live_remove(addr) {
        push_free(tracer, addr, e, api);
    }
}

#[inline(always)]
fn push_free(tracer: &Tracer, addr: u64, e: LiveEntry, api: Api) {
    // Frees are recorded even from inside leaktrace itself (a sampled block can reach free
    // from anywhere); they only touch the mapping, so no guard is needed.
    let (tid, batch) = THREAD.with(|t| (t.tid(), t.count_recorded(true)));
    tracer.mapped.push_event(&Event {
        seq: 0,
        time_ns: tracer.now_ns(),
        addr,
        size: e.size,
        stack_id: e.stack_id,
        mean_bytes: e.mean_bytes,
        tid,
        kind: EventKind::Free,
        api,
    });
    if let Some(batch) = batch {
        tracer.mapped.header(hdr::SAMPLED_FREES).fetch_add(batch, Ordering::Relaxed);
    }
}

/// Capture the current stack into `out`, innermost first, without leaktrace's own frames, so the
/// first frame is the caller of the allocation function.
fn capture_stack(_guard: &Guard<'_>, out: &mut FrameBuf, own_text: (u64, u64)) {
    dwarf_stack(out, own_text)
}

/// Stack the sampled path may use: our buffers (~3 KiB) plus libgcc's unwinder. Measured: a
/// thread with 10 KiB of stack left crashed in the unwinder, one with 14 KiB did not.
const SAMPLED_PATH_STACK: u64 = 16 << 10;
/// Stack [`Tracer::tick`] and a forked child's trace start may use, with margin: module walks,
/// the CFI unwinder's construction, file creation. Seen: a tick on a signal handler's 8 KiB
/// alternate stack ran off its end into the heap below it.
const HOUSEKEEPING_STACK: u64 = 64 << 10;

/// Is there room on the stack we are running on for the sampled path? On the thread's own stack
/// the bounds are known; on a signal's alternate stack, sigaltstack(2) tells its base. On any
/// other stack (a coroutine's, a fiber's) the room is unknown and the answer is no: such samples
/// are dropped and counted rather than risk overflowing a small stack.
///
/// The thread's own stack is the case of every sample but a signal handler's: inlined, a few
/// loads and compares in the caller's frame rather than a call.
#[inline(always)]
fn enough_stack_left(needed: u64) -> bool {
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as u64;
    match unwind::current_thread_stack().filter(|b| b.contains(sp)) {
        Some(b) => sp.saturating_sub(b.lo()) >= needed,
        None => enough_alt_stack_left(sp, needed),
    }
}

/// [`enough_stack_left`] off the thread's own stack: room on the signal stack `sp` is on, if any.
#[cold]
#[inline(never)]
fn enough_alt_stack_left(sp: u64, needed: u64) -> bool {
    // SAFETY: an all-zero stack_t is a valid out-buffer.
    let mut alt: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries the current one into `alt`.
    let queried = unsafe { libc::sigaltstack(std::ptr::null(), &mut alt) } == 0;
    let lo = alt.ss_sp as u64;
    queried
        && alt.ss_flags & libc::SS_ONSTACK != 0
        && sp >= lo
        && sp - lo < alt.ss_size as u64
        && sp.saturating_sub(lo) >= needed
}

/// Copy the unwinder in use and its counters into the header, for `leak-analyze info`.
pub fn publish_unwinder_stats(tracer: &Tracer) {
    let m = &tracer.mapped;
    m.u32_at(hdr::UNWINDER).store(layout::UnwinderInUse::Dwarf as u32, Ordering::Relaxed);
    m.header(hdr::CFI_STACKS).store(crate::cfi::traced(), Ordering::Relaxed);
    m.header(hdr::LIBGCC_STACKS).store(crate::cfi::FAILED.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// The part of an unwound stack to keep: past the leading frames inside leaktrace, up to the
/// end-of-stack marker (a return address in the first page).
fn kept_frames(frames: &[u64]) -> std::ops::Range<usize> {
    let (lo, hi) = TRACER_TEXT.get().copied().unwrap_or((0, 0));
    let skip = frames.iter().take_while(|&&ip| ip >= lo && ip < hi).count();
    skip..skip + frames[skip..].iter().take_while(|&&ip| ip >= 4096).count()
}

/// The frames of `frames` a stored stack keeps, moved to its front: none of leaktrace's
/// own, none from the end-of-stack marker on (a return address in the first page). Leading
/// frames of ours are only there when the unwinder could not step over them by frame pointer
/// (never seen); inner ones are the program's call into our `pthread_create`, which the real
/// one's allocations (thread stacks, TLS) are made under: the report names the program's caller
/// of `pthread_create` directly, as it would unpreloaded. One pass, in place: on the sampled
/// path, where three (skip, find the marker, drop inner frames) cost a third of what the stack
/// lookup after it does.
fn keep_program_frames(frames: &mut [u64], (lo, hi): (u64, u64)) -> usize {
    let mut kept = 0;
    for read in 0..frames.len() {
        let ip = frames[read];
        if ip < 4096 {
            break;
        }
        if ip < lo || ip >= hi {
            frames[kept] = ip;
            kept += 1;
        }
    }
    kept
}

/// Inlined into the sampled path: a frame less for every unwind to step over.
#[inline(always)]
fn dwarf_stack(out: &mut FrameBuf, own_text: (u64, u64)) {
    // The caching CFI unwinder (cfi.rs), once housekeeping has built it; it gives 0
    // frames whenever it cannot finish an unwind, and libgcc takes over. It steps over our own
    // frames itself, so it writes straight into `out` (`keep_program_frames` trims it after).
    if crate::cfi::trace_into(out, own_text) == 0 {
        libgcc_stack(out);
    }
}

#[cold]
#[inline(never)]
fn libgcc_stack(out: &mut FrameBuf) {
    let mut raw = [0u64; MAX_CAPTURE + 16];
    let mut n = 0;
    // SAFETY: `trace_unsynchronized` requires that no other thread unwinds through the same
    // backtrace-crate state concurrently in a way that needs its lock; with the libgcc unwinder
    // used on Linux there is no such state (each call is independent), and allocations the
    // unwinder makes are passed through by the guard the caller holds.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            raw[n] = frame.ip() as u64;
            n += 1;
            n < raw.len()
        });
    }
    // The `kept_frames`, as many as fit.
    for &frame in &raw[kept_frames(&raw[..n])] {
        out.push(frame);
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up

/// The library constructor: resolve the real allocator, read the settings, start tracing.
/// Loaded by `leak-analyze attach` instead (with dlopen, into a running process), it does
/// nothing: the environment is the program's, not the user's, and `leaktrace_attach` starts.
pub fn on_load() {
    if !loaded_by_preload() {
        return;
    }
    crate::real::resolve();
    crate::real::resolve_single_threaded();
    THREAD.with(|t| {
        let guard = t.enter();
        // setuid and other secure-execution programs must not be traced (the file would be
        // written with their privileges where an unprivileged user said).
        // SAFETY: getauxval has no preconditions.
        if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
            return;
        }
        let config = match Config::from_lookup(|k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => {
                warn(&format!("{e}; tracing disabled"));
                return;
            }
        };
        let config = prepare(config);
        choose_ledger_path(config, true);
        // The file exists from the start, dormant or not: it is the channel `ctl` reaches the
        // process through.
        if start_or_stop(&guard, config, false, config.start_paused).is_none() {
            return;
        }
        crate::status::set(crate::status::STATUS_PRELOADED);
        register_fork_handler();
    });
}

/// Were we preloaded (in the main program's symbol scope), rather than dlopen'd by `attach`
/// (with RTLD_LOCAL)? Looked up through the main program's handle: RTLD_DEFAULT would search
/// our own local scope too, and find us either way.
fn loaded_by_preload() -> bool {
    // SAFETY: dlopen(NULL) returns the main program's handle (no loading, no constructors).
    let main = unsafe { libc::dlopen(std::ptr::null(), libc::RTLD_LAZY) };
    if main.is_null() {
        return true;
    }
    // SAFETY: a valid handle and a NUL-terminated name.
    let found = !unsafe { libc::dlsym(main, c"leaktrace_attach".as_ptr()) }.is_null();
    // SAFETY: `main` came from dlopen above; closing the main program's handle unloads nothing.
    unsafe { libc::dlclose(main) };
    found
}

/// What preloaded and attached start-up share: the sampler's seed, the module map, the
/// unwinder, the settings, the trace's zero time.
fn prepare(config: Config) -> &'static Config {
    let seed = config.seed.unwrap_or_else(|| mono_ns() ^ u64::from(std::process::id()) << 32);
    crate::sampler::SEED.store(seed, Ordering::Relaxed);
    modules::install_fork_fence();
    let (mods, _) = modules::snapshot(0).unwrap_or_default();
    let _ = TRACER_TEXT.set(modules::tracer_text_range(&mods));
    // Every choice unwinds by CFI, stepping by frame record through the functions proven to
    // keep frame pointers (cfi.rs): a pure frame-pointer walk is only right through code
    // that keeps them, and a program built with them still calls a libc and libstdc++
    // built without, where the walk skips the caller of strdup or operator new. No
    // calibration on the first stacks can prove that later stacks stay in such code.
    // `dwarf` uses no frame record at all (a reference to compare with).
    crate::cfi::use_frame_records(config.unwinder != Unwinder::Dwarf);
    if let Ok(mut last) = LAST_SNAPSHOT.try_lock() {
        *last = mods;
    }
    let config = set_config(config);
    mark_process_start();
    if !config.start_paused {
        // Built here, at start-up, rather than by a thread: the hooks' CFI unwinder.
        crate::cfi::refresh();
    }
    config
}

fn register_fork_handler() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: `after_fork_in_child` is an `extern "C" fn()` that stays valid for the life
        // of the process (the library is never unloaded); the other two handlers are absent.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

// ---------------------------------------------------------------------------------------------
// Attach and detach

/// Set while this process is traced through `leak-analyze attach` (in a forked child too,
/// which inherits the redirected GOT slots).
static ATTACHED: AtomicBool = AtomicBool::new(false);

/// Why `leaktrace_attach` did not attach (its return value; `leak-analyze attach` names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum AttachError {
    /// Traced already: preloaded, or attached and not detached.
    AlreadyTraced = 1,
    /// A setting did not parse.
    BadSettings = 2,
    /// The trace file could not be created (disk, permissions, budget).
    NotStarted = 3,
    /// `leaktrace_detach` with nothing attached.
    NotAttached = 4,
}

/// What the global scope binds `name` to: what the program's GOT slots hold, and so where the
/// hooks forward once attached.
fn global_binding(name: &std::ffi::CStr) -> usize {
    // SAFETY: NUL-terminated name; RTLD_DEFAULT searches the global scope, which we are not in.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) as usize }
}

/// Start tracing a running process we were dlopen'd into: `settings` are `LEAKTRACE_*` pairs.
/// Returns the trace file's path.
pub fn attach(settings: &[(String, String)]) -> Result<String, (AttachError, String)> {
    if ATTACHED.load(Ordering::Acquire) || current().is_some() || loaded_by_preload() {
        return Err((AttachError::AlreadyTraced, "this process is traced by leaktrace already".into()));
    }
    let config = Config::from_lookup(|k| settings.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()))
        .map_err(|e| (AttachError::BadSettings, e))?;
    crate::real::resolve_global();
    crate::real::resolve_single_threaded();
    THREAD.with(|t| {
        let guard = t.enter();
        let config = prepare(config);
        choose_ledger_path(config, false);
        ATTACHED.store(true, Ordering::Release);
        let Some(tracer) = start_or_stop(&guard, config, false, config.start_paused) else {
            ATTACHED.store(false, Ordering::Release);
            let why = START_ERROR.try_lock().map(|e| e.clone()).unwrap_or_default();
            let why = if why.is_empty() { "the process tree's disk budget is spent".to_string() } else { why };
            return Err((AttachError::NotStarted, why));
        };
        let attached_at = PROCESS_START_UNIX.load(Ordering::Relaxed);
        tracer.mapped.header(hdr::ATTACH_UNIX_NS).store(attached_at, Ordering::Release);
        IS_FORKED_CHILD.store(false, Ordering::Relaxed);
        register_fork_handler();
        let count = crate::got::patch_all(global_binding);
        // A process with threads already may have the helper; one with a single thread gets
        // none, as with the preload.
        if !crate::real::single_threaded() {
            crate::background::start_once(helper_round);
        }
        crate::status::set(crate::status::STATUS_ATTACHED);
        // The path, then what was redirected (for `leak-analyze attach` to report).
        Ok(format!("{}\n{} slots in {} objects", tracer.file.path, count.patched, count.objects))
    })
}

/// Stop tracing: give every GOT slot back, end the trace as detached. Threads inside a hook
/// meanwhile finish their call against the trace, which stays mapped; the library stays loaded
/// (a function pointer to a hook taken while attached still works: it forwards).
pub fn detach() -> Result<String, (AttachError, String)> {
    if !ATTACHED.swap(false, Ordering::AcqRel) {
        return Err((AttachError::NotAttached, "this process is not attached".into()));
    }
    let restored = crate::got::restore_all();
    crate::status::set(crate::status::STATUS_DETACHED);
    crate::background::stop();
    let tracer = TRACER.swap(std::ptr::null_mut(), Ordering::AcqRel);
    stop_sampling();
    // SAFETY: TRACER only ever holds null or a leaked tracer.
    let Some(t) = (unsafe { tracer.as_ref() }) else {
        return Ok(String::new());
    };
    THREAD.with(|thread| {
        let _guard = thread.enter();
        t.refresh_modules();
        end_trace(t, layout::EndReason::Detached);
    });
    // The file is the user's now: it no longer counts against the budget of a later attach.
    if let Some(config) = config() {
        ledger(config).release(t.mapped.header(hdr::RESERVED_BYTES).load(Ordering::Acquire));
    }
    Ok(format!("{}\n{} slots restored", t.file.path, restored.restored))
}

/// Write what ends a trace: the last counts, the end time, a last RSS sample, the reason.
fn end_trace(t: &Tracer, reason: layout::EndReason) {
    let m = &t.mapped;
    // The calling thread's unflushed counts; other threads' stay unflushed (fewer than
    // COUNT_BATCH each, as FORMAT.md says).
    let (allocs, frees) = THREAD.with(|thread| thread.take_unflushed());
    m.header(hdr::SAMPLED_ALLOCS).fetch_add(allocs, Ordering::Relaxed);
    m.header(hdr::SAMPLED_FREES).fetch_add(frees, Ordering::Relaxed);
    m.publish_live_count();
    publish_unwinder_stats(t);
    m.header(hdr::END_NS).store(t.now_ns(), Ordering::Relaxed);
    if m.fully_reserved() {
        sample_rss(t);
    }
    m.u32_at(hdr::END_REASON).store(reason as u32, Ordering::Release);
}

/// Why the last trace could not be created, for `leaktrace_attach` to answer with.
static START_ERROR: Mutex<String> = Mutex::new(String::new());

/// Why a trace could not start.
enum NotStarted {
    /// The process tree's disk budget cannot hold the file's reservation.
    Budget,
    /// Anything else (said on stderr).
    Failed,
}

/// Create and map the trace file and write what is known up front. A dormant trace reserves
/// disk for its header and metadata only, a tracing one for all of it; either way, the tree's
/// ledger first.
fn start(_guard: &Guard<'_>, config: &Config, is_child: bool, dormant: bool) -> Result<&'static Tracer, NotStarted> {
    let pid = std::process::id();
    let plan = layout::Plan::for_file_size_and_mean(config.file_size, config.sample_bytes).ok_or(NotStarted::Failed)?;
    let (meta_off, meta_len) = plan.region(layout::Region::Meta);
    // A forked child starts at its first sample point: all of it now. The process the user
    // started, and any dormant trace, take the header and metadata only until the first sample
    // (or the resume): a wrapper that execs the service (setpriv, start-stop-daemon) leaves a
    // small file, not a full one.
    // An attach is the user asking for a trace now: all of it at once, or the samples of the
    // first moments (while the helper's first tick holds housekeeping) would find the file
    // still reserving and be dropped.
    let attaching = ATTACHED.load(Ordering::Acquire) && !is_child;
    let reserve_now = if dormant || (!is_child && !attaching) { meta_off + meta_len } else { config.file_size };
    // The first process of a tree to create a trace creates the ledger too, once its trace
    // exists: a trace that could not be created leaves no ledger behind (a full disk).
    let existing = existing_ledger();
    match existing {
        Some(l) if !l.reserve(reserve_now) => {
            l.count_refused();
            return Err(NotStarted::Budget);
        }
        None if reserve_now > config.tree_budget_bytes() => return Err(NotStarted::Budget),
        _ => {}
    }
    let path = config.path_for(pid, is_child);
    if let Some(l) = existing {
        release_replaced(&path, pid, l);
    }
    let file = match file::create_mapped(&path, config.file_size, reserve_now) {
        Ok(f) => f,
        Err(e) => {
            if let Some(l) = existing {
                l.release(reserve_now);
            }
            warn(&format!("{e}; tracing disabled"));
            if let Ok(mut last) = START_ERROR.try_lock() {
                *last = e;
            }
            return Err(NotStarted::Failed);
        }
    };
    let ledger = match existing {
        Some(l) => {
            l.count_file();
            l
        }
        None => {
            let l = ledger(config);
            // Another process may have made it meanwhile and used some: over budget then, by
            // at most this one file, once.
            let _ = l.reserve(reserve_now) || l.force_reserve(reserve_now);
            l
        }
    };
    // SAFETY: `create_mapped` returns a shared writable mapping of exactly `file_size` bytes
    // that is never unmapped, with blocks allocated for its first `reserve_now` bytes, and
    // RESERVED_BYTES below tells every writer how far it may store; `plan` is for that size.
    let mapped = unsafe { Mapped::new(file.base, config.file_size as usize, &plan) };
    let start_mono_ns = PROCESS_START_MONO.load(Ordering::Relaxed);
    let start_unix_ns = PROCESS_START_UNIX.load(Ordering::Relaxed);
    mapped.write_header(pid, start_unix_ns, start_mono_ns, config.sample_bytes, config.rss_ms);
    mapped.header(hdr::RESERVED_BYTES).store(reserve_now, Ordering::Release);
    mapped.header(hdr::TREE_BUDGET).store(ledger.budget(), Ordering::Relaxed);
    mapped.header(hdr::TREE_ID).store(ledger.id(), Ordering::Relaxed);
    if ATTACHED.load(Ordering::Acquire) {
        // A child forked while attached: like its parent, it knows nothing of the heap before.
        mapped.header(hdr::ATTACH_UNIX_NS).store(start_unix_ns, Ordering::Relaxed);
    }
    let tracer: &'static Tracer = Box::leak(Box::new(Tracer {
        mapped,
        file,
        start_mono_ns,
        modules: Mutex::new(ModuleLog::default()),
        ticking: AtomicBool::new(false),
        next_tick_ns: AtomicU64::new(0),
        next_rss_ns: AtomicU64::new(0),
        control_seen: AtomicU32::new(0),
        rss_ms: config.rss_ms,
        prefault: Default::default(),
    }));
    let info = process_info(pid);
    tracer.append_meta(MetaKind::Process, &info);
    // The module map goes in at once (a short-lived process may end before the first tick):
    // from start-up's walk, or in a forked child from the parent's last one.
    if let Ok(last) = LAST_SNAPSHOT.try_lock() {
        tracer.record_modules(&last, None);
    }
    // A forked child keeps the mean its parent had at the fork, which `ctl` may have changed.
    let mean_bytes = if is_child { HOOK.mean.load(Ordering::Relaxed) } else { config.sample_bytes };
    tracer.mapped.header(hdr::CURRENT_MEAN_BYTES).store(mean_bytes, Ordering::Relaxed);
    tracer.append_meta(MetaKind::Sampling, &SamplingChange { t_ns: 0, mean_bytes });
    if dormant {
        tracer.append_meta(MetaKind::Sampling, &SamplingChange { t_ns: 0, mean_bytes: 0 });
    }
    HOOK.mean.store(mean_bytes, Ordering::Relaxed);
    tracer.mapped.set_state(if dormant { TraceState::Paused } else { TraceState::Tracing });
    HOOK.sampling.store(!dormant, Ordering::Relaxed);
    // Pairs with the acquire load in `current`.
    TRACER.store(tracer as *const Tracer as *mut Tracer, Ordering::Release);
    tracer.settle_gate();
    set_gate(tracer.mapped.u64_at(hdr::GATE));
    // A first RSS sample now, so even a short run has its starting point.
    if tracer.mapped.fully_reserved() {
        sample_rss(tracer);
    }
    if let Some(parent) = parent() {
        parent.mapped.header(hdr::CHILDREN_TRACED).fetch_add(1, Ordering::Relaxed);
    }
    // No thread is started here: a process with one thread must keep it that way (a helper
    // would break privilege drops, and take glibc's malloc off its single-thread path). The
    // helper starts when the program creates a thread of its own (`on_program_thread`).
    Ok(tracer)
}

/// Start a trace; on failure the hooks only forward from now on, and a forked child's parent
/// counts a child the budget left untraced.
fn start_or_stop(guard: &Guard<'_>, config: &Config, is_child: bool, dormant: bool) -> Option<&'static Tracer> {
    match start(guard, config, is_child, dormant) {
        Ok(t) => Some(t),
        Err(why) => {
            stop_sampling();
            match (why, parent()) {
                (NotStarted::Budget, Some(parent)) => {
                    parent.mapped.header(hdr::CHILDREN_UNTRACED_BUDGET).fetch_add(1, Ordering::Relaxed);
                }
                // A forked child is counted by its parent, and an exec'd descendant stays quiet
                // (a service that forks and execs per connection would fill its log); the
                // process the user started says so.
                (NotStarted::Budget, None) if INHERITED_TREE.load(Ordering::Relaxed) => {}
                (NotStarted::Budget, None) => warn(&format!(
                    "the process tree's disk budget (LEAKTRACE_TREE_BUDGET, {} bytes) cannot hold another trace; tracing disabled",
                    config.tree_budget_bytes()
                )),
                (NotStarted::Failed, _) => {}
            }
            None
        }
    }
}

/// Start the trace of a forked child at its first sample point ([`START_PENDING`]).
fn start_pending(guard: &Guard<'_>) -> Option<&'static Tracer> {
    let config = config()?;
    start_or_stop(guard, config, IS_FORKED_CHILD.load(Ordering::Relaxed), false)
}

/// Stop looking at allocations for good (tracing could not start): the hooks only forward.
fn stop_sampling() {
    HOOK.sampling.store(false, Ordering::Relaxed);
    set_gate(&GATE_CLOSED);
}

// ---------------------------------------------------------------------------------------------
// The process tree's disk budget

/// Where the tree's ledger is: from `LEAKTRACE_TREE` (set by the root for exec'd descendants),
/// or, in the root, next to its trace. Decided in the constructor, which exports it.
static LEDGER_PATH: OnceLock<String> = OnceLock::new();
/// Set when this process was exec'd by a traced process (it found the tree's ledger in its
/// environment): it is a descendant, not the process the user started.
static INHERITED_TREE: AtomicBool = AtomicBool::new(false);
/// The ledger, opened at its first use; a forked child inherits the mapping.
static LEDGER: OnceLock<&'static Ledger> = OnceLock::new();

/// Decide the ledger's path at start-up, and export it to exec'd descendants. Runs in the
/// constructor, before the program's `main` (and so its threads): setenv is safe there.
fn choose_ledger_path(config: &Config, export: bool) {
    // An attached process's environment is the program's: whatever it says is not ours.
    let inherited = std::env::var(budget::TREE_ENV).ok().filter(|p| export && p.starts_with('/'));
    let usable = |p: &str| {
        let Ok(c) = std::ffi::CString::new(p) else { return false };
        // SAFETY: `c` is NUL-terminated. A ledger another user made (we changed users at an
        // exec) is not ours to use: this process starts a tree of its own.
        unsafe { libc::access(c.as_ptr(), libc::F_OK) != 0 || libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
    };
    let path = match inherited {
        Some(p) if usable(&p) => {
            INHERITED_TREE.store(true, Ordering::Relaxed);
            p
        }
        _ => {
            let pid = std::process::id();
            let trace = config.path_for(pid, false);
            let mut path = budget::ledger_path_for(&trace, pid);
            if !dir_writable(&path) {
                path = format!("{}/leaktrace.{pid}.tree", file::temp_dir());
            }
            // Not when attached: the program's other threads may be reading the environment,
            // and what it execs is not traced anyway.
            if export {
                std::env::set_var(budget::TREE_ENV, &path);
            }
            path
        }
    };
    let _ = LEDGER_PATH.set(path);
}

fn dir_writable(path: &str) -> bool {
    let dir = path.rfind('/').map_or(".", |i| if i == 0 { "/" } else { &path[..i] });
    let Ok(c) = std::ffi::CString::new(dir) else { return false };
    // SAFETY: `c` is NUL-terminated.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// The tree's ledger, created if no process of the tree has yet. When its file cannot be
/// used, a ledger of this process alone (in memory, shared with forked children): the bound
/// then holds for this process and its forks.
fn ledger(config: &Config) -> &'static Ledger {
    LEDGER.get_or_init(|| {
        let path = LEDGER_PATH.get().cloned().unwrap_or_default();
        let ledger = Ledger::open_or_create(&path, config.tree_budget_bytes())
            .unwrap_or_else(|_| Ledger::anonymous(config.tree_budget_bytes()));
        Box::leak(Box::new(ledger))
    })
}

/// The tree's ledger if some process of the tree made it already.
fn existing_ledger() -> Option<&'static Ledger> {
    if let Some(l) = LEDGER.get() {
        return Some(l);
    }
    let found = Ledger::open(LEDGER_PATH.get()?)?;
    Some(LEDGER.get_or_init(|| Box::leak(Box::new(found))))
}

/// A trace of this very pid and tree at `path` is this process's own from before an exec (a
/// forked child's, made at the fork or its first sample): it is about to be replaced, so give
/// its disk back to the tree. Anything else at the path is left to `create_mapped`.
fn release_replaced(path: &str, pid: u32, ledger: &Ledger) {
    use std::io::Read;
    let Ok(mut f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
    else {
        return;
    };
    let mut head = [0u8; layout::HEADER_SIZE];
    if f.read_exact(&mut head).is_err() {
        return;
    }
    if let Ok(h) = leaktrace_format::Header::parse(&head) {
        if h.pid == pid && h.tree_id == ledger.id() {
            ledger.release(h.reserved_bytes);
        }
    }
}

/// The parent's trace, in a forked child (its mapping is inherited, and never unmapped).
static PARENT: AtomicPtr<Tracer> = AtomicPtr::new(std::ptr::null_mut());

fn parent() -> Option<&'static Tracer> {
    // SAFETY: PARENT only ever holds null or a leaked tracer inherited from the parent.
    unsafe { PARENT.load(Ordering::Acquire).as_ref() }
}

/// The arguments in /proc/self/cmdline: each ends with a NUL, and an empty one is an argument
/// too (`redis-server --save ''`).
fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    let body = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|&c| c == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

fn process_info(pid: u32) -> ProcessInfo {
    let cmdline = std::fs::read("/proc/self/cmdline").map(|b| split_cmdline(&b)).unwrap_or_default();
    let mut host = [0u8; 256];
    // SAFETY: `host` is a writable buffer of the length we pass.
    let hostname = if unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0 {
        let end = host.iter().position(|&c| c == 0).unwrap_or(host.len());
        String::from_utf8_lossy(&host[..end]).into_owned()
    } else {
        String::new()
    };
    ProcessInfo {
        pid,
        // SAFETY: getppid has no preconditions.
        ppid: unsafe { libc::getppid() } as u32,
        exe: std::fs::read_link("/proc/self/exe").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        cmdline,
        hostname,
        tracer_version: env!("CARGO_PKG_VERSION").into(),
        // CFI always; `LEAKTRACE_UNWINDER=dwarf` without stepping by frame record.
        unwinder: match config().map(|c| c.unwinder) {
            Some(Unwinder::Dwarf) => "cfi (rules only)".into(),
            _ => "cfi".into(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Runtime control, fork and exit

/// Who runs [`Tracer::tick`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// An allocation hook, past the gate, with the thread's guard raised.
    Hook,
    /// The helper thread, which exists only once the program has threads of its own.
    Helper,
}

impl Tracer {
    /// Is housekeeping due: a `ctl` request not yet acted on, or [`TICK_NS`] since the last?
    #[inline]
    fn housekeeping_due(&self, clock_ns: u64) -> bool {
        self.mapped.u32_at(hdr::CONTROL_SEQ).load(Ordering::Acquire) != self.control_seen.load(Ordering::Relaxed)
            || clock_ns.saturating_sub(self.start_mono_ns) >= self.next_tick_ns.load(Ordering::Relaxed)
    }

    /// How long until housekeeping is next due.
    pub fn until_next_tick(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.next_tick_ns.load(Ordering::Relaxed).saturating_sub(self.now_ns()))
    }

    /// Housekeeping: act on a `ctl` request, take an RSS sample when one is due, publish the
    /// header's summary fields, and follow module changes. Whoever calls first does it; a
    /// concurrent caller returns at once. Called from a hook past the gate (allocations made
    /// here pass through the caller's guard) or from the helper thread.
    pub fn tick(&self, caller: Caller) {
        if self.ticking.swap(true, Ordering::Acquire) {
            return;
        }
        let now = self.now_ns();
        self.next_tick_ns.store(now + TICK_NS, Ordering::Relaxed);
        let m = &self.mapped;
        m.header(hdr::HEARTBEAT_NS).store(now, Ordering::Relaxed);
        let seq = m.u32_at(hdr::CONTROL_SEQ).load(Ordering::Acquire);
        if seq != self.control_seen.load(Ordering::Relaxed) {
            self.control_seen.store(seq, Ordering::Relaxed);
            let control = m.u32_at(hdr::CONTROL).load(Ordering::Relaxed);
            let mean = m.header(hdr::REQUESTED_MEAN_BYTES).load(Ordering::Relaxed);
            if control == Control::Scan as u32 && m.state() != TraceState::Failed as u32 {
                // The scan's child acknowledges when its findings are in the trace.
                if !self.start_scan(seq) {
                    m.u32_at(hdr::CONTROL_RESULT).store(ControlResult::ScanFailed as u32, Ordering::Relaxed);
                    m.u32_at(hdr::CONTROL_ACK_SEQ).store(seq, Ordering::Release);
                }
            } else {
                let result = self.apply_control(control, mean);
                m.u32_at(hdr::CONTROL_RESULT).store(result as u32, Ordering::Relaxed);
                m.u32_at(hdr::CONTROL_ACK_SEQ).store(seq, Ordering::Release);
            }
        }
        crate::scan::reap(m, now, SCAN_SEQ.load(Ordering::Relaxed));
        // The RSS series only while sampling or paused after sampling: a dormant trace has no
        // disk behind its RSS region yet, and a dormant process does nothing it need not.
        if m.fully_reserved() && now >= self.next_rss_ns.load(Ordering::Relaxed) {
            sample_rss(self);
            let interval_ns = m.header(hdr::RSS_INTERVAL_MS).load(Ordering::Relaxed).max(self.rss_ms) * 1_000_000;
            // On the schedule, not from now: the ticks come late by up to the clock's 4 ms tick,
            // and that must not add up over the run.
            let scheduled = self.next_rss_ns.load(Ordering::Relaxed).saturating_add(interval_ns);
            let next_rss = if scheduled > now { scheduled } else { now + interval_ns };
            self.next_rss_ns.store(next_rss, Ordering::Relaxed);
            self.next_tick_ns.store(next_rss.min(now + TICK_NS), Ordering::Relaxed);
        }
        m.publish_live_count();
        publish_unwinder_stats(self);
        // The loader's lock is taken by the module walk. From a hook that is only safe when
        // ours is the only thread (the lock is recursive, so it cannot deadlock on itself);
        // a program with threads has the helper thread for it.
        if caller == Caller::Helper || crate::real::single_threaded() {
            if is_sampling() {
                self.refresh_modules();
                crate::cfi::refresh();
            }
            if ATTACHED.load(Ordering::Acquire) {
                crate::got::patch_new_objects(global_binding);
            }
        }
        self.ticking.store(false, Ordering::Release);
    }

    /// `ctl --scan`: hand a snapshot of the process to a scanning child (see `scan`). False if
    /// it could not start.
    fn start_scan(&self, seq: u32) -> bool {
        let mut plan = Box::new(crate::scan::Plan {
            seq,
            t_ns: self.now_ns(),
            start_mono_ns: self.start_mono_ns,
            rate_bytes_per_s: config().map_or(crate::scan::DEFAULT_RATE_BYTES_PER_S, |c| c.scan_rate_bytes_per_s),
            excluded: [(0, 0); crate::scan::MAX_EXCLUDED],
            globals: [(0, 0); crate::scan::MAX_GLOBAL_RANGES],
            n_globals: 0,
            stack_pointers: [0; crate::scan::MAX_THREADS],
            n_stack_pointers: 0,
        });
        let here = 0u8;
        let mut sps = vec![std::ptr::addr_of!(here) as u64];
        sps.extend(blocked_threads_stack_pointers());
        for sp in sps.into_iter().take(crate::scan::MAX_THREADS) {
            plan.stack_pointers[plan.n_stack_pointers] = sp;
            plan.n_stack_pointers += 1;
        }
        // Never roots: the trace mappings (the live table holds every sampled address) and our
        // own library's data.
        plan.excluded[0] = self.mapped.range();
        if let Some(p) = parent() {
            plan.excluded[1] = p.mapped.range();
        }
        if let Ok(mods) = LAST_SNAPSHOT.try_lock() {
            for m in mods.iter() {
                let writable = m.segments.iter().filter(|s| s.flags & libc::PF_W != 0);
                for s in writable {
                    let range = (m.base + s.vaddr, m.base + s.vaddr + s.memsz);
                    if m.is_tracer {
                        plan.excluded[2] = range;
                    } else if plan.n_globals < crate::scan::MAX_GLOBAL_RANGES {
                        plan.globals[plan.n_globals] = range;
                        plan.n_globals += 1;
                    }
                }
            }
        }
        let previous = SCAN_SEQ.swap(seq, Ordering::Relaxed);
        if crate::scan::start(&self.mapped, &plan, previous) {
            true
        } else {
            SCAN_SEQ.store(previous, Ordering::Relaxed);
            false
        }
    }

    /// Act on a `leak-analyze ctl` request.
    fn apply_control(&self, control: u32, mean_bytes: u64) -> ControlResult {
        let m = &self.mapped;
        if m.state() == TraceState::Failed as u32 {
            return ControlResult::RefusedStopped;
        }
        match control {
            // Pausing a paused trace, or resuming a sampling one, changes nothing.
            c if c == Control::Pause as u32 && is_sampling() => {
                HOOK.sampling.store(false, Ordering::Relaxed);
                m.set_state(TraceState::Paused);
                self.append_meta(MetaKind::Sampling, &SamplingChange { t_ns: self.now_ns(), mean_bytes: 0 });
            }
            c if c == Control::Resume as u32 && !is_sampling() => {
                if let Err(refused) = self.reserve_whole_file() {
                    self.settle_gate();
                    return refused;
                }
                m.set_state(TraceState::Tracing);
                HOOK.sampling.store(true, Ordering::Relaxed);
                let mean_bytes = HOOK.mean.load(Ordering::Relaxed);
                self.append_meta(MetaKind::Sampling, &SamplingChange { t_ns: self.now_ns(), mean_bytes });
            }
            c if c == Control::SetMeanBytes as u32 && (1..=u64::from(u32::MAX)).contains(&mean_bytes) => {
                HOOK.mean.store(mean_bytes, Ordering::Relaxed);
                m.header(hdr::CURRENT_MEAN_BYTES).store(mean_bytes, Ordering::Relaxed);
                if is_sampling() {
                    self.append_meta(MetaKind::Sampling, &SamplingChange { t_ns: self.now_ns(), mean_bytes });
                }
            }
            _ => {}
        }
        self.settle_gate();
        ControlResult::Applied
    }

    /// The first sample of a trace started small: reserve the rest of the file, or stop tracing
    /// (the budget or the disk said no; said on stderr). Only one thread does it.
    #[cold]
    fn reserve_for_first_sample(&self) -> bool {
        if self.ticking.swap(true, Ordering::Acquire) {
            // Another thread is housekeeping, or reserving: drop this sample.
            return false;
        }
        let ok = self.reserve_whole_file().is_ok();
        self.ticking.store(false, Ordering::Release);
        if ok {
            sample_rss(self);
        } else {
            stop_sampling();
            self.mapped.set_state(TraceState::Failed);
            self.mapped.u32_at(hdr::FAILURE).store(layout::Failure::NoDisk as u32, Ordering::Relaxed);
            // A trace that can never hold a sample says nothing: take its file and disk back.
            self.file.remove();
            if let Some(config) = config() {
                ledger(config).release(self.mapped.header(hdr::RESERVED_BYTES).load(Ordering::Acquire));
            }
        }
        ok
    }

    /// Allocate the disk for the whole file (a dormant trace has its header and metadata only),
    /// within the tree's budget, before anything is stored beyond them.
    fn reserve_whole_file(&self) -> Result<(), ControlResult> {
        let reserved = self.mapped.header(hdr::RESERVED_BYTES).load(Ordering::Acquire);
        let rest = self.file.size.saturating_sub(reserved);
        if rest == 0 {
            return Ok(());
        }
        let Some(config) = config() else { return Err(ControlResult::RefusedStopped) };
        let ledger = ledger(config);
        if !ledger.reserve(rest) {
            warn(&format!("cannot resume {}: the process tree's disk budget is spent", self.file.path));
            return Err(ControlResult::RefusedBudget);
        }
        if let Err(e) = self.file.reserve_all() {
            ledger.release(rest);
            warn(&format!("{e}; the trace stays dormant"));
            return Err(ControlResult::RefusedDiskFull);
        }
        self.mapped.header(hdr::RESERVED_BYTES).store(self.file.size, Ordering::Release);
        Ok(())
    }

    /// Set the file's gate word for the state now: the mean (with the epoch kept) while
    /// sampling, 0 otherwise. `ctl` bumps the sequence and then the epoch: re-reading the
    /// sequence after the store catches a request whose epoch bump the store overwrote.
    fn settle_gate(&self) {
        let gate = self.mapped.u64_at(hdr::GATE);
        let word = if is_sampling() {
            (gate.load(Ordering::Relaxed) & !(layout::GATE_EPOCH - 1)) | HOOK.mean.load(Ordering::Relaxed)
        } else {
            0
        };
        gate.store(word, Ordering::SeqCst);
        if self.mapped.u32_at(hdr::CONTROL_SEQ).load(Ordering::SeqCst) != self.control_seen.load(Ordering::Relaxed) {
            gate.fetch_add(layout::GATE_EPOCH, Ordering::SeqCst);
        }
    }
}

/// The stack pointers of this process's threads that are blocked in a system call (the sixth
/// field after the number in /proc/self/task/TID/syscall); running threads have none to read.
fn blocked_threads_stack_pointers() -> Vec<u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .filter_map(|t| {
            let text = std::fs::read_to_string(t.ok()?.path().join("syscall")).ok()?;
            let sp = text.split_whitespace().nth(7)?;
            u64::from_str_radix(sp.trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

/// Append an RSS sample with leaktrace's own share of it.
pub fn sample_rss(tracer: &Tracer) {
    if let Some(rss) = rss_bytes() {
        let m = &tracer.mapped;
        // Pages prefaulted ahead of the writer are resident too, and ours.
        let ahead = m.prefaulted_ahead(&tracer.prefault);
        let own = m.touched_bytes() + ahead + m.own_heap_bytes() + crate::cfi::heap_bytes();
        if m.push_rss(tracer.now_ns(), rss, own) {
            // The series was halved: keep the spacing consistent with what is left.
            m.header(hdr::RSS_INTERVAL_MS)
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_mul(2)))
                .ok();
        }
    }
}

/// Current resident set size in bytes, from /proc/self/statm, read into a stack buffer: this
/// runs inside allocation hooks, and must neither allocate nor take a lock.
fn rss_bytes() -> Option<u64> {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; the descriptor is closed below on every path.
    let fd = unsafe { libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `buf` is writable for its length; `fd` is ours.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    let text = buf.get(..usize::try_from(n).ok()?)?;
    let pages: u64 = std::str::from_utf8(text).ok()?.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(pages * page)
}

/// In a forked child the parent's trace must never be written again: it belongs to the
/// parent, and both processes would interleave records. The child starts its own trace, with
/// its own pid in the name, at its first sample point.
///
/// No thread is started for the child: it has one thread, and keeps it that way until it
/// creates threads of its own (see `on_program_thread`).
extern "C" fn after_fork_in_child() {
    let parent_tracer = TRACER.swap(std::ptr::null_mut(), Ordering::AcqRel);
    PARENT.store(parent_tracer, Ordering::Release);
    IS_FORKED_CHILD.store(true, Ordering::Relaxed);
    mark_process_start();
    crate::background::forget_after_fork();
    THREAD.with(|t| t.reset_after_fork());
    if let Some(parent) = parent() {
        parent.file.close_inherited();
    }
    let tracing = HOOK.sampling.load(Ordering::Relaxed);
    START_PENDING.store(tracing, Ordering::Release);
    PENDING_GATE.store(if tracing { gate_word() } else { 0 }, Ordering::Relaxed);
    set_gate(&PENDING_GATE);
    // A dormant parent's child gets its own small dormant trace now, so `ctl --resume` can reach
    // it (prefork workers). A tracing parent's child starts its trace at its first sample point.
    if !tracing && parent().is_some() {
        if let Some(config) = config() {
            THREAD.with(|t| {
                let guard = t.enter();
                start_or_stop(&guard, config, true, true);
            });
        }
    }
}

/// The program is about to `dlclose` a library: walk the module map now (not inside an
/// allocation, so the loader lock is free to take), or a library loaded and unloaded between
/// two housekeeping ticks would never be recorded and its leaks would have no name.
pub fn before_dlclose() {
    if let Some(t) = current() {
        THREAD.with(|thread| {
            let _guard = thread.enter();
            t.refresh_modules();
        });
    }
}

/// One round of the helper thread: housekeeping ([`Tracer::tick`]), prefaulting the trace a
/// step ahead of the hooks; how long until the next round.
fn helper_round() -> std::time::Duration {
    // A forked child's trace starts at its first sample point; until then there is none.
    let Some(tracer) = current() else { return std::time::Duration::from_millis(50) };
    tracer.tick(Caller::Helper);
    if is_sampling() && tracer.mapped.fully_reserved() {
        tracer.mapped.prefault_step(&tracer.prefault, Prefaulter::Helper);
    }
    tracer.until_next_tick()
}

/// The program created a thread (our `pthread_create` returned success): the process is
/// multithreaded now whatever we do, so the helper thread may start. It keeps the RSS series
/// and `ctl` going while the program does not allocate, follows module changes (taking the
/// loader's lock, which hooks in a threaded process must not), and prefaults the trace.
pub fn on_program_thread() {
    if config().is_some() && (current().is_some() || START_PENDING.load(Ordering::Relaxed)) {
        THREAD.with(|t| {
            let _guard = t.enter();
            crate::background::start_once(helper_round);
        });
    }
}

/// The library destructor: runs at a normal `exit`, after `main` returns.
pub fn on_unload() {
    let Some(t) = current() else { return };
    if !IS_FORKED_CHILD.load(Ordering::Relaxed) {
        THREAD.with(|thread| {
            let _guard = thread.enter();
            t.refresh_modules();
        });
    }
    end_trace(t, layout::EndReason::Exit);
    let m = &t.mapped;
    if let Some(why) = t.nothing_to_keep() {
        t.file.remove();
        if let Some(config) = config() {
            ledger(config).release(m.header(hdr::RESERVED_BYTES).load(Ordering::Acquire));
        }
        if let (Removal::ChildFreedEverything, Some(parent)) = (why, parent()) {
            parent.mapped.header(hdr::CHILDREN_TRACED).fetch_sub(1, Ordering::Relaxed);
            parent.mapped.header(hdr::CHILDREN_REMOVED).fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why a trace is removed at exit.
#[derive(Clone, Copy)]
enum Removal {
    /// A descendant of the traced process sampled nothing: a dormant child never resumed, a
    /// short program a script ran that never reached a sample point. It would only say so.
    NothingSampled,
    /// A forked child freed every block it sampled (a connection's backend that cleaned up):
    /// with fork per connection, these traces would be most of the disk and none of the news.
    ChildFreedEverything,
}

impl Tracer {
    /// Should the trace be removed at exit, and why? Only when what it holds is certain: in a
    /// process with one thread, whose counts are all flushed (other threads' batches may not
    /// be), nothing dropped, nothing unfreed.
    fn nothing_to_keep(&self) -> Option<Removal> {
        let m = &self.mapped;
        let allocs = m.header(hdr::SAMPLED_ALLOCS).load(Ordering::Relaxed);
        let frees = m.header(hdr::SAMPLED_FREES).load(Ordering::Relaxed);
        let head = m.header(hdr::RING_HEAD).load(Ordering::Relaxed);
        let dropped = m.header(hdr::LIVE_DROPPED).load(Ordering::Relaxed)
            + m.header(hdr::EVENTS_DROPPED).load(Ordering::Relaxed)
            + m.header(hdr::SKIPPED_NO_STACK).load(Ordering::Relaxed);
        let exact_counts = crate::real::single_threaded() && dropped == 0;
        // The process the user started keeps its trace whatever it holds: that is the file
        // they will look for.
        let descendant = IS_FORKED_CHILD.load(Ordering::Relaxed) || INHERITED_TREE.load(Ordering::Relaxed);
        if descendant && exact_counts && head == 0 && allocs == 0 {
            return Some(Removal::NothingSampled);
        }
        let child = IS_FORKED_CHILD.load(Ordering::Relaxed);
        (child && exact_counts && allocs == frees).then_some(Removal::ChildFreedEverything)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_arguments_are_kept() {
        let args = split_cmdline(b"redis-server\0--save\0\0--appendonly\0no\0");
        assert_eq!(args, ["redis-server", "--save", "", "--appendonly", "no"]);
        assert!(split_cmdline(b"").is_empty());
        assert_eq!(split_cmdline(b"a\0\0"), ["a", ""]);
    }
}
