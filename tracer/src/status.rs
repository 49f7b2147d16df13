//! `leaktrace_status`: one exported word `leak-analyze attach` and `detach` read with
//! /proc/PID/mem before they touch a process, to refuse one traced already.

/// What `leak-analyze attach` and `detach` read from outside (with /proc/PID/mem, before they
/// touch the process): is this library tracing, and how did it start? One of the `STATUS_*`.
#[cfg_attr(all(feature = "interpose", not(test)), export_name = "leaktrace_status")]
pub static LEAKTRACE_STATUS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(STATUS_IDLE);

/// Loaded, not tracing: never started, or detached.
pub const STATUS_IDLE: u32 = 0;
/// Preloaded and tracing (or dormant): cannot be attached to.
pub const STATUS_PRELOADED: u32 = 1;
/// Attached: `detach` applies.
pub const STATUS_ATTACHED: u32 = 2;
/// Was attached, detached since: may be attached again.
pub const STATUS_DETACHED: u32 = 3;

pub fn set(status: u32) {
    LEAKTRACE_STATUS.store(status, std::sync::atomic::Ordering::Release);
}
