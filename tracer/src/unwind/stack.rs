//! Stack bounds: where this thread's stack is, found once without a lock and cached in the
//! per-thread state (see the parent module's doc).

use super::*;

/// The stack of the current thread, `[lo, hi)`.
///
/// Invariant: whenever this thread's stack pointer lies in `[lo, hi)`, every address from it up
/// to `hi` is readable. Only [`current_thread_stack`], [`StackBounds::narrowed`] and the unsafe
/// [`StackBounds::new_unchecked`] make one, and it is neither `Send` nor `Sync`: bounds of one
/// thread cannot reach another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackBounds {
    lo: u64,
    hi: u64,
    _this_thread: PhantomData<*const ()>,
}

impl StackBounds {
    /// Bounds for which the caller vouches.
    ///
    /// # Safety
    /// The invariant above must hold for the thread that uses the bounds: whenever its stack
    /// pointer lies in `[lo, hi)`, all of `[stack pointer, hi)` is readable.
    pub const unsafe fn new_unchecked(lo: u64, hi: u64) -> StackBounds {
        StackBounds { lo, hi, _this_thread: PhantomData }
    }

    pub fn lo(&self) -> u64 {
        self.lo
    }

    pub fn hi(&self) -> u64 {
        self.hi
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.lo <= addr && addr < self.hi
    }

    /// The intersection with `[lo, hi)`. Always safe: a sub-range keeps the invariant, since a
    /// stack pointer in it is in `self`, and `[sp, smaller hi)` lies within `[sp, self.hi)`.
    pub fn narrowed(self, lo: u64, hi: u64) -> StackBounds {
        let lo = lo.max(self.lo);
        StackBounds { lo, hi: hi.min(self.hi).max(lo), _this_thread: PhantomData }
    }
}

/// This thread's cached stack as `(lo, hi)`: `(0, 0)` not yet computed, `(1, 0)` unavailable.
pub(super) fn cached_stack() -> (u64, u64) {
    THREAD.with(ThreadState::stack_bounds)
}

fn cache_stack(bounds: (u64, u64)) {
    THREAD.with(|t| t.set_stack_bounds(bounds));
}

/// This thread's stack bounds: computed from /proc/self/maps on the first call in each thread
/// (30-120 µs here, mostly the kernel formatting the file; no allocation, no lock), a
/// thread-local read afterwards. `None` when
/// they cannot be known (no /proc, or a first call made on a signal stack or a fiber); that is
/// cached too, and the caller should use the DWARF unwinder on this thread.
pub fn current_thread_stack() -> Option<StackBounds> {
    let (lo, hi) = cached_stack();
    if lo < hi {
        // SAFETY: the cache only ever holds bounds from `compute_current_stack` for this thread.
        return Some(unsafe { StackBounds::new_unchecked(lo, hi) });
    }
    if lo != 0 {
        return None;
    }
    let computed = compute_current_stack();
    cache_stack(computed.unwrap_or((1, 0)));
    // SAFETY: `compute_current_stack` returns bounds of this thread's stack (module docs).
    computed.map(|(lo, hi)| unsafe { StackBounds::new_unchecked(lo, hi) })
}

/// Forget the cached bounds of this thread (tests; not needed after fork, where the forking
/// thread keeps its stack at the same addresses).
pub fn forget_current_thread_stack() {
    cache_stack((0, 0));
}

#[cold]
#[inline(never)]
fn compute_current_stack() -> Option<(u64, u64)> {
    // SAFETY: __errno_location returns this thread's errno slot, valid while the thread lives.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above; reading an int.
    let saved_errno = unsafe { *errno };
    let marker = 0u8;
    // An address in this frame: on the stack this thread is running on.
    let sp = std::hint::black_box(&marker) as *const u8 as u64;
    // SAFETY: pthread_self has no preconditions.
    let pd = unsafe { libc::pthread_self() } as u64;
    let mut finder = StackFinder::new(sp, pd);
    let read_all = read_proc_self_maps(|chunk| finder.feed(chunk));
    let rlimit = stack_rlimit();
    // SAFETY: as above; the syscalls may have set errno, and a hook must not appear to.
    unsafe { *errno = saved_errno };
    if read_all {
        finder.bounds(rlimit)
    } else {
        None
    }
}

/// RLIMIT_STACK's soft limit; `u64::MAX` when unlimited or unknown.
fn stack_rlimit() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid out-pointer; getrlimit is a plain system call.
    if unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut rl) } != 0 {
        return u64::MAX;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on 64-bit Linux, u32 elsewhere
    let cur = rl.rlim_cur as u64;
    cur
}

/// Feed /proc/self/maps to `on_chunk` in pieces. Raw system calls: glibc's `open` and `read`
/// are cancellation points, `syscall` is not. Returns false unless the whole file was read.
fn read_proc_self_maps(mut on_chunk: impl FnMut(&[u8])) -> bool {
    const PATH: &[u8] = b"/proc/self/maps\0";
    // SAFETY: PATH is NUL-terminated and outlives the call; every argument is passed as a long,
    // as syscall(2) reads them.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD as c_long,
            PATH.as_ptr(),
            (libc::O_RDONLY | libc::O_CLOEXEC) as c_long,
        )
    };
    if fd < 0 {
        return false;
    }
    // Small: this runs once per thread, possibly deep in a small thread stack.
    let mut buf = [0u8; 256];
    let ok = loop {
        // SAFETY: `buf` is writable for the length passed.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len() as c_long) };
        if n > 0 {
            on_chunk(&buf[..n as usize]);
        } else if n == 0 {
            break true;
        // SAFETY: __errno_location returns this thread's errno slot.
        } else if unsafe { *libc::__errno_location() } != libc::EINTR {
            break false;
        }
    };
    // SAFETY: `fd` is the descriptor opened above, closed once.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    ok
}

/// One line of /proc/self/maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Vma {
    from: u64,
    to: u64,
    readable: bool,
    /// Named `[stack]`: the main thread's stack.
    main_stack: bool,
    /// End of the mapping before this one (0 for the first).
    prev_to: u64,
}

/// A streaming parser of /proc/self/maps that keeps the mappings holding the stack pointer and
/// the thread descriptor, and the main stack. Lines may arrive split across chunks.
pub(super) struct StackFinder {
    sp: u64,
    pd: u64,
    at_sp: Option<Vma>,
    at_pd: Option<Vma>,
    // The line being parsed.
    field: u8,
    from: u64,
    to: u64,
    digits: u8,
    readable: bool,
    /// The last 8 bytes of the line, for the `[stack]` name.
    tail: u64,
    bad: bool,
    prev_to: u64,
}

/// "[stack]" as the low 7 bytes of a big-endian shift register.
const STACK_NAME: u64 = u64::from_be_bytes(*b"\0[stack]");

impl StackFinder {
    pub(super) fn new(sp: u64, pd: u64) -> StackFinder {
        StackFinder {
            sp,
            pd,
            at_sp: None,
            at_pd: None,
            field: 0,
            from: 0,
            to: 0,
            digits: 0,
            readable: false,
            tail: 0,
            bad: false,
            prev_to: 0,
        }
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
                continue;
            }
            self.tail = (self.tail << 8) | u64::from(b);
            match (self.field, b) {
                (0, b'-') | (1, b' ') => {
                    self.bad |= self.digits == 0;
                    self.field += 1;
                    self.digits = 0;
                }
                (0 | 1, _) => {
                    let digit = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        _ => {
                            self.bad = true;
                            0
                        }
                    };
                    self.digits += 1;
                    self.bad |= self.digits > 16;
                    let v = if self.field == 0 { &mut self.from } else { &mut self.to };
                    *v = (*v << 4) | u64::from(digit);
                }
                (2, _) => {
                    self.readable = b == b'r';
                    self.field = 3;
                }
                _ => {}
            }
        }
    }

    fn end_line(&mut self) {
        if !self.bad && self.field == 3 && self.from < self.to {
            let vma = Vma {
                from: self.from,
                to: self.to,
                readable: self.readable,
                main_stack: self.tail & 0x00ff_ffff_ffff_ffff == STACK_NAME,
                prev_to: self.prev_to,
            };
            if vma.from <= self.sp && self.sp < vma.to {
                self.at_sp = Some(vma);
            }
            if vma.from <= self.pd && self.pd < vma.to {
                self.at_pd = Some(vma);
            }
            self.prev_to = vma.to;
        }
        self.field = 0;
        self.from = 0;
        self.to = 0;
        self.digits = 0;
        self.readable = false;
        self.tail = 0;
        self.bad = false;
    }

    /// The bounds, once the whole file has been fed (see the module docs).
    pub(super) fn bounds(&self, stack_rlimit: u64) -> Option<(u64, u64)> {
        let r = self.at_sp.filter(|r| r.readable)?;
        if self.at_pd == Some(r) && self.sp < self.pd {
            // A glibc thread: its descriptor sits above its stack, in the same mapping.
            return Some((r.from, self.pd));
        }
        if r.main_stack {
            // The main thread: below the current extent the stack may still grow, to the
            // rlimit or to the mapping below, whichever is nearer. The walker never reads
            // below the stack pointer, so the unmapped part is never touched.
            let lo = r.prev_to.max(r.to.saturating_sub(stack_rlimit)).min(r.from);
            return Some((lo, r.to));
        }
        None
    }
}
