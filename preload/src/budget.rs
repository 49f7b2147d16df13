//! The disk budget of a process tree: every trace file of a traced process and of all its
//! descendants, forked or exec'd, together stays within `LEAKTRACE_TREE_BUDGET` bytes.
//!
//! A postgres forking a backend per connection once left 496 traces (32 GB) in five seconds.
//! Each process now reserves the disk blocks it is about to allocate in a ledger shared by the
//! whole tree before it allocates them, and a process whose reservation does not fit runs
//! untraced (its parent's trace counts it).
//!
//! The ledger is one page of a small file, `leaktrace.<pid>.tree` next to the root's trace,
//! mapped shared and updated with atomic compare-and-swap by every process that has it mapped:
//! forked children inherit the mapping, and exec'd descendants open the file again by the path
//! the root put in `LEAKTRACE_TREE`. A descendant that cannot open it (it became another user:
//! the file is 0600) starts a ledger of its own, so a tree's disk is bounded by its budget times
//! the number of users it runs as. Reservations of processes that were killed are never given
//! back: the bound stays a bound.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the tree's ledger file for exec'd descendants.
pub const TREE_ENV: &str = "LEAKTRACE_TREE";

const MAGIC: u64 = u64::from_le_bytes(*b"LKTREE\0\x01");
const LEDGER_SIZE: usize = 4096;

/// Word offsets in the ledger page.
mod word {
    pub const MAGIC: usize = 0;
    pub const BUDGET: usize = 1;
    pub const RESERVED: usize = 2;
    pub const TREE_ID: usize = 3;
    pub const REFUSED: usize = 4;
}

/// A mapped ledger.
pub struct Ledger {
    words: *const AtomicU64,
    pub path: String,
}

// SAFETY: the ledger page is only accessed through atomics.
unsafe impl Sync for Ledger {}
// SAFETY: as above.
unsafe impl Send for Ledger {}

impl Ledger {
    /// Open the existing ledger at `path`; None if there is none.
    pub fn open(path: &str) -> Option<Ledger> {
        let c = CString::new(path).ok()?;
        // SAFETY: an all-zero `stat` is a valid out-buffer; `c` is NUL-terminated.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let exists = unsafe { libc::lstat(c.as_ptr(), &mut st) } == 0;
        exists.then(|| Self::open_or_create(path, 0).ok()).flatten()
    }

    /// Open the ledger at `path`, creating it with `budget` if it does not exist yet (the root,
    /// or whichever process of the tree needs it first). Refuses anything that is not a ledger.
    pub fn open_or_create(path: &str, budget: u64) -> Result<Ledger, String> {
        let c = CString::new(path).map_err(|_| format!("ledger path {path:?} contains a NUL byte"))?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `c` is NUL-terminated; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint) };
        if fd >= 0 {
            return Self::init(fd, &c, path, budget);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(format!("cannot create the tree's disk ledger {path}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: as above.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("cannot open the tree's disk ledger {path}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: an all-zero `stat` is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open; `st` is writable.
        let ok = unsafe { libc::fstat(fd, &mut st) } == 0
            && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
            && st.st_size as usize >= LEDGER_SIZE;
        let ledger = if ok { Self::map(fd, path) } else { Err(format!("{path} is not a ledger")) };
        // SAFETY: `fd` is ours; the mapping keeps the file.
        unsafe { libc::close(fd) };
        let ledger = ledger?;
        // A creator that has not written the magic yet: a moment's wait, then give up.
        for _ in 0..100 {
            if ledger.word(word::MAGIC).load(Ordering::Acquire) == MAGIC {
                return Ok(ledger);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(format!("{path} is not a ledger"))
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
            static EMPTY: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
            return Ledger { words: EMPTY.as_ptr(), path: String::new() };
        }
        let ledger = Ledger { words: base.cast(), path: String::new() };
        ledger.word(word::BUDGET).store(budget, Ordering::Relaxed);
        ledger.word(word::TREE_ID).store(crate::tracer::random_u64() | 1, Ordering::Relaxed);
        ledger.word(word::MAGIC).store(MAGIC, Ordering::Release);
        ledger
    }

    fn init(fd: libc::c_int, c: &CString, path: &str, budget: u64) -> Result<Ledger, String> {
        // SAFETY: `fd` is the file we just created; blocks first, so stores cannot SIGBUS.
        let rc = unsafe { libc::posix_fallocate(fd, 0, LEDGER_SIZE as libc::off_t) };
        let ledger = if rc == 0 { Self::map(fd, path) } else { Err(format!("cannot reserve the ledger {path}")) };
        // SAFETY: `fd` is ours; the mapping keeps the file.
        unsafe { libc::close(fd) };
        let ledger = match ledger {
            Ok(l) => l,
            Err(e) => {
                // SAFETY: `c` names the file we just created.
                unsafe { libc::unlink(c.as_ptr()) };
                return Err(e);
            }
        };
        let id = crate::tracer::random_u64() | 1;
        ledger.word(word::BUDGET).store(budget, Ordering::Relaxed);
        ledger.word(word::TREE_ID).store(id, Ordering::Relaxed);
        ledger.word(word::MAGIC).store(MAGIC, Ordering::Release);
        Ok(ledger)
    }

    fn map(fd: libc::c_int, path: &str) -> Result<Ledger, String> {
        // SAFETY: mapping the first page of a regular file at least that long; checked.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), LEDGER_SIZE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if base == libc::MAP_FAILED {
            return Err(format!("cannot map the ledger {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(Ledger { words: base.cast(), path: path.to_string() })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < LEDGER_SIZE / 8);
        // SAFETY: `words` is a page-aligned mapping of LEDGER_SIZE bytes that is never unmapped
        // (ledgers are leaked); `i` is one of the fixed word indices above.
        unsafe { &*self.words.add(i) }
    }

    /// Reserve `bytes` of the budget; false (and nothing reserved) if they do not fit.
    pub fn reserve(&self, bytes: u64) -> bool {
        let budget = self.budget();
        self.word(word::RESERVED)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_add(bytes).filter(|&t| t <= budget))
            .is_ok()
    }

    /// Reserve `bytes` whatever the budget says (a trace that exists already must be counted).
    pub fn force_reserve(&self, bytes: u64) -> bool {
        self.word(word::RESERVED).fetch_add(bytes, Ordering::AcqRel);
        true
    }

    /// Give back `bytes` reserved earlier.
    pub fn release(&self, bytes: u64) {
        let _ = self
            .word(word::RESERVED)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(bytes)));
    }

    pub fn budget(&self) -> u64 {
        self.word(word::BUDGET).load(Ordering::Relaxed)
    }

    pub fn reserved(&self) -> u64 {
        self.word(word::RESERVED).load(Ordering::Acquire)
    }

    pub fn id(&self) -> u64 {
        self.word(word::TREE_ID).load(Ordering::Relaxed)
    }

    /// Count a process of the tree that ran untraced for want of budget.
    pub fn count_refused(&self) {
        self.word(word::REFUSED).fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) -> u64 {
        self.word(word::REFUSED).load(Ordering::Relaxed)
    }
}

/// The ledger path for a root whose trace pattern resolves to `trace_path`: the same directory,
/// `leaktrace.<pid>.tree`, made absolute (exec'd descendants may run elsewhere).
pub fn ledger_path_for(trace_path: &str, pid: u32) -> String {
    let dir = match trace_path.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => trace_path[..i].to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("lt-ledger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("leaktrace.1.tree").to_str().unwrap().to_string()
    }

    #[test]
    fn reservations_never_exceed_the_budget_across_threads() {
        let path = scratch("threads");
        let ledger = Ledger::open_or_create(&path, 1000).unwrap();
        let granted: u64 = std::thread::scope(|s| {
            let hs: Vec<_> =
                (0..8).map(|_| s.spawn(|| (0..100).filter(|_| ledger.reserve(7)).count() as u64 * 7)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, ledger.reserved());
        assert!(granted <= 1000 && granted > 1000 - 7);
        ledger.release(granted);
        assert_eq!(ledger.reserved(), 0);
        // A second opener sees the same ledger, budget and id.
        let again = Ledger::open_or_create(&path, 5).unwrap();
        assert_eq!((again.budget(), again.id()), (1000, ledger.id()));
        remove_scratch(&path);
    }

    fn remove_scratch(ledger_path: &str) {
        if let Some(dir) = std::path::Path::new(ledger_path).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn a_forked_child_reserves_in_the_parents_ledger() {
        let path = scratch("fork");
        let ledger = Ledger::open_or_create(&path, 100).unwrap();
        assert!(ledger.reserve(30));
        // SAFETY: test-only fork; the child only touches the mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = ledger.reserve(50) && !ledger.reserve(50);
            // SAFETY: leaving the child without running the test harness's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0);
        assert_eq!(ledger.reserved(), 80);
        remove_scratch(&path);
    }

    #[test]
    fn a_file_that_is_not_a_ledger_is_refused() {
        let path = scratch("foreign");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        assert!(Ledger::open_or_create(&path, 100).is_err());
        assert_eq!(ledger_path_for("/a/b/trace.%p.lt", 9), "/a/b/leaktrace.9.tree");
        assert_eq!(ledger_path_for("/t.lt", 9), "/leaktrace.9.tree");
        remove_scratch(&path);
    }
}
