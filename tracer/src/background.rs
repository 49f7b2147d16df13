//! The helper thread: it runs the tracer's housekeeping round (`tracer::helper_round`: `Tracer::tick`
//! while the program does not allocate, module-map updates, prefaulting the trace file ahead of
//! the hooks), given as a function so that this module does not depend on the tracer.
//!
//! It exists only in a process that already has threads of its own: it is started when the
//! program's `pthread_create` returns (`tracer::on_program_thread`), never in a process with a
//! single thread. There, a thread of ours would take part in glibc's set*id broadcast and could
//! fail it (a program that keeps its capabilities across `setresuid` with `PR_SET_KEEPCAPS`
//! keeps them on its own thread only: ours loses them, its `setresgid` fails, and glibc aborts
//! the process), and glibc's malloc would leave its single-threaded fast path for good. A
//! single-threaded process does all of this from its allocation hooks instead.
//!
//! It never runs inside a hook, so it may take the loader lock and do I/O.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use crate::sampler::THREAD;

/// How often the helper looks at the trace: `ctl` requests are seen within this.
const POLL: Duration = Duration::from_millis(50);

/// Set once the helper has been started in this process; cleared in a forked child, which has
/// no helper until it creates a thread of its own.
static STARTED: AtomicBool = AtomicBool::new(false);

/// Bumped by `stop`: a helper whose generation is not the current one returns.
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// What the helper does each round (the tracer's housekeeping, `tracer::helper_round`),
/// returning how long to sleep: a `fn() -> Duration` stored as an address, so that this module
/// knows nothing of the tracer.
static ROUND: AtomicUsize = AtomicUsize::new(0);

/// The generation of the helper started last, plus one; 0 while none has started (or one
/// failed to start, when the hooks go on doing its work). Cleared in a forked child.
static RUNNING: AtomicU32 = AtomicU32::new(0);

/// Start the helper unless this process has one; it calls `round` until `stop`.
pub fn start_once(round: fn() -> Duration) {
    ROUND.store(round as usize, Ordering::Release);
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    if let Err(e) = spawn() {
        crate::warn(&format!("cannot start the helper thread ({e}); housekeeping runs in the allocation hooks only"));
    }
}

/// Is a helper thread running in this process (and so prefaulting the trace)?
pub fn running() -> bool {
    RUNNING.load(Ordering::Acquire) == GENERATION.load(Ordering::Acquire) + 1
}

/// Detach: the helper ends within one poll, and a later attach starts a new one.
pub fn stop() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    STARTED.store(false, Ordering::Release);
}

/// In a forked child: only the forking thread was copied.
pub fn forget_after_fork() {
    STARTED.store(false, Ordering::Relaxed);
    RUNNING.store(0, Ordering::Relaxed);
}

/// Start the thread with pthread_create rather than std::thread, whose start-up code allocates
/// (spawn hooks, thread-local destructors) before any closure of ours could raise the guard.
/// The real pthread_create: ours would try to start a helper again.
fn spawn() -> std::io::Result<()> {
    // SAFETY: an all-zero pthread_t is a valid out-buffer.
    let mut thread: libc::pthread_t = unsafe { std::mem::zeroed() };
    let generation = GENERATION.load(Ordering::Acquire);
    let arg = generation as usize as *mut std::ffi::c_void;
    // SAFETY: `thread_main` matches pthread's start routine type; its argument is a number.
    let rc = unsafe { crate::real::pthread_create(&mut thread, std::ptr::null(), thread_main, arg) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    RUNNING.store(generation + 1, Ordering::Release);
    // SAFETY: `thread` was just created and is not joined by anyone.
    unsafe {
        libc::pthread_setname_np(thread, c"leaktrace".as_ptr());
        libc::pthread_detach(thread);
    }
    Ok(())
}

extern "C" fn thread_main(generation: *mut std::ffi::c_void) -> *mut std::ffi::c_void {
    THREAD.with(|t| {
        // Everything this thread allocates is leaktrace's own: never sample it.
        let _guard = t.enter();
        run(generation as usize as u32);
    });
    std::ptr::null_mut()
}

fn run(generation: u32) {
    while GENERATION.load(Ordering::Acquire) == generation {
        let round = ROUND.load(Ordering::Acquire);
        let until = if round == 0 {
            POLL
        } else {
            // SAFETY: ROUND only ever holds 0 or a `fn() -> Duration` stored by `start_once`.
            let round: fn() -> Duration = unsafe { std::mem::transmute::<usize, fn() -> Duration>(round) };
            round()
        };
        std::thread::sleep(until.clamp(Duration::from_millis(1), POLL));
    }
}
