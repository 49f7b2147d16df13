//! Creating the trace file safely, mapping it, reserving its disk, and removing it.
//!
//! A trace file always has its full size and is mapped whole, but its disk blocks are allocated
//! in two steps: the header and the metadata region at creation, the rest when tracing needs
//! it (at once for a tracing process, at `ctl --resume` for a dormant one). Nothing is ever
//! stored into a page before its blocks are allocated: on a full disk such a store would raise
//! SIGBUS in the traced program. [`TraceFile::reserved`] says how far the caller may store.
//!
//! Growing needs a descriptor. The one the file was created with is kept (duplicated to a
//! number at or above 500, or 256 if RLIMIT_NOFILE does not allow 500, close-on-exec), because a
//! process that created its file as root and then dropped privileges (an nginx worker) can no
//! longer open its 0600 file by path. A program may close that number or dup2 another file over
//! it, so the kept descriptor is duplicated and the duplicate checked against the file's device
//! and inode before each use; when it is gone, the path is reopened (O_NOFOLLOW) and checked the
//! same way. A file that is not ours is never grown.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// A mapped trace file.
pub struct TraceFile {
    /// The path it was created at.
    pub path: String,
    pub base: *mut u8,
    pub size: u64,
    dev: u64,
    ino: u64,
    /// A descriptor kept while part of the file is unreserved: growing needs one, and a process
    /// that drops privileges after creating its file could no longer reopen it. Kept above the
    /// descriptors programs use, close-on-exec, and checked against `dev`/`ino` before each
    /// use (a program may close it, or dup2 another file over it). -1 once fully reserved, or
    /// when no high number was free (then growing reopens the path).
    grow_fd: AtomicI32,
    /// Bytes from the start of the file with disk blocks allocated; `size` once fully reserved.
    reserved: AtomicU64,
    fully_reserved: AtomicBool,
    /// Held by the one thread growing the file.
    growing: AtomicBool,
}

// SAFETY: the mapping is process-wide and the other fields are plain data or atomics.
unsafe impl Sync for TraceFile {}
// SAFETY: as above.
unsafe impl Send for TraceFile {}

/// Lowest descriptor number a kept descriptor is moved to, out of the way of programs that
/// expect to get small numbers (or dup2 onto them); [`LOW_HIGH_FD`] if RLIMIT_NOFILE is lower.
const HIGH_FD: libc::c_int = 500;
const LOW_HIGH_FD: libc::c_int = 256;

/// Create `pattern_path` (or, for a relative path the working directory cannot hold, the same
/// name under $TMPDIR or /tmp), size it to `size`, allocate disk blocks for its first
/// `reserve_now` bytes, and map it shared.
///
/// The file is created 0600 with O_EXCL|O_NOFOLLOW, so a link planted at the path cannot
/// redirect the write. A leftover regular file of ours at the path (a recycled pid, or this
/// very process before an exec) is replaced. One we may not replace (another user's: a wrapper
/// running as root that created it, then exec'd this program as another user under the same
/// pid) makes us try `<name>.1.lt` … `<name>.9.lt`.
pub fn create_mapped(path: &str, size: u64, reserve_now: u64) -> Result<TraceFile, String> {
    within_file_size_limit(size)?;
    let mut dirs = vec![path.to_string()];
    if !path.starts_with('/') {
        dirs.push(format!("{}/{}", temp_dir(), path));
    }
    let mut last_err = String::new();
    for base_path in &dirs {
        for n in 0..10 {
            let p = numbered(base_path, n);
            match create_at(&p, size, reserve_now.min(size)) {
                Ok(f) => return Ok(f),
                Err((e, taken)) => {
                    last_err = e;
                    if !taken {
                        break;
                    }
                }
            }
        }
    }
    Err(last_err)
}

/// `path` with `.N` before a trailing `.lt` (or at the end); `path` itself for 0.
fn numbered(path: &str, n: u32) -> String {
    match (n, path.strip_suffix(".lt")) {
        (0, _) => path.to_string(),
        (_, Some(stem)) => format!("{stem}.{n}.lt"),
        (_, None) => format!("{path}.{n}"),
    }
}

impl TraceFile {
    /// Allocate disk blocks for the whole file; afterwards every byte may be written. On
    /// failure (ENOSPC, the file no longer reachable, another thread growing it) nothing
    /// changes: [`TraceFile::reserved`] stays where it was, the blocks a failed allocation
    /// left behind are given back, and the caller must keep its stores below `reserved()`.
    pub fn reserve_all(&self) -> Result<(), String> {
        if self.fully_reserved.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.growing.swap(true, Ordering::Acquire) {
            return Err(format!("{} is being reserved by another thread", self.path));
        }
        let result = self.grow();
        self.growing.store(false, Ordering::Release);
        result
    }

    fn grow(&self) -> Result<(), String> {
        if self.fully_reserved.load(Ordering::Acquire) {
            return Ok(());
        }
        let fd = self.own_fd()?;
        let from = self.reserved.load(Ordering::Acquire);
        let mut rc = libc::EINTR;
        // A signal may interrupt a long allocation: that is no reason to refuse a resume.
        for _ in 0..4 {
            // SAFETY: `fd` is our own descriptor, open on our own trace file (device and inode
            // checked after it was made, and nothing else knows its number).
            rc = unsafe { libc::posix_fallocate(fd, 0, self.size as libc::off_t) };
            if rc != libc::EINTR {
                break;
            }
        }
        if rc != 0 && from < self.size {
            // A failed allocation may leave some of the blocks it got (ext4 does): give them
            // back, the tree's budget no longer counts them. Nothing was stored beyond `from`,
            // so the hole reads as the zeros that were there. Best effort.
            // SAFETY: as above; the range lies within the file.
            unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    from as libc::off_t,
                    (self.size - from) as libc::off_t,
                )
            };
        }
        // SAFETY: `fd` is ours (made by `own_fd`) and closed once.
        unsafe { libc::close(fd) };
        if rc != 0 {
            return Err(format!(
                "cannot reserve {} bytes for {}: {}",
                self.size,
                self.path,
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        self.reserved.store(self.size, Ordering::Release);
        self.fully_reserved.store(true, Ordering::Release);
        self.close_grow_fd();
        Ok(())
    }

    /// A descriptor of our own on the file, for one use: a duplicate of the kept one (then
    /// checked: the program may have put another file on its number), else the path reopened
    /// (checked too).
    fn own_fd(&self) -> Result<libc::c_int, String> {
        let kept = self.grow_fd.load(Ordering::Acquire);
        if kept >= 0 {
            // SAFETY: duplicating whatever is on the kept number now (it may be closed: then
            // this fails) to a number above it, out of the program's way, or any number if the
            // limit leaves none there; the result is checked, and closed if not our file.
            let dup = unsafe {
                match libc::fcntl(kept, libc::F_DUPFD_CLOEXEC, kept) {
                    -1 => libc::fcntl(kept, libc::F_DUPFD_CLOEXEC, 0),
                    dup => dup,
                }
            };
            if dup >= 0 {
                if self.is_ours(dup) {
                    return Ok(dup);
                }
                // SAFETY: `dup` was made just above, by us.
                unsafe { libc::close(dup) };
            }
        }
        self.reopen()
    }

    pub fn is_fully_reserved(&self) -> bool {
        self.fully_reserved.load(Ordering::Acquire)
    }

    /// Bytes from the start of the file with disk blocks allocated: nothing may be stored at or
    /// beyond this offset. `size` once [`TraceFile::reserve_all`] has succeeded.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// The kept descriptor's number, if one is kept (for tests and diagnostics).
    pub fn kept_fd(&self) -> Option<libc::c_int> {
        Some(self.grow_fd.load(Ordering::Acquire)).filter(|&fd| fd >= 0)
    }

    /// Remove the file, if its path still names it (the file itself stays mapped and usable).
    pub fn remove(&self) {
        let Ok(c) = CString::new(self.path.as_str()) else { return };
        if lstat_id(&c) == Some((self.dev, self.ino)) {
            // SAFETY: `c` is NUL-terminated and names our own file.
            unsafe { libc::unlink(c.as_ptr()) };
        }
        self.close_grow_fd();
    }

    /// In a forked child, on the parent's `TraceFile`: close the descriptor the parent keeps
    /// (the child inherited a copy; it is the parent's business, and must not outlive the
    /// parent in a long-lived child). The parent's own copy stays open.
    pub fn close_inherited(&self) {
        self.close_grow_fd();
    }

    fn close_grow_fd(&self) {
        let fd = self.grow_fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 && self.is_ours(fd) {
            // SAFETY: `fd` is our own descriptor on our file (checked just above).
            unsafe { libc::close(fd) };
        }
    }

    fn is_ours(&self, fd: libc::c_int) -> bool {
        // SAFETY: an all-zero `stat` is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on any descriptor number is harmless; `st` is writable.
        let rc = unsafe { libc::fstat(fd, &mut st) };
        rc == 0 && (st.st_dev, st.st_ino) == (self.dev, self.ino)
    }

    fn reopen(&self) -> Result<libc::c_int, String> {
        let c = CString::new(self.path.as_str()).map_err(|_| "trace path contains a NUL byte".to_string())?;
        // SAFETY: `c` is NUL-terminated; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("cannot reopen {} to reserve its disk: {}", self.path, errno_text()));
        }
        if !self.is_ours(fd) {
            // SAFETY: `fd` was opened just above.
            unsafe { libc::close(fd) };
            return Err(format!("{} is no longer the trace file", self.path));
        }
        Ok(fd)
    }
}

fn lstat_id(path: &CString) -> Option<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable.
    (unsafe { libc::lstat(path.as_ptr(), &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// Where a file goes when the place it was meant for cannot hold it: an absolute $TMPDIR, else
/// /tmp; without a trailing slash.
pub fn temp_dir() -> String {
    let tmp = getenv(c"TMPDIR").filter(|t| t.starts_with('/')).unwrap_or_else(|| "/tmp".into());
    tmp.trim_end_matches('/').to_string()
}

/// libc's getenv: unlike std::env::var it takes no lock, and this runs in forked children,
/// where a lock held by another parent thread at the fork would never be released.
fn getenv(name: &std::ffi::CStr) -> Option<String> {
    // SAFETY: `name` is NUL-terminated; getenv returns null or a NUL-terminated string that
    // stays valid until the environment is modified, and we copy it at once.
    let v = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: non-null results of getenv point to a NUL-terminated string.
    (!v.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(v) }.to_string_lossy().into_owned())
}

/// Growing a file past RLIMIT_FSIZE raises SIGXFSZ, whose default action kills the process:
/// refuse such a size before trying.
fn within_file_size_limit(size: u64) -> Result<(), String> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) } == 0
        && lim.rlim_cur != libc::RLIM_INFINITY
        && size > lim.rlim_cur
    {
        return Err(format!(
            "LEAKTRACE_FILE_SIZE={size} exceeds the file size limit (ulimit -f) of {} bytes",
            lim.rlim_cur
        ));
    }
    Ok(())
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Create one candidate. The error says whether the path was taken by a file we may not
/// replace (then the next numbered name is worth trying).
fn create_at(path: &str, size: u64, reserve_now: u64) -> Result<TraceFile, (String, bool)> {
    let c = CString::new(path).map_err(|_| (format!("trace path {path:?} contains a NUL byte"), false))?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is NUL-terminated; open has no other preconditions.
    let mut fd = unsafe { libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
        match replaceable(&c) {
            Existing::Replace => {}
            Existing::OtherOwner => {
                return Err((format!("cannot create trace file {path}: another user's file has the name"), true))
            }
            Existing::Refuse => {
                return Err((
                    format!("cannot create trace file {path}: something that is not a trace file is there"),
                    false,
                ))
            }
        }
        // SAFETY: as above.
        unsafe {
            libc::unlink(c.as_ptr());
            fd = libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint);
        }
    }
    if fd < 0 {
        return Err((format!("cannot create trace file {path}: {}", errno_text()), false));
    }
    let fail = |what: &str, err: String| {
        // SAFETY: `fd` is ours; `c` names the file we just created.
        unsafe {
            libc::close(fd);
            libc::unlink(c.as_ptr());
        }
        Err((format!("cannot {what} trace file {path}: {err}"), false))
    };
    // A file that starts small is reserved whole at its first sample: if the file system cannot
    // hold it whole now, say so now, rather than leave a small file that will never trace.
    // (A check, not a guarantee: the reservation itself is.)
    // SAFETY: an all-zero `statvfs` is a valid out-buffer.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open; `vfs` is writable.
    if unsafe { libc::fstatvfs(fd, &mut vfs) } == 0 {
        let free = (vfs.f_bavail as u64).saturating_mul(vfs.f_frsize as u64);
        if free < size {
            return fail(
                &format!("reserve {size} bytes for the"),
                format!("only {free} bytes are free there ({})", std::io::Error::from_raw_os_error(libc::ENOSPC)),
            );
        }
    }
    // SAFETY: `fd` is an open regular file we own.
    if unsafe { libc::ftruncate(fd, size as libc::off_t) } != 0 {
        return fail(&format!("size to {size} bytes the"), errno_text());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::posix_fallocate(fd, 0, reserve_now as libc::off_t) };
    if rc != 0 {
        return fail(
            &format!("reserve {reserve_now} bytes for the"),
            std::io::Error::from_raw_os_error(rc).to_string(),
        );
    }
    // SAFETY: an all-zero `stat` is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open; `st` is writable.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return fail("stat the", errno_text());
    }
    // SAFETY: mapping `size` bytes of a file we just sized to `size`; the result is checked.
    let base = unsafe {
        libc::mmap(std::ptr::null_mut(), size as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
    };
    if base == libc::MAP_FAILED {
        return fail("map the", errno_text());
    }
    // No read-ahead: every page of the file is still unwritten (zeros), and a first write to a
    // page would otherwise make the kernel allocate and zero a whole read-ahead window around it
    // (measured: half of leaktrace's start-up and exit time went to zeroing pages no one used).
    // Advice only; failure changes nothing.
    // SAFETY: `base` is the start of the `size`-byte mapping just created.
    unsafe { libc::madvise(base, size as usize, libc::MADV_RANDOM) };
    let fully = reserve_now >= size;
    let grow_fd = if fully { -1 } else { keep_high(fd) };
    // SAFETY: the mapping (and the duplicate, if any) keeps the file referenced.
    unsafe { libc::close(fd) };
    Ok(TraceFile {
        path: path.to_string(),
        base: base.cast(),
        size,
        dev: st.st_dev,
        ino: st.st_ino,
        grow_fd: AtomicI32::new(grow_fd),
        reserved: AtomicU64::new(reserve_now.min(size)),
        fully_reserved: AtomicBool::new(fully),
        growing: AtomicBool::new(false),
    })
}

/// A close-on-exec duplicate of `fd` at [`HIGH_FD`] or above, else at [`LOW_HIGH_FD`] or above
/// (F_DUPFD fails with EINVAL at a number past RLIMIT_NOFILE); -1 if neither: growing then
/// reopens the path.
fn keep_high(fd: libc::c_int) -> libc::c_int {
    for lowest in [HIGH_FD, LOW_HIGH_FD] {
        // SAFETY: duplicating our own open descriptor; the result is checked.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, lowest) };
        if dup >= 0 {
            return dup;
        }
    }
    -1
}

/// A leftover trace of ours may be replaced; another user's regular file may not, but a
/// numbered name may be taken instead; anything else (a link, a device) stops us.
fn replaceable(path: &CString) -> Existing {
    // SAFETY: an all-zero `stat` is a valid out-buffer for lstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable.
    if unsafe { libc::lstat(path.as_ptr(), &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
        return Existing::Refuse;
    }
    // SAFETY: getuid has no preconditions.
    if st.st_uid == unsafe { libc::getuid() } {
        Existing::Replace
    } else {
        Existing::OtherOwner
    }
}

/// What to do about a path that exists already.
enum Existing {
    /// A regular file of ours: a leftover (recycled pid, or this process before an exec).
    Replace,
    /// A regular file of another user (a wrapper that created it as root, then exec'd this
    /// program as another user under the same pid): take the next numbered name.
    OtherOwner,
    /// A link, a device, anything else: never write there; say so.
    Refuse,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_preallocated_file_and_refuses_links() {
        let dir = std::env::temp_dir().join(format!("lt-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.lt");
        let f = create_mapped(p.to_str().unwrap(), 1 << 20, 1 << 20).unwrap();
        assert!(!f.base.is_null() && f.is_fully_reserved());
        let md = std::fs::metadata(&p).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert!(md.blocks() * 512 >= 1 << 20, "blocks are allocated");
        let link = dir.join("link.lt");
        let target = dir.join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_at(link.to_str().unwrap(), 1 << 20, 1 << 20).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lt-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_dormant_file_is_small_until_reserved_whole() {
        use std::os::unix::fs::MetadataExt;
        let dir = scratch("grow");
        let p = dir.join("t.lt");
        let f = create_mapped(p.to_str().unwrap(), 8 << 20, 64 << 10).unwrap();
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.len(), 8 << 20, "full size, sparse");
        assert!(md.blocks() * 512 < 1 << 20, "only the first 64 KiB allocated: {} blocks", md.blocks());
        assert!(!f.is_fully_reserved());
        assert_eq!(f.reserved(), 64 << 10);
        f.reserve_all().unwrap();
        assert!(f.is_fully_reserved());
        assert_eq!((f.reserved(), f.kept_fd()), (8 << 20, None), "the kept descriptor is closed once whole");
        assert!(std::fs::metadata(&p).unwrap().blocks() * 512 >= 8 << 20);
        // Growing survives the program closing and reusing the kept descriptor.
        let g = create_mapped(dir.join("u.lt").to_str().unwrap(), 4 << 20, 64 << 10).unwrap();
        let fd = g.grow_fd.load(Ordering::Relaxed);
        assert!(fd >= HIGH_FD);
        let other = std::fs::File::create(dir.join("other")).unwrap();
        // SAFETY: test-only: put another file on the kept descriptor number, as a program might.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&other), fd) };
        g.reserve_all().unwrap();
        assert_eq!(std::fs::metadata(dir.join("other")).unwrap().len(), 0, "the program's file is untouched");
        assert!(std::fs::metadata(dir.join("u.lt")).unwrap().blocks() * 512 >= 4 << 20);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remove_only_removes_our_own_file() {
        let dir = scratch("remove");
        let p = dir.join("t.lt");
        let f = create_mapped(p.to_str().unwrap(), 1 << 20, 1 << 20).unwrap();
        std::fs::rename(&p, dir.join("moved.lt")).unwrap();
        std::fs::write(&p, b"someone else's").unwrap();
        f.remove();
        assert_eq!(std::fs::read(&p).unwrap(), b"someone else's");
        std::fs::remove_file(&p).unwrap();
        std::fs::rename(dir.join("moved.lt"), &p).unwrap();
        f.remove();
        assert!(!p.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `start-stop-daemon --chuid nobody`: the root wrapper's file holds the name; the service,
    /// another user under the same pid, takes the next numbered one.
    #[test]
    fn a_name_held_by_another_user_gives_the_next_numbered_name() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to make a file of another owner");
            return;
        }
        let dir = scratch("numbered");
        let p = dir.join("t.42.lt");
        std::fs::write(&p, b"root wrapper").unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        let f = create_mapped(p.to_str().unwrap(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(f.path, dir.join("t.42.1.lt").to_str().unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"root wrapper");
        assert_eq!(std::fs::metadata(&f.path).unwrap().uid(), 0);
        assert_eq!(numbered("/x/trace", 2), "/x/trace.2");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// Run `f` in a forked child (which may change its user, limits or mounts without touching
    /// the test process) and return its exit code: 0 for success, the failed step otherwise.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: test-only fork; the child runs `f` and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = f();
            // SAFETY: leaving the child without running the test harness's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            1000 + status
        }
    }

    fn allocated(path: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
    }

    /// nginx: the master creates the file as root, the worker becomes nobody and is resumed.
    /// Its 0600 root file cannot be reopened by path any more: the kept descriptor grows it.
    /// Without one (the program closed it), the resume is refused and nothing is grown.
    #[test]
    fn a_process_that_dropped_privileges_grows_through_its_kept_descriptor() {
        if !is_root() {
            eprintln!("skipped: needs root to drop privileges");
            return;
        }
        let dir = scratch("privdrop");
        let (p, q) = (dir.join("kept.lt"), dir.join("closed.lt"));
        let code = in_child(|| {
            let Ok(f) = create_mapped(p.to_str().unwrap(), 4 << 20, 64 << 10) else { return 2 };
            let Ok(g) = create_mapped(q.to_str().unwrap(), 4 << 20, 64 << 10) else { return 3 };
            let Some(gfd) = g.kept_fd() else { return 4 };
            // SAFETY: test-only: the program closes (here: overwrites) the kept number, then
            // drops to nobody for good.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                libc::dup2(null, gfd);
                if libc::setresgid(65534, 65534, 65534) != 0 || libc::setresuid(65534, 65534, 65534) != 0 {
                    return 5;
                }
            }
            if f.reserve_all().is_err() || f.reserved() != 4 << 20 {
                return 6;
            }
            match g.reserve_all() {
                Ok(()) => 7,
                Err(e) if !e.contains("Permission denied") => 8,
                Err(_) if g.reserved() != 64 << 10 || g.is_fully_reserved() => 9,
                Err(_) => 0,
            }
        });
        assert_eq!(code, 0, "failed step in the child");
        assert!(allocated(&p) >= 4 << 20, "the kept descriptor grew the file");
        assert!(allocated(&q) < 1 << 20, "a refused resume grows nothing: {}", allocated(&q));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A resume the disk cannot hold is refused, the file stays small and dormant, and a later
    /// resume with room succeeds. On a 4 MiB tmpfs in a private mount namespace of a child.
    #[test]
    fn a_resume_the_disk_cannot_hold_is_refused_and_can_succeed_later() {
        if !is_root() {
            eprintln!("skipped: needs root to mount a small file system");
            return;
        }
        let dir = scratch("enospc");
        let d = dir.to_str().unwrap().to_string();
        let code = in_child(|| {
            let target = CString::new(d.as_str()).unwrap();
            // SAFETY: test-only, in the child: a private mount namespace, gone when it exits.
            let mounted = unsafe {
                libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == 0
                    && libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, c"size=4m".as_ptr().cast())
                        == 0
            };
            if !mounted {
                return 77;
            }
            let p = format!("{d}/t.lt");
            let Ok(f) = create_mapped(&p, 2 << 20, 64 << 10) else { return 2 };
            let filler = std::fs::File::create(format!("{d}/filler")).unwrap();
            // SAFETY: test-only: fill the file system but for less than the trace needs.
            let rc =
                unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&filler), 0, (3 << 20) + (512 << 10)) };
            if rc != 0 {
                return 3;
            }
            match f.reserve_all() {
                Err(e) if e.contains("No space left") => {}
                _ => return 4,
            }
            if f.reserved() != 64 << 10 || f.is_fully_reserved() || f.kept_fd().is_none() {
                return 5;
            }
            if allocated(std::path::Path::new(&p)) >= 1 << 20 {
                return 6;
            }
            drop(filler);
            std::fs::remove_file(format!("{d}/filler")).unwrap();
            if f.reserve_all().is_err() || f.reserved() != 2 << 20 || allocated(std::path::Path::new(&p)) < 2 << 20 {
                return 7;
            }
            0
        });
        if code == 77 {
            eprintln!("skipped: cannot mount a tmpfs here");
        } else {
            assert_eq!(code, 0, "failed step in the child");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Under a low RLIMIT_NOFILE the kept descriptor goes to 256 and up, or, if even that is
    /// past the limit, none is kept and growing reopens the path.
    #[test]
    fn the_kept_descriptor_fits_the_open_file_limit() {
        let dir = scratch("nofile");
        let d = dir.to_str().unwrap().to_string();
        let code = in_child(|| {
            let set = |n: u64| {
                let lim = libc::rlimit { rlim_cur: n, rlim_max: n.max(4096) };
                // SAFETY: test-only, in the child; `lim` is valid.
                unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 }
            };
            if !set(300) {
                return 2;
            }
            let Ok(f) = create_mapped(&format!("{d}/a.lt"), 2 << 20, 64 << 10) else { return 3 };
            if !f.kept_fd().is_some_and(|fd| (LOW_HIGH_FD..300).contains(&fd)) {
                return 4;
            }
            if !set(100) {
                return 5;
            }
            let Ok(g) = create_mapped(&format!("{d}/b.lt"), 2 << 20, 64 << 10) else { return 6 };
            if g.kept_fd().is_some() || g.reserve_all().is_err() || !g.is_fully_reserved() {
                return 7;
            }
            0
        });
        assert_eq!(code, 0, "failed step in the child");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_forked_child_closes_the_parents_kept_descriptor_only() {
        let dir = scratch("inherit");
        let f = create_mapped(dir.join("t.lt").to_str().unwrap(), 2 << 20, 64 << 10).unwrap();
        let fd = f.kept_fd().unwrap();
        let code = in_child(|| {
            f.close_inherited();
            // SAFETY: fcntl F_GETFD on a number: -1 once it is closed.
            let closed = unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1;
            if closed && f.kept_fd().is_none() {
                0
            } else {
                2
            }
        });
        assert_eq!(code, 0);
        assert_eq!(f.kept_fd(), Some(fd), "the parent keeps its own");
        f.reserve_all().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A size past RLIMIT_FSIZE would raise SIGXFSZ: refused before the file is made.
    #[test]
    fn a_size_past_the_file_size_limit_is_refused_without_a_signal() {
        let dir = scratch("fsize");
        let p = dir.join("t.lt");
        let path = p.to_str().unwrap().to_string();
        let code = in_child(|| {
            let lim = libc::rlimit { rlim_cur: 1 << 20, rlim_max: libc::RLIM_INFINITY };
            // SAFETY: test-only, in the child; `lim` is valid.
            if unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) } != 0 {
                return 2;
            }
            match create_mapped(&path, 2 << 20, 64 << 10) {
                Err(e) if e.contains("ulimit -f") => 0,
                _ => 3,
            }
        });
        assert_eq!(code, 0, "failed step in the child");
        assert!(!p.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A relative path the working directory cannot hold goes to $TMPDIR.
    #[test]
    fn a_relative_path_falls_back_to_tmpdir() {
        let dir = scratch("tmpdir");
        let d = dir.to_str().unwrap().to_string();
        let code = in_child(|| {
            let tmp = CString::new(d.as_str()).unwrap();
            // SAFETY: test-only, in the (single-threaded) child: nothing can be created in
            // /proc, even by root.
            unsafe {
                if libc::chdir(c"/proc".as_ptr()) != 0 || libc::setenv(c"TMPDIR".as_ptr(), tmp.as_ptr(), 1) != 0 {
                    return 2;
                }
            }
            match create_mapped("t.lt", 1 << 20, 1 << 20) {
                Ok(f) if f.path == format!("{d}/t.lt") => 0,
                Ok(_) => 3,
                Err(_) => 4,
            }
        });
        assert_eq!(code, 0, "failed step in the child");
        assert!(dir.join("t.lt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
