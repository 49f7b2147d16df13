//! The background thread: RSS series, heartbeat, module map updates and `ctl` requests.
//! It never runs inside a hook, so it may take the loader lock and do I/O.

use std::sync::atomic::Ordering;
use std::time::Duration;

use leaktrace_format::layout::hdr;

use crate::sampler::THREAD;
use crate::tracer::{apply_control, Tracer};

/// How often `ctl` requests and module changes are looked for, whatever the RSS interval.
const POLL: Duration = Duration::from_millis(50);

/// How often a forked child's thread looks for the child's trace to have started.
const CHILD_WAIT: Duration = Duration::from_millis(200);

struct Start {
    /// None in a forked child: wait for the child's own trace, started at its first sample point.
    tracer: Option<&'static Tracer>,
    rss_ms: u64,
}

/// Start the thread with pthread_create rather than std::thread, whose start-up code allocates
/// (spawn hooks, thread-local destructors) before any closure of ours could raise the guard.
///
/// A forked child gets its thread from the atfork handler (`tracer` None), not from the hook
/// that starts its trace: pthread_create takes glibc-internal locks that the allocation which
/// reached the hook might be holding.
pub fn spawn(tracer: Option<&'static Tracer>, rss_ms: u64) -> std::io::Result<()> {
    let start = Box::into_raw(Box::new(Start { tracer, rss_ms }));
    // SAFETY: an all-zero pthread_t is a valid out-buffer.
    let mut thread: libc::pthread_t = unsafe { std::mem::zeroed() };
    // SAFETY: `thread_main` matches pthread's start routine type and takes ownership of `start`.
    let rc = unsafe { libc::pthread_create(&mut thread, std::ptr::null(), thread_main, start.cast()) };
    if rc != 0 {
        // SAFETY: the thread was not created, so `start` is still ours.
        drop(unsafe { Box::from_raw(start) });
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `thread` was just created and is not joined by anyone.
    unsafe {
        libc::pthread_setname_np(thread, c"leaktrace".as_ptr());
        libc::pthread_detach(thread);
    }
    Ok(())
}

extern "C" fn thread_main(arg: *mut std::ffi::c_void) -> *mut std::ffi::c_void {
    THREAD.with(|t| {
        // Everything this thread allocates is leaktrace's own: never sample it.
        let _guard = t.enter();
        // SAFETY: `arg` is the `Start` leaked by `spawn` for this thread alone.
        let start = unsafe { Box::from_raw(arg.cast::<Start>()) };
        let tracer = start.tracer.unwrap_or_else(|| loop {
            if let Some(t) = crate::tracer::current() {
                break t;
            }
            std::thread::sleep(CHILD_WAIT);
        });
        run(tracer, start.rss_ms);
    });
    std::ptr::null_mut()
}

fn run(tracer: &'static Tracer, rss_ms: u64) {
    let m = &tracer.mapped;
    let mut control_seq = m.u32_at(hdr::CONTROL_SEQ).load(Ordering::Acquire);
    let mut next_rss = 0u64;
    let mut prefault = crate::mapped::PrefaultProgress::default();
    let mut prefault_left = true;
    loop {
        let now = tracer.now_ns();
        if now >= next_rss {
            sample_rss(tracer);
            let interval_ms = m.header(hdr::RSS_INTERVAL_MS).load(Ordering::Relaxed).max(rss_ms);
            next_rss = now + interval_ms * 1_000_000;
        }
        m.header(hdr::HEARTBEAT_NS).store(now, Ordering::Relaxed);
        m.publish_live_count();
        crate::tracer::publish_unwinder_stats(tracer);
        tracer.refresh_modules();
        // Rebuild the CFI unwinder the hooks use when the loaded modules changed.
        crate::cfi::refresh();
        let seq = m.u32_at(hdr::CONTROL_SEQ).load(Ordering::Acquire);
        if seq != control_seq {
            control_seq = seq;
            let control = m.u32_at(hdr::CONTROL).load(Ordering::Relaxed);
            let mean = m.header(hdr::REQUESTED_MEAN_BYTES).load(Ordering::Relaxed);
            apply_control(tracer, control, mean);
        }
        if prefault_left && crate::tracer::is_sampling() {
            prefault_left = m.prefault_step(&mut prefault);
        }
        // Sleep until the next poll, or the next RSS sample if that comes sooner.
        let until_rss = Duration::from_nanos(next_rss.saturating_sub(tracer.now_ns()));
        std::thread::sleep(POLL.min(until_rss).max(Duration::from_millis(1)));
    }
}

/// Current resident set size in bytes, from /proc/self/statm.
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(pages * page)
}

pub fn sample_rss(tracer: &Tracer) {
    if let Some(rss) = rss_bytes() {
        let m = &tracer.mapped;
        if m.push_rss(tracer.now_ns(), rss) {
            // The series was halved: keep the spacing consistent with what is left.
            m.header(hdr::RSS_INTERVAL_MS).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_mul(2))).ok();
        }
    }
}
