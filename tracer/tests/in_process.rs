//! The tracer driven in-process, without LD_PRELOAD: `tracer::attach` starts a trace in this
//! test process (redirecting nothing: the library exports no malloc here, so no GOT slot points
//! at its hooks), the test calls the hooks (`shim`) itself, and the trace file is read back with
//! the format crate's reader. Covers sampled and freed blocks, realloc, a ring that wraps while
//! the live table keeps every unfreed block, a forked child's own trace, and detach.
//!
//! One test function: the tracer is process-wide state.

use std::ffi::c_void;
use std::path::PathBuf;

use leaktrace_format::Trace;
use leaktrace_tracer::{shim, tracer};

fn read(path: &std::path::Path) -> Trace {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Trace::parse_from(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_tracer_in_this_process_records_what_its_hooks_see() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("in_process");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = dir.join("t.%p.lt").display().to_string();
    let settings: Vec<(String, String)> = [
        ("LEAKTRACE_FILE", pattern.as_str()),
        ("LEAKTRACE_SAMPLE_BYTES", "1"),
        ("LEAKTRACE_FILE_SIZE", "1M"),
        ("LEAKTRACE_RSS_MS", "10"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let answer = tracer::attach(&settings).unwrap_or_else(|(why, msg)| panic!("attach: {why:?}: {msg}"));
    let path = PathBuf::from(answer.lines().next().unwrap());
    assert_eq!(path, dir.join(format!("t.{}.lt", std::process::id())));
    assert!(answer.contains("0 slots"), "the test binary's GOT must be left alone: {answer}");

    // 100 blocks, 40 freed, 10 grown by realloc (each a free of the old block and a new one).
    let mut kept: Vec<*mut c_void> = Vec::new();
    for i in 0..100 {
        // SAFETY: the hooks have malloc's contract.
        let p = unsafe { shim::malloc(64 + i) };
        assert!(!p.is_null());
        kept.push(p);
    }
    for p in kept.drain(..40) {
        // SAFETY: a block from shim::malloc, freed once.
        unsafe { shim::free(p) };
    }
    for p in kept.iter_mut().take(10) {
        // SAFETY: as above; the old block is not used again.
        *p = unsafe { shim::realloc(*p, 4096) };
    }
    // Churn through the ring many times over: freed at once, never live.
    for _ in 0..60_000 {
        // SAFETY: as above.
        unsafe { shim::free(shim::malloc(32)) };
    }

    // A child forked while tracing starts its own trace at its first sample.
    // SAFETY: the child only calls the hooks and _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: as above; the child leaks 3 blocks and leaves without exit handlers.
        unsafe {
            for _ in 0..3 {
                shim::malloc(777);
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);

    tracer::detach().unwrap_or_else(|(why, msg)| panic!("detach: {why:?}: {msg}"));
    let t = read(&path);
    assert!(t.header.attached() && t.header.detached(), "not marked attached and detached");
    assert!(t.header.ended_cleanly());
    assert!(t.header.ring_head > t.header.ring_capacity, "the ring did not wrap: {} events", t.header.ring_head);
    // The live table kept exactly the 60 unfreed blocks, however often the ring wrapped.
    let ours: Vec<_> = kept.iter().map(|&p| p as u64).collect();
    let live: Vec<u64> = t.live.iter().map(|a| a.addr).filter(|a| ours.contains(a)).collect();
    assert_eq!(live.len(), 60, "live blocks in the trace: {}", t.live.len());
    let grown = t.live.iter().filter(|a| ours.contains(&a.addr) && a.size == 4096).count();
    assert_eq!(grown, 10);
    // Every recorded stack is there to read.
    assert!(t.live.iter().all(|a| a.stack_id != 0 && t.stack(a.stack_id).is_some_and(|s| !s.is_empty())));

    let child_trace = read(&dir.join(format!("t.{child}.lt")));
    let child_live: Vec<u64> = child_trace.live.iter().filter(|a| a.size == 777).map(|a| a.addr).collect();
    assert_eq!(child_live.len(), 3, "the child's own trace");
    assert!(child_trace.header.attached(), "a child forked while attached is marked attached too");

    for p in kept {
        // SAFETY: blocks from the hooks; the trace is detached, so these only forward.
        unsafe { shim::free(p) };
    }
    assert!(tracer::detach().is_err(), "a second detach must say it is not attached");
}
