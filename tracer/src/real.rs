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
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

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

/// Where each entry point forwards, as a function address. Until resolution every slot holds a
/// `bootstrap_*` function of the same signature, which resolves (or serves the call from the
/// arena) and forwards; after it, the next allocator's function. So the hooks call through the
/// slot with no "resolved yet?" test: one load and an indirect jump.
///
/// Each slot is written once, by `resolve` (release stores), before `STATE` becomes `RESOLVED`.
/// A hook may load either value (acquire: an x86-64 plain load); both are complete functions
/// with the slot's C signature.
struct Table {
    malloc: AtomicPtr<()>,
    free: AtomicPtr<()>,
    calloc: AtomicPtr<()>,
    realloc: AtomicPtr<()>,
    memalign: AtomicPtr<()>,
    aligned_alloc: AtomicPtr<()>,
    posix_memalign: AtomicPtr<()>,
    valloc: AtomicPtr<()>,
    pvalloc: AtomicPtr<()>,
}

static TABLE: Table = Table {
    malloc: AtomicPtr::new(bootstrap_malloc as *mut ()),
    free: AtomicPtr::new(bootstrap_free as *mut ()),
    calloc: AtomicPtr::new(bootstrap_calloc as *mut ()),
    realloc: AtomicPtr::new(bootstrap_realloc as *mut ()),
    memalign: AtomicPtr::new(bootstrap_memalign as *mut ()),
    aligned_alloc: AtomicPtr::new(bootstrap_aligned_alloc as *mut ()),
    posix_memalign: AtomicPtr::new(bootstrap_posix_memalign as *mut ()),
    valloc: AtomicPtr::new(bootstrap_valloc as *mut ()),
    pvalloc: AtomicPtr::new(bootstrap_pvalloc as *mut ()),
};

/// Where `lookup` searches: RTLD_NEXT when preloaded (the objects after us), RTLD_DEFAULT when
/// attached (the global scope, which we are not in: what the program's GOT slots hold).
static SCOPE: AtomicPtr<c_void> = AtomicPtr::new(libc::RTLD_NEXT);

fn lookup(name: &std::ffi::CStr, fallback: *mut ()) -> *mut () {
    // SAFETY: `name` is NUL-terminated; both handles are valid from a shared object. The result
    // is a symbol address or null, which we replace by glibc's own entry point.
    let sym = unsafe { libc::dlsym(SCOPE.load(Ordering::Relaxed), name.as_ptr()) };
    if sym.is_null() {
        fallback
    } else {
        sym.cast()
    }
}

/// Resolve in the global scope: we were dlopen'd into a running process by `attach`, and
/// forward to what its objects called before we redirected them. Before any hook can run.
pub(crate) fn resolve_global() -> bool {
    SCOPE.store(libc::RTLD_DEFAULT, Ordering::Relaxed);
    resolve()
}

/// Resolve the next allocator; idempotent. Returns true once resolved.
pub(crate) fn resolve() -> bool {
    match STATE.compare_exchange(UNRESOLVED, RESOLVING, Ordering::Acquire, Ordering::Acquire) {
        Ok(_) => {}
        Err(RESOLVED) => return true,
        Err(_) => return false, // another thread (or our own dlsym) is resolving
    }
    // Looked up first and stored together: while dlsym runs, calls it makes must still reach
    // the bootstrap functions. free and realloc are stored first, so a thread that already got
    // a real block (another thread allocating meanwhile) finds the real functions to give it
    // back with: each store is a release and `real_fn!` loads with acquire.
    let t = &TABLE;
    let found = [
        (&t.free, lookup(c"free", __libc_free as *mut ())),
        (&t.realloc, lookup(c"realloc", __libc_realloc as *mut ())),
        (&t.malloc, lookup(c"malloc", __libc_malloc as *mut ())),
        (&t.calloc, lookup(c"calloc", __libc_calloc as *mut ())),
        (&t.memalign, lookup(c"memalign", __libc_memalign as *mut ())),
        (&t.aligned_alloc, lookup(c"aligned_alloc", __libc_memalign as *mut ())),
        (&t.posix_memalign, lookup(c"posix_memalign", posix_memalign_by_memalign as *mut ())),
        (&t.valloc, lookup(c"valloc", __libc_valloc as *mut ())),
        (&t.pvalloc, lookup(c"pvalloc", __libc_pvalloc as *mut ())),
    ];
    for (slot, f) in found {
        slot.store(f, Ordering::Release);
    }
    // Pairs with the acquire in a later `resolve()`: a bootstrap function that sees RESOLVED
    // then loads the real function from its slot.
    STATE.store(RESOLVED, Ordering::Release);
    true
}

/// The function in `$field`'s slot, as a typed pointer. Must be used inside an `unsafe` block:
/// the slot holds either the `bootstrap_*` function or one stored by `resolve` (from dlsym, or a
/// `__libc_*` fallback), in both cases of exactly the C signature `$ty`.
macro_rules! real_fn {
    ($field:ident, $ty:ty) => {
        std::mem::transmute::<*mut (), $ty>(TABLE.$field.load(Ordering::Acquire))
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
        let Some(end) = start.checked_add(size) else {
            return std::ptr::null_mut();
        };
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
// Before resolution: each slot's first occupant. Called while dlsym runs (on this thread, or on
// another that allocates meanwhile) and by the first hook, which resolves.

unsafe extern "C" fn bootstrap_malloc(size: usize) -> *mut c_void {
    if resolve() {
        // SAFETY: resolved, so the slot holds the real malloc (see `real_fn!`).
        return unsafe { real_fn!(malloc, MallocFn)(size) };
    }
    arena_alloc(size, ARENA_ALIGN)
}

unsafe extern "C" fn bootstrap_calloc(n: usize, size: usize) -> *mut c_void {
    if resolve() {
        // SAFETY: resolved, so the slot holds the real calloc (see `real_fn!`).
        return unsafe { real_fn!(calloc, CallocFn)(n, size) };
    }
    // The arena is zeroed and never reused, so its blocks are already cleared.
    n.checked_mul(size).map_or(std::ptr::null_mut(), |b| arena_alloc(b, ARENA_ALIGN))
}

unsafe extern "C" fn bootstrap_free(p: *mut c_void) {
    if resolve() {
        // SAFETY: resolved, so the slot holds the real free; `p` is not an arena block (see `free`).
        unsafe { real_fn!(free, FreeFn)(p) }
    }
    // Unresolved, every block handed out came from the arena: nothing to give back.
}

unsafe extern "C" fn bootstrap_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if resolve() {
        // SAFETY: resolved, so the slot holds the real realloc (see `real_fn!`).
        return unsafe { real_fn!(realloc, ReallocFn)(p, size) };
    }
    if p.is_null() {
        arena_alloc(size, ARENA_ALIGN)
    } else {
        std::ptr::null_mut()
    }
}

unsafe extern "C" fn bootstrap_memalign(align: usize, size: usize) -> *mut c_void {
    if resolve() {
        // SAFETY: resolved, so the slot holds the real memalign (see `real_fn!`).
        return unsafe { real_fn!(memalign, MemalignFn)(align, size) };
    }
    arena_alloc(size, align)
}

unsafe extern "C" fn bootstrap_aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if resolve() {
        // SAFETY: resolved, so the slot holds the real aligned_alloc (see `real_fn!`).
        return unsafe { real_fn!(aligned_alloc, MemalignFn)(align, size) };
    }
    arena_alloc(size, align)
}

unsafe extern "C" fn bootstrap_posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if resolve() {
        // SAFETY: resolved, so the slot holds the real posix_memalign (see `real_fn!`).
        return unsafe { real_fn!(posix_memalign, PosixMemalignFn)(out, align, size) };
    }
    // SAFETY: the caller's contract is posix_memalign's, which this function keeps.
    unsafe { posix_memalign_by_memalign(out, align, size) }
}

unsafe extern "C" fn bootstrap_valloc(size: usize) -> *mut c_void {
    if resolve() {
        // SAFETY: resolved, so the slot holds the real valloc (see `real_fn!`).
        return unsafe { real_fn!(valloc, VallocFn)(size) };
    }
    arena_alloc(size, 4096)
}

unsafe extern "C" fn bootstrap_pvalloc(size: usize) -> *mut c_void {
    if resolve() {
        // SAFETY: resolved, so the slot holds the real pvalloc (see `real_fn!`).
        return unsafe { real_fn!(pvalloc, VallocFn)(size) };
    }
    arena_alloc((size + 4095) & !4095, 4096)
}

/// posix_memalign for an allocator without one (and before resolution): memalign, then store.
unsafe extern "C" fn posix_memalign_by_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    // SAFETY: memalign accepts any alignment the caller checked (see shim::posix_memalign).
    let p = unsafe { memalign(align, size) };
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid out-pointer, as posix_memalign requires.
    unsafe { out.write(p) };
    0
}

// ---------------------------------------------------------------------------------------------
// The real entry points. Each is as safe as the C function it forwards to: the slot holds a
// function with exactly that contract (see `real_fn!`).

#[inline(always)]
pub(crate) unsafe fn malloc(size: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to a function of malloc's contract.
    unsafe { real_fn!(malloc, MallocFn)(size) }
}

#[inline(always)]
pub(crate) unsafe fn calloc(n: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to a function of calloc's contract.
    unsafe { real_fn!(calloc, CallocFn)(n, size) }
}

#[inline(always)]
pub(crate) unsafe fn free(p: *mut c_void) {
    if in_arena(p) {
        return;
    }
    // SAFETY: `p` is null or came from the real allocator (arena blocks returned above).
    unsafe { real_fn!(free, FreeFn)(p) }
}

pub(crate) unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
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
    // SAFETY: `p` is null or came from the real allocator (arena blocks handled above).
    unsafe { real_fn!(realloc, ReallocFn)(p, size) }
}

pub(crate) unsafe fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to a function of memalign's contract.
    unsafe { real_fn!(memalign, MemalignFn)(align, size) }
}

pub(crate) unsafe fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to a function of aligned_alloc's contract.
    unsafe { real_fn!(aligned_alloc, MemalignFn)(align, size) }
}

/// Returns 0 or an errno value, like posix_memalign.
pub(crate) unsafe fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    // SAFETY: forwarding the caller's arguments to a function of posix_memalign's contract.
    unsafe { real_fn!(posix_memalign, PosixMemalignFn)(out, align, size) }
}

pub(crate) unsafe fn valloc(size: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to a function of valloc's contract.
    unsafe { real_fn!(valloc, VallocFn)(size) }
}

pub(crate) unsafe fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to a function of pvalloc's contract.
    unsafe { real_fn!(pvalloc, VallocFn)(size) }
}

// ---------------------------------------------------------------------------------------------
// Threads

/// `pthread_create`'s C signature.
pub(crate) type StartRoutine = extern "C" fn(*mut c_void) -> *mut c_void;
type PthreadCreateFn =
    unsafe extern "C" fn(*mut libc::pthread_t, *const libc::pthread_attr_t, StartRoutine, *mut c_void) -> libc::c_int;

/// The next object's `name`, looked up at its first use and kept in `slot`: the default version,
/// then the pre-2.34 one, for a libc that has no unversioned default reachable through
/// RTLD_NEXT. Only for entry points programs call outside allocations (dlsym takes the loader
/// lock).
fn next_symbol(slot: &AtomicPtr<()>, name: &std::ffi::CStr) -> Option<*mut ()> {
    let f = slot.load(Ordering::Acquire);
    if !f.is_null() {
        return Some(f);
    }
    // SAFETY: NUL-terminated names; RTLD_NEXT is valid from a shared object.
    let mut f: *mut () = unsafe { libc::dlsym(SCOPE.load(Ordering::Relaxed), name.as_ptr()) }.cast();
    if f.is_null() {
        // SAFETY: as above.
        f = unsafe { libc::dlvsym(libc::RTLD_NEXT, name.as_ptr(), c"GLIBC_2.2.5".as_ptr()) }.cast();
    }
    (!f.is_null()).then(|| {
        slot.store(f, Ordering::Release);
        f
    })
}

/// The next `pthread_create`, looked up at its first call: a program's own thread creation is
/// never inside an allocation hook, so `dlsym` (which takes the loader lock) is safe there.
static PTHREAD_CREATE: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// The real `pthread_create` (the one our exported symbol would otherwise shadow).
pub(crate) unsafe fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: StartRoutine,
    arg: *mut c_void,
) -> libc::c_int {
    let Some(f) = next_symbol(&PTHREAD_CREATE, c"pthread_create") else { return libc::EAGAIN };
    // SAFETY: `f` is the next object's pthread_create, of exactly this signature.
    unsafe { std::mem::transmute::<*mut (), PthreadCreateFn>(f)(thread, attr, start, arg) }
}

/// glibc's `__libc_single_threaded` (2.32 and later): nonzero while the process has never had a
/// second thread. Looked up by `resolve_single_threaded` at start-up; without it the answer is
/// "no", the cautious one.
static SINGLE_THREADED: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

/// Find `__libc_single_threaded`; called from the library constructor.
pub(crate) fn resolve_single_threaded() {
    // SAFETY: NUL-terminated name; RTLD_DEFAULT searches the global scope.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__libc_single_threaded".as_ptr()) };
    SINGLE_THREADED.store(p.cast(), Ordering::Release);
}

/// Has this process only ever had one thread?
pub(crate) fn single_threaded() -> bool {
    let p = SINGLE_THREADED.load(Ordering::Acquire);
    // SAFETY: non-null only when dlsym found glibc's `char __libc_single_threaded`, which lives
    // for the process; glibc writes it with plain stores, and a byte read cannot tear.
    !p.is_null() && unsafe { std::ptr::read_volatile(p) } != 0
}

// ---------------------------------------------------------------------------------------------
// dlclose

type DlcloseFn = unsafe extern "C" fn(*mut c_void) -> libc::c_int;

/// The next `dlclose`, looked up at its first call (never inside an allocation hook).
static DLCLOSE: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// The real `dlclose`. Unlike `dlopen`, it does not depend on who calls it, so passing it
/// through our own symbol changes nothing for the program.
pub(crate) unsafe fn dlclose(handle: *mut c_void) -> libc::c_int {
    // Nothing to forward to: leave the library loaded, as a failed dlclose would.
    let Some(f) = next_symbol(&DLCLOSE, c"dlclose") else { return -1 };
    // SAFETY: `f` is the next object's dlclose, of exactly this signature.
    unsafe { std::mem::transmute::<*mut (), DlcloseFn>(f)(handle) }
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
