//! The exported C entry points. Each one forwards to the real allocator and tells the tracer;
//! the logic lives in `tracer`, so these stay a few lines each.
//!
//! `no_mangle` is off under `cfg(test)` so that the crate's unit tests do not replace the test
//! harness's own allocator.

// Every exported function has exactly the contract of the C function it replaces; a `# Safety`
// section on each would say only that.
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_void;

use leaktrace_format::layout::Api;

use crate::real;
use crate::tracer::{on_alloc, on_free, record_taken_free, restore_live, take_live};

const PTR: usize = std::mem::size_of::<*mut c_void>();

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    let p = unsafe { real::malloc(size) };
    on_alloc(p, size, Api::Malloc);
    p
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    let p = unsafe { real::calloc(n, size) };
    on_alloc(p, n.wrapping_mul(size), Api::Calloc);
    p
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // Recorded before the real free: afterwards another thread may be handed the same address.
    on_free(p, Api::Free);
    // SAFETY: same contract as the C function we forward to.
    unsafe { real::free(p) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function; see `realloc_as`.
    unsafe { realloc_as(p, size, Api::Realloc) }
}

/// realloc with glibc's semantics: realloc(NULL, n) allocates, realloc(p, 0) frees p and
/// returns NULL, a failure leaves p untouched and records nothing.
unsafe fn realloc_as(p: *mut c_void, size: usize, api: Api) -> *mut c_void {
    let old = take_live(p);
    // SAFETY: same contract as the C function we forward to.
    let q = unsafe { real::realloc(p, size) };
    match old {
        Some(e) if q.is_null() && size != 0 => restore_live(p, e),
        Some(e) => record_taken_free(p, e, api),
        None => {}
    }
    on_alloc(q, size, api);
    q
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    let Some(bytes) = n.checked_mul(size) else {
        // SAFETY: __errno_location always returns this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOMEM };
        return std::ptr::null_mut();
    };
    // SAFETY: same contract as realloc.
    unsafe { realloc_as(p, bytes, Api::Reallocarray) }
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || !align.is_multiple_of(PTR) {
        return libc::EINVAL;
    }
    // SAFETY: same contract as the C function we forward to.
    let rc = unsafe { real::posix_memalign(out, align, size) };
    if rc == 0 {
        // SAFETY: on success the real posix_memalign stored the block through `out`.
        on_alloc(unsafe { *out }, size, Api::PosixMemalign);
    }
    rc
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    let p = unsafe { real::aligned_alloc(align, size) };
    on_alloc(p, size, Api::AlignedAlloc);
    p
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    let p = unsafe { real::memalign(align, size) };
    on_alloc(p, size, Api::Memalign);
    p
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    let p = unsafe { real::valloc(size) };
    on_alloc(p, size, Api::Valloc);
    p
}

#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    let p = unsafe { real::pvalloc(size) };
    on_alloc(p, size, Api::Pvalloc);
    p
}
