//! The exported C entry points. Each one forwards to the real allocator and tells the tracer;
//! the logic lives in `tracer`, so these stay a few lines each.
//!
//! The symbols are exported (`no_mangle`) only with the `interpose` feature, which only the
//! libleaktrace.so build (`preload/`) has, and never under `cfg(test)`: linking the tracer
//! library into a test or a tool must not replace that program's own allocator.

// Every exported function has exactly the contract of the C function it replaces; a `# Safety`
// section on each would say only that.
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_void;

use leaktrace_format::layout::Api;

use crate::real;
use crate::tracer::{
    free_flagged, maybe_recorded, record_sample, record_taken_free, restore_live, sample_point, sampled_alloc,
    take_live, traced_alloc, unsampled,
};

const PTR: usize = std::mem::size_of::<*mut c_void>();

// Each allocation hook charges the thread's sampler first (`traced_alloc`), so that the common
// case, no sample, ends in a tail call to the real allocator: no frame to build, nothing to keep
// across the call.

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    traced_alloc(size, Api::Malloc, move || unsafe { real::malloc(size) })
}

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let bytes = n.wrapping_mul(size);
    // SAFETY: same contract as the C function we forward to.
    traced_alloc(bytes, Api::Calloc, move || unsafe { real::calloc(n, size) })
}

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if maybe_recorded(p) {
        // SAFETY: same contract as the C function we forward to.
        return free_flagged(p, Api::Free, move || unsafe { real::free(p) });
    }
    // SAFETY: as above.
    unsafe { real::free(p) }
}

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function; see `realloc_as`.
    unsafe { realloc_as(p, size, Api::Realloc) }
}

/// realloc with glibc's semantics: realloc(NULL, n) allocates, realloc(p, 0) frees p and
/// returns NULL, a failure leaves p untouched and records nothing.
#[inline(always)]
unsafe fn realloc_as(p: *mut c_void, size: usize, api: Api) -> *mut c_void {
    let flagged = maybe_recorded(p);
    if !flagged && unsampled(size) {
        // SAFETY: same contract as the C function we forward to.
        return unsafe { real::realloc(p, size) };
    }
    // SAFETY: as above.
    unsafe { realloc_traced(p, size, api, flagged) }
}

/// A realloc of a block that may be recorded (`flagged`, and not yet charged), or whose new
/// block reached the sample point. The old block's free is recorded before the new block: the
/// two may share an address.
#[inline(never)]
unsafe fn realloc_traced(p: *mut c_void, size: usize, api: Api, flagged: bool) -> *mut c_void {
    let sample = if flagged && unsampled(size) { None } else { sample_point(size) };
    let old = if flagged { take_live(p) } else { None };
    // SAFETY: same contract as the C function we forward to.
    let q = unsafe { real::realloc(p, size) };
    match old {
        Some(e) if q.is_null() && size != 0 => restore_live(p, e),
        Some(e) => record_taken_free(p, e, api),
        None => {}
    }
    if let Some(sample) = sample {
        record_sample(q, size, api, sample);
    }
    q
}

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    let Some(bytes) = n.checked_mul(size) else {
        // SAFETY: __errno_location always returns this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOMEM };
        return std::ptr::null_mut();
    };
    // SAFETY: same contract as realloc.
    unsafe { realloc_as(p, bytes, Api::Reallocarray) }
}

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || !align.is_multiple_of(PTR) {
        return libc::EINVAL;
    }
    if unsampled(size) {
        // SAFETY: same contract as the C function we forward to.
        return unsafe { real::posix_memalign(out, align, size) };
    }
    let mut rc = 0;
    sampled_alloc(size, Api::PosixMemalign, || {
        // SAFETY: as above; on success the real posix_memalign stored the block through `out`.
        unsafe {
            rc = real::posix_memalign(out, align, size);
            if rc == 0 {
                *out
            } else {
                std::ptr::null_mut()
            }
        }
    });
    rc
}

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    traced_alloc(size, Api::AlignedAlloc, move || unsafe { real::aligned_alloc(align, size) })
}

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    traced_alloc(size, Api::Memalign, move || unsafe { real::memalign(align, size) })
}

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    traced_alloc(size, Api::Valloc, move || unsafe { real::valloc(size) })
}

#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: same contract as the C function we forward to.
    traced_alloc(size, Api::Pvalloc, move || unsafe { real::pvalloc(size) })
}

/// The program's thread creation, passed through; a first success lets leaktrace start its
/// helper thread (see `background`), which must never exist in a single-threaded process.
#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: real::StartRoutine,
    arg: *mut c_void,
) -> libc::c_int {
    // SAFETY: same contract as the C function we forward to.
    let rc = unsafe { real::pthread_create(thread, attr, start, arg) };
    if rc == 0 {
        crate::tracer::on_program_thread();
    }
    rc
}

/// The program unloading a library: record the module map first, so that blocks the library
/// allocated (and leaked) are symbolized from its path and build ID like any other, however
/// soon after its dlopen it goes.
#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> libc::c_int {
    crate::tracer::before_dlclose();
    // SAFETY: same contract as the C function we forward to.
    unsafe { real::dlclose(handle) }
}

/// Called by `leak-analyze attach` inside a running process, on a thread it chose, after it
/// dlopen'd this library: start tracing with `settings` (`LEAKTRACE_*=value` lines) and redirect
/// the malloc family to our hooks. Writes the trace's path (or, on failure, why) to `out`, NUL
/// terminated and cut to `out_len` bytes. Returns 0, or an [`AttachError`] code.
///
/// [`AttachError`]: crate::tracer::AttachError
#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn leaktrace_attach(
    settings: *const libc::c_char,
    out: *mut libc::c_char,
    out_len: usize,
) -> libc::c_int {
    let text = if settings.is_null() {
        String::new()
    } else {
        // SAFETY: the caller passes a NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(settings) }.to_string_lossy().into_owned()
    };
    let pairs: Vec<(String, String)> =
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.to_string())).collect();
    let (rc, message) = match crate::tracer::attach(&pairs) {
        Ok(path) => (0, path),
        Err((why, message)) => (why as libc::c_int, message),
    };
    // SAFETY: the caller passes a buffer of `out_len` bytes (or null).
    unsafe { write_c_string(out, out_len, &message) };
    rc
}

/// Called by `leak-analyze detach`: give the malloc family back, end the trace. Writes the
/// trace's path (or why not) to `out` as `leaktrace_attach` does.
#[cfg_attr(all(feature = "interpose", not(test)), no_mangle)]
pub unsafe extern "C" fn leaktrace_detach(out: *mut libc::c_char, out_len: usize) -> libc::c_int {
    let (rc, message) = match crate::tracer::detach() {
        Ok(path) => (0, path),
        Err((why, message)) => (why as libc::c_int, message),
    };
    // SAFETY: the caller passes a buffer of `out_len` bytes (or null).
    unsafe { write_c_string(out, out_len, &message) };
    rc
}

/// # Safety
/// `out` must be null or valid for `out_len` bytes of writes.
unsafe fn write_c_string(out: *mut libc::c_char, out_len: usize, text: &str) {
    if out.is_null() || out_len == 0 {
        return;
    }
    let n = text.len().min(out_len - 1);
    // SAFETY: `n + 1 <= out_len` bytes of the caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast::<u8>(), n);
        *out.add(n) = 0;
    }
}
