//! The disk budget of a process tree: every trace file of a traced process and of all its
//! descendants, forked or exec'd, together stays within `LEAKTRACE_TREE_BUDGET` bytes.
//!
//! A postgres forking a backend per connection once left 496 traces (32 GB) in five seconds.
//! Each process now reserves the disk blocks it is about to allocate in a ledger shared by the
//! whole tree *before* it allocates them (before a file is created, before it is grown), and a
//! process whose reservation does not fit runs untraced (its parent's trace counts it).
//!
//! # The ledger
//!
//! One page (4096 bytes) of a small file, `leaktrace.<pid>.tree` next to the root's trace
//! ([`ledger_path_for`]: `/dir/leaktrace.4242.lt` gives `/dir/leaktrace.4242.tree`), mapped
//! `MAP_SHARED` and only ever accessed through 64-bit atomics, so every process that has it
//! mapped sees one set of counters: forked children inherit the mapping, and exec'd
//! descendants open the file again by the path the root exported in `LEAKTRACE_TREE`
//! ([`TREE_ENV`]). No descriptor is kept: the mapping alone holds the file, and it survives a
//! privilege drop (an nginx worker that became `nobody` still reserves through it).
//!
//! | word | byte | content |
//! |---|---|---|
//! | 0 | 0 | magic `LKLEDGER` |
//! | 1 | 8 | version, [`VERSION`] |
//! | 2 | 16 | budget, bytes (fixed at creation: the root's `LEAKTRACE_TREE_BUDGET`) |
//! | 3 | 24 | reserved, bytes (compare-and-swap, never above the budget but for `force_reserve`) |
//! | 4 | 32 | tree id: 64 random bits, never 0 (traces record it: one tree's traces share it) |
//! | 5 | 40 | processes refused for want of budget |
//! | 6 | 48 | trace files created ([`Ledger::count_file`]) |
//! | 7 | 56 | peak reserved, bytes |
//! | 8 | 64 | creator's pid |
//! | 9 | 72 | creator's start time (`/proc/self/stat` field 22, clock ticks since boot; 0 unknown) |
//! | 10 | 80 | creator's boot (a hash of `/proc/sys/kernel/random/boot_id`; 0 unknown) |
//!
//! The rest of the page is zero. The creator stores the magic last (release), after the disk
//! block is allocated: an opener that finds the file before that waits a moment (up to 100 ms)
//! rather than take a half-made ledger for a broken one.
//!
//! # What is trusted, what is replaced
//!
//! Only a regular file (never a link: `O_NOFOLLOW`) owned by the effective user, exactly one
//! page long, with the magic and version, is used. Another user's file is refused, whatever it
//! holds: its owner could truncate it under our mapping, and the next access would raise SIGBUS
//! in the traced program. A descendant that cannot use the root's ledger (it became another
//! user: the file is 0600) starts a ledger of its own, so a tree's disk is bounded by its budget
//! times the number of users it runs as.
//!
//! A ledger whose creator had *our* pid but not our start time or boot is a leftover of an
//! earlier process that had this pid (a container that restarts its service as pid 1 on a
//! volume, a recycled pid): it is stale, never used, and [`Ledger::create`] replaces it, as it
//! replaces any broken leftover of ours. (Reusing it carried the dead tree's reservations over:
//! the fifth restart of a service whose traces had been copied away ran untraced.) The same
//! process after an `exec` keeps its pid and start time, so it finds its own ledger again.
//!
//! # Bounds
//!
//! Reservations of processes that were killed are never given back: the bound stays a bound,
//! at the price of a budget that may be spent by traces no longer on disk. Ledger files are
//! never removed (4 KiB each, beside the root's trace); the next process with the same pid
//! replaces its own.

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the tree's ledger file (an absolute path) for exec'd
/// descendants. The root sets it.
pub const TREE_ENV: &str = "LEAKTRACE_TREE";

const MAGIC: u64 = u64::from_le_bytes(*b"LKLEDGER");
/// Layout version of the ledger page.
pub const VERSION: u64 = 2;
/// The ledger file's size: one page.
pub const LEDGER_SIZE: usize = 4096;

/// Word indices in the ledger page (see the module documentation).
mod word {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 1;
    pub const BUDGET: usize = 2;
    pub const RESERVED: usize = 3;
    pub const TREE_ID: usize = 4;
    pub const REFUSED: usize = 5;
    pub const FILES: usize = 6;
    pub const PEAK: usize = 7;
    pub const CREATOR_PID: usize = 8;
    pub const CREATOR_START: usize = 9;
    pub const CREATOR_BOOT: usize = 10;
    /// Words in use; the mapping is LEDGER_SIZE / 8 words.
    pub const COUNT: usize = 11;
}

/// A mapped ledger.
#[derive(Debug)]
pub struct Ledger {
    words: *const AtomicU64,
    /// The length to unmap on drop; 0 for the static fallback that is never unmapped.
    mapped_len: usize,
    /// The ledger file's path; empty for an anonymous ledger.
    pub path: String,
}

// SAFETY: the ledger page is only accessed through atomics.
unsafe impl Sync for Ledger {}
// SAFETY: as above.
unsafe impl Send for Ledger {}

/// Why an existing file at a ledger path is not used.
enum Unusable {
    /// It vanished between two looks.
    Gone,
    /// A regular file of ours (device and inode) that is no ledger, a ledger of another
    /// version, or a stale ledger: [`Ledger::create`] may replace it.
    Leftover(String, (u64, u64)),
    /// Anything else (another user's, not a regular file, not openable): never touched.
    Foreign(String),
}

impl Ledger {
    /// The tree's ledger at `path`: a new one with `budget` (0600, O_EXCL|O_NOFOLLOW|O_CLOEXEC,
    /// its page allocated with posix_fallocate before it is mapped), or the live ledger another
    /// process of the tree made there first (then its budget and id hold, not `budget`). A stale
    /// or broken leftover of ours is replaced; anything else at the path is an error.
    pub fn create(path: &str, budget: u64) -> Result<Ledger, String> {
        let c = CString::new(path).map_err(|_| format!("ledger path {path:?} contains a NUL byte"))?;
        let me = Identity::of_self();
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let mut last = String::new();
        for _ in 0..3 {
            // SAFETY: `c` is NUL-terminated; the result is checked.
            let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint) };
            if fd >= 0 {
                return Self::init(fd, &c, path, budget, &me);
            }
            if errno() != libc::EEXIST {
                return Err(format!("cannot create the tree's disk ledger {path}: {}", errno_text()));
            }
            match Self::open_checked(&c, path, &me) {
                Ok(l) => return Ok(l),
                Err(Unusable::Gone) => last = format!("{path} keeps vanishing"),
                Err(Unusable::Foreign(e)) => return Err(e),
                Err(Unusable::Leftover(e, id)) => {
                    if lstat(&c).map(|st| (st.st_dev, st.st_ino)) == Some(id) {
                        // SAFETY: `c` names the regular file of ours just checked (device and
                        // inode); one put there since is unlinked only if its maker could have
                        // unlinked ours, i.e. it is our own user.
                        unsafe { libc::unlink(c.as_ptr()) };
                    }
                    last = e;
                }
            }
        }
        Err(format!("cannot create the tree's disk ledger {path}: {last}"))
    }

    /// [`Ledger::create`], under the name the tracer first used for it.
    pub fn open_or_create(path: &str, budget: u64) -> Result<Ledger, String> {
        Self::create(path, budget)
    }

    /// Open the live ledger at `path` (an exec'd descendant, by `LEAKTRACE_TREE`); refuses
    /// anything but a ledger of this version, of our user, exactly one page long, and a stale
    /// one (see the module documentation). Never creates nor removes anything.
    pub fn open_existing(path: &str) -> Result<Ledger, String> {
        let c = CString::new(path).map_err(|_| format!("ledger path {path:?} contains a NUL byte"))?;
        match Self::open_checked(&c, path, &Identity::of_self()) {
            Ok(l) => Ok(l),
            Err(Unusable::Gone) => Err(format!("there is no ledger at {path}")),
            Err(Unusable::Leftover(e, _) | Unusable::Foreign(e)) => Err(e),
        }
    }

    /// [`Ledger::open_existing`], None for any refusal (the caller then makes a ledger with
    /// [`Ledger::create`], which replaces what may be replaced and refuses the rest).
    pub fn open(path: &str) -> Option<Ledger> {
        Self::open_existing(path).ok()
    }

    /// A ledger in memory, shared with forked children only: for when no file can hold one.
    pub fn anonymous(budget: u64) -> Ledger {
        // SAFETY: a fresh anonymous shared mapping of one page; checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEDGER_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            // Nothing can be reserved in a ledger of budget 0: the process runs untraced.
            static EMPTY: [AtomicU64; word::COUNT] = [const { AtomicU64::new(0) }; word::COUNT];
            return Ledger { words: EMPTY.as_ptr(), mapped_len: 0, path: String::new() };
        }
        let ledger = Ledger { words: base.cast(), mapped_len: LEDGER_SIZE, path: String::new() };
        ledger.initialize(budget, &Identity::of_self());
        ledger
    }

    /// Fill a fresh page; the magic goes last, so an opener never sees half a ledger.
    fn initialize(&self, budget: u64, me: &Identity) {
        self.word(word::VERSION).store(VERSION, Ordering::Relaxed);
        self.word(word::BUDGET).store(budget, Ordering::Relaxed);
        self.word(word::TREE_ID).store(crate::tracer::random_u64() | 1, Ordering::Relaxed);
        self.word(word::CREATOR_PID).store(me.pid, Ordering::Relaxed);
        self.word(word::CREATOR_START).store(me.start, Ordering::Relaxed);
        self.word(word::CREATOR_BOOT).store(me.boot, Ordering::Relaxed);
        self.word(word::MAGIC).store(MAGIC, Ordering::Release);
    }

    fn init(fd: libc::c_int, c: &CStr, path: &str, budget: u64, me: &Identity) -> Result<Ledger, String> {
        // SAFETY: `fd` is the file we just created; its block first, so stores cannot SIGBUS.
        let rc = unsafe { libc::posix_fallocate(fd, 0, LEDGER_SIZE as libc::off_t) };
        let ledger = if rc == 0 {
            Self::map(fd, path)
        } else {
            Err(format!("cannot reserve the ledger {path}: {}", std::io::Error::from_raw_os_error(rc)))
        };
        // SAFETY: `fd` is ours; the mapping keeps the file.
        unsafe { libc::close(fd) };
        match ledger {
            Ok(l) => {
                l.initialize(budget, me);
                Ok(l)
            }
            Err(e) => {
                // SAFETY: `c` names the file we just created (O_EXCL).
                unsafe { libc::unlink(c.as_ptr()) };
                Err(e)
            }
        }
    }

    /// Open and check what is at `c`, waiting up to 100 ms for a creator that is still
    /// allocating or filling it.
    fn open_checked(c: &CStr, path: &str, me: &Identity) -> Result<Ledger, Unusable> {
        let Some(st) = lstat(c) else { return Err(Unusable::Gone) };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Unusable::Foreign(format!("{path} is not a regular file")));
        }
        // SAFETY: geteuid has no preconditions.
        if st.st_uid != unsafe { libc::geteuid() } {
            return Err(Unusable::Foreign(format!(
                "{path} belongs to another user (uid {}): a ledger that user could truncate under our mapping \
                 is not used",
                st.st_uid
            )));
        }
        // SAFETY: `c` is NUL-terminated; the result is checked. O_NONBLOCK: a file swapped for a
        // FIFO since the lstat must not block us (fstat below refuses it).
        let fd =
            unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(match errno() {
                libc::ENOENT => Unusable::Gone,
                _ => Unusable::Foreign(format!("cannot open the tree's disk ledger {path}: {}", errno_text())),
            });
        }
        let result = Self::check_fd(fd, &st, path, me);
        // SAFETY: `fd` is ours; a mapping made from it keeps the file.
        unsafe { libc::close(fd) };
        result
    }

    fn check_fd(fd: libc::c_int, seen: &libc::stat, path: &str, me: &Identity) -> Result<Ledger, Unusable> {
        let id = (seen.st_dev, seen.st_ino);
        let mut sized = false;
        for _ in 0..100 {
            let Some(st) = fstat(fd) else { return Err(Unusable::Foreign(format!("cannot stat {path}"))) };
            if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) {
                return Err(Unusable::Gone);
            }
            match usize::try_from(st.st_size) {
                Ok(LEDGER_SIZE) => {
                    sized = true;
                    break;
                }
                Ok(0) => pause(),
                _ => return Err(Unusable::Leftover(format!("{path} is not a ledger (size {})", st.st_size), id)),
            }
        }
        if !sized {
            return Err(Unusable::Leftover(format!("{path} is an empty file, not a ledger"), id));
        }
        let ledger = Self::map(fd, path).map_err(Unusable::Foreign)?;
        for _ in 0..100 {
            match ledger.word(word::MAGIC).load(Ordering::Acquire) {
                MAGIC => return ledger.check_contents(path, me, id),
                0 => pause(),
                _ => break,
            }
        }
        Err(Unusable::Leftover(format!("{path} is not a ledger"), id))
    }

    /// A mapped page with the magic: of our version, and not a leftover of an earlier process
    /// with our pid.
    fn check_contents(self, path: &str, me: &Identity, id: (u64, u64)) -> Result<Ledger, Unusable> {
        let version = self.word(word::VERSION).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(Unusable::Leftover(format!("{path} is a ledger of version {version}, not {VERSION}"), id));
        }
        let creator = Identity {
            pid: self.word(word::CREATOR_PID).load(Ordering::Relaxed),
            start: self.word(word::CREATOR_START).load(Ordering::Relaxed),
            boot: self.word(word::CREATOR_BOOT).load(Ordering::Relaxed),
        };
        if me.is_other_process_with_my_pid(&creator) {
            return Err(Unusable::Leftover(
                format!("{path} is stale: an earlier process with pid {} made it", creator.pid),
                id,
            ));
        }
        Ok(self)
    }

    fn map(fd: libc::c_int, path: &str) -> Result<Ledger, String> {
        // SAFETY: mapping the first page of a regular file exactly that long (checked by the
        // callers, or allocated by `init`); the result is checked.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), LEDGER_SIZE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if base == libc::MAP_FAILED {
            return Err(format!("cannot map the ledger {path}: {}", errno_text()));
        }
        Ok(Ledger { words: base.cast(), mapped_len: LEDGER_SIZE, path: path.to_string() })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        // Every caller passes one of the fixed indices in `word`; an index past them would read
        // the static fallback out of bounds, so it reads the magic instead (never reached).
        let i = if i < word::COUNT { i } else { word::MAGIC };
        // SAFETY: `words` points to at least word::COUNT atomics (a page-aligned mapping of
        // LEDGER_SIZE bytes, or the static fallback) that live as long as `self`.
        unsafe { &*self.words.add(i) }
    }

    /// Reserve `bytes` of the budget; false (and nothing reserved) if they do not fit.
    pub fn reserve(&self, bytes: u64) -> bool {
        let budget = self.budget();
        let reserved = self
            .word(word::RESERVED)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_add(bytes).filter(|&t| t <= budget));
        match reserved {
            Ok(before) => {
                self.word(word::PEAK).fetch_max(before.saturating_add(bytes), Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Reserve `bytes` whatever the budget says (a trace that exists already must be counted).
    pub fn force_reserve(&self, bytes: u64) -> bool {
        let before = self.word(word::RESERVED).fetch_add(bytes, Ordering::AcqRel);
        self.word(word::PEAK).fetch_max(before.saturating_add(bytes), Ordering::Relaxed);
        true
    }

    /// Give back `bytes` reserved earlier (saturating at 0).
    pub fn release(&self, bytes: u64) {
        let _ = self
            .word(word::RESERVED)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(bytes)));
    }

    /// The tree's budget in bytes.
    pub fn budget(&self) -> u64 {
        self.word(word::BUDGET).load(Ordering::Relaxed)
    }

    /// Bytes reserved now by the whole tree.
    pub fn reserved(&self) -> u64 {
        self.word(word::RESERVED).load(Ordering::Acquire)
    }

    /// The most ever reserved at once.
    pub fn peak(&self) -> u64 {
        self.word(word::PEAK).load(Ordering::Relaxed)
    }

    /// The tree's id (never 0 for a ledger that was made; 0 for the static fallback).
    pub fn id(&self) -> u64 {
        self.word(word::TREE_ID).load(Ordering::Relaxed)
    }

    /// Count a process of the tree that ran untraced for want of budget.
    pub fn count_refused(&self) {
        self.word(word::REFUSED).fetch_add(1, Ordering::Relaxed);
    }

    /// Processes of the tree that ran untraced for want of budget.
    pub fn refused(&self) -> u64 {
        self.word(word::REFUSED).load(Ordering::Relaxed)
    }

    /// Count a trace file created by a process of the tree.
    pub fn count_file(&self) {
        self.word(word::FILES).fetch_add(1, Ordering::Relaxed);
    }

    /// Trace files the tree's processes created ([`Ledger::count_file`]).
    pub fn files_created(&self) -> u64 {
        self.word(word::FILES).load(Ordering::Relaxed)
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if self.mapped_len > 0 {
            // SAFETY: `words` is the start of a mapping of `mapped_len` bytes that this ledger
            // made and nothing else refers to (borrows of its words end with `self`).
            unsafe { libc::munmap(self.words as *mut libc::c_void, self.mapped_len) };
        }
    }
}

/// The ledger path for a root whose trace pattern resolves to `trace_path`: the same directory,
/// `leaktrace.<pid>.tree`, made absolute (exec'd descendants may run elsewhere). So
/// `/dir/leaktrace.4242.lt` gives `/dir/leaktrace.4242.tree`, and a relative `t.lt` gives
/// `<cwd>/leaktrace.<pid>.tree`.
pub fn ledger_path_for(trace_path: &str, pid: u32) -> String {
    let dir = match trace_path.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => trace_path.get(..i).unwrap_or(".").to_string(),
        None => ".".to_string(),
    };
    let dir = if dir.starts_with('/') {
        dir
    } else {
        match std::env::current_dir() {
            Ok(cwd) => format!("{}/{}", cwd.display(), dir),
            Err(_) => dir,
        }
    };
    format!("{}/leaktrace.{pid}.tree", dir.trim_end_matches('/'))
}

/// Which process made a ledger: a pid is reused, a pid with its start time and boot is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    pid: u64,
    /// Clock ticks from boot to the process's start (`/proc/self/stat` field 22); kept by exec.
    start: u64,
    /// A hash of the boot id; the start time alone repeats across boots.
    boot: u64,
}

impl Identity {
    fn of_self() -> Identity {
        Identity { pid: u64::from(std::process::id()), start: own_start_ticks().unwrap_or(0), boot: boot_hash() }
    }

    /// `other` had our pid but was another process. Unknown parts (0) never make it so.
    fn is_other_process_with_my_pid(&self, other: &Identity) -> bool {
        let differ = |a: u64, b: u64| a != 0 && b != 0 && a != b;
        other.pid == self.pid && (differ(self.start, other.start) || differ(self.boot, other.boot))
    }
}

/// Read a small /proc file into `buf` without allocating; the bytes read.
fn read_small(path: &CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `path` is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `buf` is writable for its length; `fd` is ours.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    usize::try_from(n).ok()
}

/// Field 22 of /proc/self/stat: after the command name in parentheses (which may hold spaces
/// and parentheses itself), field 3 is the first; starttime is the 20th from there.
fn own_start_ticks() -> Option<u64> {
    let mut buf = [0u8; 1024];
    let n = read_small(c"/proc/self/stat", &mut buf)?;
    parse_start_ticks(buf.get(..n)?)
}

fn parse_start_ticks(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// FNV-1a of the boot id; 0 if it cannot be read.
fn boot_hash() -> u64 {
    let mut buf = [0u8; 64];
    let Some(n) = read_small(c"/proc/sys/kernel/random/boot_id", &mut buf) else { return 0 };
    let id = buf.get(..n).unwrap_or(&[]).trim_ascii();
    if id.is_empty() {
        return 0;
    }
    id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)) | 1
}

fn lstat(c: &CStr) -> Option<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is writable.
    (unsafe { libc::lstat(c.as_ptr(), &mut st) } == 0).then_some(st)
}

fn fstat(fd: libc::c_int) -> Option<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on any descriptor number is harmless; `st` is writable.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
}

fn pause() {
    std::thread::sleep(std::time::Duration::from_millis(1));
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory; returns the ledger path in it.
    fn scratch(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("lt-ledger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("leaktrace.1.tree").to_str().unwrap().to_string()
    }

    fn remove_scratch(ledger_path: &str) {
        if let Some(dir) = std::path::Path::new(ledger_path).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn reservations_never_exceed_the_budget_across_threads() {
        let path = scratch("threads");
        let ledger = Ledger::create(&path, 1000).unwrap();
        let granted: u64 = std::thread::scope(|s| {
            let hs: Vec<_> =
                (0..8).map(|_| s.spawn(|| (0..100).filter(|_| ledger.reserve(7)).count() as u64 * 7)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, ledger.reserved());
        assert!(granted <= 1000 && granted > 1000 - 7);
        assert_eq!(ledger.peak(), granted);
        // Threads that reserve and release at once never see more than the budget either.
        ledger.release(granted);
        assert_eq!(ledger.reserved(), 0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if ledger.reserve(300) {
                            assert!(ledger.reserved() <= 1000);
                            ledger.release(300);
                        }
                    }
                });
            }
        });
        assert_eq!(ledger.reserved(), 0);
        assert!(ledger.peak() <= 1000);
        ledger.release(5);
        assert_eq!(ledger.reserved(), 0, "release saturates");
        // A second opener sees the same ledger, budget and id.
        let again = Ledger::create(&path, 5).unwrap();
        assert_eq!((again.budget(), again.id()), (1000, ledger.id()));
        let opened = Ledger::open_existing(&path).unwrap();
        assert_eq!((opened.budget(), opened.id()), (1000, ledger.id()));
        remove_scratch(&path);
    }

    #[test]
    fn a_forked_child_reserves_in_the_parents_ledger() {
        let path = scratch("fork");
        let ledger = Ledger::create(&path, 100).unwrap();
        assert!(ledger.reserve(30));
        // SAFETY: test-only fork; the child only touches the mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = ledger.reserve(50) && !ledger.reserve(50);
            ledger.count_file();
            ledger.count_refused();
            // SAFETY: leaving the child without running the test harness's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0);
        assert_eq!(ledger.reserved(), 80);
        assert_eq!((ledger.files_created(), ledger.refused()), (1, 1));
        remove_scratch(&path);
    }

    /// An exec'd descendant is another process that opens the file by path: a forked child
    /// that drops the inherited mapping and opens the ledger again stands for it.
    #[test]
    fn another_process_opening_by_path_shares_the_counters() {
        let path = scratch("reopen");
        let ledger = Ledger::create(&path, 100).unwrap();
        // SAFETY: test-only fork; the child maps the file, reserves and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = match Ledger::open_existing(&path) {
                Ok(l) => l.reserve(60) && !l.reserve(60) && l.id() == ledger.id(),
                Err(_) => false,
            };
            // SAFETY: leaving the child without running the test harness's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0);
        assert_eq!(ledger.reserved(), 60);
        assert!(!ledger.reserve(41));
        remove_scratch(&path);
    }

    #[test]
    fn a_file_that_is_not_a_ledger_is_refused_by_open_and_replaced_by_create() {
        use std::os::unix::fs::MetadataExt;
        let path = scratch("foreign");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        assert!(Ledger::open_existing(&path).is_err());
        assert!(Ledger::open(&path).is_none());
        let l = Ledger::create(&path, 100).unwrap();
        assert_eq!((l.budget(), l.reserved()), (100, 0));
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!((md.len(), md.mode() & 0o777), (4096, 0o600));
        assert!(md.blocks() * 512 >= 4096, "the page is allocated");
        // An empty leftover (a creator killed before it allocated the page) is waited for a
        // moment, as a creator still at work would be, then replaced.
        drop(l);
        std::fs::write(&path, b"").unwrap();
        let t = std::time::Instant::now();
        assert!(Ledger::open_existing(&path).unwrap_err().contains("empty"));
        assert!(t.elapsed() >= std::time::Duration::from_millis(90));
        assert_eq!(Ledger::create(&path, 300).unwrap().budget(), 300);
        // A link is never followed, nor replaced.
        let link = format!("{path}.link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Ledger::open_existing(&link).is_err());
        assert!(Ledger::create(&link, 100).is_err());
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        // A directory neither.
        let dir = format!("{path}.d");
        std::fs::create_dir(&dir).unwrap();
        assert!(Ledger::create(&dir, 100).is_err());
        // Nothing there: open says so and creates nothing.
        let none = format!("{path}.none");
        assert!(Ledger::open_existing(&none).is_err());
        assert!(!std::path::Path::new(&none).exists());
        assert_eq!(ledger_path_for("/a/b/trace.%p.lt", 9), "/a/b/leaktrace.9.tree");
        assert_eq!(ledger_path_for("/dir/leaktrace.4242.lt", 4242), "/dir/leaktrace.4242.tree");
        assert_eq!(ledger_path_for("/t.lt", 9), "/leaktrace.9.tree");
        assert!(ledger_path_for("t.lt", 9).starts_with('/'));
        remove_scratch(&path);
    }

    /// A ledger left by an earlier process with this pid (a service restarted as pid 1 in a
    /// container, traces on a volume) is not this tree's: its reservations must not count.
    #[test]
    fn a_stale_ledger_of_an_earlier_process_with_our_pid_is_replaced() {
        let path = scratch("stale");
        let old = Ledger::create(&path, 100).unwrap();
        assert!(old.reserve(100));
        let old_id = old.id();
        // Make it the ledger of an earlier process with our pid: another start time.
        let me = Identity::of_self();
        assert_ne!(me.start, 0, "/proc/self/stat is readable here");
        old.word(word::CREATOR_START).store(me.start + 1, Ordering::Relaxed);
        assert!(Ledger::open_existing(&path).unwrap_err().contains("stale"));
        let new = Ledger::create(&path, 200).unwrap();
        assert_ne!(new.id(), old_id);
        assert_eq!((new.budget(), new.reserved()), (200, 0));
        assert_eq!(Ledger::open_existing(&path).unwrap().id(), new.id());
        // Our own ledger (the same process, after an exec) is not stale; nor is another pid's.
        old.word(word::CREATOR_PID).store(me.pid + 1, Ordering::Relaxed);
        let mut other = me;
        other.pid += 1;
        assert!(!me.is_other_process_with_my_pid(&other));
        assert!(!me.is_other_process_with_my_pid(&me));
        assert!(!me.is_other_process_with_my_pid(&Identity { start: 0, boot: 0, ..me }), "unknown is not stale");
        assert!(me.is_other_process_with_my_pid(&Identity { boot: me.boot ^ 2, ..me }) || me.boot == 0);
        remove_scratch(&path);
    }

    #[test]
    fn a_ledger_of_another_version_is_refused() {
        let path = scratch("version");
        let l = Ledger::create(&path, 100).unwrap();
        l.word(word::VERSION).store(VERSION + 1, Ordering::Relaxed);
        assert!(Ledger::open_existing(&path).unwrap_err().contains("version"));
        // A file of the wrong size neither.
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        assert!(Ledger::open_existing(&path).is_err());
        remove_scratch(&path);
    }

    /// Another user's file could be truncated under our mapping (SIGBUS): never used, never
    /// replaced.
    #[test]
    fn another_users_ledger_is_neither_used_nor_replaced() {
        if !is_root() {
            eprintln!("skipped: needs root to make a file of another owner");
            return;
        }
        let path = scratch("owner");
        let l = Ledger::create(&path, 100).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        assert!(Ledger::open_existing(&path).unwrap_err().contains("another user"));
        assert!(Ledger::create(&path, 100).is_err());
        drop(l);
        assert!(std::path::Path::new(&path).exists(), "left alone");
        remove_scratch(&path);
    }

    #[test]
    fn start_time_is_field_22() {
        let stat = b"42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks(b"42 (x) S 1"), None);
        assert!(own_start_ticks().is_some());
    }

    #[test]
    fn an_anonymous_ledger_is_shared_with_forked_children() {
        let ledger = Ledger::anonymous(10);
        assert!(ledger.path.is_empty() && ledger.id() != 0);
        // SAFETY: test-only fork; the child only touches the mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = ledger.reserve(10);
            // SAFETY: leaving the child without running the test harness's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0);
        assert!(!ledger.reserve(1));
    }
}
