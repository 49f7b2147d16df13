//! A caching DWARF-CFI unwinder for the sampled-allocation path (x86_64): the same stacks as
//! libgcc's `_Unwind_Backtrace` (what `backtrace::trace` uses), in a fraction of the time, for
//! programs built without frame pointers. Built on the `framehop` crate, which turns each
//! address's CFI row into a small unwind rule and caches it per address; a warm stack of 15-20
//! frames is then a few cache look-ups and stack reads. `cfi_beats_backtrace` below prints both
//! costs.
//!
//! [`trace_into`] runs inside malloc. It returns 0 frames, and the caller falls back to libgcc,
//! whenever it cannot give a complete answer: no unwinder published yet (before the first
//! thread's first tick), unknown stack bounds (a fiber, a signal stack), no free cache, a frame
//! outside every module the unwinder knows (a library loaded since its last rebuild, code without
//! unwind data: framehop would guess with frame pointers there), or an unwind that ended in an
//! error rather than at the outermost frame.
//!
//! # What the hook may do
//!
//! [`trace_into`] allocates nothing, takes no lock and makes no system call (except, once per
//! thread, the /proc/self/maps read of [`crate::unwind::current_thread_stack`], which the
//! frame-pointer path does as well):
//! - the unwinder is immutable and published through an `AtomicPtr` ([`UNWINDER`]); the
//!   housekeeping ([`refresh`], from the constructor, the helper thread, or a hook of a
//!   single-threaded process) builds a new one when the loader's counters move and swaps
//!   it in; old ones are leaked (see "Memory" below);
//! - framehop's cache is mutable, so each unwind claims one of [`SLOTS`] preallocated caches with
//!   a compare-and-swap on its flag, never waiting: if all are busy the unwind gives up (0
//!   frames). No thread-local with a destructor is involved;
//! - framehop is used with `MustNotAllocateDuringUnwind`: gimli's CFI evaluation works in
//!   fixed arrays inside the cache, and the unwinder's modules and unwind data were built
//!   beforehand;
//! - stack memory is read only through [`StackReader`]: aligned words between the stack pointer
//!   captured at the start and the top of this thread's stack, which the `StackBounds` invariant
//!   says are mapped. Any other address framehop asks for is refused, which ends the unwind.
//!
//! # Unwind data, and why a dlclose cannot make an unwind fault
//!
//! Each module's `.eh_frame_hdr` (the PT_GNU_EH_FRAME segment) and `.eh_frame` are located in
//! memory by [`refresh`], inside a `dl_iterate_phdr` callback: while it runs, the loader holds
//! its lock, so no object can be unmapped under it. Then:
//! - the main program's sections are used where they are mapped: the main program is never
//!   unloaded;
//! - every other module's two sections are **copied** into memory leaktrace owns and never
//!   frees. A `dlclose` (the program's, or glibc's own for gconv and NSS modules, which no
//!   interposed `dlclose` would see) may unmap a library at any moment, between the loader's
//!   lock and our next refresh, and even while another thread is in the middle of an unwind
//!   with an unwinder that still lists it. With copies, that unwind still reads only memory that
//!   stays valid for the life of the process: the copies, the leaked unwinder and the thread's
//!   own stack. The worst a stale unwinder can do, for the up to 50 ms until housekeeping
//!   thread replaces it, is attribute a frame at an address reused by a newly loaded library
//!   to the old library's rules: a wrong stack (it reads only bounds-checked stack words), never
//!   a fault. Code of an unloaded library cannot be on a live stack, so a correct stack never
//!   unwinds *through* a removed module.
//!
//! Copies are small (glibc 2.36's libc: 183 KiB; libstdc++: 240 KiB) next to the main program's
//! sections, which are used in place.
//!
//! # Memory
//!
//! Replaced unwinders are leaked, not freed: a hook thread may still be walking one, and
//! nothing on the hook path tells when it is done. Copies are kept for reuse by the next
//! unwinder when the module is still loaded with identical bytes. Both are capped: after
//! [`MAX_PUBLISHED`] unwinders or [`MAX_COPIED_BYTES`] of copies, the unwinder is withdrawn for
//! good and every stack goes to libgcc, as before this module existed. The caches are fixed:
//! [`SLOTS`] slots of 4 framehop caches (33 KiB of heap each, measured) and a pair of memos
//! (6 KiB), 1.08 MiB in all, allocated once, at the first refresh.

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use crate::unwind::{self, StackBounds};

/// Caches, one per unwind in progress; an unwind that finds all busy gives up.
pub const SLOTS: usize = 8;
/// framehop caches per slot, each frame's picked by a hash of its address. One framehop cache
/// holds the rules of 509 addresses, direct-mapped by address: Python's interpreter under
/// every-allocation tracing missed 5% of look-ups on address conflicts, and each miss
/// re-evaluates the DWARF CFI (gimli was 15% of the run). Four give ~2000 entries; each cache
/// is 33 KiB with gimli's fixed evaluation arrays.
const CACHE_WAYS: usize = 4;
/// Unwinders published over the life of the process before giving up (module-map changes).
pub const MAX_PUBLISHED: u32 = 64;
/// Bytes of copied unwind sections before giving up.
pub const MAX_COPIED_BYTES: usize = 64 << 20;

/// Unwinds that returned 0 frames (the caller then used libgcc). Successes are counted per
/// cache slot (see [`traced`]): one counter shared by every thread would bounce between cores
/// on every sample.
pub static FAILED: AtomicU64 = AtomicU64::new(0);

/// Unwinds that succeeded, so far.
pub fn traced() -> u64 {
    let pool = POOL.load(Ordering::Acquire);
    // SAFETY: POOL holds null or a leaked `Pool` that is never freed.
    unsafe { pool.as_ref() }.map_or(0, |p| p.slots.iter().map(|s| s.traced.load(Ordering::Relaxed)).sum())
}

#[cfg(target_arch = "x86_64")]
mod arch {
    pub use framehop::x86_64::{CacheX86_64 as Cache, UnwindRegsX86_64 as Regs, UnwinderX86_64 as Unwinder};
}

#[cfg(target_arch = "x86_64")]
type Policy = framehop::MustNotAllocateDuringUnwind;
#[cfg(target_arch = "x86_64")]
type FhUnwinder = arch::Unwinder<&'static [u8], Policy>;
#[cfg(target_arch = "x86_64")]
type FhCache = arch::Cache<Policy>;

/// An unwinder as published to the hooks: immutable once published, never freed.
#[cfg(target_arch = "x86_64")]
struct Published {
    unwinder: FhUnwinder,
    /// The modules' code ranges `[lo, hi)`, sorted. framehop unwinds an address outside every
    /// module with frame pointers; we give up instead (libgcc then unwinds it, or stops), so a
    /// library loaded since this unwinder was built, or code without unwind data, is never
    /// walked with a guess.
    known: Vec<(u64, u64)>,
    /// Functions proven to keep frame pointers ([`frame_pointer_functions`]), `[lo, hi)`, sorted:
    /// frames in them are stepped by their frame record, without a rule look-up.
    frame_pointer_functions: Vec<(u64, u64)>,
}

#[cfg(target_arch = "x86_64")]
impl Published {
    /// Does the function holding `lookup` keep its frame pointer (so that at any call it makes,
    /// [rbp] is its caller's rbp and [rbp + 8] its return address)?
    #[inline]
    fn keeps_frame_pointer(&self, lookup: u64) -> bool {
        let i = self.frame_pointer_functions.partition_point(|&(lo, _)| lo <= lookup);
        i.checked_sub(1).and_then(|i| self.frame_pointer_functions.get(i)).is_some_and(|&(_, hi)| lookup < hi)
    }

    /// The known module range holding `lookup`, if any.
    fn known_range(&self, lookup: u64) -> Option<(u64, u64)> {
        let i = self.known.partition_point(|&(lo, _)| lo <= lookup);
        let range = *self.known.get(i.checked_sub(1)?)?;
        (lookup < range.1).then_some(range)
    }
}

#[cfg(not(target_arch = "x86_64"))]
struct Published;

/// The unwinder in force; null before the first [`refresh`] and after giving up.
static UNWINDER: AtomicPtr<Published> = AtomicPtr::new(std::ptr::null_mut());

/// One framehop cache, owned by whichever thread set `busy`. Aligned to two cache lines (the
/// adjacent-line prefetcher fetches pairs): a thread claiming or counting on its slot must not
/// write a line holding another thread's slot.
#[repr(align(128))]
struct Slot {
    busy: AtomicBool,
    #[cfg(target_arch = "x86_64")]
    memos: UnsafeCell<Box<Memos>>,
    /// Unwinds completed with this cache; written only by the thread holding `busy`.
    traced: AtomicU64,
    #[cfg(target_arch = "x86_64")]
    caches: UnsafeCell<[FhCache; CACHE_WAYS]>,
}

// SAFETY: `cache` is only touched by the thread that won `busy` with a compare-and-swap
// (Acquire), until it clears `busy` (Release); the flag hands the cache from thread to thread.
unsafe impl Sync for Slot {}

struct Pool {
    slots: [Slot; SLOTS],
}

impl Pool {
    #[cfg(target_arch = "x86_64")]
    fn new() -> Box<Pool> {
        Box::new(Pool {
            slots: std::array::from_fn(|_| Slot {
                busy: AtomicBool::new(false),
                memos: UnsafeCell::new(Memos::new()),
                traced: AtomicU64::new(0),
                caches: UnsafeCell::new(std::array::from_fn(|_| FhCache::new_in())),
            }),
        })
    }
}

/// The caches; null until the first [`refresh`]. Leaked, never freed.
static POOL: AtomicPtr<Pool> = AtomicPtr::new(std::ptr::null_mut());

// ---------------------------------------------------------------------------------------------
// The hook side

/// [`trace_into`] a plain array (for tests: the hooks use `trace_into`), at most 256 frames.
/// Inlined, so that the caller's frame follows trace's as it does the hooks'.
#[inline(always)]
pub fn trace(out: &mut [u64], own_text: (u64, u64)) -> usize {
    let mut buf = [MaybeUninit::uninit(); 256];
    let len = out.len().min(buf.len());
    let mut frames = FrameBuf::new(&mut buf[..len]);
    let n = trace_into(&mut frames, own_text);
    out[..n].copy_from_slice(frames.frames());
    n
}

/// Where an unwind writes its frames: memory nobody zeroed first (a sample's 512-byte buffer was
/// 49 instructions and 8 cache lines written before its first frame was), of which only the
/// frames pushed can be read back.
pub(crate) struct FrameBuf<'a> {
    buf: &'a mut [MaybeUninit<u64>],
    /// `buf[..len]` are written. Set by `push`, and by `unwind_remembering`, which writes by
    /// index (a push stores the length each time) and sets it once, on return.
    len: usize,
}

impl<'a> FrameBuf<'a> {
    pub(crate) fn new(buf: &'a mut [MaybeUninit<u64>]) -> FrameBuf<'a> {
        FrameBuf { buf, len: 0 }
    }

    #[inline(always)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Append `frame`, unless full.
    #[inline(always)]
    pub(crate) fn push(&mut self, frame: u64) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            slot.write(frame);
            self.len += 1;
        }
    }

    /// The frames pushed so far.
    pub(crate) fn frames(&mut self) -> &mut [u64] {
        // SAFETY: `buf[..len]` is initialised: `push` grows `len` by one once the slot below it
        // is written, `unwind_remembering` sets it to a count of slots it wrote (see there);
        // `MaybeUninit<u64>` has the layout of `u64`.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast::<u64>(), self.len) }
    }
}

/// Unwind the current stack into `out`, innermost first: `out[0]` is an address in this
/// function, then return addresses (leaktrace's own frames included; the caller trims them).
/// `out` starts empty. Returns the number of frames, or 0, leaving `out` empty, when the unwind
/// could not be completed (see the module docs): use libgcc then.
/// No allocation, no lock, no system call beyond the once-per-thread stack bounds.
///
/// Frames whose return address lies in `own_text` (leaktrace's code, built with frame pointers)
/// are stepped over by their frame pointers instead: the CFI unwind starts at the first frame
/// outside it, so `out[0]` is then the allocation call's return address. That saves the rule
/// lookups for the five or so frames of the sampled path, about half of a typical unwind.
#[inline(never)]
pub(crate) fn trace_into(out: &mut FrameBuf, own_text: (u64, u64)) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let pool = POOL.load(Ordering::Acquire);
        // SAFETY: POOL holds null or a leaked `Pool` that is never freed.
        let n = unsafe { pool.as_ref() }.map_or(0, |pool| trace_x86_64(pool, out, own_text));
        if n == 0 {
            FAILED.fetch_add(1, Ordering::Relaxed);
        }
        n
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, own_text);
        0
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn trace_x86_64(pool: &Pool, out: &mut FrameBuf, own_text: (u64, u64)) -> usize {
    use framehop::FrameAddress;

    if out.capacity() == 0 {
        return 0;
    }
    let Some(stack) = unwind::current_thread_stack() else {
        return 0;
    };
    let Some(slot) = claim(pool, stack.hi()) else {
        return 0;
    };
    let published = UNWINDER.load(Ordering::Acquire);
    // SAFETY: UNWINDER holds null or a leaked `Published` that is never freed or mutated.
    let n = match unsafe { published.as_ref() } {
        None => 0,
        Some(p) => {
            // SAFETY: `claim` set `slot.busy` for this thread; no other thread touches the cache
            // until it is cleared below.
            let caches = unsafe { &mut *slot.caches.get() };
            let (ip, sp, bp): (u64, u64, u64);
            // SAFETY: reads three registers; touches no memory.
            unsafe {
                core::arch::asm!(
                    "lea {ip}, [rip]",
                    "mov {sp}, rsp",
                    "mov {bp}, rbp",
                    ip = out(reg) ip,
                    sp = out(reg) sp,
                    bp = out(reg) bp,
                    options(nomem, nostack, preserves_flags),
                );
            }
            match StackReader::new(stack, sp) {
                None => 0,
                Some(mut reader) => {
                    let (address, regs) = match step_over_own_frames(&mut reader, bp, own_text) {
                        Some((ret, caller_sp, caller_bp)) => match FrameAddress::from_return_address(ret) {
                            Some(a) => (a, arch::Regs::new(ret, caller_sp, caller_bp)),
                            None => (FrameAddress::InstructionPointer(ip), arch::Regs::new(ip, sp, bp)),
                        },
                        None => (FrameAddress::InstructionPointer(ip), arch::Regs::new(ip, sp, bp)),
                    };
                    // SAFETY: as for `cache`: the slot is this thread's until `busy` is cleared.
                    let memos = unsafe { &mut *slot.memos.get() };
                    unwind_remembering(p, caches, memos, &mut reader, address, regs, out)
                }
            }
        }
    };
    if n > 0 {
        // Only the holder of `busy` writes the counter: no read-modify-write needed.
        slot.traced.store(slot.traced.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
    slot.busy.store(false, Ordering::Release);
    n
}

/// Most frames remembered from a cache's previous unwind.
#[cfg(target_arch = "x86_64")]
const MEMO_FRAMES: usize = 96;

/// One frame of a previous unwind: where it was, and where the stack words read to unwind past
/// it lie. Their values are not kept: they became the next frame's registers, which the memo
/// holds. 32 bytes, aligned: two frames a cache line, which is what a memo check costs in a
/// program that evicts the memo between samples.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Default, PartialEq)]
#[repr(C, align(32))]
struct MemoFrame {
    /// Also the frame's instruction pointer register: framehop sets it to the return address.
    address: u64,
    sp: u64,
    bp: u64,
    /// Where the caller's rbp was read, in bytes from `sp` (with [`BP_READ`]).
    bp_at: i32,
    /// [`IS_RETURN_ADDRESS`], [`RETURN_ADDRESS_READ`], [`BP_READ`], [`UNCHECKABLE`].
    flags: u32,
}

#[cfg(target_arch = "x86_64")]
const IS_RETURN_ADDRESS: u32 = 1;
/// The step read the return address where every x86-64 rule finds it: the word below the
/// caller's stack pointer.
#[cfg(target_arch = "x86_64")]
const RETURN_ADDRESS_READ: u32 = 2;
/// The step read the caller's rbp, at `bp_at`.
#[cfg(target_arch = "x86_64")]
const BP_READ: u32 = 4;
/// The step read other words, or these elsewhere (more than two reads, never seen on x86-64;
/// a CFA expression; an rbp saved too far from sp): the frame never matches.
#[cfg(target_arch = "x86_64")]
const UNCHECKABLE: u32 = 8;

#[cfg(target_arch = "x86_64")]
impl MemoFrame {
    #[inline(always)]
    fn at(address: framehop::FrameAddress, regs: &arch::Regs) -> MemoFrame {
        let flags = if address.is_return_address() { IS_RETURN_ADDRESS } else { 0 };
        MemoFrame { address: address.address(), sp: regs.sp(), bp: regs.bp(), bp_at: 0, flags }
    }

    /// Note where the `count` stack words read to step this frame lie: every rule reads the
    /// caller's rbp (if it restores it) and then the return address, and `next`, the frame the
    /// step gave, holds what they read.
    #[inline(always)]
    fn describe_reads(&mut self, reads: &[(u64, u64); 2], count: u8, next: &MemoFrame) {
        let ret_ok = |(at, value): (u64, u64)| at == next.sp.wrapping_sub(8) && value == next.address;
        let bp_at = reads[0].0.wrapping_sub(self.sp) as i64;
        self.flags |= match count {
            0 => 0,
            1 if ret_ok(reads[0]) => RETURN_ADDRESS_READ,
            2 if ret_ok(reads[1]) && reads[0].1 == next.bp && bp_at as i32 as i64 == bp_at => {
                self.bp_at = bp_at as i32;
                RETURN_ADDRESS_READ | BP_READ
            }
            _ => UNCHECKABLE,
        };
    }

    #[inline(always)]
    fn is(&self, address: framehop::FrameAddress, regs: &arch::Regs) -> bool {
        self.address == address.address()
            && (self.flags & IS_RETURN_ADDRESS != 0) == address.is_return_address()
            && (self.address, self.sp, self.bp) == (regs.ip(), regs.sp(), regs.bp())
    }

    /// Do the stack words read to step this frame still hold what gave `next`?
    #[inline(always)]
    fn still_valid(&self, next: &MemoFrame, reader: &mut StackReader) -> bool {
        let f = self.flags;
        f & UNCHECKABLE == 0
            && (f & BP_READ == 0 || reader.read(self.sp.wrapping_add(self.bp_at as i64 as u64)) == Ok(next.bp))
            && (f & RETURN_ADDRESS_READ == 0 || reader.read(next.sp.wrapping_sub(8)) == Ok(next.address))
    }
}

/// A memo's description of its frames.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Default)]
struct MemoHead {
    /// The published unwinder the frames were unwound with (rules change with it).
    published: usize,
    len: u32,
    /// The unwind reached the outermost frame, rather than stopping at the output's length.
    complete: bool,
}

/// The previous unwind made with a cache. A thread allocating in a loop unwinds the same outer
/// frames again and again (a Python interpreter's dozens of frames, say); when the unwind reaches
/// a frame at the same place in the same state as last time, and every stack word read to unwind
/// the frames above it still holds the same value, the rest of the unwind is the same: it is
/// copied instead of recomputed (a load and compare per frame instead of a rule lookup).
///
/// `frames[len]` is the frame after the last one kept (or, after the outermost, the values its
/// step read): the reads of `frames[len - 1]` are checked against it.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct MemoFrames([MemoFrame; MEMO_FRAMES + 1]);

/// Two memos per cache: the previous unwind, and the one being recorded. Frames first, so that
/// they pair up on cache lines; both heads and `previous` share the line after them.
#[cfg(target_arch = "x86_64")]
#[repr(C)]
struct Memos {
    frames: [MemoFrames; 2],
    heads: [MemoHead; 2],
    previous: usize,
    /// The module range an unwind last checked, and the published unwinder it is from: the
    /// next unwind starts in the same module more often than not, and then needs no search.
    module: (u64, u64),
    module_of: usize,
}

#[cfg(target_arch = "x86_64")]
impl Memos {
    fn new() -> Box<Memos> {
        let empty = || MemoFrames([MemoFrame::default(); MEMO_FRAMES + 1]);
        let frames = [empty(), empty()];
        Box::new(Memos { heads: [MemoHead::default(); 2], previous: 0, module: (0, 0), module_of: 0, frames })
    }
}

/// Unwind from the frame `address` with registers `regs` into `out`, reusing the tail of the
/// cache's previous unwind where it provably repeats. Returns the number of frames, or 0 when
/// the unwind cannot be completed.
#[cfg(target_arch = "x86_64")]
fn unwind_remembering(
    p: &Published,
    caches: &mut [FhCache; CACHE_WAYS],
    memos: &mut Memos,
    reader: &mut StackReader,
    address: framehop::FrameAddress,
    regs: arch::Regs,
    out: &mut FrameBuf,
) -> usize {
    // Written by index: `out.len` is set on return, to `n` frames when out.buf[..n] all are.
    let result = unwind_remembering_into(p, caches, memos, reader, address, regs, &mut *out.buf);
    out.len = result;
    result
}

/// [`unwind_remembering`]'s body: returns `n` once it has written `out[..n]`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn unwind_remembering_into(
    p: &Published,
    caches: &mut [FhCache; CACHE_WAYS],
    memos: &mut Memos,
    reader: &mut StackReader,
    mut address: framehop::FrameAddress,
    mut regs: arch::Regs,
    out: &mut [MaybeUninit<u64>],
) -> usize {
    use framehop::{FrameAddress, Unwinder as _};

    let published = p as *const Published as usize;
    let [head0, head1] = &mut memos.heads;
    let [frames0, frames1] = &mut memos.frames;
    let ((old, old_frames), (new, new_frames)) = if memos.previous == 0 {
        ((head0, &mut frames0.0), (head1, &mut frames1.0))
    } else {
        ((head1, &mut frames1.0), (head0, &mut frames0.0))
    };
    let old_len = old.len as usize;
    let old_usable = old.published == published && old_len > 0;
    *new = MemoHead { published, len: 0, complete: false };
    let mut cursor = 0;
    let mut tries = 0;
    let mut n = 0;
    // Consecutive frames are often in one module: check the last one first.
    let mut last_module = if memos.module_of == published { memos.module } else { (0, 0) };
    let result = loop {
        // Also the frame after the last kept when the memo ends here.
        if n <= MEMO_FRAMES {
            new_frames[n] = MemoFrame::at(address, &regs);
        }
        if n == out.len() {
            break n;
        }
        // A frame the memo matches was in a known module when it was recorded.
        if old_usable && tries < 2 {
            // Both unwinds climb the stack: frames of the old one below this one cannot match.
            while cursor < old_len && old_frames[cursor].sp < regs.sp() {
                cursor += 1;
            }
            if cursor < old_len && old_frames[cursor].is(address, &regs) {
                tries += 1;
                let rest_len = old_len - cursor;
                let fits = n + rest_len >= out.len();
                if (old.complete || fits)
                    && old_frames[cursor..=old_len].windows(2).all(|w| w[0].still_valid(&w[1], reader))
                {
                    let take = rest_len.min(out.len() - n);
                    for (k, f) in old_frames[cursor..cursor + take].iter().enumerate() {
                        out[n + k].write(f.address);
                    }
                    // The old memo becomes the new one: its tail (and the frame after it) moves
                    // to follow the n frames unwound this time (usually it is already there:
                    // same depth as last time), and those replace its head. Only the few new
                    // frames are copied.
                    let head = n.min(MEMO_FRAMES);
                    let keep = take.min(MEMO_FRAMES - head);
                    if n <= MEMO_FRAMES {
                        if cursor != n {
                            old_frames.copy_within(cursor..cursor + keep + 1, n);
                        }
                        // Frame by frame, and only where they differ: a call to memcpy costs more
                        // than the usual one or two frames, and lines left clean need no
                        // write-back.
                        for (to, from) in old_frames[..n].iter_mut().zip(&new_frames[..n]) {
                            if to != from {
                                *to = *from;
                            }
                        }
                    } else {
                        *old_frames = *new_frames;
                    }
                    old.complete = old.complete && take == rest_len && keep == take;
                    old.len = (head + keep) as u32;
                    #[cfg(test)]
                    tests::MEMO_REUSES.fetch_add(1, Ordering::Relaxed);
                    (memos.module, memos.module_of) = (last_module, published);
                    // `old` stays the previous unwind for next time: no flip.
                    return n + take;
                }
            }
        }
        let lookup = address.address_for_lookup();
        if !(last_module.0..last_module.1).contains(&lookup) {
            match p.known_range(lookup) {
                Some(range) => last_module = range,
                None => break 0,
            }
        }
        out[n].write(address.address());
        let mut reads = [(0u64, 0u64); 2];
        let mut read_count = 0u8;
        let step = {
            let mut read = |addr: u64| {
                let value = reader.read(addr)?;
                if let Some(slot) = reads.get_mut(usize::from(read_count)) {
                    *slot = (addr, value);
                }
                read_count = read_count.saturating_add(1);
                Ok(value)
            };
            if address.is_return_address() && FRAME_RECORDS.load(Ordering::Relaxed) && p.keeps_frame_pointer(lookup) {
                frame_pointer_step(&mut regs, &mut read)
            } else {
                let way = (lookup.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 62) as usize % CACHE_WAYS;
                p.unwinder.unwind_frame(address, &mut regs, &mut caches[way], &mut read)
            }
        };
        if n < MEMO_FRAMES {
            let next = match step {
                Ok(Some(ret)) => MemoFrame { address: ret, sp: regs.sp(), bp: regs.bp(), ..MemoFrame::default() },
                // The outermost frame: what its step read goes after it, for the check.
                _ => {
                    let (ret, bp) = match read_count {
                        1 => (reads[0], (0, 0)),
                        _ => (reads[1], reads[0]),
                    };
                    MemoFrame { address: ret.1, sp: ret.0.wrapping_add(8), bp: bp.1, ..MemoFrame::default() }
                }
            };
            new_frames[n].describe_reads(&reads, read_count, &next);
            if !matches!(step, Ok(Some(_))) {
                new_frames[n + 1] = next;
            }
            new.len = n as u32 + 1;
        }
        n += 1;
        match step {
            Ok(Some(ret)) => match FrameAddress::from_return_address(ret) {
                Some(a) => address = a,
                None => break 0,
            },
            Ok(None) => {
                new.complete = new.len as usize == n;
                break n;
            }
            Err(_) => break 0,
        }
    };
    if result == 0 {
        new.len = 0;
    }
    (memos.module, memos.module_of) = (last_module, published);
    memos.previous ^= 1;
    result
}

/// Claim a free cache, starting at one picked by `hint` so threads tend to keep their own.
fn claim(pool: &Pool, hint: u64) -> Option<&Slot> {
    let start = ((hint >> 12) as usize).wrapping_mul(0x9e37_79b9) % SLOTS;
    (0..SLOTS).map(|i| &pool.slots[(start + i) % SLOTS]).find(|s| {
        !s.busy.load(Ordering::Relaxed)
            && s.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    })
}

/// Follow the frame-pointer chain from `bp` (a frame of ours) while return addresses stay in
/// `own_text`, and give the first caller outside it as (return address, its sp, its bp): what
/// that caller's registers hold once the call returns. None if the chain leaves the stack or
/// runs longer than our call depth can be, and the caller unwinds everything by CFI instead.
fn step_over_own_frames(reader: &mut StackReader, mut bp: u64, (lo, hi): (u64, u64)) -> Option<(u64, u64, u64)> {
    if lo >= hi {
        return None;
    }
    for _ in 0..16 {
        let (saved_bp, ret) = reader.read_pair(bp).ok()?;
        let caller_sp = bp + 16;
        if !(lo..hi).contains(&ret) {
            return Some((ret, caller_sp, saved_bp));
        }
        // Each frame of ours lies above the one it called.
        if saved_bp <= bp {
            return None;
        }
        bp = saved_bp;
    }
    None
}

/// framehop's view of stack memory: aligned 8-byte words in `[sp, hi - 8]`, where `sp` was this
/// thread's stack pointer when the unwind started and `hi` the top of its stack.
struct StackReader {
    /// The lowest word: `sp` rounded up to a word.
    lo: u64,
    /// How many words lie above it.
    words: u64,
}

impl StackReader {
    /// None unless `sp` lies within `stack` (so the thread runs on the stack the bounds are for).
    fn new(stack: StackBounds, sp: u64) -> Option<StackReader> {
        let last = stack.hi().checked_sub(8)?;
        if !(stack.contains(sp) && sp <= last) {
            return None;
        }
        let lo = sp.checked_add(7)? & !7;
        Some(StackReader { lo, words: ((last & !7).checked_sub(lo)?) >> 3 })
    }

    fn read(&mut self, addr: u64) -> Result<u64, ()> {
        // One compare for all three bounds (framehop reads several words a frame): an address
        // below `lo` wraps to an offset beyond any stack, a misaligned one has its low bits
        // rotated to the top.
        if addr.wrapping_sub(self.lo).rotate_right(3) > self.words {
            return Err(());
        }
        // SAFETY: `lo` was this thread's stack pointer inside `[stack.lo, stack.hi)` and the
        // unwind runs on this thread below it, so by the `StackBounds` invariant all of
        // `[lo, hi)` is mapped and readable; `addr` is an aligned word within it.
        Ok(unsafe { (addr as *const u64).read_volatile() })
    }

    /// The words at `addr` and `addr + 8` (a frame record), with one bounds check.
    fn read_pair(&mut self, addr: u64) -> Result<(u64, u64), ()> {
        if addr.wrapping_sub(self.lo).rotate_right(3) >= self.words {
            return Err(());
        }
        let at = addr as *const u64;
        // SAFETY: as for `read`: `addr` and `addr + 8` are aligned words within `[lo, hi)`.
        Ok(unsafe { (at.read_volatile(), at.add(1).read_volatile()) })
    }
}

/// Whether frames in functions proven to keep frame pointers are stepped by their frame record
/// (`LEAKTRACE_UNWINDER` auto or fp) or by their CFI rule like every other (dwarf).
static FRAME_RECORDS: AtomicBool = AtomicBool::new(true);

pub fn use_frame_records(on: bool) {
    FRAME_RECORDS.store(on, Ordering::Relaxed);
}

/// One step by the frame record of a function that keeps its frame pointer: its return address
/// is at [rbp + 8], its caller's rbp at [rbp], its caller's stack starts at rbp + 16. What a
/// rule look-up would find for such a function, without the look-up.
#[cfg(target_arch = "x86_64")]
fn frame_pointer_step(
    regs: &mut arch::Regs,
    read: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Result<Option<u64>, framehop::Error> {
    let bp = regs.bp();
    // The frame record lies above the stack pointer; anything else is not one.
    if bp < regs.sp() {
        return Err(framehop::Error::FramepointerUnwindingMovedBackwards);
    }
    let ret_at = bp.checked_add(8).ok_or(framehop::Error::IntegerOverflow)?;
    // In the order of framehop's rules, which `MemoFrame::describe_reads` expects.
    let caller_bp = read(bp).map_err(|()| framehop::Error::CouldNotReadStack(bp))?;
    let ret = read(ret_at).map_err(|()| framehop::Error::CouldNotReadStack(ret_at))?;
    if ret == 0 {
        return Err(framehop::Error::ReturnAddressIsNull);
    }
    regs.set_sp(bp + 16);
    regs.set_bp(caller_bp);
    regs.set_ip(ret);
    Ok(Some(ret))
}

/// How many of a module's first FDEs are looked at before deciding it was built without frame
/// pointers (then none of its functions is taken as keeping them).
const FRAME_POINTER_PROBE: usize = 64;

/// The functions of a module's `.eh_frame` (its bytes, and the address it is mapped at) whose
/// canonical frame address becomes rbp + 16: they push rbp and point rbp at it after their
/// prologue, so every call they make has a valid frame record. Empty for a module most of whose
/// first [`FRAME_POINTER_PROBE`] functions do not (glibc and libstdc++ on Debian): scanning all
/// of a library for its few such functions would cost start-up time and save little.
#[cfg(target_arch = "x86_64")]
fn frame_pointer_functions(eh_frame: &[u8], eh_frame_avma: u64, text_avma: u64) -> Vec<(u64, u64)> {
    use gimli::{BaseAddresses, CfaRule, CieOrFde, EhFrame, LittleEndian, UnwindContext, UnwindSection};
    let section = EhFrame::new(eh_frame, LittleEndian);
    let bases = BaseAddresses::default().set_eh_frame(eh_frame_avma).set_text(text_avma);
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(&bases);
    let (mut seen, mut kept) = (0usize, Vec::new());
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else { continue };
        let Ok(fde) = partial.parse(|section, bases, offset| section.cie_from_offset(bases, offset)) else {
            continue;
        };
        seen += 1;
        let Ok(mut table) = fde.rows(&section, &bases, &mut ctx) else { continue };
        let keeps = loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    if matches!(row.cfa(), CfaRule::RegisterAndOffset { register, offset: 16 } if *register == gimli::X86_64::RBP)
                    {
                        break true;
                    }
                }
                _ => break false,
            }
        };
        if keeps {
            kept.push((fde.initial_address(), fde.initial_address().saturating_add(fde.len())));
        }
        if seen == FRAME_POINTER_PROBE && kept.len() * 2 < seen {
            return Vec::new();
        }
    }
    if kept.len() * 2 < seen {
        return Vec::new();
    }
    kept
}

// ---------------------------------------------------------------------------------------------
// The builder side: housekeeping (and tests) only

/// What the builder keeps between refreshes. Only ever `try_lock`ed: a forked child whose
/// parent's housekeeping held it finds it held forever, and keeps the unwinder it has.
struct Builder {
    generation: Option<(u64, u64)>,
    /// Copied unwind sections by (base, eh_frame_hdr address): `(hdr, eh_frame)`.
    copies: HashMap<(u64, u64), SectionCopies>,
    copied_bytes: usize,
    published: u32,
    gave_up: bool,
}

/// A module's copied `.eh_frame_hdr` and `.eh_frame`, leaked.
type SectionCopies = (&'static [u8], &'static [u8]);

static BUILDER: Mutex<Option<Builder>> = Mutex::new(None);
static ATFORK: Once = Once::new();

// Walks of the loaded objects go through `modules::fenced`, which keeps a fork from leaving the
// loader's lock held in the child (see modules.rs).
use crate::modules::fenced;

/// In a forked child only the forking thread exists: caches claimed by the others at the fork
/// would stay claimed forever, and no other fork is in progress.
extern "C" fn after_fork_in_child() {
    // SAFETY: POOL holds null or a leaked `Pool` that is never freed.
    if let Some(pool) = unsafe { POOL.load(Ordering::Acquire).as_ref() } {
        for s in &pool.slots {
            s.busy.store(false, Ordering::Release);
        }
    }
}

/// Bring the published unwinder up to date with the loaded modules: a walk of the loader's
/// counters when nothing changed, a rebuild otherwise. Takes the loader lock and allocates:
/// call it from the constructor, the helper thread, a hook of a process that never had a
/// second thread (the loader lock is recursive: it cannot deadlock on itself there), or a test.
pub fn refresh() {
    #[cfg(target_arch = "x86_64")]
    {
        use framehop::Unwinder as _;
        let Ok(mut guard) = BUILDER.try_lock() else {
            return;
        };
        let b = guard.get_or_insert_with(|| Builder {
            generation: None,
            copies: HashMap::new(),
            copied_bytes: 0,
            published: 0,
            gave_up: false,
        });
        if b.gave_up {
            return;
        }
        if POOL.load(Ordering::Acquire).is_null() {
            POOL.store(Box::into_raw(Pool::new()), Ordering::Release);
            ATFORK.call_once(|| {
                // SAFETY: the three handlers are `extern "C" fn()`s valid for the life of the
                // process.
                unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
            });
        }
        let Some(generation) = fenced(loader_generation) else {
            return;
        };
        if b.generation == Some(generation) {
            return;
        }
        let Some((mut sections, generation)) = fenced(collect_sections) else {
            return;
        };
        let mut unwinder = FhUnwinder::new();
        let mut known = Vec::with_capacity(sections.len());
        let mut fp_functions = Vec::new();
        for s in &mut sections {
            let (hdr, eh_frame) = match s.copy {
                // SAFETY: the main program is never unloaded, so its sections, found mapped
                // inside the loader's callback, stay mapped for the life of the process.
                None => unsafe {
                    (
                        std::slice::from_raw_parts(s.hdr_avma as *const u8, s.hdr_len),
                        std::slice::from_raw_parts(s.eh_frame_avma as *const u8, s.eh_frame_len),
                    )
                },
                Some((ref h, ref e)) => match b.copies.get(&(s.base, s.hdr_avma)) {
                    Some(&(oh, oe)) if oh == h.as_slice() && oe == e.as_slice() => (oh, oe),
                    _ => {
                        b.copied_bytes += h.len() + e.len();
                        let h: &'static [u8] = Box::leak(h.clone().into_boxed_slice());
                        let e: &'static [u8] = Box::leak(e.clone().into_boxed_slice());
                        b.copies.insert((s.base, s.hdr_avma), (h, e));
                        (h, e)
                    }
                },
            };
            let svma = |avma: u64, len: usize| (avma - s.base)..(avma - s.base + len as u64);
            let info = framehop::ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: Some(svma(s.text.0, (s.text.1 - s.text.0) as usize)),
                eh_frame_hdr_svma: Some(svma(s.hdr_avma, hdr.len())),
                eh_frame_hdr: Some(hdr),
                eh_frame_svma: Some(svma(s.eh_frame_avma, eh_frame.len())),
                eh_frame: Some(eh_frame),
                ..Default::default()
            };
            known.push(s.text);
            // Our own frames are stepped over before the unwind starts (`step_over_own_frames`):
            // scanning this library's 700-odd functions would only cost start-up time.
            let ours = (s.text.0..s.text.1).contains(&(frame_pointer_functions as *const () as usize as u64));
            if !ours {
                fp_functions.extend(frame_pointer_functions(eh_frame, s.eh_frame_avma, s.text.0));
            }
            unwinder.add_module(framehop::Module::new(String::new(), s.text.0..s.text.1, s.base, info));
        }
        b.generation = Some(generation);
        b.published += 1;
        COPIED_BYTES_SEEN.store(b.copied_bytes as u64, Ordering::Relaxed);
        if b.published > MAX_PUBLISHED || b.copied_bytes > MAX_COPIED_BYTES {
            b.gave_up = true;
            UNWINDER.store(std::ptr::null_mut(), Ordering::Release);
            return;
        }
        known.sort_unstable();
        fp_functions.sort_unstable();
        let p = Box::into_raw(Box::new(Published { unwinder, known, frame_pointer_functions: fp_functions }));
        // The previous unwinder is leaked: a hook thread may still be walking it.
        UNWINDER.store(p, Ordering::Release);
    }
}

/// Heap this module holds, for the own-memory series: the caches (measured with mallinfo2:
/// 33 KiB per framehop cache, 6 KiB of memos per slot) and the section copies.
pub fn heap_bytes() -> u64 {
    if POOL.load(Ordering::Acquire).is_null() {
        return 0;
    }
    const PER_SLOT: u64 = CACHE_WAYS as u64 * (33 << 10) + (6 << 10);
    let copied = BUILDER.try_lock().ok().and_then(|b| b.as_ref().map(|b| b.copied_bytes as u64)).unwrap_or(0);
    SLOTS as u64 * PER_SLOT + COPIED_BYTES_SEEN.load(Ordering::Relaxed).max(copied)
}

/// The builder's copied bytes as last seen, for [`heap_bytes`] when the builder is busy.
static COPIED_BYTES_SEEN: AtomicU64 = AtomicU64::new(0);

/// Whether an unwinder is published (hooks can use it).
pub fn ready() -> bool {
    !UNWINDER.load(Ordering::Acquire).is_null()
}

/// [`refresh`] until an unwinder is published: a concurrent caller (another test) may hold the
/// builder, and `refresh` then returns at once. For tests (the hooks never wait).
pub fn refresh_until_ready() {
    for _ in 0..1000 {
        refresh();
        if ready() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("no unwinder published");
}

/// Whether the builder gave up (too many module changes or too much copied data).
pub fn gave_up() -> bool {
    BUILDER.try_lock().ok().and_then(|b| b.as_ref().map(|b| b.gave_up)).unwrap_or(false)
}

/// One module's unwind sections, read inside the loader's callback.
struct Sections {
    base: u64,
    /// Executable range `[lo, hi)` (the union of the PF_X PT_LOAD segments).
    text: (u64, u64),
    hdr_avma: u64,
    eh_frame_avma: u64,
    hdr_len: usize,
    eh_frame_len: usize,
    /// Copies of the two sections; None for the main program, whose sections are used in place.
    copy: Option<(Vec<u8>, Vec<u8>)>,
}

struct Walk {
    sections: Vec<Sections>,
    generation: (u64, u64),
    first: bool,
}

fn loader_generation() -> (u64, u64) {
    unsafe extern "C" fn first(info: *mut libc::dl_phdr_info, size: usize, data: *mut c_void) -> c_int {
        if size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
            // SAFETY: dl_iterate_phdr passes a valid info of `size` bytes and our pointer.
            unsafe { *data.cast::<(u64, u64)>() = ((*info).dlpi_adds, (*info).dlpi_subs) };
        }
        1
    }
    let mut g = (0u64, 0u64);
    // SAFETY: `first` matches the callback contract; `g` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(first), (&mut g as *mut (u64, u64)).cast()) };
    g
}

fn collect_sections() -> (Vec<Sections>, (u64, u64)) {
    let mut walk = Walk { sections: Vec::new(), generation: (0, 0), first: true };
    // SAFETY: the callback matches dl_iterate_phdr's contract; `walk` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(on_object), (&mut walk as *mut Walk).cast()) };
    (walk.sections, walk.generation)
}

unsafe extern "C" fn on_object(info: *mut libc::dl_phdr_info, size: usize, data: *mut c_void) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info of `size` bytes and our `data` pointer.
    let (info, walk) = unsafe { (&*info, &mut *data.cast::<Walk>()) };
    if size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
        walk.generation = (info.dlpi_adds, info.dlpi_subs);
    }
    let is_first = std::mem::replace(&mut walk.first, false);
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: the loader guarantees dlpi_phnum program headers at dlpi_phdr.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    // SAFETY: dlpi_name is null or a NUL-terminated string owned by the loader.
    let unnamed = info.dlpi_name.is_null() || unsafe { *info.dlpi_name } == 0;
    // The first object, unnamed, is the main program (as in `modules::snapshot`).
    let in_place = is_first && unnamed;
    // SAFETY: inside the callback the object is loaded and cannot be unloaded (the loader holds
    // its lock), so its segments are mapped.
    if let Some(s) = unsafe { sections_of(info.dlpi_addr, phdrs, in_place) } {
        walk.sections.push(s);
    }
    0
}

/// Locate (and unless `in_place`, copy) one object's `.eh_frame_hdr` and `.eh_frame`.
///
/// # Safety
/// The object's PT_LOAD segments must be mapped at `base + p_vaddr` for the whole call.
unsafe fn sections_of(base: u64, phdrs: &[libc::Elf64_Phdr], in_place: bool) -> Option<Sections> {
    let hdr_ph = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_EH_FRAME)?;
    let text = phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0).fold(
        None,
        |acc: Option<(u64, u64)>, p| {
            let (lo, hi) = (base + p.p_vaddr, base + p.p_vaddr + p.p_memsz);
            Some(acc.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))))
        },
    )?;
    // The file-backed part of the PT_LOAD segment holding `addr`, as `[addr, end)`.
    let mapped_from = |addr: u64| -> Option<(u64, u64)> {
        phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD)
            .map(|p| (base + p.p_vaddr, base + p.p_vaddr + p.p_filesz))
            .find(|&(lo, hi)| lo <= addr && addr < hi)
            .map(|(_, hi)| (addr, hi))
    };
    let hdr_avma = base + hdr_ph.p_vaddr;
    let (_, hdr_seg_end) = mapped_from(hdr_avma)?;
    let hdr_len = usize::try_from(hdr_ph.p_memsz.min(hdr_seg_end - hdr_avma)).ok()?;
    // SAFETY: `[hdr_avma, hdr_avma + hdr_len)` lies in the file-backed part of a mapped PT_LOAD
    // segment (the caller's guarantee).
    let hdr = unsafe { std::slice::from_raw_parts(hdr_avma as *const u8, hdr_len) };
    let eh_frame_avma = eh_frame_ptr(hdr, hdr_avma)?;
    let (_, seg_end) = mapped_from(eh_frame_avma)?;
    // SAFETY: as above, the rest of the segment from `eh_frame_avma` is mapped.
    let seg = unsafe { std::slice::from_raw_parts(eh_frame_avma as *const u8, (seg_end - eh_frame_avma) as usize) };
    let eh_frame_len = eh_frame_len(seg);
    if eh_frame_len == 0 {
        return None;
    }
    let eh_frame = &seg[..eh_frame_len];
    Some(Sections {
        base,
        text,
        hdr_avma,
        eh_frame_avma,
        hdr_len: hdr.len(),
        eh_frame_len: eh_frame.len(),
        copy: (!in_place).then(|| (hdr.to_vec(), eh_frame.to_vec())),
    })
}

/// The address of `.eh_frame` from an `.eh_frame_hdr` at `hdr_avma`, read by gimli (version 1,
/// any pointer encoding the linker chose); None for anything else.
fn eh_frame_ptr(hdr: &[u8], hdr_avma: u64) -> Option<u64> {
    let bases = gimli::BaseAddresses::default().set_eh_frame_hdr(hdr_avma);
    let parsed = gimli::EhFrameHdr::new(hdr, gimli::LittleEndian).parse(&bases, 8).ok()?;
    match parsed.eh_frame_ptr() {
        gimli::Pointer::Direct(address) => Some(address),
        gimli::Pointer::Indirect(_) => None,
    }
}

/// Length of the `.eh_frame` at the start of `seg`: its CIEs and FDEs up to and including the
/// zero terminator, or up to the end of `seg` when there is none.
fn eh_frame_len(seg: &[u8]) -> usize {
    let mut at = 0usize;
    while let Some(len) = seg.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap())) {
        let entry = match len {
            0 => return at + 4,
            0xffff_ffff => match seg.get(at + 4..at + 12) {
                Some(b) => match usize::try_from(u64::from_le_bytes(b.try_into().unwrap())) {
                    Ok(l) => l.saturating_add(12),
                    Err(_) => return at,
                },
                None => return at,
            },
            l => l as usize + 4,
        };
        match at.checked_add(entry) {
            Some(next) if next <= seg.len() => at = next,
            _ => return at,
        }
    }
    at
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// `super::trace_x86_64` into a plain array. Inlined, so that the caller's frame follows it.
    #[inline(always)]
    fn trace_x86_64(pool: &Pool, out: &mut [u64], own_text: (u64, u64)) -> usize {
        let mut buf = [MaybeUninit::uninit(); 160];
        let mut frames = FrameBuf::new(&mut buf[..out.len()]);
        let n = super::trace_x86_64(pool, &mut frames, own_text);
        out[..n].copy_from_slice(&frames.frames()[..n]);
        n
    }

    fn dwarf_trace() -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        backtrace::trace(|f| {
            v.push((f.ip() as u64, f.symbol_address() as u64));
            v.len() < 128
        });
        v
    }

    /// The CFI frames after `probe`'s (`cfi[0]` in `trace`, `cfi[1]` in `probe`) and the
    /// `backtrace` frames after the one whose function is `probe`.
    fn after_probe(cfi: &[u64], dwarf: &[(u64, u64)], probe: u64) -> (Vec<u64>, Vec<u64>) {
        assert!(cfi.len() >= 2, "cfi gave {} frames", cfi.len());
        assert!(cfi[1] > probe && cfi[1] - probe < 4096, "cfi[1] {:#x} not in probe {probe:#x}", cfi[1]);
        let at = dwarf.iter().position(|&(_, f)| f == probe).expect("probe in backtrace");
        (cfi[2..].to_vec(), dwarf[at + 1..].iter().map(|&(ip, _)| ip).collect())
    }

    /// `dwarf` may end with libgcc's end-of-stack marker (ip 0), which `kept_frames` drops too.
    fn assert_same(cfi: &[u64], dwarf: &[u64], at_least: usize) {
        let end = dwarf.iter().position(|&ip| ip < 4096).unwrap_or(dwarf.len());
        let dwarf = &dwarf[..end];
        let same = cfi.iter().zip(dwarf).take_while(|(a, b)| a == b).count();
        assert!(
            same >= at_least.min(dwarf.len()) && dwarf.len() >= at_least,
            "{same} frames agree, want {at_least}\ncfi:   {cfi:x?}\ndwarf: {dwarf:x?}"
        );
        assert_eq!(cfi, dwarf, "the whole stacks differ");
    }

    #[inline(never)]
    fn probe(out: &mut [u64]) -> (usize, Vec<(u64, u64)>) {
        let n = trace(out, (0, 0));
        let d = dwarf_trace();
        (black_box(n), d)
    }
    #[inline(never)]
    fn chain1(out: &mut [u64]) -> (usize, Vec<(u64, u64)>) {
        let r = probe(out);
        (black_box(r.0) ^ black_box(1) ^ 1, r.1)
    }
    #[inline(never)]
    fn chain2(out: &mut [u64]) -> (usize, Vec<(u64, u64)>) {
        let r = chain1(out);
        (black_box(r.0) ^ black_box(2) ^ 2, r.1)
    }
    #[inline(never)]
    fn chain3(out: &mut [u64]) -> (usize, Vec<(u64, u64)>) {
        let r = chain2(out);
        (black_box(r.0) ^ black_box(3) ^ 3, r.1)
    }

    #[test]
    fn matches_backtrace_through_this_crates_frames() {
        refresh_until_ready();
        let mut out = [0u64; 128];
        // Twice: a cold cache, then a warm one.
        for _ in 0..2 {
            let (n, dwarf) = chain3(&mut out);
            let (c, d) = after_probe(&out[..n], &dwarf, probe as *const () as usize as u64);
            assert_same(&c, &d, 10);
        }
    }

    // -- Through glibc's qsort, built without frame pointers.

    type Captured = (Vec<u64>, Vec<(u64, u64)>, Vec<u64>);
    static QSORT_RESULT: Mutex<Option<Captured>> = Mutex::new(None);

    extern "C" fn compare_and_capture(a: *const c_void, b: *const c_void) -> c_int {
        let mut slot = QSORT_RESULT.lock().unwrap();
        if slot.is_none() {
            let mut out = [0u64; 128];
            let n = trace(&mut out, (0, 0));
            let d = dwarf_trace();
            let mut fp = [0u64; 32];
            let nf = unwind::current_thread_stack().map_or(0, |s| unwind::frame_pointer_walk(&mut fp, s));
            *slot = Some((out[..n].to_vec(), d, fp[..nf].to_vec()));
        }
        // SAFETY: qsort passes pointers to elements of the u32 array below.
        let (a, b) = unsafe { (*a.cast::<u32>(), *b.cast::<u32>()) };
        a.cmp(&b) as c_int
    }

    fn in_libc(addr: u64) -> bool {
        // SAFETY: an all-zero Dl_info (null pointers) is a valid out-buffer.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: dladdr fills `info` for any address.
        if unsafe { libc::dladdr(addr as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
            return false;
        }
        // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
        unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy().contains("libc.so")
    }

    #[inline(never)]
    fn sort_in_libc() {
        let mut v: Vec<u32> = (0..64u32).map(|i| i.wrapping_mul(2_654_435_761) >> 7).collect();
        // SAFETY: a valid array of 64 u32 and a comparator for u32.
        unsafe { libc::qsort(v.as_mut_ptr().cast(), v.len(), 4, Some(compare_and_capture)) };
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn matches_backtrace_through_libc_without_frame_pointers() {
        refresh_until_ready();
        for _ in 0..2 {
            *QSORT_RESULT.lock().unwrap() = None;
            sort_in_libc();
            let (cfi, dwarf, fp) = QSORT_RESULT.lock().unwrap().take().unwrap();
            let (c, d) = after_probe(&cfi, &dwarf, compare_and_capture as *const () as usize as u64);
            assert!(in_libc(d[0]), "the comparator's caller {:#x} is not in libc", d[0]);
            assert_same(&c, &d, 10);
            // The frame-pointer walk (fp[0] in the comparator) cannot follow this stack, so
            // this is a test of the CFI unwinder, not of frame pointers.
            assert!(fp.len() < 11 || fp[1..11] != d[..10], "fp {fp:x?}\ndwarf {d:x?}");
        }
    }

    #[test]
    fn matches_backtrace_in_a_new_thread() {
        refresh_until_ready();
        std::thread::spawn(|| {
            let mut out = [0u64; 128];
            let (n, dwarf) = chain3(&mut out);
            let (c, d) = after_probe(&out[..n], &dwarf, probe as *const () as usize as u64);
            assert_same(&c, &d, 6);
        })
        .join()
        .unwrap();
    }

    /// The current stack unwound with `warm` (whose caches remember earlier unwinds) and with a
    /// pool that has never unwound, innermost frame (this function's) dropped: the two unwinds
    /// start at different instructions of it.
    /// (`len` frames at most.)
    #[inline(never)]
    fn unwound_both_ways(warm: &Pool, len: usize) -> (Vec<u64>, Vec<u64>) {
        let fresh = Pool::new();
        let (mut a, mut b) = ([0u64; 160], [0u64; 160]);
        let na = trace_x86_64(warm, &mut a[..len], (0, 0));
        let nb = trace_x86_64(&fresh, &mut b[..len], (0, 0));
        (a[1..na.max(1)].to_vec(), b[1..nb.max(1)].to_vec())
    }

    #[inline(never)]
    fn via_a(depth: u32, warm: &Pool, len: usize) -> (Vec<u64>, Vec<u64>) {
        let r = if depth == 0 { unwound_both_ways(warm, len) } else { via_b(depth - 1, warm, len) };
        std::hint::black_box(r)
    }

    #[inline(never)]
    fn via_b(depth: u32, warm: &Pool, len: usize) -> (Vec<u64>, Vec<u64>) {
        let r = if depth == 0 { unwound_both_ways(warm, len) } else { via_a(depth - 1, warm, len) };
        std::hint::black_box(r)
    }

    /// Unwinds that copied a remembered tail.
    pub static MEMO_REUSES: AtomicU64 = AtomicU64::new(0);

    #[test]
    fn remembered_unwinds_equal_fresh_ones() {
        refresh_until_ready();
        let warm = Pool::new();
        let reuses_before = MEMO_REUSES.load(Ordering::Relaxed);
        // The same stack slots hold different return addresses from one call to the next
        // (via_a and via_b swap places), so a memo that trusted positions alone would be wrong.
        let mut cases = vec![(true, 6), (true, 6), (false, 6), (true, 3), (true, 9), (false, 9), (false, 2), (true, 9)];
        // Then a deterministic mix of depths, so the remembered tail moves up and down.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..60 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push((x & 1 == 0, (x >> 8) as u32 % 12));
        }
        for (start_a, depth) in cases {
            let (remembered, fresh) = if start_a { via_a(depth, &warm, 80) } else { via_b(depth, &warm, 80) };
            assert!(fresh.len() > depth as usize + 2, "fresh unwind: {fresh:x?}");
            assert_eq!(remembered, fresh, "start_a {start_a} depth {depth}");
        }
        // Other tests unwind meanwhile, so only a lower bound: the repeated calls reused tails.
        assert!(MEMO_REUSES.load(Ordering::Relaxed) - reuses_before >= 30);
    }

    /// As above, with outputs shorter than the stack (a memo then ends before the outermost
    /// frame, at a frame it was not stepped past) and stacks deeper than a memo holds.
    #[test]
    fn remembered_unwinds_equal_fresh_ones_cut_short_or_deep() {
        refresh_until_ready();
        let warm = Pool::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..90 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = [5, 12, 160][i % 3];
            let depth = if len > MEMO_FRAMES { 100 + (x >> 8) as u32 % 3 } else { (x >> 8) as u32 % 16 };
            let (remembered, fresh) = if x & 1 == 0 { via_a(depth, &warm, len) } else { via_b(depth, &warm, len) };
            assert!(fresh.len() + 1 >= len.min(depth as usize + 3), "fresh unwind: {fresh:x?}");
            assert_eq!(remembered, fresh, "depth {depth} len {len}");
        }
    }

    #[test]
    fn all_slots_busy_gives_up() {
        refresh_until_ready();
        // A pool of its own: the other tests unwind with the global one meanwhile.
        let pool = Pool::new();
        let claimed: Vec<&Slot> = std::iter::from_fn(|| claim(&pool, 0)).take(SLOTS + 1).collect();
        assert_eq!(claimed.len(), SLOTS);
        let mut out = [0u64; 64];
        assert_eq!(trace_x86_64(&pool, &mut out, (0, 0)), 0);
        for s in claimed {
            s.busy.store(false, Ordering::Release);
        }
        assert!(trace_x86_64(&pool, &mut out, (0, 0)) > 3);
    }

    #[test]
    fn addresses_outside_every_module_are_refused() {
        let p = Published {
            unwinder: FhUnwinder::new(),
            known: vec![(0x1000, 0x2000), (0x5000, 0x6000)],
            frame_pointer_functions: vec![(0x1100, 0x1180), (0x1200, 0x1300)],
        };
        assert!(p.keeps_frame_pointer(0x1100) && p.keeps_frame_pointer(0x12ff));
        assert!(!p.keeps_frame_pointer(0x1180) && !p.keeps_frame_pointer(0x10ff) && !p.keeps_frame_pointer(0x1300));
        let knows = |a| p.known_range(a).is_some();
        assert!(!knows(0xfff) && knows(0x1000) && knows(0x1fff) && !knows(0x2000));
        assert!(!knows(0x4fff) && knows(0x5800) && !knows(0x6000) && !knows(0));
        assert_eq!(p.known_range(0x5800), Some((0x5000, 0x6000)));
    }

    #[test]
    fn stack_reader_refuses_outside_reads() {
        let marker = 0u64;
        let sp = black_box(&marker) as *const u64 as u64;
        let stack = unwind::current_thread_stack().unwrap();
        let mut r = StackReader::new(stack, sp).unwrap();
        assert_eq!(r.read(sp), Ok(0));
        assert_eq!(r.read(sp - 8), Err(()));
        assert_eq!(r.read(sp + 1), Err(()));
        assert_eq!(r.read(stack.hi()), Err(()));
        assert!(r.read(stack.hi() - 8).is_ok());
        assert_eq!(r.read_pair(sp).map(|(a, _)| a), Ok(0));
        assert_eq!(r.read_pair(sp - 8), Err(()));
        assert_eq!(r.read_pair(sp + 4), Err(()));
        assert_eq!(r.read_pair(stack.hi() - 8), Err(()));
        assert!(r.read_pair(stack.hi() - 16).is_ok());
        assert!(StackReader::new(stack, stack.hi()).is_none());
        assert!(StackReader::new(stack, 4096).is_none());
    }

    #[test]
    fn eh_frame_parsing() {
        // pcrel sdata4: eh_frame 0x100 bytes before the field at hdr + 4; then an FDE count of 0.
        let hdr = [1u8, 0x1b, 0x03, 0x3b, 0x00, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(eh_frame_ptr(&hdr, 0x1000), Some(0x1004 - 0x100));
        assert_eq!(eh_frame_ptr(&[2u8, 0x1b, 3, 0x3b, 0, 0, 0, 0, 0, 0, 0, 0], 0x1000), None);
        assert_eq!(eh_frame_ptr(&hdr[..6], 0x1000), None, "truncated");
        // Two entries (8 and 12 bytes with their length words), then the terminator.
        let mut seg = vec![4u8, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0];
        seg.extend([0u8; 8]);
        seg.extend([0u8; 4]);
        seg.extend([0xaa; 16]);
        assert_eq!(eh_frame_len(&seg), 24);
        // No terminator: up to the last whole entry.
        assert_eq!(eh_frame_len(&seg[..22]), 20);
        assert_eq!(eh_frame_len(&[0xff, 0xff, 0xff, 0xff, 1]), 0);
    }

    #[test]
    fn copies_are_reused_and_generations_skip_work() {
        refresh_until_ready();
        let before = UNWINDER.load(Ordering::Acquire);
        refresh_until_ready();
        assert_eq!(UNWINDER.load(Ordering::Acquire), before, "nothing changed: same unwinder");
        let (sections, _) = collect_sections();
        assert!(sections[0].copy.is_none(), "the main program's sections are used in place");
        assert!(sections.iter().skip(1).all(|s| s.copy.is_some()));
        let libc = sections.iter().find(|s| in_libc(s.text.0)).expect("libc has unwind data");
        assert!(libc.hdr_len > 1024 && libc.eh_frame_len > libc.hdr_len);
    }

    /// Not a test of correctness: prints the cost of both unwinders on the same stack.
    #[test]
    fn cfi_beats_backtrace() {
        refresh_until_ready();
        fn recurse(depth: usize, f: &mut dyn FnMut()) -> usize {
            if depth == 0 {
                f();
                return 0;
            }
            black_box(recurse(depth - 1, f)) + 1
        }
        let iters = 2000;
        let mut out = [0u64; 80];
        let (mut cfi_ns, mut bt_ns, mut frames) = (0u128, 0u128, 0);
        recurse(10, &mut || {
            frames = trace(&mut out, (0, 0));
            let t = std::time::Instant::now();
            for _ in 0..iters {
                black_box(trace(black_box(&mut out), (0, 0)));
            }
            cfi_ns = t.elapsed().as_nanos() / iters;
            let t = std::time::Instant::now();
            for _ in 0..iters {
                let mut n = 0;
                // SAFETY: no other unwinder state is shared with this test thread.
                unsafe {
                    backtrace::trace_unsynchronized(|f| {
                        out[n] = f.ip() as u64;
                        n += 1;
                        n < out.len()
                    })
                };
                black_box(n);
            }
            bt_ns = t.elapsed().as_nanos() / iters;
        });
        println!("{frames} frames: cfi {cfi_ns} ns per stack, backtrace {bt_ns} ns per stack");
        assert!(frames > 10);
    }
}
