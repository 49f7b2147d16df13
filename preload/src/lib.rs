//! libleaktrace.so: the loader's constructor and destructor, and the tracer (`tracer/`) with
//! its C entry points exported (the `interpose` feature). Loaded with LD_PRELOAD
//! it traces from start-up; loaded by `leak-analyze attach` (dlopen) its constructor does
//! nothing and `leaktrace_attach` starts it.
//!
//! The tracer's modules are compiled into this crate from `tracer/src` rather than linked from
//! the `leaktrace-tracer` rlib (which tests and tools link): rustc reaches another crate's
//! statics through the GOT with a relocation the linker may not relax, and the hooks read
//! three of them per malloc+free (measured: 3 more instructions a pair, scripts/hookcost). Built
//! in one crate, with one codegen unit, they are PC-relative. The module tree is the tracer
//! crate's, so its `crate::` paths mean the same here.
//!
//! Any failure stops tracing with one line on stderr; the traced program runs on.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[path = "../../tracer/src/background.rs"]
pub mod background;
#[path = "../../tracer/src/budget.rs"]
pub mod budget;
#[path = "../../tracer/src/cfi.rs"]
pub mod cfi;
#[path = "../../tracer/src/config.rs"]
pub mod config;
#[path = "../../tracer/src/file.rs"]
pub mod file;
#[path = "../../tracer/src/got.rs"]
pub mod got;
#[path = "../../tracer/src/mapped.rs"]
pub mod mapped;
#[path = "../../tracer/src/modules.rs"]
pub mod modules;
#[path = "../../tracer/src/real.rs"]
pub mod real;
#[path = "../../tracer/src/sampler.rs"]
pub mod sampler;
#[path = "../../tracer/src/scan.rs"]
pub mod scan;
#[path = "../../tracer/src/shim.rs"]
pub mod shim;
#[path = "../../tracer/src/status.rs"]
pub mod status;
#[path = "../../tracer/src/stderr.rs"]
pub mod stderr;
#[path = "../../tracer/src/tracer.rs"]
pub mod tracer;
#[path = "../../tracer/src/unwind/mod.rs"]
pub mod unwind;

pub use stderr::warn;

// The module list above mirrors the tracer crate's root: tracked, so a change there rebuilds
// this library (and the tests' staleness check sees it).
const _TRACER_ROOT: &str = include_str!("../../tracer/src/lib.rs");

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
