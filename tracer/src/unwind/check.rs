//! The start-up check that leaktrace's own frames keep frame pointers (cfi.rs steps over them
//! by their frame records).

use super::*;

/// Start-up check (not for a hook: it takes a DWARF backtrace and may allocate) that a
/// frame-pointer walk works in this build on this thread: the architecture is supported, this
/// thread's stack bounds are known, and a walk through a chain of this crate's functions gives
/// the same return addresses as `backtrace::trace`. False when the crate was built without
/// `-C force-frame-pointers=yes` (the walk then skips frames). Says nothing about the host
/// program's frames.
pub fn frame_pointers_usable() -> bool {
    if !SUPPORTED {
        return false;
    }
    let Some(stack) = current_thread_stack() else { return false };
    let mut fp = [0u64; 8];
    let mut dwarf = [(0u64, 0u64); 48];
    let (nf, nd) = check_chain_3(stack, &mut fp, &mut dwarf);
    chain_matches(&fp[..nf], &dwarf[..nd], check_probe as *const () as usize as u64, 3)
}

/// True when `fp` (a walk from `probe`) and `dwarf` (`(ip, function start)` pairs from
/// `backtrace::trace` in `probe`) agree: `fp[0]` is in `probe`, and the `depth` return
/// addresses after it are those after `probe`'s frame in `dwarf`.
pub(super) fn chain_matches(fp: &[u64], dwarf: &[(u64, u64)], probe: u64, depth: usize) -> bool {
    let Some(at) = dwarf.iter().position(|&(_, func)| func == probe) else { return false };
    let after = &dwarf[at + 1..];
    fp.len() > depth
        && fp[0] > probe
        && fp[0] - probe < (1 << 16)
        && after.len() >= depth
        && fp[1..=depth].iter().zip(after).all(|(&a, &(b, _))| a == b)
}

// Distinct constants keep these from being merged, and the work after each call keeps the
// calls from becoming tail calls (which would drop the frame).
#[inline(never)]
fn check_chain_3(stack: StackBounds, fp: &mut [u64; 8], dwarf: &mut [(u64, u64); 48]) -> (usize, usize) {
    let r = check_chain_2(stack, fp, dwarf);
    (std::hint::black_box(r.0) ^ std::hint::black_box(3) ^ 3, r.1)
}

#[inline(never)]
fn check_chain_2(stack: StackBounds, fp: &mut [u64; 8], dwarf: &mut [(u64, u64); 48]) -> (usize, usize) {
    let r = check_chain_1(stack, fp, dwarf);
    (std::hint::black_box(r.0) ^ std::hint::black_box(2) ^ 2, r.1)
}

#[inline(never)]
fn check_chain_1(stack: StackBounds, fp: &mut [u64; 8], dwarf: &mut [(u64, u64); 48]) -> (usize, usize) {
    let r = check_probe(stack, fp, dwarf);
    (std::hint::black_box(r.0) ^ std::hint::black_box(1) ^ 1, r.1)
}

#[inline(never)]
fn check_probe(stack: StackBounds, fp: &mut [u64; 8], dwarf: &mut [(u64, u64); 48]) -> (usize, usize) {
    let nf = frame_pointer_walk(fp, stack);
    let mut nd = 0;
    backtrace::trace(|f| {
        dwarf[nd] = (f.ip() as u64, f.symbol_address() as u64);
        nd += 1;
        nd < dwarf.len()
    });
    (std::hint::black_box(nf), nd)
}
