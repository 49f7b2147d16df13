//! The tracer behind libleaktrace.so, as a library: everything but the loader's constructor
//! and the exported symbols, which are `preload/`'s (the way heaptrack splits libheaptrack
//! from its preload shim). Linking it starts nothing and interposes nothing: a test can use any
//! part of it in-process.
//!
//! - [`tracer`]: start-up, the record paths, housekeeping, runtime control, fork and exit,
//!   attach and detach.
//! - [`sampler`]: the per-thread Poisson sampler and re-entrancy guard.
//! - [`mapped`]: lock-free writers for each region of the trace file, over any mapping.
//! - [`file`]: creating, reserving and removing the trace file.
//! - [`budget`]: the process tree's disk ledger.
//! - [`background`]: the helper thread, only in a process that has threads of its own.
//! - [`real`]: the allocator (and `pthread_create`) the hooks forward to, and the bootstrap arena.
//! - [`modules`]: the module map with build IDs.
//! - [`got`]: redirecting the malloc family through each object's GOT, when attached to a
//!   running process (`leak-analyze attach`) rather than preloaded.
//! - [`unwind`], [`cfi`]: stack bounds and the frame-pointer walk, and the caching CFI unwinder
//!   (framehop over `.eh_frame`) with libgcc's unwinder as its fallback.
//! - [`scan`]: `ctl --scan`, who holds the sampled objects, from a copy-on-write snapshot.
//! - [`config`]: the `LEAKTRACE_*` settings.
//! - [`status`]: what `leak-analyze attach` reads from outside before touching a process.
//! - [`shim`]: the C entry points (the malloc family, `pthread_create`, `dlclose`, attach and
//!   detach), exported only in libleaktrace.so (the `interpose` feature).
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
pub mod status;
pub mod stderr;
pub mod tracer;
pub mod unwind;

pub use stderr::warn;
