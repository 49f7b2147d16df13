//! Writing the trace file's regions through the shared mapping.
//!
//! Guarantees, for every region (a reader may look at any moment, or after a SIGKILL):
//! - Space is reserved with an atomic `fetch_add` on a counter in the header, so writers never
//!   share bytes and no lock is taken: a signal handler or a fork cannot leave one held.
//! - A record becomes visible by a final release store of the word the reader checks first (a
//!   ring record's sequence number, a stack's head, a live slot's key, a metadata length); the
//!   rest of the record carries a check, so a record torn by a kill or lapped by a later writer is
//!   rejected, not misread.
//! - Nothing grows: a full stack region or live table counts a drop in the header and the
//!   allocation is still recorded without that detail.
//!
//! The mapping is created once and never unmapped, so a `&Mapped` stays valid for the life of
//! the process (including in a forked child, where it is simply no longer written).

use std::ops::ControlFlow;
#[cfg(test)]
use std::sync::atomic::AtomicU16;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use leaktrace_format::layout::{self, ev, hdr, live, Region, EVENT_SIZE, LIVE_SLOT_SIZE};
use leaktrace_format::Event;

/// What the live table remembers of a sampled allocation.
#[derive(Clone, Copy)]
pub struct LiveEntry {
    pub size: u64,
    pub time_ns: u64,
    pub stack_id: u32,
    pub mean_bytes: u32,
}

/// A live-table slot as the writer sees it: one reference per slot, so its fields are reached
/// from one address instead of the mapping's base being re-read after each atomic access.
#[repr(C)]
struct LiveSlot {
    key: AtomicU64,
    size: AtomicU64,
    time_ns: AtomicU64,
    stack_id: AtomicU32,
    mean_bytes: AtomicU32,
}
const _: () = assert!(
    std::mem::size_of::<LiveSlot>() == LIVE_SLOT_SIZE
        && std::mem::offset_of!(LiveSlot, key) == live::KEY
        && std::mem::offset_of!(LiveSlot, size) == live::SIZE
        && std::mem::offset_of!(LiveSlot, time_ns) == live::TIME_NS
        && std::mem::offset_of!(LiveSlot, stack_id) == live::STACK_ID
        && std::mem::offset_of!(LiveSlot, mean_bytes) == live::MEAN_BYTES
);

/// Counting filter in front of the live table: a zero counter proves an address was never
/// sampled (or has been freed), so the free of an unsampled pointer reads one byte and returns.
/// Counters saturate at 255 and then stay there, which only costs lookups, never correctness.
const FILTER_BITS: u32 = 15;
static FILTER: [AtomicU8; 1 << FILTER_BITS] = [const { AtomicU8::new(0) }; 1 << FILTER_BITS];

#[inline(always)]
fn filter_index(addr: u64) -> usize {
    // Allocations are 16-byte aligned: drop the bits that never vary, then multiplicative hash.
    ((addr >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FILTER_BITS)) as usize
}

/// Might `addr` be in the live table? The free fast path; false means certainly not.
#[inline(always)]
pub(crate) fn maybe_sampled(addr: u64) -> bool {
    FILTER[filter_index(addr)].load(Ordering::Relaxed) != 0
}

fn filter_add(addr: u64) {
    let _ = FILTER[filter_index(addr)]
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| (c < u8::MAX).then_some(c + 1));
}

fn filter_remove(addr: u64) {
    let _ = FILTER[filter_index(addr)]
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| (c > 0 && c < u8::MAX).then(|| c - 1));
}

/// The stack index's hash: a multiply-xor per frame, finished with one full mix.
fn index_hash(frames: &[u64]) -> u64 {
    let h =
        frames.iter().fold(frames.len() as u64, |h, &f| (h ^ f).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29));
    layout::mix(h)
}

/// `n % d`, given `recip = floor((2^64 - 1) / d)` (see [`Mapped::ring_slot`]).
#[inline(always)]
fn remainder(n: u64, d: u64, recip: u64) -> u64 {
    let q = ((u128::from(n) * u128::from(recip)) >> 64) as u64;
    let r = n - q * d;
    if r >= d {
        r - d
    } else {
        r
    }
}

/// How far [`Mapped::prefault_step`] has got in one trace. Advanced by whoever wins `busy`:
/// the helper thread, or in a process without one a hook past the gate. Atomics, not a
/// lock, so that a hook never waits and the RSS series can read how far it got.
#[derive(Default)]
pub struct PrefaultProgress {
    busy: AtomicBool,
    unsupported: AtomicBool,
    live_done: AtomicU64,
    stacks_done: AtomicU64,
    /// Ring bytes populated or written, counted from the first record like the head (so past
    /// the ring's length once the ring has wrapped).
    ring_done: AtomicU64,
    ring_written_then: AtomicU64,
    /// The ring head at which a hook should run the next step ([`Mapped::prefault_due`]).
    due_head: AtomicU64,
}

/// Who runs a [`Mapped::prefault_step`]: what one step may cost depends on whom it stalls.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Prefaulter {
    /// The helper thread: nobody waits for it but the program's own mmap calls.
    Helper,
    /// An allocation hook of a process without the helper: the allocation waits.
    Hook,
}

/// Most a hook populates in one step: one madvise of 4 pages, ~5 µs on tmpfs and ~16-20 µs on
/// ext4 measured (see [`Mapped::prefault_step`]): small enough for one call never to stall
/// long, large enough that the steps (one sampled call in ~1,500 at 4 KiB sampling) stay out
/// of p99.9. 16 pages a step read p99.99 21 µs on tmpfs and the 50-101 µs bucket on ext4.
const HOOK_STEP: u64 = 16 << 10;
/// How far ahead of the ring head a hook keeps the ring populated: between three and four steps.
const HOOK_AHEAD: u64 = 4 * HOOK_STEP;
/// How far past its used end the stack table is kept populated.
const STACKS_AHEAD: u64 = 4 * HOOK_STEP;

pub struct Mapped {
    base: *mut u8,
    len: usize,
    live_capacity: u64,
    ring_capacity: u64,
    /// `floor((2^64 - 1) / ring_capacity)`, for [`Mapped::ring_slot`].
    ring_recip: u64,
    rss_capacity: u64,
    regions: [(u64, u64); layout::REGION_COUNT],
    /// Open-addressing index over the stack region: (check << 32 | stack id), 0 = empty.
    /// Process memory, not the file: it only speeds up deduplication.
    stack_index: Box<[AtomicU64]>,
    /// The highest live count published: the live-table tiers reached stay resident.
    peak_live: AtomicU64,
}

// SAFETY: all access to the mapping goes through atomics or through byte ranges reserved by an
// atomic fetch_add, so concurrent use from several threads never races on the same bytes.
unsafe impl Sync for Mapped {}
// SAFETY: the mapping is process-wide; which thread holds the pointer does not matter.
unsafe impl Send for Mapped {}

impl Mapped {
    /// # Safety
    /// `base` must point to a writable shared mapping of `len` bytes that stays mapped for the
    /// rest of the process, whose blocks are allocated on disk (so stores cannot SIGBUS), and
    /// whose header and regions were laid out by `plan`.
    pub unsafe fn new(base: *mut u8, len: usize, plan: &layout::Plan) -> Mapped {
        let (_, stacks_size) = plan.region(Region::Stacks);
        let index_len = ((stacks_size / 64).max(1024) * 2).next_power_of_two() as usize;
        let mut index = Vec::with_capacity(index_len);
        index.resize_with(index_len, || AtomicU64::new(0));
        Mapped {
            base,
            len,
            live_capacity: plan.live_capacity,
            ring_capacity: plan.ring_capacity,
            ring_recip: u64::MAX / plan.ring_capacity.max(1),
            rss_capacity: plan.rss_capacity,
            regions: plan.regions,
            stack_index: index.into_boxed_slice(),
            peak_live: AtomicU64::new(0),
        }
    }

    /// Every offset passed here is computed from the plan the mapping was laid out by (header
    /// fields, or a region start plus an index below that region's capacity), so it is in range
    /// and aligned to `width`; the debug assertion checks that, release builds do not pay for it.
    fn at(&self, off: usize, width: usize) -> *mut u8 {
        debug_assert!(off + width <= self.len && off.is_multiple_of(width.min(8)), "mapped access out of range");
        // SAFETY: `off + width <= len` by the invariant above, so the result is in the mapping.
        unsafe { self.base.add(off) }
    }

    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `at` checks bounds and 8-byte alignment; the mapping lives for the process and
        // is only ever accessed atomically at this offset by writers.
        unsafe { AtomicU64::from_ptr(self.at(off, 8).cast()) }
    }

    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as for `u64_at`, with 4-byte width and alignment.
        unsafe { AtomicU32::from_ptr(self.at(off, 4).cast()) }
    }

    #[cfg(test)]
    fn u16_at(&self, off: usize) -> &AtomicU16 {
        // SAFETY: as for `u64_at`, with 2-byte width and alignment.
        unsafe { AtomicU16::from_ptr(self.at(off, 2).cast()) }
    }

    fn u8_at(&self, off: usize) -> &AtomicU8 {
        // SAFETY: as for `u64_at`, with 1-byte width.
        unsafe { AtomicU8::from_ptr(self.at(off, 1)) }
    }

    pub fn header(&self, field: usize) -> &AtomicU64 {
        self.u64_at(field)
    }

    fn region_start(&self, r: Region) -> usize {
        self.regions[r as usize].0 as usize
    }

    /// Write the fixed header fields; called once before anything else is written.
    pub fn write_header(&self, pid: u32, start_unix_ns: u64, start_mono_ns: u64, mean: u64, rss_ms: u64) {
        let put_bytes = |off: usize, bytes: &[u8]| {
            for (i, &b) in bytes.iter().enumerate() {
                self.u8_at(off + i).store(b, Ordering::Relaxed);
            }
        };
        put_bytes(hdr::VERSION_MAJOR, &layout::VERSION_MAJOR.to_le_bytes());
        put_bytes(hdr::VERSION_MINOR, &layout::VERSION_MINOR.to_le_bytes());
        self.u32_at(hdr::HEADER_SIZE).store(layout::HEADER_SIZE as u32, Ordering::Relaxed);
        self.u64_at(hdr::FILE_SIZE).store(self.len as u64, Ordering::Relaxed);
        self.u32_at(hdr::PID).store(pid, Ordering::Relaxed);
        self.u32_at(hdr::POINTER_SIZE).store(8, Ordering::Relaxed);
        self.u64_at(hdr::START_UNIX_NS).store(start_unix_ns, Ordering::Relaxed);
        self.u64_at(hdr::START_MONO_NS).store(start_mono_ns, Ordering::Relaxed);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u32;
        self.u32_at(hdr::PAGE_SIZE).store(page, Ordering::Relaxed);
        self.u64_at(hdr::INITIAL_MEAN_BYTES).store(mean, Ordering::Relaxed);
        self.u64_at(hdr::CURRENT_MEAN_BYTES).store(mean, Ordering::Relaxed);
        self.u64_at(hdr::REQUESTED_MEAN_BYTES).store(mean, Ordering::Relaxed);
        for (i, (off, len)) in self.regions.iter().enumerate() {
            self.u64_at(hdr::REGIONS + i * 16).store(*off, Ordering::Relaxed);
            self.u64_at(hdr::REGIONS + i * 16 + 8).store(*len, Ordering::Relaxed);
        }
        self.u64_at(hdr::LIVE_CAPACITY).store(self.live_capacity, Ordering::Relaxed);
        self.u64_at(hdr::RING_CAPACITY).store(self.ring_capacity, Ordering::Relaxed);
        self.u64_at(hdr::RSS_CAPACITY).store(self.rss_capacity, Ordering::Relaxed);
        self.u64_at(hdr::RSS_INTERVAL_MS).store(rss_ms, Ordering::Relaxed);
        // Magic last: a reader that sees it sees a complete fixed header (release pairs with the
        // reader's read of the file after it observed the magic).
        put_bytes(hdr::MAGIC, &layout::MAGIC[..7]);
        std::sync::atomic::fence(Ordering::Release);
        self.u8_at(hdr::MAGIC + 7).store(layout::MAGIC[7], Ordering::Release);
    }

    // -----------------------------------------------------------------------------------------
    // Ring

    /// Append one event (its `seq` is ignored: the ring assigns it). Lock-free; a slower writer lapped by the ring loses its record (the
    /// check rejects the mix), it never blocks.
    #[inline(always)]
    pub(crate) fn push_event(&self, e: &Event) {
        let index = self.u64_at(hdr::RING_HEAD).fetch_add(1, Ordering::Relaxed);
        let seq = index + 1;
        let words = e.encode_words(seq);
        let rec = self.ring_record(self.ring_slot(index));
        // Invalidate the slot first so a reader never pairs the old sequence with new fields.
        rec[ev::SEQ / 8].store(0, Ordering::Relaxed);
        for (word, &w) in rec.iter().zip(&words).skip(1) {
            word.store(w, Ordering::Relaxed);
        }
        // Pairs with the reader, which takes the sequence number first and then checks the rest.
        rec[ev::SEQ / 8].store(seq, Ordering::Release);
    }

    /// `index % ring_capacity` (the slot of sequence number `index + 1`) by multiplying with
    /// the reciprocal taken in `new`: a 64-bit `div` takes 25 to 90 cycles, the multiplies a few.
    /// With `ring_recip = floor((2^64 - 1) / d)`, `index * ring_recip / 2^64` is more than
    /// `index / d - 1` (the reciprocal is short of `2^64 / d` by at most 1, and `index < 2^64`)
    /// and at most `index / d`, so its floor is the quotient or one less: one subtraction of `d`
    /// corrects the remainder.
    #[inline(always)]
    fn ring_slot(&self, index: u64) -> u64 {
        remainder(index, self.ring_capacity, self.ring_recip)
    }

    /// The six words of ring slot `slot` (below `ring_capacity`).
    #[inline(always)]
    fn ring_record(&self, slot: u64) -> &[AtomicU64; EVENT_SIZE / 8] {
        let off = self.region_start(Region::Ring) + slot as usize * EVENT_SIZE;
        debug_assert!(slot < self.ring_capacity);
        // SAFETY: the slot lies inside the ring region, so `at` checks (in debug builds) that the
        // whole record is in the mapping; records are 8-byte aligned (the region is 4096-aligned
        // and EVENT_SIZE a multiple of 8), and writers only access them atomically.
        unsafe { &*self.at(off, EVENT_SIZE).cast::<[AtomicU64; EVENT_SIZE / 8]>() }
    }

    // -----------------------------------------------------------------------------------------
    // Live table

    fn live_slot(&self, i: u64) -> usize {
        self.region_start(Region::Live) + (i as usize) * LIVE_SLOT_SIZE
    }

    /// The slot at offset `slot` (from [`Mapped::live_slot`] or [`Mapped::live_probe`]).
    #[inline(always)]
    fn live_slot_at(&self, slot: usize) -> &LiveSlot {
        // SAFETY: `slot` is the offset of a slot inside the live region, so `at` checks (in debug
        // builds) that all 32 bytes are in the mapping; slots are 8-byte aligned (the region is
        // 4096-aligned, slots 32 bytes), LiveSlot's layout is the file's (asserted above), and
        // writers access the slots only atomically.
        unsafe { &*self.at(slot, LIVE_SLOT_SIZE).cast::<LiveSlot>() }
    }

    /// Call `f` on the offset of each slot `addr` is looked for in, in the order of
    /// `layout::live_runs`, until it breaks; its value then, or None if it never did.
    ///
    /// The first tier's run is taken here without the iterator whenever that tier is not also
    /// the last (tables of 3 tiers' worth or more, all but the smallest files): a mix of the
    /// address and four slots from it in 8192, where the iterator's general tier arithmetic cost
    /// about a fifth of an insert or a remove. Nearly every lookup ends in that run.
    #[inline(always)]
    fn live_probe<T>(&self, addr: u64, mut f: impl FnMut(usize) -> ControlFlow<T>) -> Option<T> {
        const FIRST: u64 = layout::LIVE_FIRST_TIER;
        let start = self.region_start(Region::Live);
        let at = |i: u64| start + (i as usize) * LIVE_SLOT_SIZE;
        let fast = self.live_capacity >= 3 * FIRST;
        if fast {
            // `live_runs`' first run: the first tier is not the last, so it spans FIRST slots
            // (a power of two) from the address's start within them.
            let h = layout::live_first_start(addr, FIRST - 1);
            for i in 0..layout::LIVE_TIER_PROBE {
                if let ControlFlow::Break(t) = f(at((h + i) & (FIRST - 1))) {
                    return Some(t);
                }
            }
        }
        // Built only here: most lookups end in the first run, and its setup is not free.
        let mut runs = layout::live_runs(addr, self.live_capacity);
        if fast {
            runs.next();
        }
        for run in runs {
            for i in 0..run.len {
                if let ControlFlow::Break(t) = f(at(run.slot(i))) {
                    return Some(t);
                }
            }
        }
        None
    }

    /// Remember a sampled allocation. False if the table has no free slot along the address's
    /// runs (see `layout::live_runs`).
    pub fn live_insert(&self, addr: u64, e: LiveEntry) -> bool {
        let inserted = self.live_probe(addr, |slot| {
            let slot = self.live_slot_at(slot);
            let key = &slot.key;
            let cur = key.load(Ordering::Relaxed);
            if cur != layout::LIVE_EMPTY && cur != layout::LIVE_TOMBSTONE {
                return ControlFlow::Continue(());
            }
            // Claim the slot in the "being written" state; a live address is unique, so no
            // other thread can be inserting or removing this key.
            if key.compare_exchange(cur, addr | layout::LIVE_WRITING_BIT, Ordering::Acquire, Ordering::Relaxed).is_err()
            {
                return ControlFlow::Continue(());
            }
            ControlFlow::Break(slot)
        });
        if let Some(slot) = inserted {
            slot.size.store(e.size, Ordering::Relaxed);
            slot.time_ns.store(e.time_ns, Ordering::Relaxed);
            slot.stack_id.store(e.stack_id, Ordering::Relaxed);
            slot.mean_bytes.store(e.mean_bytes, Ordering::Relaxed);
            filter_add(addr);
            // Pairs with the acquire load in `live_remove` and with readers of the file.
            slot.key.store(addr, Ordering::Release);
            return true;
        }
        if self.u64_at(hdr::LIVE_DROPPED).fetch_add(1, Ordering::Relaxed) == 0 {
            crate::warn(
                "the live-allocation table is full; further sampled allocations are counted as dropped \
                 (raise LEAKTRACE_FILE_SIZE or LEAKTRACE_SAMPLE_BYTES)",
            );
        }
        false
    }

    /// Forget a sampled allocation, returning what was remembered, or None if it was not sampled.
    ///
    /// An empty slot ends the search, in any tier: slots never become empty again, so
    /// the insert that placed `addr` would have taken that slot (or an earlier one) itself.
    #[inline(always)]
    pub(crate) fn live_remove(&self, addr: u64) -> Option<LiveEntry> {
        let slot = self.live_slot_at(self.live_find(addr)?);
        let e = LiveEntry {
            size: slot.size.load(Ordering::Relaxed),
            time_ns: slot.time_ns.load(Ordering::Relaxed),
            stack_id: slot.stack_id.load(Ordering::Relaxed),
            mean_bytes: slot.mean_bytes.load(Ordering::Relaxed),
        };
        // Only a double free could race here; the CAS makes the second one find nothing.
        if slot.key.compare_exchange(addr, layout::LIVE_TOMBSTONE, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return None;
        }
        filter_remove(addr);
        Some(e)
    }

    /// Slots in the live table.
    pub fn live_capacity(&self) -> u64 {
        self.live_capacity
    }

    /// Call `f(address, size, stack_id)` for every committed entry of the live table (a
    /// snapshot: writers may change it meanwhile; an entry being written is skipped).
    pub fn for_each_live(&self, mut f: impl FnMut(u64, u64, u32)) {
        for i in 0..self.live_capacity {
            let slot = self.live_slot(i);
            let key = self.u64_at(slot + live::KEY).load(Ordering::Acquire);
            if key == layout::LIVE_EMPTY || key == layout::LIVE_TOMBSTONE || key & layout::LIVE_WRITING_BIT != 0 {
                continue;
            }
            let size = self.u64_at(slot + live::SIZE).load(Ordering::Relaxed);
            let stack_id = self.u32_at(slot + live::STACK_ID).load(Ordering::Relaxed);
            f(key, size, stack_id);
        }
    }

    /// The mapping's address range.
    pub fn range(&self) -> (u64, u64) {
        (self.base as u64, self.base as u64 + self.len as u64)
    }

    /// The offset of the slot holding `addr`.
    fn live_find(&self, addr: u64) -> Option<usize> {
        self.live_probe(addr, |slot| {
            let cur = self.live_slot_at(slot).key.load(Ordering::Acquire);
            match cur {
                layout::LIVE_EMPTY => ControlFlow::Break(None),
                _ if cur == addr => ControlFlow::Break(Some(slot)),
                _ => ControlFlow::Continue(()),
            }
        })
        .flatten()
    }

    // -----------------------------------------------------------------------------------------
    // Stack table

    fn stack_frames_equal(&self, id: u32, frames: &[u64]) -> bool {
        let off = self.region_start(Region::Stacks) + id as usize * layout::STACK_ALIGN;
        let head = self.u64_at(off).load(Ordering::Acquire);
        if (head & 0xffff) as usize != frames.len() {
            return false;
        }
        frames.iter().enumerate().all(|(i, &f)| self.u64_at(off + 8 + i * 8).load(Ordering::Relaxed) == f)
    }

    /// The id of this stack in the file, appending it if new. 0 if the region is full.
    pub fn intern_stack(&self, frames: &[u64]) -> u32 {
        if frames.is_empty() || frames.len() > layout::MAX_FRAMES {
            return 0;
        }
        // The index is process memory, so it can use a hash cheaper than the file's check: one
        // multiply per frame instead of a full mix (the check is computed only for new stacks).
        let hash = index_hash(frames);
        let tag = (hash >> 32) as u32;
        let mask = self.stack_index.len() - 1;
        let mut pending_id = 0u32;
        for probe in 0..64 {
            let entry = &self.stack_index[(hash as usize).wrapping_add(probe) & mask];
            let cur = entry.load(Ordering::Acquire);
            if cur != 0 {
                let id = cur as u32;
                if (cur >> 32) as u32 == tag && self.stack_frames_equal(id, frames) {
                    return id;
                }
                continue;
            }
            if pending_id == 0 {
                pending_id = self.append_stack(frames, layout::stack_check(frames));
                if pending_id == 0 {
                    return 0;
                }
            }
            // Pairs with the acquire load above in other threads looking up the same stack.
            match entry.compare_exchange(
                0,
                u64::from(tag) << 32 | u64::from(pending_id),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return pending_id,
                Err(now) => {
                    // Someone filled the slot first; if it is our stack, use theirs (ours stays
                    // in the file as a harmless duplicate).
                    let id = now as u32;
                    if (now >> 32) as u32 == tag && self.stack_frames_equal(id, frames) {
                        return id;
                    }
                }
            }
        }
        pending_id
    }

    fn append_stack(&self, frames: &[u64], check: u32) -> u32 {
        let (start, size) = self.regions[Region::Stacks as usize];
        let bytes = 8 + frames.len() as u64 * 8;
        let used = self.u64_at(hdr::STACKS_USED);
        // Offset 0 is reserved so that stack id 0 means "no stack".
        let _ = used.compare_exchange(0, 8, Ordering::Relaxed, Ordering::Relaxed);
        let at = used.fetch_add(bytes, Ordering::Relaxed);
        if at + bytes > size || (at / 8) > u64::from(u32::MAX) {
            used.fetch_sub(bytes, Ordering::Relaxed);
            if self.u64_at(hdr::STACKS_DROPPED).fetch_add(1, Ordering::Relaxed) == 0 {
                crate::warn(
                    "the stack table is full; new call stacks are recorded as unknown (raise LEAKTRACE_FILE_SIZE)",
                );
            }
            return 0;
        }
        let off = (start + at) as usize;
        for (i, &f) in frames.iter().enumerate() {
            self.u64_at(off + 8 + i * 8).store(f, Ordering::Relaxed);
        }
        // Pairs with the acquire load in `stack_frames_equal` and with file readers.
        self.u64_at(off).store(layout::stack_head(frames.len() as u16, check), Ordering::Release);
        (at / 8) as u32
    }

    // -----------------------------------------------------------------------------------------
    // Metadata log

    /// Append a framed metadata record (from `leaktrace_format::encode_meta`). False if full.
    pub fn append_meta(&self, framed: &[u8]) -> bool {
        let (start, size) = self.regions[Region::Meta as usize];
        let len = framed.len() as u64;
        let used = self.u64_at(hdr::META_USED);
        let at = used.fetch_add(len, Ordering::Relaxed);
        if at + len > size {
            used.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        let off = (start + at) as usize;
        // Everything but the length word first; the length commits the record.
        for i in (8..framed.len()).step_by(8) {
            let w = u64::from_le_bytes(framed[i..i + 8].try_into().unwrap_or_default());
            self.u64_at(off + i).store(w, Ordering::Relaxed);
        }
        let head = u64::from_le_bytes(framed[0..8].try_into().unwrap_or_default());
        // Pairs with readers, which stop at the first zero length.
        self.u64_at(off).store(head, Ordering::Release);
        true
    }

    // -----------------------------------------------------------------------------------------
    // RSS series (one writer at a time: whoever holds the tracer's housekeeping flag)

    /// Append an RSS sample and, at the same index of the own-memory series, the bytes of it that
    /// are leaktrace's own. When the series is full, every other sample is dropped and the
    /// spacing doubles, so the series always covers the whole run at bounded size. The peak is
    /// kept in the header, since halving may drop it. Returns true when the series was halved.
    pub fn push_rss(&self, t_ns: u64, rss_bytes: u64, own_bytes: u64) -> bool {
        let start = self.region_start(Region::Rss);
        let (own_start, own_len) = self.regions[Region::RssOwn as usize];
        let own_start = own_start as usize;
        let has_own = own_len >= self.rss_capacity * layout::RSS_OWN_SIZE as u64;
        let count_word = self.u64_at(hdr::RSS_COUNT);
        let mut count = count_word.load(Ordering::Relaxed);
        let mut halved = false;
        if count >= self.rss_capacity {
            let keep = self.rss_capacity / 2;
            // Shrink the visible count first, so a reader never sees half-moved samples as valid.
            count_word.store(0, Ordering::Release);
            for i in 0..keep as usize {
                let (src, dst) = (start + 2 * i * 16, start + i * 16);
                let t = self.u64_at(src).load(Ordering::Relaxed);
                let r = self.u64_at(src + 8).load(Ordering::Relaxed);
                self.u64_at(dst).store(t, Ordering::Relaxed);
                self.u64_at(dst + 8).store(r, Ordering::Relaxed);
                if has_own {
                    let o = self.u64_at(own_start + 2 * i * 8).load(Ordering::Relaxed);
                    self.u64_at(own_start + i * 8).store(o, Ordering::Relaxed);
                }
            }
            count = keep;
            count_word.store(count, Ordering::Release);
            halved = true;
        }
        let at = start + count as usize * 16;
        self.u64_at(at).store(t_ns, Ordering::Relaxed);
        self.u64_at(at + 8).store(rss_bytes, Ordering::Relaxed);
        if has_own {
            self.u64_at(own_start + count as usize * 8).store(own_bytes, Ordering::Relaxed);
        }
        count_word.store(count + 1, Ordering::Release);
        if rss_bytes > self.u64_at(hdr::RSS_PEAK_BYTES).load(Ordering::Relaxed) {
            self.u64_at(hdr::RSS_PEAK_NS).store(t_ns, Ordering::Relaxed);
            self.u64_at(hdr::RSS_PEAK_BYTES).store(rss_bytes, Ordering::Relaxed);
        }
        halved
    }

    /// Heap this trace holds outside the mapping: the stack table's index.
    pub fn own_heap_bytes(&self) -> u64 {
        (self.stack_index.len() * std::mem::size_of::<AtomicU64>()) as u64
    }

    /// Has the whole file disk blocks behind it? Until then (a dormant trace) only the header and
    /// the metadata region may be written.
    pub fn fully_reserved(&self) -> bool {
        self.u64_at(hdr::RESERVED_BYTES).load(Ordering::Acquire) >= self.len as u64
    }

    /// Bytes of the mapping the writer has stored into, so at most what of it is resident: the
    /// header, the used parts of the metadata, stack, RSS and ring regions, and the live-table
    /// tiers its entries reach (counted whole: entries land anywhere in a tier).
    pub fn touched_bytes(&self) -> u64 {
        let used = |r: Region, n: u64| n.min(self.regions[r as usize].1);
        let meta = used(Region::Meta, self.u64_at(hdr::META_USED).load(Ordering::Relaxed));
        let stacks = used(Region::Stacks, self.u64_at(hdr::STACKS_USED).load(Ordering::Relaxed));
        let rss_count = self.u64_at(hdr::RSS_COUNT).load(Ordering::Relaxed).min(self.rss_capacity);
        let rss = used(Region::Rss, rss_count * 16) + used(Region::RssOwn, rss_count * layout::RSS_OWN_SIZE as u64);
        let head = self.u64_at(hdr::RING_HEAD).load(Ordering::Relaxed);
        let ring = used(Region::Ring, head.min(self.ring_capacity) * EVENT_SIZE as u64);
        let peak_live = self.peak_live.load(Ordering::Relaxed);
        let live = if self.u64_at(hdr::SAMPLED_ALLOCS).load(Ordering::Relaxed) == 0 && peak_live == 0 {
            0
        } else {
            used(Region::Live, layout::live_tiers_for(peak_live, self.live_capacity) * LIVE_SLOT_SIZE as u64)
        };
        let page = |b: u64| layout::align_up(b, 4096);
        layout::HEADER_SIZE as u64 + page(meta) + page(stacks) + page(rss) + page(ring) + page(live)
    }

    // -----------------------------------------------------------------------------------------
    // Prefaulting

    /// Fault in pages the hooks are about to write: the tiers of the live table the live
    /// entries will soon reach (see `layout::LIVE_FIRST_TIER`), the stack table past its used
    /// end, and the ring ahead of its head. A first write to a page of a shared file mapping
    /// costs a fault, and on a disk-backed file a `page_mkwrite` (ext4 starts a journal handle
    /// and maps the fallocated block): measured on this project's VM (2 vCPU AMD EPYC, Linux
    /// 6.18, 2026-12-05) 1.15 µs per page on tmpfs and a major fault on ext4, which put the
    /// single-threaded latency loop's p99.9 at 2.3 µs on /dev/shm and 5.1-5.4 µs on ext4 at
    /// 4 KiB sampling (~5,100 faults per run).
    ///
    /// The helper thread steps every round, up to 4 MiB. Without it (a process with one
    /// thread must not get one), a hook runs the step when [`Mapped::prefault_due`] says the
    /// ring head has used up a step of the [`HOOK_AHEAD`] lead: one madvise of at most
    /// [`HOOK_STEP`], so one hook in 4 pages pays ~5 µs (tmpfs) or ~16-20 µs (ext4, ~4 µs a
    /// page with the mapping's MADV_RANDOM) instead of 4 hooks paying a fault each: the loop's
    /// p99.9 went from 2.1-2.3 µs (tmpfs) and 5.0-5.4 µs (ext4) to 0.65-0.78 µs on both, its
    /// p99.99 to 7.1-7.4 µs on tmpfs and 21-50 µs on ext4 (16-page steps: p99.9 0.58-0.75 µs,
    /// p99.99 21 µs and 101 µs). The process pays nothing at start-up. Populating at start-up instead
    /// was measured and not kept: 17-28 ms for a 64 MiB file on ext4, 17-18 ms on tmpfs, paid
    /// by every exec of a traced shell script, and the whole file is only reserved at the
    /// first sample anyway (a hook).
    ///
    /// Live tiers and the stack table are populated once: a page the kernel wrote back (and
    /// write-protected again to track the next write) is left alone rather than dirtied for
    /// nothing. The helper also keeps the ring populated ahead of the head after it wraps,
    /// which re-arms ring pages written back since the last pass (a page already writable
    /// costs the walk ~0.1 µs); hooks stop after the first pass, when every ring page is
    /// resident and the steady state takes no fault on tmpfs. On a disk-backed file, writeback
    /// write-protects each page it cleans and the next write faults again (ext4, same VM,
    /// after an fsync: p50 1.3 µs, p99.9 4.5 µs, max 43 µs a page; no stable-page wait on a
    /// disk without `stable_writes`); with writeback forced every 0.1 s the latency loop read
    /// p99.9 2.6-2.7 µs with or without prefaulting. Hence the README's advice: a trace
    /// directory on tmpfs for a latency-sensitive service, copied off afterwards.
    ///
    /// Populating holds the address-space lock for reading, and the program's own mmap and
    /// mprotect calls (a malloc arena growing) wait for each 256 KiB call. Only call this on a
    /// fully reserved file: MADV_POPULATE_WRITE returns an error rather than SIGBUS on a page
    /// it cannot back, but on a sparse file it would allocate blocks outside the budget.
    /// A kernel without MADV_POPULATE_WRITE (Linux < 5.14) ends it at the first step: the
    /// hooks then take their own faults.
    pub fn prefault_step(&self, progress: &PrefaultProgress, who: Prefaulter) {
        if progress.unsupported.load(Ordering::Relaxed) || progress.busy.swap(true, Ordering::Acquire) {
            return;
        }
        let due = self.prefault_locked(progress, who);
        progress.due_head.store(due, Ordering::Relaxed);
        progress.busy.store(false, Ordering::Release);
    }

    /// One step; returns the ring head at which a hook should take the next ([`u64::MAX`]:
    /// never, once nothing is left for hooks to do, with the helper, or after a failure).
    fn prefault_locked(&self, p: &PrefaultProgress, who: Prefaulter) -> u64 {
        let mut budget = match who {
            Prefaulter::Helper => 4 << 20,
            Prefaulter::Hook => HOOK_STEP,
        };
        // A hook populates a region only once a whole step of it is wanted (or its end): many
        // small madvise calls would cost a syscall each for a few pages.
        let worth = |from: u64, want: u64, len: u64| {
            from < want && (who == Prefaulter::Helper || want - from >= HOOK_STEP || want == len)
        };
        let fill = |region: Region, done: &AtomicU64, want: u64, budget: &mut u64| -> bool {
            let (start, len) = self.regions[region as usize];
            let from = done.load(Ordering::Relaxed);
            let want = want.min(len);
            if *budget > 0 && worth(from, want, len) {
                let n = (*budget).min(want - from);
                if !self.populate(start + from, n) {
                    return false;
                }
                done.store(from + n, Ordering::Relaxed);
                *budget -= n;
            }
            true
        };
        // The tiers that hold twice the live entries there are now: one tier ahead of the hooks.
        self.publish_live_count();
        let live_count = self.u64_at(hdr::LIVE_COUNT).load(Ordering::Relaxed);
        let live_want =
            layout::live_tiers_for(live_count.saturating_mul(2), self.live_capacity) * LIVE_SLOT_SIZE as u64;
        let stacks_used = self.u64_at(hdr::STACKS_USED).load(Ordering::Relaxed);
        let ok = fill(Region::Live, &p.live_done, live_want, &mut budget)
            && fill(Region::Stacks, &p.stacks_done, stacks_used + STACKS_AHEAD, &mut budget);
        if !ok {
            p.unsupported.store(true, Ordering::Relaxed);
            return u64::MAX;
        }
        let (ring_start, ring_len) = self.regions[Region::Ring as usize];
        let head = self.u64_at(hdr::RING_HEAD).load(Ordering::Relaxed);
        let written = head * EVENT_SIZE as u64;
        let ahead = match who {
            // Twice what the hooks wrote since the last round.
            Prefaulter::Helper => {
                let rate = written.saturating_sub(p.ring_written_then.load(Ordering::Relaxed));
                (2 * rate).max(1 << 20)
            }
            Prefaulter::Hook => HOOK_AHEAD,
        };
        p.ring_written_then.store(written, Ordering::Relaxed);
        let mut want = written + ahead.min(ring_len);
        if who == Prefaulter::Hook {
            want = want.min(ring_len);
        }
        // Pages the hooks already wrote need no populating: count them as done, so that a ring
        // the hooks filled first (a wrap before the populate caught up) also finishes.
        let mut from = p.ring_done.load(Ordering::Relaxed).max(written & !4095);
        if budget > 0 && worth(from, want, ring_len) {
            let end = want.min(from + budget);
            while from < end {
                let at = from % ring_len;
                let n = (end - from).min(ring_len - at);
                if !self.populate(ring_start + at, n) {
                    p.unsupported.store(true, Ordering::Relaxed);
                    return u64::MAX;
                }
                from += n;
            }
        }
        p.ring_done.store(from, Ordering::Relaxed);
        let (_, live_len) = self.regions[Region::Live as usize];
        let (_, stacks_len) = self.regions[Region::Stacks as usize];
        let tables_left =
            p.live_done.load(Ordering::Relaxed) < live_len || p.stacks_done.load(Ordering::Relaxed) < stacks_len;
        if who == Prefaulter::Helper || (from >= ring_len && !tables_left) {
            // The helper steps every round, so a hook need not look (it would at every sample).
            u64::MAX
        } else if from >= ring_len {
            // Hooks populate the ring's first pass only: past it, only the live table and the
            // stack table, whose growth the ring head does not show, make a step due.
            head + 1024
        } else {
            // When the head has used up a step of the lead, and at least every 1024 records for
            // the tables (a step that finds nothing worth populating makes no system call).
            let due_bytes = (from + HOOK_STEP).saturating_sub(HOOK_AHEAD).max(written + EVENT_SIZE as u64);
            (due_bytes / EVENT_SIZE as u64).min(head + 1024)
        }
    }

    /// Should a hook run [`Mapped::prefault_step`] now? Two loads, on the sampled path only.
    #[inline]
    pub fn prefault_due(&self, progress: &PrefaultProgress) -> bool {
        self.u64_at(hdr::RING_HEAD).load(Ordering::Relaxed) >= progress.due_head.load(Ordering::Relaxed)
    }

    /// Bytes populated ahead of what [`Mapped::touched_bytes`] counts: resident too, and
    /// leaktrace's, not the program's.
    pub fn prefaulted_ahead(&self, p: &PrefaultProgress) -> u64 {
        let page = |b: u64| layout::align_up(b, 4096);
        let beyond = |r: Region, done: u64, touched: u64| {
            let len = self.regions[r as usize].1;
            page(done.min(len)).saturating_sub(page(touched.min(len)))
        };
        let peak_live = self.peak_live.load(Ordering::Relaxed);
        let live_touched = layout::live_tiers_for(peak_live, self.live_capacity) * LIVE_SLOT_SIZE as u64;
        let stacks_used = self.u64_at(hdr::STACKS_USED).load(Ordering::Relaxed);
        let written = self.u64_at(hdr::RING_HEAD).load(Ordering::Relaxed) * EVENT_SIZE as u64;
        beyond(Region::Live, p.live_done.load(Ordering::Relaxed), live_touched)
            + beyond(Region::Stacks, p.stacks_done.load(Ordering::Relaxed), stacks_used)
            + beyond(Region::Ring, p.ring_done.load(Ordering::Relaxed), written)
    }

    /// Set the header's live count from the recorded allocations and frees. The
    /// hooks do not count live entries themselves: a counter that every insert and remove
    /// updated was a cache line shared by all threads, moved between cores twice per recorded
    /// allocation. The recorded counts are added in per-thread batches instead, so the result
    /// is short by at most `COUNT_BATCH - 1` per thread and kind, as FORMAT.md says.
    pub fn publish_live_count(&self) {
        let allocs = self.u64_at(hdr::SAMPLED_ALLOCS).load(Ordering::Relaxed);
        let frees = self.u64_at(hdr::SAMPLED_FREES).load(Ordering::Relaxed);
        let live = allocs.saturating_sub(frees);
        self.u64_at(hdr::LIVE_COUNT).store(live, Ordering::Relaxed);
        self.peak_live.fetch_max(live, Ordering::Relaxed);
    }

    fn populate(&self, off: u64, len: u64) -> bool {
        // Linux's MADV_POPULATE_WRITE; the libc crate does not export it on every target.
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        const CALL: u64 = 256 << 10;
        let mut start = off & !4095;
        let end = (off + len).min(self.len as u64);
        while start < end {
            let n = CALL.min(end - start);
            // SAFETY: [start, start + n) lies inside our own mapping (offsets come from the plan
            // and are clamped to its length). MADV_POPULATE_WRITE only faults pages in as a
            // write would, without changing their contents, so racing hook writes are unaffected;
            // on a page it cannot back it returns an error rather than raising SIGBUS.
            let rc = unsafe { libc::madvise(self.base.add(start as usize).cast(), n as usize, MADV_POPULATE_WRITE) };
            if rc != 0 {
                return false;
            }
            start += n;
        }
        true
    }

    pub fn set_state(&self, s: layout::TraceState) {
        self.u32_at(hdr::STATE).store(s as u32, Ordering::Release);
    }

    pub fn state(&self) -> u32 {
        self.u32_at(hdr::STATE).load(Ordering::Acquire)
    }

    /// Used by tests to simulate a ring record half written when a kill arrives.
    #[cfg(test)]
    fn ring_u16(&self, off: usize) -> &AtomicU16 {
        self.u16_at(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leaktrace_format::Trace;

    struct Scratch {
        mem: Vec<u64>,
    }

    fn with_mapped(size: u64, f: impl FnOnce(&Mapped, &dyn Fn() -> Vec<u8>)) {
        let plan = layout::Plan::for_file_size(size).unwrap();
        let mut s = Scratch { mem: vec![0u64; size as usize / 8] };
        let base = s.mem.as_mut_ptr().cast::<u8>();
        // SAFETY: `s.mem` outlives `m` (both dropped at the end of this function) and is plain
        // process memory, so stores cannot fault.
        let m = unsafe { Mapped::new(base, size as usize, &plan) };
        m.write_header(42, 1, 2, 4096, 1000);
        m.set_state(layout::TraceState::Tracing);
        let snapshot = || {
            // SAFETY: reading the same allocation as plain bytes; the test is single-threaded.
            unsafe { std::slice::from_raw_parts(base, size as usize) }.to_vec()
        };
        f(&m, &snapshot);
    }

    fn event(addr: u64, kind: layout::EventKind) -> Event {
        Event {
            seq: 0,
            time_ns: addr,
            addr,
            size: 100,
            stack_id: 1,
            mean_bytes: 4096,
            tid: 7,
            kind,
            api: layout::Api::Malloc,
        }
    }

    #[test]
    fn ring_wraps_and_keeps_the_newest() {
        with_mapped(layout::MIN_FILE_SIZE, |m, snap| {
            let cap = m.ring_capacity;
            for i in 1..=cap * 3 + 5 {
                m.push_event(&event(i * 16, layout::EventKind::Alloc));
            }
            let t = Trace::parse(&snap()).unwrap();
            assert_eq!(t.events.len() as u64, cap);
            assert_eq!(t.events.last().unwrap().addr, (cap * 3 + 5) * 16);
            assert_eq!(t.events.first().unwrap().seq, 2 * cap + 6);
            assert_eq!(t.health.overwritten_events, 2 * cap + 5);
            assert!(!t.health.is_partial());
        });
    }

    #[test]
    fn ring_slot_is_the_remainder() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for d in [1, 2, 3, 1024u64, 1025, 21_800, 22_906_492_245, (1 << 40) / 48, u64::MAX / 3, u64::MAX] {
            let edges = [
                0,
                1,
                d - 1,
                d,
                d.wrapping_add(1),
                d.wrapping_mul(2).wrapping_sub(1),
                u64::MAX,
                u64::MAX - 1,
                u64::MAX - d,
            ];
            for n in edges.into_iter().chain((0..20_000).map(|_| {
                x = layout::mix(x);
                x >> (x % 64)
            })) {
                assert_eq!(remainder(n, d, u64::MAX / d), n % d, "{n} % {d}");
            }
        }
        with_mapped(layout::MIN_FILE_SIZE, |m, _| {
            for n in [0, 1, m.ring_capacity - 1, m.ring_capacity, u64::MAX] {
                assert_eq!(m.ring_slot(n), n % m.ring_capacity);
            }
        });
    }

    #[test]
    fn torn_ring_record_is_skipped_and_counted() {
        with_mapped(layout::MIN_FILE_SIZE, |m, snap| {
            for i in 1..=10 {
                m.push_event(&event(i * 16, layout::EventKind::Alloc));
            }
            // Damage record 5's size field, as a kill between stores would.
            let off = m.region_start(Region::Ring) + 4 * EVENT_SIZE + ev::SIZE;
            m.ring_u16(off).store(0xdead, Ordering::Relaxed);
            let t = Trace::parse(&snap()).unwrap();
            assert_eq!(t.events.len(), 9);
            assert_eq!(t.health.torn_events, 1);
            assert!(t.health.is_partial());
        });
    }

    #[test]
    fn live_table_insert_remove_and_read_back() {
        with_mapped(layout::MIN_FILE_SIZE, |m, snap| {
            let e = LiveEntry { size: 10, time_ns: 5, stack_id: 3, mean_bytes: 1 };
            for i in 1..=500u64 {
                assert!(m.live_insert(i * 16, LiveEntry { size: i, ..e }));
                assert!(maybe_sampled(i * 16));
            }
            for i in (1..=500u64).step_by(2) {
                assert_eq!(m.live_remove(i * 16).map(|e| e.size), Some(i));
            }
            assert!(m.live_remove(16).is_none(), "second free finds nothing");
            assert!(m.live_remove(0xdead_0000).is_none());
            let t = Trace::parse(&snap()).unwrap();
            assert_eq!(t.live.len(), 250);
            assert!(t.live.iter().all(|a| a.size % 2 == 0 && a.addr == a.size * 16));
            // Re-inserting into tombstones works.
            assert!(m.live_insert(16, e));
            assert_eq!(m.live_remove(16).map(|e| e.size), Some(10));
        });
    }

    #[test]
    fn live_probe_visits_the_slots_of_live_runs() {
        for size in [layout::MIN_FILE_SIZE, 3 << 20, 16 << 20, 64 << 20] {
            with_mapped(size, |m, _| {
                for addr in [0x10u64, 0x7f00_1234_5670, 0x5555_dead_bee0] {
                    let mut probed = Vec::new();
                    let none: Option<()> = m.live_probe(addr, |slot| {
                        probed.push(slot);
                        ControlFlow::Continue(())
                    });
                    assert!(none.is_none());
                    let want: Vec<usize> = layout::live_runs(addr, m.live_capacity)
                        .flat_map(|r| (0..r.len).map(move |i| r.slot(i)))
                        .map(|i| m.live_slot(i))
                        .collect();
                    assert_eq!(probed, want, "file size {size}");
                }
            });
        }
    }

    #[test]
    fn live_table_fills_past_seventy_percent_before_dropping() {
        with_mapped(16 << 20, |m, _| {
            let e = LiveEntry { size: 1, time_ns: 0, stack_id: 1, mean_bytes: 1 };
            let held = (0..m.live_capacity).take_while(|i| m.live_insert(0x7f00_0000_0000 + i * 48, e)).count() as u64;
            // 81.5% measured with 16 KiB windows, 77.7% with per-address starts before them; the
            // two-region probing before the tiers dropped at 61.6%.
            assert!(held * 10 > m.live_capacity * 7, "{held} of {}", m.live_capacity);
            assert_eq!(m.header(hdr::LIVE_DROPPED).load(Ordering::Relaxed), 1);
        });
    }

    #[test]
    fn live_entries_stay_packed_in_the_front_tiers() {
        with_mapped(64 << 20, |m, _| {
            let first = layout::LIVE_FIRST_TIER;
            assert!(m.live_capacity >= 64 * first);
            let e = LiveEntry { size: 1, time_ns: 0, stack_id: 1, mean_bytes: 1 };
            let tier_end = |tiers: u32| m.live_slot(first * ((1 << tiers) - 1));
            let addr = |i: u64| 0x7f00_0000_0000 + i * 48;
            for i in 0..200 {
                assert!(m.live_insert(addr(i), e));
                assert!(m.live_find(addr(i)).is_some_and(|slot| slot < tier_end(1)), "entry {i} left the first tier");
            }
            // Three times what the first tier holds: the next tiers take them, and none goes
            // further than the fourth (120K of the 1M slots, the first 3.75 MiB of 32 MiB).
            let n = 3 * first;
            for i in 200..n {
                assert!(m.live_insert(addr(i), e), "insert {i}");
            }
            let beyond_first = (0..n).filter(|&i| m.live_find(addr(i)).is_some_and(|slot| slot >= tier_end(1))).count();
            assert!(beyond_first as u64 > n / 2);
            assert!((0..n).all(|i| m.live_find(addr(i)).is_some_and(|slot| slot < tier_end(4))));
            assert_eq!(m.header(hdr::LIVE_DROPPED).load(Ordering::Relaxed), 0);
            // Freeing front entries leaves tombstones; spilled entries behind them are still found.
            for i in (0..n).step_by(3) {
                assert!(m.live_remove(addr(i)).is_some(), "remove {i}");
            }
            for i in 0..n {
                assert_eq!(m.live_remove(addr(i)).is_some(), i % 3 != 0, "second pass, {i}");
            }
        });
    }

    #[test]
    fn hooks_prefault_ahead_of_the_ring_head_and_stop_after_the_first_pass() {
        // Page-aligned, as a mapping is: madvise refuses anything else.
        let size = layout::MIN_FILE_SIZE;
        let mem_layout = std::alloc::Layout::from_size_align(size as usize, 4096).unwrap();
        // SAFETY: a non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(mem_layout) };
        assert!(!base.is_null());
        let plan = layout::Plan::for_file_size(size).unwrap();
        // SAFETY: `base` is `size` writable bytes, freed only after `m` is last used.
        let m = unsafe { Mapped::new(base, size as usize, &plan) };
        {
            let m = &m;
            let progress = PrefaultProgress::default();
            let ring_len = m.regions[Region::Ring as usize].1;
            for i in 1..=m.ring_capacity * 2 {
                if m.prefault_due(&progress) {
                    m.prefault_step(&progress, Prefaulter::Hook);
                }
                let written = (i - 1) * EVENT_SIZE as u64;
                let done = progress.ring_done.load(Ordering::Relaxed);
                // The first steps go to the live table's first tier and the stack table (20 steps
                // of 16 KiB), one per record until they are done.
                if i > 64 && written + HOOK_AHEAD < ring_len {
                    assert!(done > written + HOOK_STEP, "record {i}: populated to {done}, written {written}");
                }
                m.push_event(&event(i * 16, layout::EventKind::Alloc));
            }
            // Wrapped: hooks populate no more of the ring, and are due at most once per 1024
            // records (for the live table and the stack table; never, once all is populated).
            let done = progress.ring_done.load(Ordering::Relaxed);
            m.prefault_step(&progress, Prefaulter::Hook);
            let head = m.u64_at(hdr::RING_HEAD).load(Ordering::Relaxed);
            assert!(progress.ring_done.load(Ordering::Relaxed) <= (head * EVENT_SIZE as u64).max(done));
            assert!(progress.due_head.load(Ordering::Relaxed) >= head + 1024);
            assert_eq!(m.prefaulted_ahead(&progress) % 4096, 0);
            assert!(!progress.unsupported.load(Ordering::Relaxed));
        }
        drop(m);
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(base, mem_layout) };
    }

    #[test]
    fn stacks_are_deduplicated_and_readable() {
        with_mapped(layout::MIN_FILE_SIZE, |m, snap| {
            let a = [0x1000u64, 0x2000, 0x3000];
            let b = [0x1000u64, 0x2000];
            let ia = m.intern_stack(&a);
            let ib = m.intern_stack(&b);
            assert_ne!(ia, 0);
            assert_ne!(ia, ib);
            assert_eq!(m.intern_stack(&a), ia);
            let t = Trace::parse(&snap()).unwrap();
            assert_eq!(t.stack(ia).unwrap(), a);
            assert_eq!(t.stack(ib).unwrap(), b);
            assert!(t.stack(0).is_none());
            assert!(t.stack(ia + 1).is_none(), "an id inside a record is rejected");
        });
    }

    #[test]
    fn stack_region_full_counts_drops() {
        with_mapped(layout::MIN_FILE_SIZE, |m, _| {
            let mut last = 1;
            for i in 0..100_000u64 {
                last = m.intern_stack(&[i + 1; 64]);
                if last == 0 {
                    break;
                }
            }
            assert_eq!(last, 0);
            assert!(m.u64_at(hdr::STACKS_DROPPED).load(Ordering::Relaxed) >= 1);
        });
    }

    /// Several threads append to the ring and insert into and remove from the live table at
    /// once (the hooks of a multithreaded program): afterwards the reader sees exactly the
    /// entries still live, every record intact, and one record per append.
    #[test]
    fn concurrent_writers_leave_a_consistent_file() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 1500;
        with_mapped(4 << 20, |m, snap| {
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    s.spawn(move || {
                        let base = 0x7000_0000_0000 + (t << 32);
                        for i in 0..PER_THREAD {
                            let addr = base + i * 64;
                            let e = LiveEntry { size: 100, time_ns: i, stack_id: 1, mean_bytes: 4096 };
                            assert!(m.live_insert(addr, e));
                            m.push_event(&event(addr, layout::EventKind::Alloc));
                            // Every other block is freed again, by the thread that made it.
                            if i % 2 == 1 {
                                assert!(m.live_remove(addr).is_some());
                                m.push_event(&event(addr, layout::EventKind::Free));
                            }
                        }
                    });
                }
            });
            let bytes = snap();
            let t = Trace::parse(&bytes).unwrap();
            let mut live: Vec<u64> = t.live.iter().map(|a| a.addr).collect();
            live.sort_unstable();
            let mut want: Vec<u64> = (0..THREADS)
                .flat_map(|t| (0..PER_THREAD).step_by(2).map(move |i| 0x7000_0000_0000 + (t << 32) + i * 64))
                .collect();
            want.sort_unstable();
            assert_eq!(live, want, "the live table holds exactly the blocks not freed");
            let appended = THREADS * (PER_THREAD + PER_THREAD / 2);
            assert_eq!(t.header.ring_head, appended);
            assert_eq!(t.events.len() as u64, appended.min(t.header.ring_capacity), "every record reads back");
            assert_eq!(t.health.torn_events, 0);
            let frees = t.events.iter().filter(|e| e.kind == layout::EventKind::Free).count() as u64;
            assert_eq!(frees, THREADS * PER_THREAD / 2);
        });
    }

    #[test]
    fn rss_series_halves_when_full() {
        with_mapped(layout::MIN_FILE_SIZE, |m, snap| {
            let cap = m.rss_capacity;
            // RSS rises to a peak in the middle, where halving drops the sample itself.
            let rss = |i: u64| if i <= cap / 2 + 2 { i * 10 } else { 5 };
            for i in 1..=cap + 1 {
                m.push_rss(i * 1000, rss(i), i);
            }
            let t = Trace::parse(&snap()).unwrap();
            assert_eq!(t.rss.len() as u64, cap / 2 + 1);
            assert_eq!(t.rss.first().unwrap().t_ns, 1000);
            assert_eq!(t.rss.last().unwrap().t_ns, (cap + 1) * 1000);
            assert!(t.rss.windows(2).all(|w| w[0].t_ns < w[1].t_ns));
            // The own-memory series moved with the samples: entry k belongs to sample k.
            let own_start = m.region_start(Region::RssOwn);
            for (k, sample) in t.rss.iter().enumerate() {
                assert_eq!(m.u64_at(own_start + k * 8).load(Ordering::Relaxed), sample.t_ns / 1000);
            }
            assert_eq!(m.u64_at(hdr::RSS_PEAK_BYTES).load(Ordering::Relaxed), (cap / 2 + 2) * 10);
            assert_eq!(m.u64_at(hdr::RSS_PEAK_NS).load(Ordering::Relaxed), (cap / 2 + 2) * 1000);
            assert!(!t.rss.iter().any(|s| s.rss_bytes == (cap / 2 + 2) * 10), "the peak sample itself was halved away");
        });
    }

    #[test]
    fn meta_records_roundtrip() {
        with_mapped(layout::MIN_FILE_SIZE, |m, snap| {
            let mut buf = [0u8; 512];
            let p = leaktrace_format::ProcessInfo { pid: 9, exe: "/bin/x".into(), ..Default::default() };
            let n = leaktrace_format::encode_meta(leaktrace_format::MetaKind::Process, &p, &mut buf).unwrap();
            assert!(m.append_meta(&buf[..n]));
            let t = Trace::parse(&snap()).unwrap();
            assert_eq!(t.process.as_ref().unwrap().exe, "/bin/x");
            assert_eq!(t.header.pid, 42);
        });
    }
}
