//! Offline symbolization of the traced process's return addresses.
//!
//! Each module recorded in the trace (path, load bias, build ID, PT_LOAD
//! segments) is matched to a file on this machine, then addresses are turned
//! into `function (file:line)` frames with `addr2line` (DWARF, inlined frames,
//! split DWARF) and, failing DWARF, the ELF symbol table.
//!
//! Product rules this module enforces:
//! - a file whose build ID differs from the recorded one is never used (so a
//!   name is never wrong); without a recorded build ID the file's PT_LOAD
//!   layout must match the recorded segments instead;
//! - nothing here panics on any input; a problem becomes one warning line;
//! - loaders are built lazily, once per module, and each unique address is
//!   looked up once.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};
use rayon::prelude::*;

pub use leaktrace_format::ModuleRecord;
#[cfg(test)]
pub use leaktrace_format::Segment;

/// Where to look for binaries and debug files besides the recorded paths.
#[derive(Clone, Debug, Default)]
pub struct SymbolizeOptions {
    /// `--binaries DIR`: looked up as `DIR/<file name>` and `DIR/<recorded path>` (sysroot style).
    pub binaries: Vec<PathBuf>,
    /// `--debug-dir DIR`: looked up as `DIR/.build-id/xx/rest.debug` and for `.gnu_debuglink`.
    /// `/usr/lib/debug` is always searched after these.
    pub debug_dirs: Vec<PathBuf>,
    /// `--no-symbols`: leave every frame as module + address (fast, and the same on every
    /// machine: the golden outputs use it).
    pub disabled: bool,
}

/// One source-level frame of a return address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceFrame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// The standard location of separate debug files on Debian and most distributions.
const DEFAULT_DEBUG_DIR: &str = "/usr/lib/debug";
/// Bound on frames returned for one address (inlining depth), against corrupt DWARF.
const MAX_FRAMES_PER_ADDR: usize = 256;

/// Symbolizer for the modules of one trace.
pub struct Symbolizer {
    modules: Vec<ModuleState>,
    /// Runtime ranges `[start, end)` of every module segment, sorted by start.
    ranges: Vec<(u64, u64, usize)>,
    binaries: Vec<PathBuf>,
    debug_dirs: Vec<PathBuf>,
    disabled: bool,
}

/// A global variable, as `Symbolizer::global_at` names it.
#[derive(Clone, Debug)]
pub struct GlobalName {
    pub module: String,
    pub module_offset: u64,
    /// Its symbol (demangled), if a symbol table has one.
    pub symbol: Option<String>,
    /// Bytes into the symbol (an element of an array).
    pub offset: u64,
    /// Where it is declared, from DWARF.
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// The global variables a DWARF file declares: address -> (file, line). Empty if it cannot be
/// read; never panics on a malformed file (gimli returns errors, which end the walk).
fn global_variables(path: &Path) -> HashMap<u64, (String, u32)> {
    use addr2line::gimli;
    let mut out = HashMap::new();
    let Ok(data) = std::fs::read(path) else { return out };
    let Ok(obj) = object::File::parse(&*data) else { return out };
    let endian = if obj.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<'_, [u8]>, gimli::Error> {
        Ok(obj
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(std::borrow::Cow::Borrowed(&[])))
    };
    let Ok(sections) = gimli::DwarfSections::load(load) else { return out };
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, endian));
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else { continue };
        let mut entries = unit.entries();
        while let Ok(Some((_, entry))) = entries.next_dfs() {
            if entry.tag() != gimli::DW_TAG_variable {
                continue;
            }
            let Ok(Some(gimli::AttributeValue::Exprloc(expr))) = entry.attr_value(gimli::DW_AT_location) else {
                continue;
            };
            let mut ops = expr.operations(unit.encoding());
            let Ok(Some(gimli::Operation::Address { address })) = ops.next() else { continue };
            let line = match entry.attr_value(gimli::DW_AT_decl_line) {
                Ok(Some(v)) => v.udata_value().unwrap_or(0) as u32,
                _ => 0,
            };
            let file = match (entry.attr_value(gimli::DW_AT_decl_file), &unit.line_program) {
                (Ok(Some(gimli::AttributeValue::FileIndex(i))), Some(program)) => {
                    let header = program.header();
                    header.file(i).map(|f| {
                        let name = dwarf
                            .attr_string(&unit, f.path_name())
                            .map(|r| r.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let dir = f
                            .directory(header)
                            .and_then(|d| dwarf.attr_string(&unit, d).ok())
                            .map(|r| r.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        if name.starts_with('/') || dir.is_empty() {
                            name
                        } else {
                            format!("{dir}/{name}")
                        }
                    })
                }
                _ => None,
            };
            if let Some(file) = file {
                out.entry(address).or_insert((file, line));
            }
        }
    }
    out
}

struct ModuleState {
    path: String,
    base: u64,
    build_id: Vec<u8>,
    /// (vaddr, memsz) of the recorded PT_LOAD segments, sorted.
    layout: Vec<(u64, u64)>,
    /// Shared with every other trace's symbolizer of the same module when made through a
    /// [`SymbolCache`].
    inner: Arc<Mutex<ModuleInner>>,
}

struct ModuleInner {
    state: LoadState,
    warnings: Vec<String>,
    /// Frames already looked up, by SVMA: only in a module shared through a [`SymbolCache`],
    /// whose addresses come back at every refresh (a one-shot report looks each up once).
    memo: Option<HashMap<u64, Vec<SourceFrame>>>,
}

impl ModuleInner {
    fn warn(&mut self, msg: String) {
        if !self.warnings.contains(&msg) {
            self.warnings.push(msg);
        }
    }
}

enum LoadState {
    /// Not looked at yet (no address of this module was asked for).
    Pending,
    /// No usable file: every address stays unresolved.
    Unusable,
    Ready(Box<Resolved>),
}

/// What was found for one module.
struct Resolved {
    /// DWARF of the debug file or the binary, if any has DWARF.
    dwarf: Option<addr2line::Loader>,
    /// Function symbols of the accepted files.
    symbols: SymbolTable,
    /// Data symbols (globals), for naming what holds memory (`ctl --scan`).
    data: SymbolTable,
    /// The file DWARF came from, and the file:line of its global variables by address, read
    /// the first time a global of this module is named.
    dwarf_file: Option<PathBuf>,
    variables: std::sync::OnceLock<HashMap<u64, (String, u32)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is caught and handled; keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What identifies a module's files across traces: its build ID, or without one its path and
/// load segments (the check [`Symbolizer`] makes before it uses a file without a build ID).
#[derive(Clone, PartialEq, Eq, Hash)]
struct ModuleKey {
    build_id: Vec<u8>,
    path: String,
    layout: Vec<(u64, u64)>,
}

/// Loaded debug info and looked-up frames of modules, kept across the symbolizers of many traces
/// and many refreshes (`serve`): processes of one binary, and each refresh of one process, load
/// its DWARF once. Every symbolizer made through one cache must use the same options.
#[derive(Default)]
pub struct SymbolCache {
    modules: Mutex<HashMap<ModuleKey, Arc<Mutex<ModuleInner>>>>,
}

impl SymbolCache {
    /// Forget the modules of no trace in `keep` (their processes and traces are gone).
    pub fn retain_modules_of<'a>(&self, keep: impl IntoIterator<Item = &'a [ModuleRecord]>) {
        let wanted: HashSet<ModuleKey> = keep.into_iter().flatten().map(module_key).collect();
        lock(&self.modules).retain(|k, _| wanted.contains(k));
    }

    /// Modules held.
    pub fn len(&self) -> usize {
        lock(&self.modules).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn module_key(m: &ModuleRecord) -> ModuleKey {
    if !m.build_id.is_empty() {
        return ModuleKey { build_id: m.build_id.clone(), path: String::new(), layout: Vec::new() };
    }
    let mut layout: Vec<(u64, u64)> = m.segments.iter().map(|s| (s.vaddr, s.memsz)).collect();
    layout.sort_unstable();
    ModuleKey { build_id: Vec::new(), path: m.path.clone(), layout }
}

impl Symbolizer {
    /// Prepares the symbolizer. Files are only opened when an address of
    /// their module is first symbolized.
    pub fn new(modules: &[ModuleRecord], opts: &SymbolizeOptions) -> Symbolizer {
        Symbolizer::build(modules, opts, None)
    }

    /// As [`Symbolizer::new`], sharing loaded modules and looked-up frames through `cache`.
    pub fn with_cache(modules: &[ModuleRecord], opts: &SymbolizeOptions, cache: &SymbolCache) -> Symbolizer {
        Symbolizer::build(modules, opts, Some(cache))
    }

    fn build(modules: &[ModuleRecord], opts: &SymbolizeOptions, cache: Option<&SymbolCache>) -> Symbolizer {
        let mut cached = cache.map(|c| lock(&c.modules));
        let mut states = Vec::with_capacity(modules.len());
        let mut ranges = Vec::new();
        for (idx, m) in modules.iter().enumerate() {
            let mut layout: Vec<(u64, u64)> = Vec::with_capacity(m.segments.len());
            for seg in &m.segments {
                layout.push((seg.vaddr, seg.memsz));
                if seg.memsz == 0 {
                    continue;
                }
                let Some(start) = m.base.checked_add(seg.vaddr) else {
                    continue;
                };
                let end = start.saturating_add(seg.memsz);
                ranges.push((start, end, idx));
            }
            layout.sort_unstable();
            let fresh =
                |memo| Arc::new(Mutex::new(ModuleInner { state: LoadState::Pending, warnings: Vec::new(), memo }));
            let inner = match cached.as_mut() {
                Some(c) => c.entry(module_key(m)).or_insert_with(|| fresh(Some(HashMap::new()))).clone(),
                None => fresh(None),
            };
            states.push(ModuleState {
                path: m.path.clone(),
                base: m.base,
                build_id: m.build_id.clone(),
                layout,
                inner,
            });
        }
        ranges.sort_unstable();
        let mut debug_dirs: Vec<PathBuf> = Vec::new();
        for d in opts.debug_dirs.iter().cloned().chain(std::iter::once(PathBuf::from(DEFAULT_DEBUG_DIR))) {
            if !debug_dirs.contains(&d) {
                debug_dirs.push(d);
            }
        }
        Symbolizer { modules: states, ranges, binaries: opts.binaries.clone(), debug_dirs, disabled: opts.disabled }
    }

    /// Which module holds this runtime address (by base+segments), if any.
    pub fn module_of(&self, addr: u64) -> Option<usize> {
        let idx = self.ranges.partition_point(|&(start, _, _)| start <= addr);
        // Ranges of different modules do not overlap in a sane trace; look a
        // little further back in case a corrupt record made them overlap.
        self.ranges[..idx].iter().rev().take(16).find(|&&(_, end, _)| addr < end).map(|&(_, _, m)| m)
    }

    /// Symbolize many return addresses at once. The result maps every given
    /// address to its frames, innermost (inlined) first and the real function
    /// last; the Vec is empty when the address could not be resolved.
    ///
    /// The lookup uses `addr - 1` (inside the call instruction), so the module
    /// is chosen by `addr - 1` too.
    pub fn symbolize_all(&self, addrs: &[u64]) -> HashMap<u64, Vec<SourceFrame>> {
        let mut unique = addrs.to_vec();
        unique.sort_unstable();
        unique.dedup();

        let mut out: HashMap<u64, Vec<SourceFrame>> = HashMap::with_capacity(unique.len());
        if self.disabled {
            out.extend(unique.into_iter().map(|a| (a, Vec::new())));
            return out;
        }
        let mut groups: HashMap<usize, Vec<u64>> = HashMap::new();
        for addr in unique {
            match addr.checked_sub(1).and_then(|pc| self.module_of(pc)) {
                Some(m) => groups.entry(m).or_default().push(addr),
                None => {
                    out.insert(addr, Vec::new());
                }
            }
        }

        let groups: Vec<(usize, Vec<u64>)> = groups.into_iter().collect();
        let results: Vec<Vec<(u64, Vec<SourceFrame>)>> =
            groups.par_iter().map(|(m, addrs)| self.symbolize_module(*m, addrs)).collect();
        for (addr, frames) in results.into_iter().flatten() {
            out.insert(addr, frames);
        }
        out
    }

    /// The global variable at `addr` (a data address of a loaded module): its module's path and,
    /// when a symbol table has it, the symbol's demangled name and the offset into it.
    pub fn global_at(&self, addr: u64) -> Option<GlobalName> {
        let m = self.module_of(addr)?;
        let module = self.modules.get(m)?;
        let mut name = None;
        if !self.disabled {
            let mut inner = lock(&module.inner);
            self.load_once(module, &mut inner);
            if let LoadState::Ready(resolved) = &inner.state {
                let svma = addr.wrapping_sub(module.base);
                name = resolved.data.lookup_with_start(svma).map(|(start, n)| {
                    let vars = resolved
                        .variables
                        .get_or_init(|| resolved.dwarf_file.as_deref().map(global_variables).unwrap_or_default());
                    (demangle(n, None), svma - start, vars.get(&start).cloned())
                });
            }
        }
        let declared = name.as_ref().and_then(|(_, _, d)| d.clone());
        Some(GlobalName {
            module: module.path.clone(),
            module_offset: addr.wrapping_sub(module.base),
            symbol: name.as_ref().map(|(n, _, _)| n.clone()),
            offset: name.as_ref().map_or(0, |(_, o, _)| *o),
            file: declared.as_ref().map(|(f, _)| f.clone()),
            line: declared.map(|(_, l)| l),
        })
    }

    /// One line per problem met (binary not found, build ID mismatch, no
    /// debug info...), each said once. Only modules that held a symbolized
    /// address were looked at.
    pub fn warnings(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for m in &self.modules {
            for w in &lock(&m.inner).warnings {
                if seen.insert(w.clone()) {
                    out.push(w.clone());
                }
            }
        }
        out
    }

    /// Read the module's files the first time one of its addresses is asked about (frames or
    /// globals); a panic while reading leaves it unusable, with a warning.
    fn load_once(&self, module: &ModuleState, inner: &mut ModuleInner) {
        if !matches!(inner.state, LoadState::Pending) {
            return;
        }
        let mut warnings = Vec::new();
        let state = catch_unwind(AssertUnwindSafe(|| self.load_module(module, &mut warnings))).unwrap_or_else(|_| {
            warnings.push(format!("{}: internal error while reading its files; left unsymbolized", module.path));
            LoadState::Unusable
        });
        for w in warnings {
            inner.warn(w);
        }
        inner.state = state;
    }

    fn symbolize_module(&self, m: usize, addrs: &[u64]) -> Vec<(u64, Vec<SourceFrame>)> {
        let Some(module) = self.modules.get(m) else {
            return addrs.iter().map(|&a| (a, Vec::new())).collect();
        };
        let mut inner = lock(&module.inner);
        self.load_once(module, &mut inner);

        let mut out = Vec::with_capacity(addrs.len());
        let mut panicked = false;
        let ModuleInner { state, memo, .. } = &mut *inner;
        if let LoadState::Ready(resolved) = state {
            for &addr in addrs {
                let svma = addr.wrapping_sub(1).wrapping_sub(module.base);
                if let Some(frames) = memo.as_ref().and_then(|m| m.get(&svma)) {
                    out.push((addr, frames.clone()));
                    continue;
                }
                let frames = if panicked {
                    Vec::new()
                } else {
                    match catch_unwind(AssertUnwindSafe(|| resolved.lookup(svma))) {
                        Ok(frames) => frames,
                        Err(_) => {
                            panicked = true;
                            Vec::new()
                        }
                    }
                };
                if let Some(m) = memo.as_mut().filter(|_| !panicked) {
                    m.insert(svma, frames.clone());
                }
                out.push((addr, frames));
            }
        } else {
            out.extend(addrs.iter().map(|&a| (a, Vec::new())));
        }
        if panicked {
            inner.warn(format!(
                "{}: internal error while reading its debug info; some frames left unsymbolized",
                module.path
            ));
            inner.state = LoadState::Unusable;
        }
        out
    }

    /// Candidate paths for a module's binary, in the documented order.
    fn binary_candidates(&self, path: &str) -> Vec<PathBuf> {
        let mut recorded = vec![path.to_string()];
        // /proc/self/exe of a replaced binary reads "PATH (deleted)".
        if let Some(stripped) = path.strip_suffix(" (deleted)") {
            recorded.push(stripped.to_string());
        }
        let mut out: Vec<PathBuf> = Vec::new();
        let mut push = |p: PathBuf| {
            if !p.as_os_str().is_empty() && !out.contains(&p) {
                out.push(p);
            }
        };
        for dir in &self.binaries {
            for rec in &recorded {
                if let Some(name) = Path::new(rec).file_name() {
                    push(dir.join(name));
                }
                let rel = rec.trim_start_matches('/');
                if !rel.is_empty() {
                    push(dir.join(rel));
                }
            }
        }
        for rec in &recorded {
            if !rec.is_empty() {
                push(PathBuf::from(rec));
            }
        }
        out
    }

    fn load_module(&self, module: &ModuleState, warnings: &mut Vec<String>) -> LoadState {
        let name: &str = if module.path.is_empty() { "<unnamed module>" } else { &module.path };
        let expected = (!module.build_id.is_empty()).then_some(module.build_id.as_slice());

        // 1. The binary.
        let mut binary: Option<MappedFile> = None;
        let candidates = self.binary_candidates(&module.path);
        for cand in &candidates {
            if !cand.is_file() {
                continue;
            }
            let file = match MappedFile::open(cand) {
                Ok(f) => f,
                Err(e) => {
                    warnings.push(format!("{name}: cannot read {}: {e}", desc(name, cand)));
                    continue;
                }
            };
            let Some(obj) = file.parse(warnings, name) else {
                continue;
            };
            let found_id = build_id_of(&obj);
            if let Some(exp) = expected {
                if found_id.as_deref() != Some(exp) {
                    warnings.push(format!(
                        "{name}: build ID mismatch in {} (trace {}, file {}); file ignored",
                        desc(name, cand),
                        hex(exp),
                        found_id.as_deref().map(hex).unwrap_or_else(|| "none".into())
                    ));
                    continue;
                }
            } else if !layout_matches(&module.layout, &obj) {
                warnings.push(format!(
                    "{name}: {} has other load segments than the traced module (no build ID to compare); file ignored",
                    desc(name, cand)
                ));
                continue;
            }
            drop(obj);
            binary = Some(file);
            break;
        }

        // The build ID the debug file must have.
        let wanted_id: Option<Vec<u8>> = match expected {
            Some(id) => Some(id.to_vec()),
            None => binary.as_ref().and_then(|b| b.parse_quiet()).and_then(|o| build_id_of(&o)),
        };

        // 2. A separate debug file: by build ID, then by .gnu_debuglink.
        let mut debug: Option<MappedFile> = None;
        if let Some(id) = wanted_id.as_deref().filter(|id| id.len() >= 2) {
            let rel = format!(".build-id/{}/{}.debug", hex(&id[..1]), hex(&id[1..]));
            for dir in &self.debug_dirs {
                let cand = dir.join(&rel);
                if !cand.is_file() {
                    continue;
                }
                if let Some(f) = self.accept_debug_file(&cand, Some(id), None, name, warnings) {
                    debug = Some(f);
                    break;
                }
            }
        }
        if debug.is_none() {
            if let Some(bin) = &binary {
                debug = self.find_by_debuglink(bin, name, wanted_id.as_deref(), warnings);
            }
        }

        if binary.is_none() && debug.is_none() {
            let mut looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            if let Some(id) = wanted_id.as_deref().filter(|id| id.len() >= 2) {
                looked.push(format!("build ID {} under the debug dirs", hex(id)));
            }
            warnings.push(format!(
                "{name}: no usable binary or debug file found (looked for: {}); its frames are left as module+offset",
                if looked.is_empty() { "nothing to look for".to_string() } else { looked.join(", ") }
            ));
            return LoadState::Unusable;
        }

        // 3. DWARF: the debug file first, then the binary.
        let mut dwarf = None;
        let mut dwarf_file = None;
        let mut dwarf_error = None;
        for file in debug.iter().chain(binary.iter()) {
            let Some(obj) = file.parse_quiet() else {
                continue;
            };
            if !has_dwarf(&obj) {
                continue;
            }
            let sup = self.find_sup_file(file, &obj, name, warnings);
            drop(obj);
            match addr2line::Loader::new_with_sup(&file.path, sup.as_ref()) {
                Ok(loader) => {
                    dwarf = Some(loader);
                    dwarf_file = Some(file.path.clone());
                    break;
                }
                Err(e) => dwarf_error = Some(format!("{}: {e}", file.path.display())),
            }
        }

        // 4. Symbols from every accepted file.
        let mut symbols = SymbolTable::default();
        let mut data = SymbolTable::default();
        for file in binary.iter().chain(debug.iter()) {
            if let Some(obj) = file.parse_quiet() {
                symbols.add_from(&obj, SymbolKind::Text);
                data.add_from(&obj, SymbolKind::Data);
            }
        }
        symbols.finish();
        data.finish();

        if dwarf.is_none() {
            let what = match &dwarf_error {
                Some(e) => format!("unreadable debug info ({e})"),
                None => "no debug info".to_string(),
            };
            if symbols.is_empty() {
                warnings.push(format!("{name}: {what} and no symbol table; its frames are left as module+offset"));
                return LoadState::Unusable;
            }
            warnings.push(format!("{name}: {what}; function names from the symbol table only, without file:line"));
        }
        LoadState::Ready(Box::new(Resolved { dwarf, symbols, data, dwarf_file, variables: std::sync::OnceLock::new() }))
    }

    /// Checks a debug file candidate; returns it when usable. `crc` is the
    /// `.gnu_debuglink` CRC, used when no build ID can be compared.
    fn accept_debug_file(
        &self,
        cand: &Path,
        wanted_id: Option<&[u8]>,
        crc: Option<u32>,
        name: &str,
        warnings: &mut Vec<String>,
    ) -> Option<MappedFile> {
        let file = match MappedFile::open(cand) {
            Ok(f) => f,
            Err(e) => {
                warnings.push(format!("{name}: cannot read {}: {e}", desc(name, cand)));
                return None;
            }
        };
        let obj = file.parse(warnings, name)?;
        let found_id = build_id_of(&obj);
        drop(obj);
        match (wanted_id, found_id.as_deref()) {
            (Some(want), Some(found)) => {
                if want != found {
                    warnings.push(format!(
                        "{name}: build ID mismatch in debug file {} (expected {}, file {}); file ignored",
                        cand.display(),
                        hex(want),
                        hex(found)
                    ));
                    return None;
                }
            }
            (Some(want), None) if crc.is_none() => {
                warnings.push(format!(
                    "{name}: debug file {} has no build ID (expected {}); file ignored",
                    cand.display(),
                    hex(want)
                ));
                return None;
            }
            _ => {
                // Nothing to compare by build ID: the debuglink CRC decides.
                let crc = crc?;
                let actual = crc32(&file.map);
                if actual != crc {
                    warnings.push(format!(
                        "{name}: debug file {} does not match the binary's .gnu_debuglink CRC; file ignored",
                        cand.display()
                    ));
                    return None;
                }
            }
        }
        Some(file)
    }

    /// Follows the binary's `.gnu_debuglink` the way GDB does.
    fn find_by_debuglink(
        &self,
        bin: &MappedFile,
        name: &str,
        wanted_id: Option<&[u8]>,
        warnings: &mut Vec<String>,
    ) -> Option<MappedFile> {
        let (link, crc) = {
            let obj = bin.parse_quiet()?;
            let (link, crc) = obj.gnu_debuglink().ok()??;
            (bytes_to_path(link), crc)
        };
        let link_name = link.file_name()?.to_owned();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for p in [bin.path.as_path(), Path::new(name)] {
            if let Some(parent) = p.parent() {
                if !dirs.iter().any(|d| d == parent) {
                    dirs.push(parent.to_path_buf());
                }
            }
        }
        let mut cands: Vec<PathBuf> = Vec::new();
        for d in &dirs {
            cands.push(d.join(&link_name));
            cands.push(d.join(".debug").join(&link_name));
        }
        for dbg in &self.debug_dirs {
            for d in &dirs {
                let rel = d.strip_prefix("/").unwrap_or(d);
                cands.push(dbg.join(rel).join(&link_name));
            }
        }
        let mut seen = HashSet::new();
        for cand in cands {
            if !seen.insert(cand.clone()) || cand == bin.path || !cand.is_file() {
                continue;
            }
            if let Some(f) = self.accept_debug_file(&cand, wanted_id, Some(crc), name, warnings) {
                return Some(f);
            }
        }
        None
    }

    /// The dwz supplementary file named by `.gnu_debugaltlink`, if found and
    /// matching.
    fn find_sup_file(
        &self,
        file: &MappedFile,
        obj: &object::File<'_>,
        name: &str,
        warnings: &mut Vec<String>,
    ) -> Option<PathBuf> {
        let (link, id) = obj.gnu_debugaltlink().ok()??;
        let link = bytes_to_path(link);
        let mut cands = Vec::new();
        if link.is_absolute() {
            cands.push(link.clone());
        } else if let Some(parent) = file.path.parent() {
            cands.push(parent.join(&link));
        }
        if id.len() >= 2 {
            let rel = format!(".build-id/{}/{}.debug", hex(&id[..1]), hex(&id[1..]));
            for dir in &self.debug_dirs {
                cands.push(dir.join(&rel));
            }
        }
        for cand in cands {
            if !cand.is_file() {
                continue;
            }
            let Ok(sup) = MappedFile::open(&cand) else {
                continue;
            };
            let Some(sup_obj) = sup.parse_quiet() else {
                continue;
            };
            if build_id_of(&sup_obj).as_deref() == Some(id) {
                return Some(cand);
            }
        }
        warnings.push(format!(
            "{name}: supplementary debug file {} (build ID {}) not found; some names may be missing",
            link.display(),
            hex(id)
        ));
        None
    }
}

impl Resolved {
    /// Frames for one SVMA, innermost first.
    fn lookup(&self, svma: u64) -> Vec<SourceFrame> {
        let mut frames: Vec<SourceFrame> = Vec::new();
        if let Some(loader) = &self.dwarf {
            if let Ok(mut iter) = loader.find_frames(svma) {
                while frames.len() < MAX_FRAMES_PER_ADDR {
                    let frame = match iter.next() {
                        Ok(Some(f)) => f,
                        Ok(None) | Err(_) => break,
                    };
                    let function = frame.function.as_ref().and_then(|f| {
                        let raw = f.raw_name().ok()?;
                        Some(demangle(&raw, f.language))
                    });
                    let (file, line) = match &frame.location {
                        Some(loc) => (loc.file.map(str::to_string), loc.line),
                        None => (None, None),
                    };
                    frames.push(SourceFrame { function: function.filter(|f| !f.is_empty()), file, line });
                }
            }
        }
        frames.retain(|f| f.function.is_some() || f.file.is_some());

        // The outermost frame is the real function: the symbol table can name
        // it when DWARF does not.
        let needs_symbol = frames.last().and_then(|f| f.function.as_ref()).is_none();
        if needs_symbol {
            if let Some(sym) = self.symbols.lookup(svma) {
                let name = demangle(sym, None);
                match frames.last_mut() {
                    Some(last) => last.function = Some(name),
                    None => frames.push(SourceFrame { function: Some(name), file: None, line: None }),
                }
            }
        }
        frames
    }
}

/// A mapped candidate file.
struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

impl MappedFile {
    fn open(path: &Path) -> Result<MappedFile, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        // SAFETY: the file is only read; a concurrent truncation by another
        // process is outside what an offline analyzer can guard against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?;
        Ok(MappedFile { path: path.to_path_buf(), map })
    }

    fn parse(&self, warnings: &mut Vec<String>, name: &str) -> Option<object::File<'_>> {
        match object::File::parse(&*self.map) {
            Ok(obj) => Some(obj),
            Err(e) => {
                warnings.push(format!(
                    "{name}: {} is not a readable object file ({e}); file ignored",
                    desc(name, &self.path)
                ));
                None
            }
        }
    }

    fn parse_quiet(&self) -> Option<object::File<'_>> {
        object::File::parse(&*self.map).ok()
    }
}

fn build_id_of(obj: &object::File<'_>) -> Option<Vec<u8>> {
    match obj.build_id() {
        Ok(Some(id)) if !id.is_empty() => Some(id.to_vec()),
        _ => None,
    }
}

/// Without a build ID, the file's PT_LOAD (vaddr, memsz) must equal the
/// recorded ones (when both are known).
fn layout_matches(recorded: &[(u64, u64)], obj: &object::File<'_>) -> bool {
    if recorded.is_empty() {
        return true;
    }
    let mut found: Vec<(u64, u64)> = obj.segments().map(|s| (s.address(), s.size())).collect();
    if found.is_empty() {
        return true;
    }
    found.sort_unstable();
    found == recorded
}

fn has_dwarf(obj: &object::File<'_>) -> bool {
    [".debug_info", ".zdebug_info", ".debug_line", ".zdebug_line"]
        .iter()
        .any(|n| obj.section_by_name(n).is_some_and(|s| s.size() > 0))
}

/// How a warning names a candidate file of module `name`.
fn desc(name: &str, path: &Path) -> String {
    if path == Path::new(name) {
        "the file".to_string()
    } else {
        path.display().to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// Demangles Rust (legacy and v0) and C++ names; other names are returned as is.
fn demangle(raw: &str, language: Option<addr2line::gimli::DwLang>) -> String {
    let first = addr2line::demangle_auto(Cow::Borrowed(raw), language);
    if first != raw {
        return first.into_owned();
    }
    // DWARF may name the language of a C++17+ unit with a code the language
    // based demangler does not know, or give none: try by the mangling prefix.
    if language.is_some() && (raw.starts_with("_Z") || raw.starts_with("_R")) {
        return addr2line::demangle_auto(Cow::Borrowed(raw), None).into_owned();
    }
    first.into_owned()
}

/// IEEE CRC-32 as used by `.gnu_debuglink`.
fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Function symbols with a size, for names when DWARF has none.
#[derive(Default)]
struct SymbolTable {
    /// (start, end, raw name), sorted by start.
    syms: Vec<(u64, u64, Box<str>)>,
}

impl SymbolTable {
    fn add_from(&mut self, obj: &object::File<'_>, kind: SymbolKind) {
        for sym in obj.symbols().chain(obj.dynamic_symbols()) {
            if sym.kind() != kind || !sym.is_definition() || sym.size() == 0 {
                continue;
            }
            let Ok(name) = sym.name() else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let start = sym.address();
            let Some(end) = start.checked_add(sym.size()) else {
                continue;
            };
            self.syms.push((start, end, name.into()));
        }
    }

    fn finish(&mut self) {
        self.syms.sort_unstable();
        self.syms.dedup();
    }

    fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// As [`SymbolTable::lookup`], with the symbol's start.
    fn lookup_with_start(&self, addr: u64) -> Option<(u64, &str)> {
        let idx = self.syms.partition_point(|(start, _, _)| *start <= addr);
        self.syms[..idx].iter().rev().take(64).find(|(_, end, _)| addr < *end).map(|(start, _, name)| (*start, &**name))
    }

    /// The symbol whose [start, start+size) holds `addr`; none rather than a
    /// neighbour's name.
    fn lookup(&self, addr: u64) -> Option<&str> {
        let idx = self.syms.partition_point(|(start, _, _)| *start <= addr);
        self.syms[..idx].iter().rev().take(64).find(|(_, end, _)| addr < *end).map(|(_, _, name)| &**name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const BASE: u64 = 0x5555_0000_0000;

    const C_SOURCE: &str = r#"#include <stdlib.h>
void *volatile sink;

void *leak_here(size_t n) {
    void *p = malloc(n + 3); /* LINE_LEAK */
    return p;
}

static inline __attribute__((always_inline)) void *inner_alloc(size_t n) {
    void *p = malloc(n * 2); /* LINE_INNER */
    sink = p;
    return p;
}

__attribute__((noinline)) void *outer_fn(size_t n) {
    void *p = inner_alloc(n + 1); /* LINE_OUTER */
    sink = p;
    return p;
}

int main(int argc, char **argv) {
    (void)argv;
    sink = leak_here((size_t)argc);
    sink = outer_fn((size_t)argc);
    return 0;
}
"#;

    const CPP_SOURCE: &str = r#"#include <cstdlib>
void *volatile sink;
namespace demo {
struct Widget {
    __attribute__((noinline)) static void *make(unsigned long n);
};
void *Widget::make(unsigned long n) {
    void *p = std::malloc(n + 7); /* LINE_MAKE */
    return p;
}
}
int main(int argc, char **) {
    sink = demo::Widget::make((unsigned long)argc);
    return 0;
}
"#;

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "leaktrace-symbolize-{}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst),
                nanos
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Compiles `source` (written as `src_name` in `dir`) into `dir/out`.
    fn compile(dir: &Path, compiler: &str, src_name: &str, source: &str, out: &str, flags: &[&str]) -> PathBuf {
        let src = dir.join(src_name);
        std::fs::write(&src, source).expect("write source");
        let exe = dir.join(out);
        run(Command::new(compiler).args(flags).arg(&src).arg("-o").arg(&exe));
        exe
    }

    fn build_c(dir: &Path, out: &str, flags: &[&str]) -> PathBuf {
        compile(dir, "cc", "leaktest.c", C_SOURCE, out, flags)
    }

    /// 1-based line of the source line holding `marker`.
    fn line_of(source: &str, marker: &str) -> u32 {
        let idx = source.lines().position(|l| l.contains(marker)).expect("marker in source");
        idx as u32 + 1
    }

    /// The return address (file vaddr) of the call to malloc inside `func`,
    /// read from objdump's disassembly.
    fn ret_addr_after_malloc_call(exe: &Path, func: &str) -> u64 {
        let out = Command::new("objdump").args(["-d", "--no-show-raw-insn"]).arg(exe).output().expect("run objdump");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let header = format!("<{func}>:");
        let mut in_func = false;
        let mut saw_call = false;
        for line in text.lines() {
            if line.ends_with(&header) {
                in_func = true;
                continue;
            }
            if !in_func {
                continue;
            }
            if line.trim().is_empty() {
                break;
            }
            let Some((addr, insn)) = line.split_once(':') else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
                continue;
            };
            if saw_call {
                return addr;
            }
            if insn.contains("call") && insn.contains("malloc") {
                saw_call = true;
            }
        }
        panic!("no call to malloc followed by an instruction in {func} of {}", exe.display());
    }

    fn symbol_addr(exe: &Path, name: &str) -> u64 {
        let data = std::fs::read(exe).expect("read exe");
        let obj = object::File::parse(&*data).expect("parse exe");
        obj.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address()).expect("symbol present")
    }

    /// The module record the preload library would write for `exe` loaded at BASE.
    fn record_for(exe: &Path, recorded_path: &str) -> ModuleRecord {
        let data = std::fs::read(exe).expect("read exe");
        let obj = object::File::parse(&*data).expect("parse exe");
        let build_id = obj.build_id().expect("notes").map(<[u8]>::to_vec).unwrap_or_default();
        let segments = obj
            .segments()
            .map(|s| Segment {
                vaddr: s.address(),
                memsz: s.size(),
                flags: match s.flags() {
                    object::SegmentFlags::Elf { p_flags } => p_flags,
                    _ => 0,
                },
            })
            .collect();
        ModuleRecord { path: recorded_path.to_string(), base: BASE, build_id, segments, ..Default::default() }
    }

    fn opts(binaries: &[&Path], debug_dirs: &[&Path]) -> SymbolizeOptions {
        SymbolizeOptions {
            binaries: binaries.iter().map(|p| p.to_path_buf()).collect(),
            debug_dirs: debug_dirs.iter().map(|p| p.to_path_buf()).collect(),
            disabled: false,
        }
    }

    fn frame(function: &str, file_suffix: &str, line: u32, f: &SourceFrame) {
        assert_eq!(f.function.as_deref(), Some(function), "{f:?}");
        let file = f.file.as_deref().unwrap_or_else(|| panic!("file missing in {f:?}"));
        assert!(file.ends_with(file_suffix), "{f:?}");
        assert_eq!(f.line, Some(line), "{f:?}");
    }

    /// `addr` stays unresolved, and some warning mentions `needle`.
    fn assert_unresolved_with_warning(s: &Symbolizer, addr: u64, needle: &str) {
        assert!(one(s, addr).is_empty());
        let w = s.warnings();
        assert!(w.iter().any(|w| w.contains(needle)), "no warning about {needle:?}: {w:?}");
    }

    fn one(s: &Symbolizer, addr: u64) -> Vec<SourceFrame> {
        let map = s.symbolize_all(&[addr]);
        assert_eq!(map.len(), 1);
        map.get(&addr).cloned().expect("address in result")
    }

    #[test]
    fn a_cache_loads_a_module_once_for_every_trace_of_it() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest", &["-g", "-O0", "-fno-omit-frame-pointer"]);
        let rec = record_for(&exe, exe.to_str().expect("utf-8 path"));
        let offset = ret_addr_after_malloc_call(&exe, "leak_here");
        let cache = SymbolCache::default();
        let first = Symbolizer::with_cache(std::slice::from_ref(&rec), &SymbolizeOptions::default(), &cache);
        let want = one(&first, BASE + offset);
        frame("leak_here", "leaktest.c", line_of(C_SOURCE, "LINE_LEAK"), &want[0]);
        assert_eq!(cache.len(), 1);
        // Another process of the same build, loaded elsewhere, after the file is gone: its
        // module comes from the cache, not from the disk.
        std::fs::remove_file(&exe).unwrap();
        let moved = ModuleRecord { base: BASE + 0x10_0000, ..rec.clone() };
        let second = Symbolizer::with_cache(std::slice::from_ref(&moved), &SymbolizeOptions::default(), &cache);
        assert_eq!(one(&second, BASE + 0x10_0000 + offset), want);
        assert_eq!(cache.len(), 1);
        // Without the cache the file is missed.
        assert!(one(&Symbolizer::new(&[moved], &SymbolizeOptions::default()), BASE + 0x10_0000 + offset).is_empty());
        cache.retain_modules_of([&[rec][..]]);
        assert_eq!(cache.len(), 1);
        cache.retain_modules_of(std::iter::empty());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn resolves_function_file_and_line_at_o0() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest", &["-g", "-O0", "-fno-omit-frame-pointer"]);
        let rec = record_for(&exe, exe.to_str().expect("utf-8 path"));
        let s = Symbolizer::new(&[rec], &SymbolizeOptions::default());

        let ret = BASE + ret_addr_after_malloc_call(&exe, "leak_here");
        let sym = symbol_addr(&exe, "leak_here");
        let early = BASE + sym + 5 + 1;
        let outside = 0x1000;
        assert_eq!(s.module_of(ret), Some(0));
        assert_eq!(s.module_of(BASE - 1), None);
        assert_eq!(s.module_of(outside), None);

        // Duplicates are symbolized once and all reported.
        let map = s.symbolize_all(&[ret, early, ret, outside, 0, 1, u64::MAX]);
        assert_eq!(map.len(), 6);
        assert_eq!(map[&ret].len(), 1, "{:?}", map[&ret]);
        frame("leak_here", "leaktest.c", line_of(C_SOURCE, "LINE_LEAK"), &map[&ret][0]);
        assert_eq!(map[&early].len(), 1);
        assert_eq!(map[&early][0].function.as_deref(), Some("leak_here"));
        assert!(map[&early][0].file.as_deref().is_some_and(|f| f.ends_with("leaktest.c")));
        for a in [outside, 0, 1, u64::MAX] {
            assert!(map[&a].is_empty());
        }
        // main's call to leak_here resolves to main.
        let main_ret = BASE + {
            let out = Command::new("objdump").args(["-d", "--no-show-raw-insn"]).arg(&exe).output().expect("objdump");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let mut lines = text.lines().skip_while(|l| !l.ends_with("<main>:"));
            let mut found = None;
            while let Some(l) = lines.next() {
                if l.contains("call") && l.contains("<leak_here>") {
                    let next = lines.next().expect("instruction after call");
                    found = u64::from_str_radix(next.split(':').next().expect("addr").trim(), 16).ok();
                    break;
                }
            }
            found.expect("call to leak_here in main")
        };
        let f = one(&s, main_ret);
        frame("main", "leaktest.c", line_of(C_SOURCE, "sink = leak_here"), &f[0]);
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    }

    #[test]
    fn inlined_frames_expand_inner_first() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest-o2", &["-g", "-O2", "-fno-omit-frame-pointer"]);
        let rec = record_for(&exe, exe.to_str().expect("utf-8 path"));
        let s = Symbolizer::new(&[rec], &SymbolizeOptions::default());
        let addr = BASE + ret_addr_after_malloc_call(&exe, "outer_fn");
        let frames = one(&s, addr);
        assert_eq!(frames.len(), 2, "{frames:?}");
        frame("inner_alloc", "leaktest.c", line_of(C_SOURCE, "LINE_INNER"), &frames[0]);
        frame("outer_fn", "leaktest.c", line_of(C_SOURCE, "LINE_OUTER"), &frames[1]);
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    }

    #[test]
    fn build_id_mismatch_gives_no_name_and_a_warning() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest", &["-g", "-O0"]);
        let mut rec = record_for(&exe, exe.to_str().expect("utf-8 path"));
        rec.build_id = vec![0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04];
        // Also offer the same file by --binaries: it must be refused there too.
        let s = Symbolizer::new(&[rec], &opts(&[tmp.path()], &[]));
        let addr = BASE + ret_addr_after_malloc_call(&exe, "leak_here");
        assert!(one(&s, addr).is_empty());
        let w = s.warnings();
        assert!(w.iter().any(|w| w.contains("build ID mismatch") && w.contains("deadbeef01020304")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("no usable binary")), "{w:?}");
        // Said once, however many addresses.
        let n = s.warnings().len();
        s.symbolize_all(&[addr + 1, addr + 2]);
        assert_eq!(s.warnings().len(), n);
    }

    #[test]
    fn missing_file_gives_empty_frames_and_a_warning() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest", &["-g", "-O0"]);
        let mut rec = record_for(&exe, "/nonexistent-leaktrace/bin/leaktest");
        rec.build_id.clear();
        let s = Symbolizer::new(&[rec], &SymbolizeOptions::default());
        let addr = BASE + ret_addr_after_malloc_call(&exe, "leak_here");
        assert_eq!(s.module_of(addr), Some(0));
        assert!(one(&s, addr).is_empty());
        let w = s.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("/nonexistent-leaktrace/bin/leaktest"), "{w:?}");
        assert!(w[0].contains("no usable binary"), "{w:?}");
    }

    #[test]
    fn binaries_dir_lookup_when_recorded_path_is_missing() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest", &["-g", "-O0"]);
        let addr = BASE + ret_addr_after_malloc_call(&exe, "leak_here");
        let line = line_of(C_SOURCE, "LINE_LEAK");

        // DIR/<file name>.
        let rec = record_for(&exe, "/nonexistent-leaktrace/opt/app/leaktest");
        let s = Symbolizer::new(&[rec], &opts(&[tmp.path()], &[]));
        let f = one(&s, addr);
        assert_eq!(f.len(), 1);
        frame("leak_here", "leaktest.c", line, &f[0]);
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());

        // DIR/<recorded path>, sysroot style (no DIR/leaktest there).
        let sysroot = tmp.path().join("sysroot");
        let inside = sysroot.join("nonexistent-leaktrace/opt/app");
        std::fs::create_dir_all(&inside).expect("mkdir");
        std::fs::copy(&exe, inside.join("leaktest")).expect("copy");
        let rec = record_for(&exe, "/nonexistent-leaktrace/opt/app/leaktest");
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let s = Symbolizer::new(&[rec], &opts(&[&empty, &sysroot], &[]));
        let f = one(&s, addr);
        assert_eq!(f.len(), 1);
        frame("leak_here", "leaktest.c", line, &f[0]);
    }

    #[test]
    fn build_id_lookup_under_a_debug_dir() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest", &["-g", "-O0"]);
        let addr = BASE + ret_addr_after_malloc_call(&exe, "leak_here");
        let line = line_of(C_SOURCE, "LINE_LEAK");
        let rec_id = record_for(&exe, "x").build_id;
        assert!(rec_id.len() >= 2);

        // A real separate debug file at DIR/.build-id/xx/rest.debug ...
        let debug_dir = tmp.path().join("debug");
        let id_dir = debug_dir.join(".build-id").join(hex(&rec_id[..1]));
        std::fs::create_dir_all(&id_dir).expect("mkdir");
        let debug_file = id_dir.join(format!("{}.debug", hex(&rec_id[1..])));
        run(Command::new("objcopy").arg("--only-keep-debug").arg(&exe).arg(&debug_file));
        // ... and a fully stripped binary at the recorded path.
        let stripped = tmp.path().join("leaktest-stripped");
        run(Command::new("objcopy").arg("--strip-all").arg(&exe).arg(&stripped));
        let stripped_str = stripped.to_str().expect("utf-8 path");

        // Without the debug dir, the stripped binary names nothing.
        let s = Symbolizer::new(&[record_for(&exe, stripped_str)], &SymbolizeOptions::default());
        assert_unresolved_with_warning(&s, addr, "no debug info");

        // With it, full file:line.
        let s = Symbolizer::new(&[record_for(&exe, stripped_str)], &opts(&[], &[&debug_dir]));
        let f = one(&s, addr);
        assert_eq!(f.len(), 1, "{f:?}");
        frame("leak_here", "leaktest.c", line, &f[0]);
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());

        // The debug file alone is enough when the binary is gone.
        let s = Symbolizer::new(&[record_for(&exe, "/nonexistent-leaktrace/leaktest")], &opts(&[], &[&debug_dir]));
        let f = one(&s, addr);
        assert_eq!(f.len(), 1, "{f:?}");
        frame("leak_here", "leaktest.c", line, &f[0]);

        // A debug file under the right name but of another build is refused.
        let other = build_c(tmp.path(), "leaktest-o2", &["-g", "-O2"]);
        run(Command::new("objcopy").arg("--only-keep-debug").arg(&other).arg(&debug_file));
        let s = Symbolizer::new(&[record_for(&exe, "/nonexistent-leaktrace/leaktest")], &opts(&[], &[&debug_dir]));
        assert_unresolved_with_warning(&s, addr, "build ID mismatch in debug file");
    }

    #[test]
    fn gnu_debuglink_is_followed_and_checked() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest", &["-g", "-O0"]);
        let addr = BASE + ret_addr_after_malloc_call(&exe, "leak_here");
        let line = line_of(C_SOURCE, "LINE_LEAK");
        let bin_dir = tmp.path().join("bin");
        std::fs::create_dir_all(bin_dir.join(".debug")).expect("mkdir");
        let debug_file = bin_dir.join(".debug").join("leaktest.dbg");
        run(Command::new("objcopy").arg("--only-keep-debug").arg(&exe).arg(&debug_file));
        let stripped = bin_dir.join("leaktest");
        run(Command::new("objcopy")
            .arg("--strip-all")
            .arg(format!("--add-gnu-debuglink={}", debug_file.display()))
            .arg(&exe)
            .arg(&stripped));
        let stripped_str = stripped.to_str().expect("utf-8 path");

        // With a build ID.
        let s = Symbolizer::new(&[record_for(&exe, stripped_str)], &SymbolizeOptions::default());
        let f = one(&s, addr);
        assert_eq!(f.len(), 1, "{f:?}");
        frame("leak_here", "leaktest.c", line, &f[0]);

        // Without a recorded build ID: the segment layout and the CRC vouch.
        let mut rec = record_for(&exe, stripped_str);
        rec.build_id.clear();
        let s = Symbolizer::new(&[rec], &SymbolizeOptions::default());
        let f = one(&s, addr);
        assert_eq!(f.len(), 1, "{f:?}");
        frame("leak_here", "leaktest.c", line, &f[0]);
    }

    #[test]
    fn gnu_debuglink_crc_decides_without_any_build_id() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest", &["-g", "-O0", "-Wl,--build-id=none"]);
        let addr = BASE + ret_addr_after_malloc_call(&exe, "leak_here");
        let bin_dir = tmp.path().join("bin");
        std::fs::create_dir_all(&bin_dir).expect("mkdir");
        let debug_file = bin_dir.join("leaktest.debug");
        run(Command::new("objcopy").arg("--only-keep-debug").arg(&exe).arg(&debug_file));
        let stripped = bin_dir.join("leaktest");
        run(Command::new("objcopy")
            .arg("--strip-all")
            .arg(format!("--add-gnu-debuglink={}", debug_file.display()))
            .arg(&exe)
            .arg(&stripped));
        let rec = record_for(&exe, stripped.to_str().expect("utf-8 path"));
        assert!(rec.build_id.is_empty());
        let segments = rec.segments.clone();

        let s = Symbolizer::new(&[rec], &SymbolizeOptions::default());
        let f = one(&s, addr);
        assert_eq!(f.len(), 1, "{f:?}");
        frame("leak_here", "leaktest.c", line_of(C_SOURCE, "LINE_LEAK"), &f[0]);
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());

        // A debug file of another build under the linked name fails the CRC.
        let other = build_c(tmp.path(), "leaktest-o2", &["-g", "-O2", "-Wl,--build-id=none"]);
        run(Command::new("objcopy").arg("--only-keep-debug").arg(&other).arg(&debug_file));
        let rec = ModuleRecord {
            path: stripped.to_str().expect("utf-8 path").to_string(),
            base: BASE,
            build_id: Vec::new(),
            segments,
            ..Default::default()
        };
        let s = Symbolizer::new(&[rec], &SymbolizeOptions::default());
        assert_unresolved_with_warning(&s, addr, "CRC");
    }

    #[test]
    fn symbol_table_names_without_dwarf() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest-nodebug", &["-O0", "-fno-omit-frame-pointer"]);
        let rec = record_for(&exe, exe.to_str().expect("utf-8 path"));
        let s = Symbolizer::new(&[rec], &SymbolizeOptions::default());
        let addr = BASE + ret_addr_after_malloc_call(&exe, "leak_here");
        assert_eq!(one(&s, addr), vec![SourceFrame { function: Some("leak_here".into()), file: None, line: None }]);
        let w = s.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("no debug info"), "{w:?}");
    }

    #[test]
    fn layout_mismatch_without_build_id_is_refused() {
        let tmp = TempDir::new();
        let o0 = build_c(tmp.path(), "leaktest", &["-g", "-O0"]);
        let o2 = build_c(tmp.path(), "leaktest-o2", &["-g", "-O2"]);
        let mut rec = record_for(&o0, o2.to_str().expect("utf-8 path"));
        rec.build_id.clear();
        let s = Symbolizer::new(&[rec], &SymbolizeOptions::default());
        let addr = BASE + ret_addr_after_malloc_call(&o0, "leak_here");
        assert_unresolved_with_warning(&s, addr, "other load segments");
    }

    #[test]
    fn cpp_names_are_demangled() {
        let tmp = TempDir::new();
        let line = line_of(CPP_SOURCE, "LINE_MAKE");
        for (out, flags) in [("widget", &["-g", "-O0"][..]), ("widget-nodebug", &["-O0"][..])] {
            let exe = compile(tmp.path(), "c++", "widget.cpp", CPP_SOURCE, out, flags);
            let rec = record_for(&exe, exe.to_str().expect("utf-8 path"));
            let s = Symbolizer::new(&[rec], &SymbolizeOptions::default());
            let f = one(&s, BASE + ret_addr_after_malloc_call(&exe, "_ZN4demo6Widget4makeEm"));
            assert_eq!(f.len(), 1, "{f:?}");
            assert_eq!(f[0].function.as_deref(), Some("demo::Widget::make(unsigned long)"), "{f:?}");
            if flags.contains(&"-g") {
                frame("demo::Widget::make(unsigned long)", "widget.cpp", line, &f[0]);
            } else {
                assert_eq!((f[0].file.as_deref(), f[0].line), (None, None));
            }
        }
    }

    #[test]
    fn demangles_rust_and_cpp_symbols() {
        assert_eq!(demangle("_ZN3foo3barEv", None), "foo::bar()");
        assert_eq!(demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE", None), "core::ptr::drop_in_place");
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo", None), "mycrate::foo");
        assert_eq!(demangle("leak_here", None), "leak_here");
        assert_eq!(demangle("_Z", None), "_Z");
        // A C++ name under an unexpected DWARF language still demangles.
        assert_eq!(demangle("_ZN3foo3barEv", Some(addr2line::gimli::DW_LANG_C_plus_plus_20)), "foo::bar()");
    }

    #[test]
    fn corrupt_and_truncated_files_do_not_panic() {
        let tmp = TempDir::new();
        let exe = build_c(tmp.path(), "leaktest", &["-g", "-O0"]);
        let addr = BASE + ret_addr_after_malloc_call(&exe, "leak_here");
        let data = std::fs::read(&exe).expect("read exe");

        let garbage = tmp.path().join("garbage");
        std::fs::write(&garbage, b"\x7fELF\x02\x01\x01this is not really an ELF file at all").expect("write");
        let truncated = tmp.path().join("truncated");
        std::fs::write(&truncated, &data[..data.len().min(3000)]).expect("write");
        // Valid headers, DWARF sections overwritten with noise.
        let scrambled = tmp.path().join("scrambled");
        let mut bytes = data.clone();
        {
            let obj = object::File::parse(&*data).expect("parse");
            for sec in obj.sections() {
                if sec.name().is_ok_and(|n| n.starts_with(".debug")) {
                    if let Some((off, size)) = sec.file_range() {
                        for (i, b) in bytes[off as usize..(off + size) as usize].iter_mut().enumerate() {
                            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
                        }
                    }
                }
            }
        }
        std::fs::write(&scrambled, &bytes).expect("write");
        let empty = tmp.path().join("empty");
        std::fs::write(&empty, b"").expect("write");

        let mut modules = Vec::new();
        for (i, p) in [&garbage, &truncated, &scrambled, &empty].into_iter().enumerate() {
            let mut rec = record_for(&exe, p.to_str().expect("utf-8 path"));
            rec.build_id.clear();
            rec.base = BASE + ((i as u64 + 1) << 32);
            modules.push(rec);
        }
        // Absurd records: overflowing ranges, zero sizes, empty path.
        modules.push(ModuleRecord {
            path: String::new(),
            base: u64::MAX - 10,
            build_id: vec![1],
            segments: vec![
                Segment { vaddr: 100, memsz: 100, flags: 5 },
                Segment { vaddr: 0, memsz: u64::MAX, flags: 5 },
                Segment { vaddr: 0, memsz: 0, flags: 5 },
            ],
            ..Default::default()
        });
        let s = Symbolizer::new(&modules, &SymbolizeOptions::default());
        let offs = addr - BASE;
        let addrs: Vec<u64> =
            (1..=4u64).map(|i| BASE + (i << 32) + offs).chain([0, 1, u64::MAX, u64::MAX - 5, BASE]).collect();
        let map = s.symbolize_all(&addrs);
        assert_eq!(map.len(), addrs.len());
        for i in [1u64, 2, 4] {
            assert!(map[&(BASE + (i << 32) + offs)].is_empty());
        }
        // The scrambled file keeps a valid symbol table: its unreadable DWARF
        // is dropped and the name comes from the symbols.
        let scr = &map[&(BASE + (3 << 32) + offs)];
        assert_eq!(scr, &vec![SourceFrame { function: Some("leak_here".into()), file: None, line: None }]);
        let w = s.warnings();
        assert!(w.iter().any(|w| w.contains("garbage")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("truncated")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("empty")), "{w:?}");
        assert!(
            w.iter().any(|w| w.starts_with("<unnamed module>: no usable") && w.contains("nothing to look for")),
            "{w:?}"
        );
    }

    #[test]
    fn crc32_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
