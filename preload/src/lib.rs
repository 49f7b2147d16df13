//! libleaktrace.so: an LD_PRELOAD malloc interposer that samples allocations by bytes and
//! records them, with their stacks and frees, in a fixed-size memory-mapped trace file.
//!
//! - [`shim`]: the exported malloc family and `pthread_create`, a few lines each.
//! - [`tracer`]: start-up, the record paths, housekeeping, runtime control, fork and exit.
//! - [`sampler`]: the per-thread Poisson sampler and re-entrancy guard.
//! - [`mapped`]: lock-free writers for each region of the trace file.
//! - [`file`]: creating, reserving and removing the trace file.
//! - [`budget`]: the process tree's disk ledger.
//! - [`background`]: the helper thread, only in a process that has threads of its own.
//! - [`real`]: the allocator (and `pthread_create`) we forward to, and the bootstrap arena.
//! - [`modules`]: the module map with build IDs.
//! - [`got`]: redirecting the malloc family through each object's GOT, when attached to a
//!   running process (`leak-analyze attach`) rather than preloaded.
//! - [`unwind`], [`cfi`]: stack bounds, the frame-pointer walk and its calibration, and the
//!   caching DWARF-CFI unwinder (framehop) with libgcc as its fallback.
//! - [`scan`]: `ctl --scan`, who holds the sampled objects, from a copy-on-write snapshot.
//! - [`config`]: the `LEAKTRACE_*` settings.
//!
//! Any failure stops tracing with one line on stderr; the traced program runs on.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod background;
pub mod budget;
pub mod cfi;
pub mod config;
pub mod file;
pub mod got;
pub mod mapped;
pub mod modules;
pub mod real;
pub mod sampler;
pub mod scan;
pub mod shim;
pub mod tracer;
pub mod unwind;

/// One line on stderr, written with a single write(2) so it cannot interleave or take std's
/// stderr lock (which a fork may have left held).
pub fn warn(msg: &str) {
    let line = format!("leaktrace: {msg}\n");
    // SAFETY: writing a valid buffer of its own length to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn constructor() {
    tracer::on_load();
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn destructor() {
    tracer::on_unload();
}

// The loader runs these when the library is loaded and at exit. Not in unit tests, whose
// harness must not start tracing itself.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = constructor;

#[cfg(not(test))]
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = destructor;
