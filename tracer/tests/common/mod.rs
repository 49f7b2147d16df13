//! A counting malloc family shared by the no-allocation tests: the test executable's own malloc
//! family interposes glibc's for the whole process, so every allocation is counted at the libc
//! level, glibc's internal ones included.

use std::cell::Cell;
use std::ffi::c_void;
// ---------------------------------------------------------------------------------------------
// Counting allocator: this executable's malloc family interposes glibc's for the whole process.

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

thread_local! {
    /// Set while this thread's allocations are being counted.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// This thread's allocator calls while armed.
    static COUNTED: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNTED.try_with(|c| c.set(c.get() + 1));
    }
}

#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    note();
    // SAFETY: same contract as the C function we forward to.
    unsafe { __libc_malloc(size) }
}

#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    note();
    // SAFETY: same contract as the C function we forward to.
    unsafe { __libc_calloc(n, size) }
}

#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    note();
    // SAFETY: same contract as the C function we forward to.
    unsafe { __libc_realloc(p, size) }
}

#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    note();
    // SAFETY: same contract as the C function we forward to.
    unsafe { __libc_free(p) }
}

#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    note();
    // SAFETY: same contract as memalign; `out` is the caller's valid out-pointer.
    unsafe {
        let p = __libc_memalign(align, size);
        if p.is_null() {
            return libc::ENOMEM;
        }
        *out = p;
    }
    0
}

#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    note();
    // SAFETY: same contract as the C function we forward to.
    unsafe { __libc_memalign(align, size) }
}

/// Run `f` with this thread's allocations counted; returns the count.
pub fn count_allocations(f: impl FnOnce()) -> usize {
    COUNTED.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    COUNTED.with(Cell::get)
}

/// The counter itself works (in every test binary that uses it).
#[test]
fn the_counter_counts() {
    let n = count_allocations(|| {
        std::hint::black_box(vec![1u8; 100]);
        // SAFETY: strdup of a NUL-terminated literal; freed at once.
        unsafe { libc::free(libc::strdup(c"glibc allocates too".as_ptr()).cast()) };
    });
    assert!(n >= 3, "{n}");
}
