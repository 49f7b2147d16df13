//! Redirecting the malloc family in a process we were loaded into after it started (`leak-analyze
//! attach`): no `LD_PRELOAD` put our functions first in the symbol search, so every object's
//! calls still reach glibc. Each object calls them through its GOT (libc itself too: it calls
//! `malloc` through its own GOT so that malloc can be interposed), so rewriting those slots
//! (JUMP_SLOT and GLOB_DAT relocations) sends the calls to our hooks; detach writes back what
//! each slot held.
//!
//! A slot is only changed when it holds the function the global scope binds the name to (the
//! one our hooks forward to, see `real::resolve_global`), or, for a lazily bound JUMP_SLOT, the
//! object's own PLT stub. A slot holding anything else belongs to another interposer and is left
//! alone. Detach only restores slots that still hold our hook, in objects still loaded at the
//! same address under the same name.
//!
//! Patching takes the loader's lock (`dl_iterate_phdr`): only from `leaktrace_attach` and
//! `leaktrace_detach` (called by the attaching tool on a thread it chose), the helper thread,
//! and the hooks of a process with one thread, like the module walk.

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::modules::{self, Generation};

const R_X86_64_GLOB_DAT: u32 = 6;
const R_X86_64_JUMP_SLOT: u32 = 7;

/// The functions we redirect. `dlopen` is not among them: glibc finds the caller's `$ORIGIN`
/// and namespace from dlopen's return address, which a wrapper would change; objects loaded
/// later are found by the housekeeping's module walk instead.
const REDIRECTED: [&CStr; 12] = [
    c"malloc",
    c"free",
    c"calloc",
    c"realloc",
    c"reallocarray",
    c"posix_memalign",
    c"aligned_alloc",
    c"memalign",
    c"valloc",
    c"pvalloc",
    c"pthread_create",
    c"dlclose",
];

/// Our own definitions of the [`REDIRECTED`] names (the hooks in `shim`), in that order, 0 for
/// one not found. Not `shim::malloc as usize`: a reference to an exported symbol goes through
/// our own GOT, which holds what the global scope binds (glibc's malloc, when we are not
/// preloaded). A lookup through our own handle searches our object first.
fn own_definitions() -> [usize; REDIRECTED.len()] {
    let mut found = [0; REDIRECTED.len()];
    let Some(path) = own_object().map(|(_, path)| path) else { return found };
    // SAFETY: our own path; RTLD_NOLOAD only returns a handle to the loaded object (taking a
    // reference, dropped below).
    let own = unsafe { libc::dlopen(path, libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if own.is_null() {
        return found;
    }
    for (f, name) in found.iter_mut().zip(REDIRECTED) {
        // SAFETY: a valid handle and a NUL-terminated name.
        *f = unsafe { libc::dlsym(own, name.as_ptr()) } as usize;
    }
    // SAFETY: drops the reference RTLD_NOLOAD took.
    unsafe { libc::dlclose(own) };
    found
}

/// This library's load base and path (dladdr of one of its functions).
fn own_object() -> Option<(usize, *const libc::c_char)> {
    // SAFETY: all-zero bytes are a valid Dl_info (pointers and null).
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid out-buffer; the address is a function of this library.
    if unsafe { libc::dladdr(own_object as *const () as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    Some((info.dli_fbase as usize, info.dli_fname))
}

/// One slot we changed.
#[derive(Clone, Debug)]
struct Patched {
    /// The object's load base and name, to restore only in that same object.
    base: usize,
    object: String,
    slot: usize,
    original: usize,
    hook: usize,
}

/// What a pass did, for the attach command's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassCount {
    pub objects: u32,
    pub patched: u32,
    /// Slots for our functions that held something else (another interposer): left alone.
    pub foreign: u32,
    pub restored: u32,
}

static PATCHED: Mutex<Vec<Patched>> = Mutex::new(Vec::new());
/// Between the first pass and `restore_all`; only changed with `PATCHED` held, so a late pass
/// of the helper thread cannot redirect slots again after detach restored them.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The loader's counters at the last pass: unchanged means no object to patch.
static LAST_ADDS: AtomicUsize = AtomicUsize::new(usize::MAX);
static LAST_SUBS: AtomicUsize = AtomicUsize::new(usize::MAX);

struct Pass {
    /// (name, what the global scope binds it to, our hook).
    targets: Vec<(&'static CStr, usize, usize)>,
    own_base: usize,
    restore: bool,
    count: PassCount,
    patched: Vec<Patched>,
    done: Vec<Patched>,
}

/// Redirect every slot of every loaded object. `resolve` gives what the global scope binds a
/// name to (0 if nothing).
pub fn patch_all(resolve: impl Fn(&CStr) -> usize) -> PassCount {
    patch(resolve, true)
}

fn patch(resolve: impl Fn(&CStr) -> usize, first: bool) -> PassCount {
    let targets = REDIRECTED
        .into_iter()
        .zip(own_definitions())
        .map(|(name, hook)| (name, resolve(name), hook))
        .filter(|&(_, bound, hook)| bound != 0 && hook != 0 && bound != hook)
        .collect();
    let Ok(mut patched) = PATCHED.lock() else { return PassCount::default() };
    if first {
        ACTIVE.store(true, Ordering::Release);
    } else if !ACTIVE.load(Ordering::Acquire) {
        return PassCount::default();
    }
    let mut pass = Pass {
        targets,
        own_base: own_base(),
        restore: false,
        count: PassCount::default(),
        patched: Vec::new(),
        done: std::mem::take(&mut *patched),
    };
    walk(&mut pass);
    *patched = std::mem::take(&mut pass.done);
    patched.append(&mut pass.patched);
    pass.count
}

/// Patch objects loaded since the last pass, if the loader's counters moved.
pub fn patch_new_objects(resolve: impl Fn(&CStr) -> usize) {
    let Some(Generation { adds, subs }) = modules::generation() else { return };
    if LAST_ADDS.load(Ordering::Relaxed) == adds as usize && LAST_SUBS.load(Ordering::Relaxed) == subs as usize {
        return;
    }
    patch(resolve, false);
}

/// Write back every slot that still holds our hook, in objects still loaded where they were.
pub fn restore_all() -> PassCount {
    let Ok(mut patched) = PATCHED.lock() else { return PassCount::default() };
    ACTIVE.store(false, Ordering::Release);
    let mut pass = Pass {
        targets: Vec::new(),
        own_base: own_base(),
        restore: true,
        count: PassCount::default(),
        patched: Vec::new(),
        done: std::mem::take(&mut *patched),
    };
    walk(&mut pass);
    // Slots of objects unloaded meanwhile went with their objects.
    pass.count
}

fn walk(pass: &mut Pass) {
    // SAFETY: `on_object` matches dl_iterate_phdr's contract; `pass` outlives the call.
    let walked = modules::fenced(|| unsafe { libc::dl_iterate_phdr(Some(on_object), (pass as *mut Pass).cast()) });
    if walked.is_some() && !pass.restore {
        if let Some(g) = modules::generation() {
            LAST_ADDS.store(g.adds as usize, Ordering::Relaxed);
            LAST_SUBS.store(g.subs as usize, Ordering::Relaxed);
        }
    }
}

/// Our own load base: our GOT must keep pointing at glibc (the hooks forward through it).
fn own_base() -> usize {
    own_object().map_or(usize::MAX, |(base, _)| base)
}

/// One entry of `.dynamic` (Elf64_Dyn: a tag, then a value or address).
#[repr(C)]
struct DynEntry {
    tag: i64,
    value: u64,
}

/// An object's dynamic section, as far as patching needs it.
#[derive(Default)]
struct Dynamic {
    symtab: usize,
    strtab: usize,
    strsz: usize,
    rela: usize,
    relasz: usize,
    jmprel: usize,
    pltrelsz: usize,
    pltrel_is_rela: bool,
}

unsafe extern "C" fn on_object(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info and our `data` pointer; the loader's lock,
    // held while we run, keeps the object mapped.
    let (info, pass) = unsafe { (&*info, &mut *data.cast::<Pass>()) };
    let base = info.dlpi_addr as usize;
    if base == pass.own_base || info.dlpi_phdr.is_null() {
        return 0;
    }
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy().into_owned()
    };
    if name.starts_with("linux-vdso") || name.starts_with("linux-gate") {
        return 0;
    }
    // SAFETY: the loader guarantees dlpi_phnum program headers at dlpi_phdr.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    pass.count.objects += 1;
    if pass.restore {
        restore_object(pass, base, &name, phdrs);
    } else {
        // SAFETY: `phdrs` are this loaded object's, at `base`.
        unsafe { patch_object(pass, base, &name, phdrs) };
    }
    0
}

fn restore_object(pass: &mut Pass, base: usize, name: &str, phdrs: &[libc::Elf64_Phdr]) {
    let relro = relro_range(base, phdrs);
    for p in pass.done.iter().filter(|p| p.base == base && p.object == name) {
        if !within_writable_load(base, phdrs, p.slot) {
            continue;
        }
        // SAFETY: the slot is an aligned word inside a writable segment (or the RELRO range) of
        // an object that is loaded where it was when we patched it.
        if unsafe { swap_slot(p.slot, p.hook, p.original, relro) } {
            pass.count.restored += 1;
        }
    }
}

/// # Safety
/// `phdrs` must be the program headers of an object loaded at `base`.
unsafe fn patch_object(pass: &mut Pass, base: usize, name: &str, phdrs: &[libc::Elf64_Phdr]) {
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == libc::PT_DYNAMIC) else { return };
    // SAFETY: the caller's object is loaded, so its PT_DYNAMIC is mapped.
    let d = unsafe { read_dynamic(base, base + dynamic.p_vaddr as usize) };
    if d.symtab == 0 || d.strtab == 0 {
        return;
    }
    let relro = relro_range(base, phdrs);
    let tables = [(d.jmprel, if d.pltrel_is_rela { d.pltrelsz } else { 0 }), (d.rela, d.relasz)];
    for (table, bytes) in tables {
        if table == 0 || bytes == 0 {
            continue;
        }
        // SAFETY: DT_RELA/DT_JMPREL with their sizes describe arrays of Elf64_Rela in the
        // loaded object.
        let relocs = unsafe { std::slice::from_raw_parts(table as *const libc::Elf64_Rela, bytes / 24) };
        for r in relocs {
            let kind = (r.r_info & 0xffff_ffff) as u32;
            if kind != R_X86_64_JUMP_SLOT && kind != R_X86_64_GLOB_DAT {
                continue;
            }
            let sym_index = (r.r_info >> 32) as usize;
            // SAFETY: relocation symbol indices index the object's own DT_SYMTAB.
            let sym = unsafe { &*(d.symtab as *const libc::Elf64_Sym).add(sym_index) };
            let name_off = sym.st_name as usize;
            if d.strsz != 0 && name_off >= d.strsz {
                continue;
            }
            // SAFETY: st_name is an offset into DT_STRTAB, whose strings are NUL-terminated.
            let sym_name = unsafe { CStr::from_ptr((d.strtab + name_off) as *const libc::c_char) };
            let Some(&(_, bound, hook)) = pass.targets.iter().find(|t| t.0 == sym_name) else { continue };
            let slot = base.wrapping_add(r.r_offset as usize);
            if !slot.is_multiple_of(8) || !within_writable_load(base, phdrs, slot) {
                continue;
            }
            // SAFETY: an aligned word inside the object's writable segment (or RELRO range).
            let now = unsafe { (*(slot as *const AtomicUsize)).load(Ordering::Acquire) };
            let lazy_stub = kind == R_X86_64_JUMP_SLOT && within_load(base, phdrs, now);
            if now == hook {
                continue;
            }
            if now != bound && !lazy_stub {
                pass.count.foreign += 1;
                continue;
            }
            // SAFETY: as above.
            if unsafe { swap_slot(slot, now, hook, relro) } {
                pass.count.patched += 1;
                pass.patched.push(Patched { base, object: name.to_string(), slot, original: now, hook });
            }
        }
    }
}

/// # Safety
/// `dynamic` must be the loaded PT_DYNAMIC of an object at `base`.
unsafe fn read_dynamic(base: usize, dynamic: usize) -> Dynamic {
    let mut d = Dynamic::default();
    // The loader relocates most pointers in .dynamic in place; those it leaves (a read-only
    // .dynamic) are still offsets from the base.
    let addr = |v: u64| if (v as usize) < base { base + v as usize } else { v as usize };
    let mut p = dynamic as *const DynEntry;
    loop {
        // SAFETY: the caller's array ends with DT_NULL.
        let e = unsafe { &*p };
        match e.tag {
            0 => break,
            5 => d.strtab = addr(e.value),
            6 => d.symtab = addr(e.value),
            10 => d.strsz = e.value as usize,
            7 => d.rela = addr(e.value),
            8 => d.relasz = e.value as usize,
            23 => d.jmprel = addr(e.value),
            2 => d.pltrelsz = e.value as usize,
            20 => d.pltrel_is_rela = e.value == 7,
            _ => {}
        }
        // SAFETY: still inside the array: the previous entry was not DT_NULL.
        p = unsafe { p.add(1) };
    }
    d
}

fn within_load(base: usize, phdrs: &[libc::Elf64_Phdr], addr: usize) -> bool {
    phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD).any(|p| {
        let lo = base.wrapping_add(p.p_vaddr as usize);
        (lo..lo + p.p_memsz as usize).contains(&addr)
    })
}

fn within_writable_load(base: usize, phdrs: &[libc::Elf64_Phdr], addr: usize) -> bool {
    phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_W != 0).any(|p| {
        let lo = base.wrapping_add(p.p_vaddr as usize);
        (lo..lo + p.p_memsz as usize).contains(&addr.wrapping_add(7)) && addr >= lo
    })
}

/// The page-aligned range the loader made read-only after relocating (PT_GNU_RELRO).
fn relro_range(base: usize, phdrs: &[libc::Elf64_Phdr]) -> Option<(usize, usize)> {
    let p = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_RELRO)?;
    let page = page_size();
    let lo = base.wrapping_add(p.p_vaddr as usize) & !(page - 1);
    let hi = base.wrapping_add((p.p_vaddr + p.p_memsz) as usize) & !(page - 1);
    (hi > lo).then_some((lo, hi))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}

/// Replace `from` by `to` in `slot` (a compare-and-swap: a slot someone re-pointed meanwhile
/// is left as they made it), making a RELRO page writable for the write and read-only again
/// after. False if the slot did not hold `from` or its page could not be made writable.
///
/// # Safety
/// `slot` must be an aligned GOT word of a loaded object; `relro` that object's RELRO range.
unsafe fn swap_slot(slot: usize, from: usize, to: usize, relro: Option<(usize, usize)>) -> bool {
    let page = slot & !(page_size() - 1);
    let protected = relro.is_some_and(|(lo, hi)| (lo..hi).contains(&slot));
    if protected {
        // SAFETY: `page` is a mapped page of the object; making it writable changes no content.
        if unsafe { libc::mprotect(page as *mut c_void, page_size(), libc::PROT_READ | libc::PROT_WRITE) } != 0 {
            return false;
        }
    }
    // SAFETY: an aligned, mapped, now writable word; other threads read it with plain loads,
    // which see either value whole.
    let swapped =
        unsafe { (*(slot as *const AtomicUsize)).compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire) }
            .is_ok();
    if protected {
        // SAFETY: as above; the loader left RELRO pages read-only, and so do we.
        unsafe { libc::mprotect(page as *mut c_void, page_size(), libc::PROT_READ) };
    }
    swapped
}
