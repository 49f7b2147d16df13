//! The allocator we interpose on: found with `dlsym(RTLD_NEXT, …)` so that a program linked
//! against another shared allocator (jemalloc, tcmalloc) keeps it.
//!
//! Resolution happens once, in the library constructor or in the first hook that runs before
//! it, whichever comes first; both happen during single-threaded start-up, so the loader lock
//! `dlsym` takes cannot be held by a thread waiting on us. No hook calls `dlsym` afterwards.
//! `dlsym` itself may allocate (glibc's error state uses calloc): those calls, and any from
//! other threads while resolution runs, are served from a static bump arena whose blocks are
//! never returned.

// Every `unsafe fn` here has exactly the contract of the C function it is named after (the
// caller passes what that function requires); a `# Safety` section on each would say only that.
#![allow(clippy::missing_safety_doc)]

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

type MallocFn = unsafe extern "C" fn(usize) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type CallocFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type MemalignFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type PosixMemalignFn = unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> i32;
type VallocFn = unsafe extern "C" fn(usize) -> *mut c_void;

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_free(ptr: *mut c_void);
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    fn __libc_valloc(size: usize) -> *mut c_void;
    fn __libc_pvalloc(size: usize) -> *mut c_void;
}

const UNRESOLVED: u8 = 0;
const RESOLVING: u8 = 1;
const RESOLVED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);

/// Function pointers stored as `usize`; written once before `STATE` becomes `RESOLVED`
/// (release), read only after observing it (acquire).
struct Table {
    malloc: AtomicUsize,
    free: AtomicUsize,
    calloc: AtomicUsize,
    realloc: AtomicUsize,
    memalign: AtomicUsize,
    aligned_alloc: AtomicUsize,
    posix_memalign: AtomicUsize,
    valloc: AtomicUsize,
    pvalloc: AtomicUsize,
}

static TABLE: Table = Table {
    malloc: AtomicUsize::new(0),
    free: AtomicUsize::new(0),
    calloc: AtomicUsize::new(0),
    realloc: AtomicUsize::new(0),
    memalign: AtomicUsize::new(0),
    aligned_alloc: AtomicUsize::new(0),
    posix_memalign: AtomicUsize::new(0),
    valloc: AtomicUsize::new(0),
    pvalloc: AtomicUsize::new(0),
};

fn lookup(name: &std::ffi::CStr, fallback: usize) -> usize {
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT is valid from a shared object. The result is a
    // symbol address or null, which we replace by glibc's own entry point.
    let sym = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if sym.is_null() {
        fallback
    } else {
        sym as usize
    }
}

/// Resolve the next allocator; idempotent. Returns true once resolved.
pub(crate) fn resolve() -> bool {
    match STATE.compare_exchange(UNRESOLVED, RESOLVING, Ordering::Acquire, Ordering::Acquire) {
        Ok(_) => {}
        Err(RESOLVED) => return true,
        Err(_) => return false, // another thread (or our own dlsym) is resolving
    }
    let t = &TABLE;
    t.malloc.store(lookup(c"malloc", __libc_malloc as *const () as usize), Ordering::Relaxed);
    t.free.store(lookup(c"free", __libc_free as *const () as usize), Ordering::Relaxed);
    t.calloc.store(lookup(c"calloc", __libc_calloc as *const () as usize), Ordering::Relaxed);
    t.realloc.store(lookup(c"realloc", __libc_realloc as *const () as usize), Ordering::Relaxed);
    t.memalign.store(lookup(c"memalign", __libc_memalign as *const () as usize), Ordering::Relaxed);
    t.aligned_alloc.store(lookup(c"aligned_alloc", __libc_memalign as *const () as usize), Ordering::Relaxed);
    t.posix_memalign.store(lookup(c"posix_memalign", 0), Ordering::Relaxed);
    t.valloc.store(lookup(c"valloc", __libc_valloc as *const () as usize), Ordering::Relaxed);
    t.pvalloc.store(lookup(c"pvalloc", __libc_pvalloc as *const () as usize), Ordering::Relaxed);
    // Pairs with the acquire load in `resolved()`.
    STATE.store(RESOLVED, Ordering::Release);
    true
}

#[inline(always)]
fn resolved() -> bool {
    STATE.load(Ordering::Acquire) == RESOLVED || resolve()
}

/// The real function for `$field`, as a typed pointer. Must be used inside an `unsafe` block,
/// only after `resolved()` returned true: then the slot holds a non-zero address stored by
/// `resolve`, from dlsym or a `__libc_*` function, of exactly the C signature `$ty`.
macro_rules! real_fn {
    ($field:ident, $ty:ty) => {
        std::mem::transmute::<usize, $ty>(TABLE.$field.load(Ordering::Relaxed))
    };
}

// ---------------------------------------------------------------------------------------------
// Bootstrap arena

const ARENA_SIZE: usize = 256 << 10;
const ARENA_ALIGN: usize = 16;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);
// SAFETY: blocks are handed out by an atomic bump pointer, so no two callers get overlapping
// bytes; the arena itself is never read or written by this module after handing a block out.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));
static ARENA_USED: AtomicUsize = AtomicUsize::new(0);

/// Each arena block is preceded by 16 bytes holding its size, so realloc can copy it.
fn arena_alloc(size: usize, align: usize) -> *mut c_void {
    let align = align.max(ARENA_ALIGN);
    let mut used = ARENA_USED.load(Ordering::Relaxed);
    loop {
        let start = (used + ARENA_ALIGN + align - 1) & !(align - 1);
        let Some(end) = start.checked_add(size) else { return std::ptr::null_mut() };
        if end > ARENA_SIZE {
            return std::ptr::null_mut();
        }
        match ARENA_USED.compare_exchange_weak(used, end, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                let base = ARENA.0.get().cast::<u8>();
                // SAFETY: start - 16 >= used >= 0 and end <= ARENA_SIZE, so both the size word and
                // the block lie inside the arena, in a range no other caller was given.
                unsafe {
                    base.add(start - ARENA_ALIGN).cast::<usize>().write(size);
                    return base.add(start).cast();
                }
            }
            Err(now) => used = now,
        }
    }
}

pub(crate) fn in_arena(p: *const c_void) -> bool {
    let base = ARENA.0.get() as usize;
    (p as usize).wrapping_sub(base) < ARENA_SIZE
}

fn arena_size_of(p: *const c_void) -> usize {
    // SAFETY: `p` came from `arena_alloc`, which wrote its size 16 bytes before it.
    unsafe { p.cast::<u8>().sub(ARENA_ALIGN).cast::<usize>().read() }
}

// ---------------------------------------------------------------------------------------------
// The real entry points. Each is as safe as the C function it forwards to.

pub unsafe fn malloc(size: usize) -> *mut c_void {
    if !resolved() {
        return arena_alloc(size, ARENA_ALIGN);
    }
    // SAFETY: resolved (see `real_fn!`); forwarding the caller's arguments to the real malloc.
    unsafe { real_fn!(malloc, MallocFn)(size) }
}

pub unsafe fn calloc(n: usize, size: usize) -> *mut c_void {
    if !resolved() {
        // The arena is zeroed and never reused, so its blocks are already cleared.
        return n.checked_mul(size).map_or(std::ptr::null_mut(), |b| arena_alloc(b, ARENA_ALIGN));
    }
    // SAFETY: resolved (see `real_fn!`); forwarding the caller's arguments to the real calloc.
    unsafe { real_fn!(calloc, CallocFn)(n, size) }
}

pub unsafe fn free(p: *mut c_void) {
    if in_arena(p) {
        return;
    }
    if resolved() {
        // SAFETY: `p` is null or came from the real allocator (arena blocks returned above).
        unsafe { real_fn!(free, FreeFn)(p) }
    }
}

pub unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if in_arena(p) {
        // SAFETY: `malloc` gives a block of `size` bytes or null; the old arena block is
        // `arena_size_of(p)` bytes; we copy the smaller of the two.
        unsafe {
            let new = malloc(size);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(p.cast::<u8>(), new.cast::<u8>(), size.min(arena_size_of(p)));
            }
            return new;
        }
    }
    if !resolved() {
        return if p.is_null() { arena_alloc(size, ARENA_ALIGN) } else { std::ptr::null_mut() };
    }
    // SAFETY: resolved (see `real_fn!`); forwarding the caller's arguments to the real realloc.
    unsafe { real_fn!(realloc, ReallocFn)(p, size) }
}

pub unsafe fn memalign(align: usize, size: usize) -> *mut c_void {
    if !resolved() {
        return arena_alloc(size, align);
    }
    // SAFETY: resolved (see `real_fn!`); forwarding the caller's arguments to the real memalign.
    unsafe { real_fn!(memalign, MemalignFn)(align, size) }
}

pub unsafe fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !resolved() {
        return arena_alloc(size, align);
    }
    // SAFETY: resolved (see `real_fn!`); forwarding the caller's arguments to the real aligned_alloc.
    unsafe { real_fn!(aligned_alloc, MemalignFn)(align, size) }
}

/// Returns 0 or an errno value, like posix_memalign.
pub unsafe fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if resolved() && TABLE.posix_memalign.load(Ordering::Relaxed) != 0 {
        // SAFETY: resolved (see `real_fn!`); forwarding the caller's arguments to the real posix_memalign.
        return unsafe { real_fn!(posix_memalign, PosixMemalignFn)(out, align, size) };
    }
    // SAFETY: memalign accepts any alignment the caller checked (see shim::posix_memalign).
    let p = unsafe { memalign(align, size) };
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid out-pointer, as posix_memalign requires.
    unsafe { out.write(p) };
    0
}

pub unsafe fn valloc(size: usize) -> *mut c_void {
    if !resolved() {
        return arena_alloc(size, 4096);
    }
    // SAFETY: resolved (see `real_fn!`); forwarding the caller's arguments to the real valloc.
    unsafe { real_fn!(valloc, VallocFn)(size) }
}

pub unsafe fn pvalloc(size: usize) -> *mut c_void {
    if !resolved() {
        return arena_alloc((size + 4095) & !4095, 4096);
    }
    // SAFETY: resolved (see `real_fn!`); forwarding the caller's arguments to the real pvalloc.
    unsafe { real_fn!(pvalloc, VallocFn)(size) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_blocks_are_aligned_disjoint_and_sized() {
        let a = arena_alloc(10, 16);
        let b = arena_alloc(100, 64);
        assert!(!a.is_null() && !b.is_null());
        assert_eq!(a as usize % 16, 0);
        assert_eq!(b as usize % 64, 0);
        assert!(b as usize >= a as usize + 10);
        assert!(in_arena(a) && in_arena(b));
        assert_eq!(arena_size_of(b), 100);
        assert!(arena_alloc(ARENA_SIZE, 16).is_null());
    }
}
