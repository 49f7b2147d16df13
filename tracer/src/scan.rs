//! Who holds the sampled objects: a scan of the process's memory for words that point into
//! them (`leak-analyze ctl --scan`), the third step of the method after RSS and the sampling
//! profile.
//!
//! The scan reads a copy-on-write snapshot: a child made by a raw `clone` (no SIGCHLD, no
//! atfork handlers), as Android's libmemunreachable and redis's BGSAVE do. The program's threads
//! stop only for the clone itself (the kernel copies the page tables); the child has a
//! consistent image of every thread's stack and heap, but not other threads' registers (a
//! pointer held only in a register is not seen: a young object may come out unreferenced).
//!
//! The child may not call malloc (a lock another thread held at the clone is held forever in
//! it), so it works in one anonymous mapping sized for the live table, reads memory with
//! `process_vm_readv` on itself (an unreadable page is an error, never a fault), blocks every
//! signal, stops at once if the parent goes or another `ctl` request arrives, caps its reading
//! rate, writes its findings into the trace's metadata (shared with the parent), acknowledges
//! the request and leaves with `exit_group`. The parent reaps it from housekeeping.
//!
//! Classification, after LeakSanitizer and memcheck: the roots are the writable segments of the
//! loaded objects (globals) and thread stacks; heap words inside another sampled object make an
//! edge to that object's stack ("held by site"); other heap words are "heap". Any word whose
//! value lies inside an object (interior pointers too) references it. An object nothing points
//! into is unreferenced: nothing can free it any more.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use leaktrace_format::layout::{self, hdr, ControlResult};
use leaktrace_format::{
    encode_meta, HeldByGlobal, HeldBySite, MetaKind, ObjectSampleOut, RetentionOut, ScanOutcome, ScanSummary,
    RETENTION_GLOBALS, RETENTION_SAMPLES, RETENTION_SAMPLE_BYTES, RETENTION_SITES,
};

use crate::mapped::Mapped;
use crate::tracer::mono_ns;

/// The scan child's pid while one runs (0 otherwise), and when it must be done by.
static CHILD: AtomicI32 = AtomicI32::new(0);
static DEADLINE_NS: AtomicU64 = AtomicU64::new(0);
/// Most a scan may take before the parent ends it.
const MAX_SCAN_NS: u64 = 600_000_000_000;
/// Default reading rate: a 1 GiB heap in about 4 s.
pub const DEFAULT_RATE_BYTES_PER_S: u64 = 256 << 20;
/// Most retention records one scan writes (the stacks with the most objects).
const MAX_GROUPS: usize = 256;
/// Address ranges that are never scanned and never roots: the trace mappings, our own library.
pub const MAX_EXCLUDED: usize = 8;
/// Writable segments of loaded objects, for telling globals apart.
pub const MAX_GLOBAL_RANGES: usize = 512;

const CHUNK: usize = 64 << 10;
const MAPS_BUF: usize = 4 << 20;
const BLOOM_BITS: usize = 1 << 20;
const ENCODE_BUF: usize = 64 << 10;
/// Most distinct stacks a scan groups its objects by (the rest are not reported).
const MAX_STACKS: usize = 8192;

/// What the parent hands the child: plain arrays, read in the child's copy of them.
pub struct Plan {
    pub seq: u32,
    pub t_ns: u64,
    pub start_mono_ns: u64,
    pub rate_bytes_per_s: u64,
    pub excluded: [(u64, u64); MAX_EXCLUDED],
    pub globals: [(u64, u64); MAX_GLOBAL_RANGES],
    pub n_globals: usize,
    /// Stack pointers of the threads at the clone, where known (the caller's own; threads
    /// blocked in a system call, from /proc/self/task/*/syscall): a stack is scanned from its
    /// pointer up, not through the dead frames below it, whose stale words would hold objects
    /// nothing live refers to. A stack with no known pointer is scanned whole (conservative).
    pub stack_pointers: [u64; MAX_THREADS],
    pub n_stack_pointers: usize,
}

/// Most threads whose stack pointers a scan knows.
pub const MAX_THREADS: usize = 1024;

/// Start a scan for request `seq`. False if one is running or the clone failed (the caller
/// acknowledges the failure); true if the child took the request (it acknowledges).
pub fn start(mapped: &Mapped, plan: &Plan, previous_seq: u32) -> bool {
    let previous = CHILD.load(Ordering::Acquire);
    if previous != 0 {
        // A child that acknowledged its request is done and exiting (a `ctl --scan` right
        // after another): reap it now. One still scanning keeps its request.
        if mapped.u32_at(hdr::CONTROL_ACK_SEQ).load(Ordering::Acquire) != previous_seq {
            return false;
        }
        let mut status = 0;
        // SAFETY: waits for our own clone child, which has finished its work.
        unsafe { libc::waitpid(previous, &mut status, libc::__WCLONE) };
        CHILD.store(0, Ordering::Release);
    }
    let parent = std::process::id() as i32;
    // SAFETY: a raw clone without CLONE_VM is a fork that runs no atfork handler and sends no
    // SIGCHLD (exit signal 0), so the program's waitpid(-1) never sees the child. The child
    // runs `child_main`, which never returns.
    let pid = unsafe { libc::syscall(libc::SYS_clone, 0usize, 0usize, 0usize, 0usize, 0usize) };
    if pid == 0 {
        child_main(mapped, plan, parent);
    }
    if pid < 0 {
        return false;
    }
    CHILD.store(pid as i32, Ordering::Release);
    DEADLINE_NS.store(plan.t_ns + MAX_SCAN_NS, Ordering::Relaxed);
    true
}

/// From housekeeping: reap a finished child; end one that ran too long. A child that died
/// without acknowledging (a crash) gets its request acknowledged as failed here.
pub fn reap(mapped: &Mapped, now_ns: u64, seq_of_scan: u32) {
    let pid = CHILD.load(Ordering::Acquire);
    if pid == 0 {
        return;
    }
    if now_ns > DEADLINE_NS.load(Ordering::Relaxed) {
        // SAFETY: our own child, not yet reaped (its pid cannot have been reused).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: waits for our own clone child only (__WCLONE: it has no exit signal).
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WCLONE) };
    if r == pid || r < 0 {
        CHILD.store(0, Ordering::Release);
        let clean = r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        if !clean && mapped.u32_at(hdr::CONTROL_ACK_SEQ).load(Ordering::Acquire) != seq_of_scan {
            mapped.u32_at(hdr::CONTROL_RESULT).store(ControlResult::ScanFailed as u32, Ordering::Relaxed);
            mapped.u32_at(hdr::CONTROL_ACK_SEQ).store(seq_of_scan, Ordering::Release);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child

fn child_main(mapped: &Mapped, plan: &Plan, parent: i32) -> ! {
    // SAFETY: a full signal set, blocked for this (only) thread with the raw system call: the
    // program's handlers must never run in the copy (they might write its files or exit).
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &all, std::ptr::null_mut::<libc::sigset_t>(), 8);
        libc::prctl(libc::PR_SET_NAME, c"leaktrace-scan".as_ptr());
    }
    let start = mono_ns();
    let summary = match Arena::new(mapped) {
        Some(mut arena) => arena.run(mapped, plan, parent),
        None => ScanSummary { t_ns: plan.t_ns, outcome: ScanOutcome::Failed as u32, ..Default::default() },
    };
    let summary = ScanSummary { duration_ns: mono_ns().saturating_sub(start), ..summary };
    let mut buf = [0u8; 256];
    if let Some(n) = encode_meta(MetaKind::Scan, &summary, &mut buf) {
        mapped.append_meta(&buf[..n]);
    }
    // Acknowledge only our own request: a later one (a pause) is the parent's to answer.
    if mapped.u32_at(hdr::CONTROL_SEQ).load(Ordering::Acquire) == plan.seq {
        let result = if summary.outcome == ScanOutcome::Failed as u32 {
            ControlResult::ScanFailed
        } else {
            ControlResult::Applied
        };
        mapped.u32_at(hdr::CONTROL_RESULT).store(result as u32, Ordering::Relaxed);
        mapped.u32_at(hdr::CONTROL_ACK_SEQ).store(plan.seq, Ordering::Release);
    }
    // SAFETY: ends this process (the child) without running any exit handler of the program.
    unsafe { libc::syscall(libc::SYS_exit_group, 0) };
    unreachable!()
}

/// Holder kinds, strongest last: an object keeps the strongest seen.
const NONE: u32 = 0;
const OTHER: u32 = 1;
const HEAP: u32 = 2;
const SITE: u32 = 3;
const STACK: u32 = 4;
const GLOBAL: u32 = 5;

/// One sampled live object in the child's table.
#[derive(Clone, Copy)]
#[repr(C)]
struct Obj {
    start: u64,
    end: u64,
    stack_id: u32,
    holder: u32,
    /// The referencing word's address (global) or the holder's stack id (site).
    detail: u64,
}

/// How a mapping counts as a root.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RegionKind {
    Global,
    Stack,
    Heap,
    Other,
}

/// The child's working memory: one anonymous mapping, never returned (the child exits).
struct Arena {
    objs: &'static mut [Obj],
    n: usize,
    bloom: &'static mut [u64],
    maps: &'static mut [u8],
    chunk: &'static mut [u8],
    encode: &'static mut [u8],
    /// Per stack: (objects, index of its first object in `objs` once sorted by stack).
    groups: &'static mut [(u32, u32)],
    lo: u64,
    hi: u64,
    own: (u64, u64),
}

fn map_anon(bytes: usize) -> Option<*mut u8> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}

impl Arena {
    fn new(mapped: &Mapped) -> Option<Arena> {
        let capacity = mapped.live_capacity() as usize;
        let objs_bytes = capacity * std::mem::size_of::<Obj>();
        let before_groups = objs_bytes + BLOOM_BITS / 8 + MAPS_BUF + CHUNK + ENCODE_BUF;
        let total = before_groups + MAX_STACKS * std::mem::size_of::<(u32, u32)>();
        let base = map_anon(total)?;
        // SAFETY: disjoint pieces of the fresh mapping of `total` bytes, zeroed by the kernel
        // (all-zero bytes are valid `Obj`s and integers), page-aligned at its start; each piece
        // is 8-byte aligned (every size before it is a multiple of 8). Never unmapped.
        unsafe {
            let objs = std::slice::from_raw_parts_mut(base.cast::<Obj>(), capacity);
            let bloom = std::slice::from_raw_parts_mut(base.add(objs_bytes).cast::<u64>(), BLOOM_BITS / 64);
            let maps = std::slice::from_raw_parts_mut(base.add(objs_bytes + BLOOM_BITS / 8), MAPS_BUF);
            let chunk = std::slice::from_raw_parts_mut(base.add(objs_bytes + BLOOM_BITS / 8 + MAPS_BUF), CHUNK);
            let encode =
                std::slice::from_raw_parts_mut(base.add(objs_bytes + BLOOM_BITS / 8 + MAPS_BUF + CHUNK), ENCODE_BUF);
            let groups = std::slice::from_raw_parts_mut(base.add(before_groups).cast::<(u32, u32)>(), MAX_STACKS);
            Some(Arena {
                objs,
                n: 0,
                bloom,
                maps,
                chunk,
                encode,
                groups,
                lo: u64::MAX,
                hi: 0,
                own: (base as u64, base as u64 + total as u64),
            })
        }
    }

    fn run(&mut self, mapped: &Mapped, plan: &Plan, parent: i32) -> ScanSummary {
        let mut summary = ScanSummary { t_ns: plan.t_ns, ..Default::default() };
        // The live set as it was at the clone: the table is in a shared mapping the parent
        // keeps changing, so copy it first.
        let objs = &mut *self.objs;
        let mut n = 0;
        mapped.for_each_live(|addr, size, stack_id| {
            if n < objs.len() && size > 0 {
                objs[n] = Obj { start: addr, end: addr.saturating_add(size), stack_id, holder: NONE, detail: 0 };
                n += 1;
            }
        });
        self.n = n;
        self.objs[..n].sort_unstable_by_key(|o| o.start);
        for i in 0..n {
            let o = self.objs[i];
            self.lo = self.lo.min(o.start);
            self.hi = self.hi.max(o.end);
            let mut page = o.start >> 12;
            while page <= (o.end - 1) >> 12 {
                let bit = bloom_bit(page);
                self.bloom[bit / 64] |= 1 << (bit % 64);
                page += 1;
            }
        }
        summary.objects = n as u64;
        let Some(maps_len) = read_file(c"/proc/self/maps", self.maps) else {
            summary.outcome = ScanOutcome::Failed as u32;
            return summary;
        };
        let started = mono_ns();
        let mut prev_end_guard = 0u64;
        let mut pos = 0;
        let mut outcome = ScanOutcome::Complete;
        while pos < maps_len {
            let line_end = self.maps[pos..maps_len].iter().position(|&b| b == b'\n').map_or(maps_len, |i| pos + i);
            let (start, end, kind) = {
                let Some(m) = parse_maps_line(&self.maps[pos..line_end]) else {
                    pos = line_end + 1;
                    continue;
                };
                pos = line_end + 1;
                if m.perms[0] == b'-' && m.perms[1] == b'-' {
                    // A guard page: the mapping right above it is a thread stack.
                    prev_end_guard = m.end;
                    continue;
                }
                let above_guard = prev_end_guard == m.start;
                prev_end_guard = 0;
                if m.perms[0] != b'r' || m.perms[1] != b'w' {
                    continue;
                }
                let overlaps = |lo: u64, hi: u64| lo < hi && m.start < hi && lo < m.end;
                if plan.excluded.iter().any(|&(lo, hi)| overlaps(lo, hi)) || overlaps(self.own.0, self.own.1) {
                    continue;
                }
                let special = [&b"[vvar]"[..], b"[vsyscall]", b"[vdso]"];
                if m.path.starts_with(b"/dev/") || special.contains(&m.path) {
                    continue;
                }
                let kind = if plan.globals[..plan.n_globals].iter().any(|&(lo, hi)| overlaps(lo, hi)) {
                    RegionKind::Global
                } else if m.path == b"[stack]" || (m.path.is_empty() && above_guard) {
                    RegionKind::Stack
                } else if m.path.is_empty() || m.path == b"[heap]" || m.path.starts_with(b"[anon") {
                    RegionKind::Heap
                } else {
                    RegionKind::Other
                };
                (m.start, m.end, kind)
            };
            summary.regions += 1;
            let mut at = start;
            if kind == RegionKind::Stack {
                let sps = &plan.stack_pointers[..plan.n_stack_pointers];
                if let Some(&sp) = sps.iter().find(|&&sp| (start..end).contains(&sp)) {
                    // The red zone below the pointer may hold a leaf function's live words.
                    at = sp.saturating_sub(128).max(start) & !7;
                }
            }
            while at < end {
                let len = ((end - at) as usize).min(CHUNK);
                if read_own(at, &mut self.chunk[..len]) {
                    self.scan_chunk(at, len, kind);
                    summary.bytes_scanned += len as u64;
                }
                at += len as u64;
                // Stop at once when the parent is gone or another request came (a pause).
                // SAFETY: getppid has no preconditions.
                if unsafe { libc::getppid() } != parent
                    || mapped.u32_at(hdr::CONTROL_SEQ).load(Ordering::Acquire) != plan.seq
                {
                    outcome = ScanOutcome::Stopped;
                    break;
                }
                pace(started, summary.bytes_scanned, plan.rate_bytes_per_s);
            }
            if outcome != ScanOutcome::Complete {
                break;
            }
        }
        summary.outcome = outcome as u32;
        if outcome == ScanOutcome::Complete {
            self.write_retention(mapped, plan.t_ns);
        }
        summary
    }

    /// Look at every aligned word of `self.chunk[..len]`, read from `at`.
    fn scan_chunk(&mut self, at: u64, len: usize, kind: RegionKind) {
        let words = len / 8;
        for w in 0..words {
            let b = &self.chunk[w * 8..w * 8 + 8];
            let v = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            if v < self.lo || v >= self.hi {
                continue;
            }
            let bit = bloom_bit(v >> 12);
            if self.bloom[bit / 64] & (1 << (bit % 64)) == 0 {
                continue;
            }
            let Some(target) = self.find(v) else { continue };
            let from = at + (w * 8) as u64;
            let (holder, detail) = match kind {
                RegionKind::Global => (GLOBAL, from),
                RegionKind::Stack => (STACK, 0),
                RegionKind::Other => (OTHER, 0),
                RegionKind::Heap => match self.find(from) {
                    Some(i) if i == target => continue, // a pointer into itself holds nothing
                    Some(i) => (SITE, u64::from(self.objs[i].stack_id)),
                    None => (HEAP, 0),
                },
            };
            let o = &mut self.objs[target];
            if holder > o.holder {
                o.holder = holder;
                o.detail = detail;
            }
        }
    }

    /// The object whose bytes hold `addr`.
    fn find(&self, addr: u64) -> Option<usize> {
        let objs = &self.objs[..self.n];
        let i = objs.partition_point(|o| o.start <= addr);
        let o = objs.get(i.checked_sub(1)?)?;
        (addr < o.end).then_some(i - 1)
    }

    /// One retention record per stack, for the stacks with the most objects.
    fn write_retention(&mut self, mapped: &Mapped, scan_t_ns: u64) {
        let n = self.n;
        self.objs[..n].sort_unstable_by_key(|o| (o.stack_id, o.start));
        let mut groups = 0;
        let mut i = 0;
        while i < n && groups < self.groups.len() {
            let id = self.objs[i].stack_id;
            let len = self.objs[i..n].iter().take_while(|o| o.stack_id == id).count();
            self.groups[groups] = (len as u32, i as u32);
            groups += 1;
            i += len;
        }
        // The biggest groups first (an unstable sort: a stable one would allocate).
        self.groups[..groups].sort_unstable_by_key(|&(count, _)| std::cmp::Reverse(count));
        for g in 0..groups.min(MAX_GROUPS) {
            let (count, first) = self.groups[g];
            self.write_group(mapped, scan_t_ns, first as usize, count as usize);
        }
    }

    fn write_group(&mut self, mapped: &Mapped, scan_t_ns: u64, first: usize, count: usize) {
        let objs = &self.objs[first..first + count];
        let mut r = RetentionOut {
            scan_t_ns,
            stack_id: objs[0].stack_id,
            objects: count as u32,
            unreferenced: 0,
            by_global: 0,
            by_stack: 0,
            by_site: 0,
            by_heap: 0,
            by_other: 0,
            globals: &[],
            sites: &[],
            samples: &[],
        };
        let mut globals = [HeldByGlobal::default(); RETENTION_GLOBALS];
        let mut n_globals = 0;
        let mut sites = [HeldBySite::default(); RETENTION_SITES];
        let mut n_sites = 0;
        for o in objs {
            match o.holder {
                GLOBAL => {
                    r.by_global += 1;
                    if let Some(g) = globals[..n_globals].iter_mut().find(|g| g.address == o.detail) {
                        g.objects += 1;
                    } else if n_globals < RETENTION_GLOBALS {
                        globals[n_globals] = HeldByGlobal { address: o.detail, objects: 1 };
                        n_globals += 1;
                    }
                }
                STACK => r.by_stack += 1,
                SITE => {
                    r.by_site += 1;
                    let id = o.detail as u32;
                    if let Some(s) = sites[..n_sites].iter_mut().find(|s| s.stack_id == id) {
                        s.objects += 1;
                    } else if n_sites < RETENTION_SITES {
                        sites[n_sites] = HeldBySite { stack_id: id, objects: 1 };
                        n_sites += 1;
                    }
                }
                HEAP => r.by_heap += 1,
                OTHER => r.by_other += 1,
                _ => r.unreferenced += 1,
            }
        }
        sites[..n_sites].sort_unstable_by_key(|s| std::cmp::Reverse(s.objects));
        let mut bytes = [[0u8; RETENTION_SAMPLE_BYTES]; RETENTION_SAMPLES];
        let mut lens = [0usize; RETENTION_SAMPLES];
        let shown = count.min(RETENTION_SAMPLES);
        for (k, o) in objs.iter().take(shown).enumerate() {
            let len = ((o.end - o.start) as usize).min(RETENTION_SAMPLE_BYTES);
            lens[k] = if read_own(o.start, &mut bytes[k][..len]) { len } else { 0 };
        }
        let samples: [ObjectSampleOut<'_>; RETENTION_SAMPLES] = std::array::from_fn(|k| ObjectSampleOut {
            address: objs.get(k).map_or(0, |o| o.start),
            size: objs.get(k).map_or(0, |o| o.end - o.start),
            bytes: &bytes[k][..lens[k]],
        });
        r.globals = &globals[..n_globals];
        r.sites = &sites[..n_sites];
        r.samples = &samples[..shown];
        if let Some(len) = encode_meta(MetaKind::Retention, &r, self.encode) {
            if !mapped.append_meta(&self.encode[..len]) {
                mapped.u64_at(hdr::EVENTS_DROPPED).fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn bloom_bit(page: u64) -> usize {
    (layout::mix(page) as usize) & (BLOOM_BITS - 1)
}

/// Sleep as needed to keep the average reading rate at `rate` bytes a second.
fn pace(started: u64, bytes: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due_ns = bytes.saturating_mul(1_000_000_000) / rate;
    let elapsed = mono_ns().saturating_sub(started);
    if due_ns > elapsed + 1_000_000 {
        let wait = due_ns - elapsed;
        let ts =
            libc::timespec { tv_sec: (wait / 1_000_000_000) as libc::time_t, tv_nsec: (wait % 1_000_000_000) as _ };
        // SAFETY: a valid timespec; an interrupted sleep only paces less.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
}

/// Read our own memory at `addr` into `out` with process_vm_readv: a page unmapped or
/// unreadable gives an error, never a fault (a shared file mapping whose file shrank would
/// raise SIGBUS on a plain load).
fn read_own(addr: u64, out: &mut [u8]) -> bool {
    let local = libc::iovec { iov_base: out.as_mut_ptr().cast(), iov_len: out.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: out.len() };
    // SAFETY: `local` describes our writable buffer; the kernel validates `remote`.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    n == out.len() as isize
}

/// Read a whole (proc) file into `buf`; its length.
fn read_file(path: &std::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reads into the unfilled rest of `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    Some(len)
}

struct MapsLine<'a> {
    start: u64,
    end: u64,
    perms: [u8; 4],
    path: &'a [u8],
}

/// One line of /proc/self/maps: "start-end perms offset dev inode   path".
fn parse_maps_line(line: &[u8]) -> Option<MapsLine<'_>> {
    let mut fields = line.splitn(6, |&b| b == b' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.next().map_or(&[][..], |p| {
        let skip = p.iter().take_while(|&&b| b == b' ').count();
        &p[skip..]
    });
    let dash = range.iter().position(|&b| b == b'-')?;
    let hex = |s: &[u8]| -> Option<u64> {
        let mut v: u64 = 0;
        for &c in s {
            v = v.checked_mul(16)? + (c as char).to_digit(16)? as u64;
        }
        Some(v)
    };
    let p = perms.get(..4)?;
    Some(MapsLine { start: hex(&range[..dash])?, end: hex(&range[dash + 1..])?, perms: [p[0], p[1], p[2], p[3]], path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse_without_allocating() {
        let m = parse_maps_line(b"7f2a1c000000-7f2a1c028000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!((m.start, m.end, &m.perms, m.path), (0x7f2a1c000000, 0x7f2a1c028000, b"rw-p", &b""[..]));
        let s = parse_maps_line(b"7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]").unwrap();
        assert_eq!(s.path, b"[stack]");
        assert!(parse_maps_line(b"garbage").is_none());
    }
}
