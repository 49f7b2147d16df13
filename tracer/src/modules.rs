//! The module map: which ELF objects are loaded where, with their build IDs, so stacks of raw
//! addresses can be symbolized offline on another machine.
//!
//! Only called from the constructor, the helper thread, exit, and the hooks of a process that
//! never had a second thread: `dl_iterate_phdr` takes the loader lock, which is recursive, so
//! with one thread it cannot deadlock on itself.

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use leaktrace_format::{ModuleRecord, Segment};

/// The loader's counters of objects ever loaded and unloaded; when both are unchanged, so is
/// the module map, and housekeeping skips the walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    pub adds: u64,
    pub subs: u64,
}

struct Walk {
    modules: Vec<ModuleRecord>,
    generation: Generation,
    exe: String,
    tracer_addr: u64,
}

/// Runtime address range of this library's code, for trimming its own frames from stacks.
pub fn tracer_text_range(modules: &[ModuleRecord]) -> (u64, u64) {
    modules
        .iter()
        .find(|m| m.is_tracer)
        .map(|m| {
            let lo = m.segments.iter().map(|s| m.base + s.vaddr).min().unwrap_or(0);
            let hi = m.segments.iter().map(|s| m.base + s.vaddr + s.memsz).max().unwrap_or(0);
            (lo, hi)
        })
        .unwrap_or((0, 0))
}

// Walking the loaded objects and fork.
//
// `dl_iterate_phdr` holds the loader's lock while our callback runs. A fork from another thread
// meanwhile gives a child in which that lock is held forever (glibc 2.36's fork neither takes
// nor resets it), so the child's next dlopen, dl_iterate_phdr or exit-time walk would hang
// (seen: `safety::fork_child_writes_its_own_trace`, before this fence). Every walk leaktrace
// makes goes through `fenced`: an atfork prepare handler raises `FORKING` and waits for
// `WALKING` to drop; a walk starts only with `FORKING` down (checked after raising `WALKING`:
// with sequentially consistent order one side always sees the other) and is skipped otherwise.

/// Walks in progress.
static WALKING: AtomicU32 = AtomicU32::new(0);
/// Forks in progress (between the prepare and the parent handler).
static FORKING: AtomicU32 = AtomicU32::new(0);
/// The longest a fork waits for a walk to end: walks take microseconds to a millisecond; the
/// bound only matters if fork is called from inside a `dl_iterate_phdr` callback of the
/// program's own, which holds the lock our walk is waiting for.
const FORK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
static FENCE: Once = Once::new();

/// Run `walk` (a `dl_iterate_phdr` call) unless a fork is in progress; None if skipped.
pub fn fenced<R>(walk: impl FnOnce() -> R) -> Option<R> {
    install_fork_fence();
    WALKING.fetch_add(1, Ordering::SeqCst);
    let r = (FORKING.load(Ordering::SeqCst) == 0).then(walk);
    WALKING.fetch_sub(1, Ordering::SeqCst);
    r
}

/// Register the fork handlers of the fence (once; before the first walk).
pub fn install_fork_fence() {
    FENCE.call_once(|| {
        // SAFETY: the three handlers are `extern "C" fn()`s valid for the life of the process.
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(after_fork_in_child)) };
    });
}

extern "C" fn before_fork() {
    FORKING.fetch_add(1, Ordering::SeqCst);
    let start = std::time::Instant::now();
    while WALKING.load(Ordering::SeqCst) != 0 && start.elapsed() < FORK_WAIT {
        std::thread::yield_now();
    }
}

extern "C" fn after_fork_in_parent() {
    FORKING.fetch_sub(1, Ordering::SeqCst);
}

extern "C" fn after_fork_in_child() {
    // Only the forking thread exists in the child: no walk is running, no other fork pending.
    WALKING.store(0, Ordering::SeqCst);
    FORKING.store(0, Ordering::SeqCst);
}

/// The loader's counters alone: a walk that stops at the first object. None while a fork is
/// in progress.
pub fn generation() -> Option<Generation> {
    unsafe extern "C" fn first(info: *mut libc::dl_phdr_info, size: usize, data: *mut c_void) -> c_int {
        if size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
            // SAFETY: dl_iterate_phdr passes a valid info of `size` bytes and our pointer.
            unsafe { *data.cast::<Generation>() = Generation { adds: (*info).dlpi_adds, subs: (*info).dlpi_subs } };
        }
        1
    }
    let mut g = Generation::default();
    // SAFETY: `first` matches the callback contract; `g` outlives the call.
    fenced(|| unsafe { libc::dl_iterate_phdr(Some(first), (&mut g as *mut Generation).cast()) })?;
    Some(g)
}

/// Walk the loaded objects. None while a fork is in progress.
pub fn snapshot(now_ns: u64) -> Option<(Vec<ModuleRecord>, Generation)> {
    let mut walk = Walk {
        modules: Vec::new(),
        generation: Generation::default(),
        exe: std::fs::read_link("/proc/self/exe").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        tracer_addr: snapshot as *const () as usize as u64,
    };
    // SAFETY: the callback matches dl_iterate_phdr's contract and only reads the info it is
    // given; `walk` outlives the call.
    fenced(|| unsafe { libc::dl_iterate_phdr(Some(on_object), (&mut walk as *mut Walk).cast()) })?;
    for m in &mut walk.modules {
        m.seen_ns = now_ns;
    }
    Some((walk.modules, walk.generation))
}

unsafe extern "C" fn on_object(info: *mut libc::dl_phdr_info, size: usize, data: *mut c_void) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info of `size` bytes and our `data` pointer.
    let (info, walk) = unsafe { (&*info, &mut *data.cast::<Walk>()) };
    if size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
        walk.generation = Generation { adds: info.dlpi_adds, subs: info.dlpi_subs };
    }
    let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
        &[]
    } else {
        // SAFETY: the loader guarantees dlpi_phnum program headers at dlpi_phdr.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
    };
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy().into_owned()
    };
    let is_main = walk.modules.is_empty() && name.is_empty();
    let path = if is_main { walk.exe.clone() } else { name };
    let base = info.dlpi_addr;
    let segments: Vec<Segment> = phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD)
        .map(|p| Segment { vaddr: p.p_vaddr, memsz: p.p_memsz, flags: p.p_flags })
        .collect();
    if segments.is_empty() {
        return 0;
    }
    let build_id = phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_NOTE)
        // SAFETY: PT_NOTE segments of a loaded object are mapped at base + p_vaddr.
        .find_map(|p| unsafe { gnu_build_id(base + p.p_vaddr, p.p_memsz) })
        .unwrap_or_default();
    let mut m = ModuleRecord { path, base, build_id, segments, seen_ns: 0, is_tracer: false };
    m.is_tracer = m.contains(walk.tracer_addr);
    walk.modules.push(m);
    0
}

/// Find NT_GNU_BUILD_ID in a note segment.
///
/// # Safety
/// `[addr, addr + len)` must be readable memory.
unsafe fn gnu_build_id(addr: u64, len: u64) -> Option<Vec<u8>> {
    // SAFETY: the caller guarantees the range is readable.
    let notes = unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) };
    let word =
        |at: usize| -> Option<usize> { Some(u32::from_ne_bytes(notes.get(at..at + 4)?.try_into().ok()?) as usize) };
    let align4 = |n: usize| (n + 3) & !3;
    let mut pos = 0;
    while pos + 12 <= notes.len() {
        let (namesz, descsz, kind) = (word(pos)?, word(pos + 4)?, word(pos + 8)?);
        let name_at = pos + 12;
        let desc_at = name_at + align4(namesz);
        let end = desc_at.checked_add(align4(descsz))?;
        if end > notes.len() {
            return None;
        }
        if kind == 3 && notes.get(name_at..name_at + namesz) == Some(b"GNU\0".as_slice()) {
            return Some(notes[desc_at..desc_at + descsz].to_vec());
        }
        pos = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_are_skipped_during_a_fork() {
        before_fork();
        assert_eq!(fenced(|| 1), None);
        assert!(generation().is_none());
        after_fork_in_parent();
        assert_eq!(fenced(|| 1), Some(1));
        assert_eq!(WALKING.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn snapshot_finds_the_main_program_and_libc() {
        // Another test may be simulating a fork, which skips walks: try again until it is over.
        let (mods, gen) = (0..1000)
            .find_map(|_| {
                snapshot(5).or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    None
                })
            })
            .expect("a walk outside a fork");
        assert!(gen.adds >= 1);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(mods[0].path, exe.to_string_lossy());
        assert!(mods.iter().any(|m| m.path.contains("libc.so")));
        let libc = mods.iter().find(|m| m.path.contains("libc.so")).unwrap();
        assert_eq!(libc.build_id.len(), 20, "Debian's libc has a SHA-1 build ID");
        // The test binary contains `snapshot`, so it is the "tracer" here.
        assert!(mods[0].is_tracer);
        let (lo, hi) = tracer_text_range(&mods);
        assert!(lo <= snapshot as *const () as usize as u64 && (snapshot as *const () as usize as u64) < hi);
    }
}
