//! Calling functions inside another running process with ptrace, on one of its threads, and
//! leaving that thread exactly as it was.
//!
//! Only the chosen thread is stopped; the others run on, so a lock one of them holds is released
//! as usual and a call we make can wait for it. The thread is chosen where it holds no lock our
//! calls need (malloc's, the loader's): blocked in a system call that is never made under those
//! locks (sleeping, polling, accepting, reading a socket or pipe), or running the program's own
//! code outside libc and the loader. It is stopped with PTRACE_SEIZE + PTRACE_INTERRUPT (no
//! SIGSTOP, which the program could see), and a call is made by setting its registers as the
//! x86-64 ABI wants them, below the stack's red zone, with return address 0: the return faults,
//! which ends the call. Then every register and every stack byte written is put back. A system
//! call the stop interrupted is restarted the way the kernel and debuggers do (restoring
//! `orig_rax` and the -ERESTART* value lets the kernel restart it; one that returned -EINTR
//! only because of our stop is rewound by hand), and signals that arrived meanwhile are queued
//! again once we let go.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// System calls a thread can be parked in without holding malloc's or the loader's lock: glibc
/// makes none of them inside malloc or dlopen (`read` only on sockets, pipes and terminals: the
/// loader reads ELF files). x86-64 numbers.
const SAFE_BLOCKING: &[(i64, &str)] = &[
    (0, "read"),
    (7, "poll"),
    (23, "select"),
    (34, "pause"),
    (35, "nanosleep"),
    (43, "accept"),
    (45, "recvfrom"),
    (47, "recvmsg"),
    (61, "wait4"),
    (128, "rt_sigtimedwait"),
    (130, "rt_sigsuspend"),
    (230, "clock_nanosleep"),
    (232, "epoll_wait"),
    (247, "waitid"),
    (270, "pselect6"),
    (271, "ppoll"),
    (281, "epoll_pwait"),
    (288, "accept4"),
    (441, "epoll_pwait2"),
];

const SYS_READ: i64 = 0;
const EINTR: i64 = 4;
/// x86-64: `syscall` is 0f 05.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
/// Below the stack pointer the ABI gives the function 128 bytes (the red zone) it may use
/// without moving rsp; we stay clear of it, and of a little more.
const RED_ZONE: u64 = 128 + 128;

/// One mapping of /proc/PID/maps.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub path: String,
}

pub fn read_maps(pid: i32) -> Result<Vec<Mapping>> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).with_context(|| format!("reading /proc/{pid}/maps"))?;
    Ok(text.lines().filter_map(parse_map_line).collect())
}

fn parse_map_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let (range, perms, offset, _dev, _inode) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        path,
    })
}

/// A thread of the target, and what it was doing when we looked.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub tid: i32,
    /// Blocked in this system call (number, name).
    pub blocked_in: Option<(i64, &'static str)>,
}

/// The target's threads, best first: parked in a safe system call (the main thread first), then
/// the rest (tried while running the program's own code).
pub fn candidates(pid: i32) -> Result<Vec<Candidate>> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing /proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_by_key(|&t| (t != pid, t));
    let mut parked = Vec::new();
    let mut others = Vec::new();
    for tid in tids {
        let blocked_in = blocked_syscall(pid, tid);
        match blocked_in {
            Some(_) => parked.push(Candidate { tid, blocked_in }),
            None => others.push(Candidate { tid, blocked_in }),
        }
    }
    parked.extend(others);
    Ok(parked)
}

/// The safe system call `tid` is blocked in, from /proc/PID/task/TID/syscall ("NR args... sp pc"
/// while in a system call).
fn blocked_syscall(pid: i32, tid: i32) -> Option<(i64, &'static str)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let mut fields = text.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let &(_, name) = SAFE_BLOCKING.iter().find(|(n, _)| *n == nr)?;
    if nr == SYS_READ {
        // Only a read that is not from a file: the loader reads ELF files with its lock held.
        let fd = i64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let t = target.to_string_lossy();
        if !(t.starts_with("socket:") || t.starts_with("pipe:") || t.starts_with("/dev/")) {
            return None;
        }
    }
    Some((nr, name))
}

/// A thread we hold stopped.
pub struct Stopped {
    pub tid: Pid,
    /// Its process (thread group).
    pid: i32,
    mem: File,
    saved: libc::user_regs_struct,
    /// The safe system call it was stopped in, if any.
    pub in_syscall: Option<&'static str>,
    /// Signals that arrived for it while we held it: queued again when we let go.
    pending: Vec<libc::siginfo_t>,
    pub since: Instant,
    released: bool,
}

/// Which code the thread must not be stopped in (a lock may be held there): libc and the loader.
pub struct Unsafe {
    ranges: Vec<(u64, u64)>,
}

impl Unsafe {
    pub fn from_maps(maps: &[Mapping]) -> Unsafe {
        let ranges = maps
            .iter()
            .filter(|m| m.perms.contains('x'))
            .filter(|m| {
                let name = m.path.rsplit('/').next().unwrap_or("");
                name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-linux")
            })
            .map(|m| (m.start, m.end))
            .collect();
        Unsafe { ranges }
    }

    fn contains(&self, ip: u64) -> bool {
        self.ranges.iter().any(|&(lo, hi)| (lo..hi).contains(&ip))
    }
}

/// Stop one thread of `pid` at a safe point: try each candidate, and each a few times, for up to
/// `patience`.
pub fn stop_safely(pid: i32, unsafe_code: &Unsafe, patience: Duration) -> Result<Stopped> {
    let start = Instant::now();
    let mut last_err = None;
    while start.elapsed() < patience {
        for c in candidates(pid)? {
            match try_stop(pid, &c, unsafe_code) {
                Ok(Some(s)) => return Ok(s),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
            if start.elapsed() >= patience {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(last_err.unwrap_or_else(|| {
        anyhow!(
            "found no moment, in {} ms, when a thread of process {pid} was outside libc and the loader or parked in a safe system call; try again",
            patience.as_millis()
        )
    }))
}

/// Seize and interrupt one thread; keep it if it stopped at a safe point, else let it go.
fn try_stop(pid: i32, c: &Candidate, unsafe_code: &Unsafe) -> Result<Option<Stopped>> {
    let tid = Pid::from_raw(c.tid);
    let since = Instant::now();
    match ptrace::seize(tid, ptrace::Options::empty()) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => return Ok(None), // the thread ended meanwhile
        Err(e) => return Err(permission_error(pid, e)),
    }
    let mem = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .with_context(|| format!("opening /proc/{pid}/mem"));
    let mut s = Stopped {
        tid,
        pid,
        mem: match mem {
            Ok(m) => m,
            Err(e) => {
                let _ = ptrace::detach(tid, None);
                return Err(e);
            }
        },
        // SAFETY: an all-zero user_regs_struct is valid (plain integers); replaced below.
        saved: unsafe { std::mem::zeroed() },
        in_syscall: None,
        pending: Vec::new(),
        since,
        released: true,
    };
    ptrace::interrupt(tid).context("PTRACE_INTERRUPT")?;
    s.released = false;
    s.wait_for_interrupt()?;
    let regs = ptrace::getregs(tid).context("PTRACE_GETREGS")?;
    s.saved = regs;
    let in_syscall = regs.orig_rax as i64;
    let safe = if in_syscall >= 0 {
        // Still (or again) in a system call: one of the safe ones, and the one we saw, so that an
        // -EINTR is ours to undo.
        c.blocked_in.filter(|(nr, _)| *nr == in_syscall).map(|(_, name)| name)
    } else {
        None
    };
    if let Some(name) = safe {
        s.in_syscall = Some(name);
        return Ok(Some(s));
    }
    if in_syscall < 0 && !unsafe_code.contains(regs.rip) {
        return Ok(Some(s));
    }
    s.release()?;
    Ok(None)
}

fn permission_error(pid: i32, e: nix::errno::Errno) -> anyhow::Error {
    anyhow!(
        "not permitted to trace process {pid} ({e}): run leak-analyze as the process's user or as root; in a container it needs CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE); with kernel.yama.ptrace_scope 1 or more, root or CAP_SYS_PTRACE"
    )
}

impl Stopped {
    /// Wait for the stop PTRACE_INTERRUPT asked for, keeping signals that come first.
    fn wait_for_interrupt(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match waitpid(self.tid, Some(WaitPidFlag::__WALL))? {
                WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP) => return Ok(()),
                WaitStatus::Stopped(_, _) => {
                    // A signal for the thread: hold it back until we let go.
                    self.pending.push(ptrace::getsiginfo(self.tid)?);
                    ptrace::cont(self.tid, None)?;
                    if Instant::now() > deadline {
                        bail!("thread {} did not stop", self.tid);
                    }
                }
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => bail!("the process ended"),
                _ => {}
            }
        }
    }

    /// Call `func(args...)` on this thread, with `data` copied below its stack first (at the
    /// address passed to `args_for`, which builds the arguments). Returns rax and the data area
    /// as it is after the call (out-buffers).
    pub fn call(
        &mut self,
        func: u64,
        data: &[u8],
        args_for: impl FnOnce(u64) -> Vec<u64>,
        timeout: Duration,
    ) -> Result<(u64, Vec<u8>)> {
        let data_addr = (self.saved.rsp - RED_ZONE - data.len() as u64) & !15;
        // At the entry of a function rsp + 8 is 16-byte aligned: rsp points at the return address.
        let entry_rsp = ((data_addr - 64) & !15) - 8;
        let span = (entry_rsp, data_addr + data.len() as u64);
        let mut original = vec![0u8; (span.1 - span.0) as usize];
        self.mem.read_exact_at(&mut original, span.0).context("reading the thread's stack")?;
        self.mem.write_all_at(data, data_addr).context("writing the thread's stack")?;
        self.mem.write_all_at(&0u64.to_le_bytes(), entry_rsp)?;
        let args = args_for(data_addr);
        let mut regs = self.saved;
        let [a0, a1, a2, a3, a4, a5] = std::array::from_fn(|i| args.get(i).copied().unwrap_or(0));
        (regs.rdi, regs.rsi, regs.rdx, regs.rcx, regs.r8, regs.r9) = (a0, a1, a2, a3, a4, a5);
        regs.rip = func;
        regs.rsp = entry_rsp;
        regs.rax = 0;
        // Not in a system call: no restart may rewind our call's first instruction.
        regs.orig_rax = u64::MAX;
        // The ABI's direction flag is clear at a call.
        regs.eflags &= !0x400;
        ptrace::setregs(self.tid, regs).context("PTRACE_SETREGS")?;
        ptrace::cont(self.tid, None)?;
        let outcome = self.wait_for_return(timeout);
        // Whatever happened, the stack bytes go back; the registers go back in `release`.
        let mut after = vec![0u8; data.len()];
        let read = self.mem.read_exact_at(&mut after, data_addr);
        self.mem.write_all_at(&original, span.0).context("restoring the thread's stack")?;
        let rax = outcome?;
        read?;
        Ok((rax, after))
    }

    fn wait_for_return(&mut self, timeout: Duration) -> Result<u64> {
        let start = Instant::now();
        loop {
            match waitpid(self.tid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG))? {
                WaitStatus::StillAlive => {
                    if start.elapsed() > timeout {
                        ptrace::interrupt(self.tid)?;
                        self.wait_for_interrupt()?;
                        bail!("the call did not return within {} s; abandoned", timeout.as_secs());
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                WaitStatus::Stopped(_, Signal::SIGSEGV) => {
                    let regs = ptrace::getregs(self.tid)?;
                    if regs.rip == 0 {
                        return Ok(regs.rax);
                    }
                    bail!("the call crashed (SIGSEGV at {:#x}); the thread was put back", regs.rip);
                }
                WaitStatus::Stopped(_, sig @ (Signal::SIGBUS | Signal::SIGILL | Signal::SIGFPE)) => {
                    bail!("the call crashed ({sig}); the thread was put back");
                }
                WaitStatus::Stopped(_, _) => {
                    self.pending.push(ptrace::getsiginfo(self.tid)?);
                    ptrace::cont(self.tid, None)?;
                }
                WaitStatus::PtraceEvent(..) => ptrace::cont(self.tid, None)?,
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => bail!("the process ended during the call"),
                _ => {}
            }
        }
    }

    /// Read a NUL-terminated string from the process (at most `max` bytes).
    pub fn read_c_string(&self, addr: u64, max: usize) -> String {
        let mut buf = vec![0u8; max];
        let n = self.mem.read_at(&mut buf, addr).unwrap_or(0);
        buf.truncate(n);
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }

    /// Put the registers back (a system call our stop interrupted is restarted), let the thread
    /// go, and queue again the signals that arrived meanwhile. Returns how long it was stopped.
    pub fn release(mut self) -> Result<Duration> {
        self.released = true;
        let mut regs = self.saved;
        if self.in_syscall.is_some() && regs.rax as i64 == -EINTR {
            // Failed with EINTR only because we stopped it (epoll_wait and a few others do not
            // restart after a stop): run it again, as if never interrupted.
            let mut insn = [0u8; 2];
            if self.mem.read_exact_at(&mut insn, regs.rip - 2).is_ok() && insn == SYSCALL_INSN {
                regs.rip -= 2;
                regs.rax = regs.orig_rax;
                regs.orig_rax = u64::MAX;
            }
        }
        ptrace::setregs(self.tid, regs).context("restoring the thread's registers")?;
        ptrace::detach(self.tid, None).context("PTRACE_DETACH")?;
        let stopped = self.since.elapsed();
        for info in std::mem::take(&mut self.pending) {
            requeue(self.pid, self.tid, &info);
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    /// An error path: put the registers back and let go, so the process runs on as it was.
    fn drop(&mut self) {
        if !self.released {
            let _ = ptrace::setregs(self.tid, self.saved);
            let _ = ptrace::detach(self.tid, None);
            for info in std::mem::take(&mut self.pending) {
                requeue(self.pid, self.tid, &info);
            }
        }
    }
}

/// Send a signal we held back again, with its siginfo where the kernel lets us (user-queued
/// signals), else as a plain thread-directed signal.
fn requeue(tgid: i32, tid: Pid, info: &libc::siginfo_t) {
    // SAFETY: plain system calls with a valid siginfo; failure only loses the signal's details.
    unsafe {
        if info.si_code < 0 && info.si_code != libc::SI_TKILL {
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                tgid,
                tid.as_raw(),
                info.si_signo,
                info as *const libc::siginfo_t,
            );
        } else {
            libc::syscall(libc::SYS_tgkill, tgid, tid.as_raw(), info.si_signo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let m =
            parse_map_line("7f2a1c000000-7f2a1c028000 r--p 00000000 fe:01 1311 /usr/lib/x86_64-linux-gnu/libc.so.6")
                .unwrap();
        assert_eq!((m.start, m.end, m.offset), (0x7f2a1c000000, 0x7f2a1c028000, 0));
        assert_eq!(m.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        let anon = parse_map_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, "");
        let spaced =
            parse_map_line("1000-2000 r-xp 00001000 08:01 42                         /opt/my app/lib.so").unwrap();
        assert_eq!(spaced.path, "/opt/my app/lib.so");
    }
}
