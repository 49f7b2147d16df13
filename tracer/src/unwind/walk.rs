//! The frame-pointer walk: bounded, never faulting, stopping at the first doubtful record.

use super::*;

/// Walk the frame-pointer chain starting at the caller of this function.
///
/// Writes return addresses (innermost first, `out[0]` in the caller) into `out` and returns how
/// many. Never faults: every frame record is checked to lie within this thread's stack, between
/// the current stack pointer and `stack.hi() - 16`, to be aligned, and to lie above the previous
/// one; the walk stops at the first violation, at a return address in the first page, or when
/// `out` is full. Returns 0 when the stack pointer is not within `stack` (a signal alternate
/// stack, a fiber): the caller should then use the DWARF unwinder. No allocation, no lock, no
/// system call.
#[inline(never)]
pub fn frame_pointer_walk(out: &mut [u64], stack: StackBounds) -> usize {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        // A slot in this function's frame. Its address, passed into the asm, makes the compiler
        // set up the frame (the prologue that pushes the caller's frame pointer and points ours
        // at the record) before the asm runs, wherever it would otherwise place the prologue.
        let anchor = 0u8;
        let anchor_addr = &anchor as *const u8;
        let fp: u64;
        // SAFETY: reads the frame-pointer register only; the anchor operand is not dereferenced.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            core::arch::asm!(
                "mov {fp}, rbp /* {anchor} */",
                fp = lateout(reg) fp,
                anchor = in(reg) anchor_addr,
                options(nostack, preserves_flags, readonly),
            );
            #[cfg(target_arch = "aarch64")]
            core::arch::asm!(
                "mov {fp}, x29 /* {anchor} */",
                fp = lateout(reg) fp,
                anchor = in(reg) anchor_addr,
                options(nostack, preserves_flags, readonly),
            );
        }
        // Below every frame record of this walk (ours included), at or above the stack pointer.
        let floor = anchor_addr as u64;
        if !stack.contains(floor) {
            return 0;
        }
        // SAFETY: `floor` is in this thread's current stack and in `[lo, hi)`, so by the
        // `StackBounds` invariant all of `[floor, hi)` is readable (it lies above the stack
        // pointer).
        unsafe { walk_chain(fp, floor, stack.hi(), out) }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (out, stack);
        0
    }
}

/// Follow frame records from `fp`; the checks are those of [`frame_pointer_walk`].
///
/// # Safety
/// Every address in `[floor, hi)` must be readable.
#[inline(always)]
pub(super) unsafe fn walk_chain(mut fp: u64, mut floor: u64, hi: u64, out: &mut [u64]) -> usize {
    let Some(last) = hi.checked_sub(RECORD) else { return 0 };
    let mut n = 0;
    while n < out.len() {
        if fp < floor || fp > last || fp & (FRAME_ALIGN - 1) != 0 {
            break;
        }
        let record = fp as *const u64;
        // SAFETY: floor <= fp <= hi - 16 and fp is 8-aligned, so both aligned words of the
        // record lie in [floor, hi), which the caller guarantees readable.
        let (next, ret) = unsafe { (record.read_volatile(), record.add(1).read_volatile()) };
        let ret = strip_return_address(ret);
        if ret < MIN_CODE_ADDR {
            break;
        }
        out[n] = ret;
        n += 1;
        // The next record must lie wholly above this one: the chain strictly increases.
        floor = fp + RECORD;
        fp = next;
    }
    n
}

/// Remove a pointer-authentication code from a return address (aarch64 with pac-ret).
#[inline(always)]
fn strip_return_address(ret: u64) -> u64 {
    #[cfg(target_arch = "aarch64")]
    {
        let mut lr = ret;
        // SAFETY: XPACLRI (HINT #7) strips the PAC from x30 and is a no-op on CPUs without
        // pointer authentication; it touches no memory.
        unsafe {
            core::arch::asm!("hint #7", inout("x30") lr, options(nomem, nostack, preserves_flags));
        }
        lr
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        ret
    }
}
