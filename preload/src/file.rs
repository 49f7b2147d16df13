//! Creating the trace file safely and mapping it.

use std::ffi::CString;

/// Create `pattern_path` (or, for a relative path the working directory cannot hold, the same
/// name under $TMPDIR or /tmp), preallocate `size` bytes and map it shared. Returns the path
/// used and the mapping's base.
///
/// The file is created 0600 with O_EXCL|O_NOFOLLOW, so a link planted at the path cannot
/// redirect the write. A leftover regular file of ours at the path (a recycled pid) is replaced.
/// Blocks are allocated up front: a store into a mapped page with no block behind it would
/// raise SIGBUS in the traced program when the disk is full.
pub fn create_mapped(path: &str, size: u64) -> Result<(String, *mut u8), String> {
    within_file_size_limit(size)?;
    let mut candidates = vec![path.to_string()];
    if !path.starts_with('/') {
        let tmp = getenv(c"TMPDIR").filter(|t| t.starts_with('/')).unwrap_or_else(|| "/tmp".into());
        candidates.push(format!("{}/{}", tmp.trim_end_matches('/'), path));
    }
    let mut last_err = String::new();
    for p in &candidates {
        match create_at(p, size) {
            Ok(base) => return Ok((p.clone(), base)),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
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
        return Err(format!("LEAKTRACE_FILE_SIZE={size} exceeds the file size limit (ulimit -f) of {} bytes", lim.rlim_cur));
    }
    Ok(())
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

fn create_at(path: &str, size: u64) -> Result<*mut u8, String> {
    let c = CString::new(path).map_err(|_| format!("trace path {path:?} contains a NUL byte"))?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is NUL-terminated; open has no other preconditions.
    let mut fd = unsafe { libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) && replaceable(&c) {
        // SAFETY: as above.
        unsafe {
            libc::unlink(c.as_ptr());
            fd = libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint);
        }
    }
    if fd < 0 {
        return Err(format!("cannot create trace file {path}: {}", errno_text()));
    }
    let fail = |what: &str, err: String| {
        // SAFETY: `fd` is ours; `c` names the file we just created.
        unsafe {
            libc::close(fd);
            libc::unlink(c.as_ptr());
        }
        Err(format!("cannot {what} trace file {path}: {err}"))
    };
    // SAFETY: `fd` is an open regular file we own.
    let rc = unsafe { libc::posix_fallocate(fd, 0, size as libc::off_t) };
    if rc != 0 {
        return fail(&format!("reserve {size} bytes for the"), std::io::Error::from_raw_os_error(rc).to_string());
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
    // SAFETY: the mapping keeps the file referenced; the descriptor is no longer needed.
    unsafe { libc::close(fd) };
    Ok(base.cast())
}

/// A leftover trace of ours may be replaced; anything else (a link, a device, another user's
/// file) may not.
fn replaceable(path: &CString) -> bool {
    // SAFETY: an all-zero `stat` is a valid out-buffer for lstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable.
    let ok = unsafe { libc::lstat(path.as_ptr(), &mut st) } == 0;
    // SAFETY: getuid has no preconditions.
    ok && (st.st_mode & libc::S_IFMT) == libc::S_IFREG && st.st_uid == unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_preallocated_file_and_refuses_links() {
        let dir = std::env::temp_dir().join(format!("lt-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.lt");
        let (_, base) = create_mapped(p.to_str().unwrap(), 1 << 20).unwrap();
        assert!(!base.is_null());
        let md = std::fs::metadata(&p).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert!(md.blocks() * 512 >= 1 << 20, "blocks are allocated");
        let link = dir.join("link.lt");
        let target = dir.join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_at(link.to_str().unwrap(), 1 << 20).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
