//! leaktrace's only output of its own: one line on stderr when something stops tracing.

/// One line on stderr, written with a single write(2) so it cannot interleave or take std's
/// stderr lock (which a fork may have left held).
pub fn warn(msg: &str) {
    let line = format!("leaktrace: {msg}\n");
    // SAFETY: writing a valid buffer of its own length to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}
