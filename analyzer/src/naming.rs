//! What a site is, and what it is called, in every output. One owner for the rules text, JSON,
//! HTML, pprof, folded, diff and watch share:
//!
//! - [`module_of`]: which module holds a return address;
//! - [`Symbols`]: raw stacks as source frames, the allocator's entry points stripped
//!   ([`is_allocator_entry`]), and which raw stacks are one site ([`Symbols::for_sites`]: stacks
//!   whose symbolized frames are equal are one source location);
//! - [`frame_label`], [`naming_frame`], [`SiteName`]: how a frame and a site are named;
//! - [`Headline`], [`summary`]: the one sentence at the top of a report.

use std::collections::HashMap;
use std::path::Path;

use leaktrace_format::ModuleRecord;

use crate::schema::{FrameOut, RssPeak, RssPoint, RssVsHeap, SiteOut};
use crate::symbolize::Symbolizer;
use crate::words::{human_bytes, notable_peak, rss_growth_words, secs};

/// Shown in place of a stack that was lost (stack table full or damaged).
pub const LOST_STACK: &str = "[stack lost]";

// ---------------------------------------------------------------------------------------------
// Modules

/// The module holding a return address: the call instruction (`addr - 1`) decides, as in
/// symbolization; the address itself is the fallback.
pub fn module_of(modules: &[ModuleRecord], addr: u64) -> Option<(usize, &ModuleRecord)> {
    let by = |a: u64| modules.iter().enumerate().find(|(_, m)| m.contains(a));
    addr.checked_sub(1).and_then(by).or_else(|| by(addr))
}

/// A file name without its directories.
pub fn base_name(path: &str) -> &str {
    Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or(path)
}

// ---------------------------------------------------------------------------------------------
// Frames and sites

/// Allocator entry points: what malloc is to C, `operator new` (every variant: array, nothrow,
/// sized, aligned; libstdc++ and libc++, whose demangled names are the same) is to C++ and the
/// `__rust_alloc` shims are to Rust. Leading frames in them are stripped from every site, as the
/// preload strips malloc's own, so that frames[0] is the code that asked for memory.
pub fn is_allocator_entry(function: &str) -> bool {
    const ENTRIES: &[&str] = &[
        "operator new",
        "operator new[]",
        "__rust_alloc",
        "__rust_alloc_zeroed",
        "__rust_realloc",
        "__rdl_alloc",
        "__rdl_alloc_zeroed",
        "__rdl_realloc",
        "__rg_alloc",
        "__rg_alloc_zeroed",
        "__rg_realloc",
    ];
    // The mangled names, should a symbol reach us undemangled: _Znwm, _Znam, _ZnwmRKSt9nothrow_t,
    // _ZnwmSt11align_val_t, ... (`m` is size_t on LP64, `j` on 32-bit targets).
    if ["_Znw", "_Zna"].iter().any(|p| function.strip_prefix(p).is_some_and(|rest| rest.starts_with(['m', 'j']))) {
        return true;
    }
    // "operator new(unsigned long, std::nothrow_t const&)", "operator new[](unsigned long)",
    // "operator new(unsigned long) [clone .cold]": the name before the parameter list.
    let base = function.split('(').next().unwrap_or(function).trim();
    ENTRIES.contains(&base) || base.strip_prefix("operator ").is_some_and(|op| matches!(op.trim(), "new" | "new[]"))
}

/// A site's frames without the leading allocator entry points (one frame is always kept).
fn without_allocator_entries(mut frames: Vec<FrameOut>) -> Vec<FrameOut> {
    let entries = frames.iter().take_while(|f| f.function.as_deref().is_some_and(is_allocator_entry)).count();
    frames.drain(..entries.min(frames.len().saturating_sub(1)));
    frames
}

/// One frame of a location key: a source location when the frame resolved to a line, else the
/// call instruction itself (two calls in one function without line information stay apart).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum FrameKey {
    Source { module: Option<String>, function: String, file: String, line: u32 },
    Address { module: Option<String>, address: String },
}

/// When two raw stacks are one site: their symbolized frames (function, file, line, inlined
/// frames included, allocator entry points stripped) are equal; frames that did not resolve to
/// a line compare by module and address.
fn location_key(frames: &[FrameOut]) -> Vec<FrameKey> {
    frames
        .iter()
        .map(|f| match (&f.function, &f.file, f.line) {
            (Some(function), Some(file), Some(line)) => {
                FrameKey::Source { module: f.module.clone(), function: function.clone(), file: file.clone(), line }
            }
            _ => FrameKey::Address { module: f.module.clone(), address: f.address.clone() },
        })
        .collect()
}

/// The symbolized frames of every return address of a trace's stacks, looked up once.
pub struct Symbols {
    by_addr: HashMap<u64, Vec<FrameOut>>,
}

impl Symbols {
    /// Symbolize every address of `stacks`.
    pub fn new(modules: &[ModuleRecord], symbolizer: &Symbolizer, stacks: &[Vec<u64>]) -> Symbols {
        let mut addrs: Vec<u64> = stacks.iter().flatten().copied().collect();
        addrs.sort_unstable();
        addrs.dedup();
        let resolved = symbolizer.symbolize_all(&addrs);
        let by_addr = addrs
            .into_iter()
            .map(|addr| {
                let frames = frames_of_address(modules, addr, resolved.get(&addr).map_or(&[][..], Vec::as_slice));
                (addr, frames)
            })
            .collect();
        Symbols { by_addr }
    }

    /// Symbolize what the sites of a trace need and say which of its `stacks` are one site
    /// (stacks whose frames give the same [`location_key`]). `live[k]`: stack k holds unfreed
    /// allocations.
    ///
    /// A stack whose allocations were all freed is no site of its own, but it belongs to the
    /// series of a site on its source location. Symbolizing every such stack would cost more than
    /// the rest of the report (a full trace of python3: 0.7 s and 230 MiB instead of 0.25 s and
    /// 100 MiB), so only those that differ from a live stack of the same depth in a single return
    /// address are looked up (one line reached by two call instructions, the cases this is
    /// for); any other stays a location of its own, which holds nothing at the end and is not
    /// reported. Live stacks are all looked up: every site with unfreed memory is whole.
    pub fn for_sites(
        modules: &[ModuleRecord],
        symbolizer: &Symbolizer,
        stacks: &[Vec<u64>],
        live: &[bool],
    ) -> (Symbols, Vec<usize>) {
        let near = near_live_stacks(stacks, live);
        let wanted: Vec<Vec<u64>> = stacks.iter().zip(&near).filter(|(_, &n)| n).map(|(s, _)| s.clone()).collect();
        let symbols = Symbols::new(modules, symbolizer, &wanted);
        // Locations by key count up from 0; a stack not looked up is location `stacks.len() + k`,
        // its own (k: its index).
        let mut numbers: HashMap<Vec<FrameKey>, usize> = HashMap::new();
        let locations = stacks
            .iter()
            .zip(&near)
            .enumerate()
            .map(|(k, (s, &n))| {
                if !n {
                    return stacks.len() + k;
                }
                let k = numbers.len();
                *numbers.entry(location_key(&symbols.site_frames(s))).or_insert(k)
            })
            .collect();
        (symbols, locations)
    }

    /// A raw stack (innermost first) as the frames a site shows: each return address expanded
    /// into its inlined frames, the leading allocator entry points stripped.
    pub fn site_frames(&self, raw: &[u64]) -> Vec<FrameOut> {
        let frames = raw
            .iter()
            .flat_map(|a| self.by_addr.get(a).cloned().unwrap_or_else(|| vec![FrameOut::unresolved(*a, None, None)]))
            .collect();
        without_allocator_entries(frames)
    }
}

/// Which stacks [`Symbols::for_sites`] looks up: the live ones, and those of the same depth as a
/// live one that differ from it in one return address. Found by hashing each stack with one
/// position left out (from prefix and suffix hashes, so linear in the stack); a hash collision
/// only costs a look-up more.
fn near_live_stacks(stacks: &[Vec<u64>], live: &[bool]) -> Vec<bool> {
    const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, a: u64| (h ^ a).wrapping_mul(MUL).rotate_left(23);
    // Hashes of `s` with position i left out, for every i.
    let one_out = |s: &[u64]| -> Vec<u64> {
        let n = s.len();
        let mut prefix = vec![0u64; n + 1];
        for i in 0..n {
            prefix[i + 1] = mix(prefix[i], s[i]);
        }
        let mut suffix = vec![0u64; n + 1];
        for i in (0..n).rev() {
            suffix[i] = mix(suffix[i + 1], s[i]);
        }
        (0..n).map(|i| mix(mix(mix(prefix[i], suffix[i + 1]), i as u64), n as u64)).collect()
    };
    let mut index = std::collections::HashSet::new();
    for (s, _) in stacks.iter().zip(live).filter(|(_, &l)| l) {
        index.extend(one_out(s));
    }
    stacks
        .iter()
        .zip(live)
        .map(|(s, &l)| l || (!index.is_empty() && one_out(s).iter().any(|h| index.contains(h))))
        .collect()
}

/// The frames of one return address: its inlined frames innermost first, or one unresolved.
fn frames_of_address(modules: &[ModuleRecord], addr: u64, resolved: &[crate::symbolize::SourceFrame]) -> Vec<FrameOut> {
    let module = module_of(modules, addr).map(|(_, m)| m);
    let name = module.map(|m| base_name(&m.path).to_string());
    let offset = module.map(|m| addr.wrapping_sub(m.base));
    if resolved.is_empty() {
        return vec![FrameOut::unresolved(addr, name, offset)];
    }
    resolved
        .iter()
        .map(|f| FrameOut {
            address: format!("{addr:#x}"),
            module: name.clone(),
            function: f.function.clone(),
            file: f.file.clone(),
            line: f.line,
            module_offset: offset,
        })
        .collect()
}

/// How one frame is named: its function, else `module+0xoffset` (the offset from the module's
/// load bias, as `addr2line -e module` takes it, the same in every run), else the raw address.
pub fn frame_label(f: &FrameOut) -> String {
    if let Some(func) = f.function.as_deref().filter(|s| !s.is_empty()) {
        return func.to_string();
    }
    match (&f.module, f.module_offset) {
        (Some(m), Some(off)) => format!("{m}+{off:#x}"),
        _ => f.address.clone(),
    }
}

/// The frame a site is named by, in every output: the first past any allocator entry point,
/// resolved or not (an unresolved frame is named by module + offset rather than skipped, so a
/// site is never named after a distant caller).
pub fn naming_frame(frames: &[FrameOut]) -> Option<&FrameOut> {
    frames.iter().find(|f| !f.function.as_deref().is_some_and(is_allocator_entry)).or_else(|| frames.first())
}

/// Where a named frame is: a source line, its module (a function without line information), or
/// nothing more than its label says (unresolved: the label holds the module).
pub enum Place<'a> {
    Line { file: &'a str, line: u32 },
    Module(&'a str),
    None,
}

/// A site's name: what every output calls it.
pub struct SiteName<'a> {
    /// The naming frame (None: the stack was lost).
    pub frame: Option<&'a FrameOut>,
    /// Its label: function, or module+offset.
    pub label: String,
    pub place: Place<'a>,
}

impl SiteName<'_> {
    pub fn of(frames: &[FrameOut]) -> SiteName<'_> {
        let Some(f) = naming_frame(frames) else {
            return SiteName { frame: None, label: LOST_STACK.to_string(), place: Place::None };
        };
        let place = match (&f.function, &f.file, f.line, &f.module) {
            (Some(_), Some(file), Some(line), _) => Place::Line { file, line },
            (Some(_), _, _, Some(m)) => Place::Module(m),
            _ => Place::None,
        };
        SiteName { frame: Some(f), label: frame_label(f), place }
    }

    /// `` `remember_session` at leaky_service.c:34 ``, `` `strdup` in libc.so.6 ``,
    /// `` `app+0x1181` ``: the name in running text (summary sentences, diff, watch).
    pub fn quoted(&self) -> String {
        self.with_label(&format!("`{}`", self.label))
    }

    /// The same without quotes (JSON `sites[].name`).
    pub fn plain(&self) -> String {
        self.with_label(&self.label)
    }

    fn with_label(&self, label: &str) -> String {
        match self.place {
            Place::Line { file, line } => format!("{label} at {}:{line}", base_name(file)),
            Place::Module(m) => format!("{label} in {m}"),
            Place::None => label.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The summary sentence

/// What the top of a report says: the first growing site (sites come growing first), else the
/// largest one, else nothing.
pub enum Headline<'a> {
    Growing { site: &'a SiteOut, others: usize },
    Largest { site: &'a SiteOut },
    Nothing,
}

impl Headline<'_> {
    pub fn of(sites: &[SiteOut]) -> Headline<'_> {
        let growing = sites.iter().filter(|s| s.growing).count();
        match (sites.iter().find(|s| s.growing), sites.first()) {
            (Some(site), _) => Headline::Growing { site, others: growing - 1 },
            (None, Some(site)) => Headline::Largest { site },
            (None, None) => Headline::Nothing,
        }
    }
}

/// A growth rate as "1.2 MiB/min".
pub fn per_min(bytes_per_sec: f64) -> String {
    format!("{}/min", human_bytes(bytes_per_sec * 60.0))
}

/// "RSS grew 156.0 MiB over the whole trace (0.0s to 8.0s; leaktrace's own 5.7 MiB excluded),
/// 99% of it explained by sampled heap growth" (with the peak when it stood well above both
/// ends), when RSS grew; "RSS peaked at … and ended at …" when it did not grow but peaked high.
/// Whether the growth is outside the heap is `r.growth_outside_heap`, said by each renderer its
/// own way.
pub fn rss_clause(r: Option<&RssVsHeap>, rss: &[RssPoint], peak: Option<RssPeak>) -> Option<String> {
    match r {
        Some(r) if r.rss_growth_bytes.is_finite() && r.rss_growth_bytes > 0.0 => {
            let explained = r.explained_fraction.filter(|e| e.is_finite()).map_or(String::new(), |e| {
                format!(", {:.0}% of it explained by sampled heap growth", (e * 100.0).clamp(0.0, 100.0))
            });
            Some(format!("{}{explained}", rss_growth_words(r, rss, peak)))
        }
        _ => {
            let (p, last) = (notable_peak(rss, peak)?, rss.last()?);
            Some(format!(
                "RSS peaked at {} at {} and ended at {}",
                human_bytes(p.rss_bytes as f64),
                secs(p.t_ns),
                human_bytes(last.rss_bytes as f64)
            ))
        }
    }
}

/// The report's one sentence (JSON `summary`, the text report's and watch's top line; the HTML
/// verdict says the same of the same site, with markup).
/// What the last heap scan says of the headline site, combined with its growth: unreferenced
/// and growing is a leak (a missing free); held by a global and growing, an unbounded container;
/// held and not growing, a cache or state.
fn retention_clause(site: &SiteOut, growing: bool) -> String {
    use crate::retention::HeldBy;
    let Some(r) = &site.retention else { return String::new() };
    let holder = r.held_by.first();
    match (r.verdict.as_str(), holder, growing) {
        ("unreferenced", _, true) => {
            format!(
                ": a leak, a missing free ({} of {} sampled objects referenced by nothing)",
                r.unreferenced, r.objects
            )
        }
        ("unreferenced", _, false) => {
            format!(", {} of {} sampled objects referenced by nothing (a missing free)", r.unreferenced, r.objects)
        }
        ("held", Some(h @ HeldBy::Global { .. }), true) => format!(": an unbounded container held by {}", h.describe()),
        ("held", Some(h), true) => format!(": its objects are held by {}", h.describe()),
        ("held", Some(h), false) => format!(", held by {} (a cache, or state)", h.describe()),
        _ => String::new(),
    }
}

pub fn summary(sites: &[SiteOut], rss: Option<&RssVsHeap>, rss_series: &[RssPoint], peak: Option<RssPeak>) -> String {
    let rss_part = rss_clause(rss, rss_series, peak).map_or(String::new(), |c| {
        let outside = if rss.is_some_and(|r| r.growth_outside_heap && r.rss_growth_bytes > 0.0) {
            " — most of the growth is outside malloc'd memory (fragmentation, mmap, thread stacks)"
        } else {
            ""
        };
        format!("; {c}{outside}")
    });
    match Headline::of(sites) {
        Headline::Growing { site, .. } => format!(
            "{} grows {} with confidence {:.2}{}{rss_part}.",
            SiteName::of(&site.frames).quoted(),
            per_min(site.growth_bytes_per_sec),
            site.trend_confidence,
            retention_clause(site, true)
        ),
        Headline::Largest { site } => format!(
            "No call site's live memory grows steadily; the largest unfreed site is {} with {}{}{rss_part}.",
            SiteName::of(&site.frames).quoted(),
            human_bytes(site.unfreed_bytes),
            retention_clause(site, false)
        ),
        Headline::Nothing => format!("No sampled allocation was left unfreed{rss_part}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(addr: &str, func: Option<&str>) -> FrameOut {
        FrameOut {
            address: addr.into(),
            module: Some("app".into()),
            function: func.map(String::from),
            file: None,
            line: None,
            module_offset: Some(0x1000),
        }
    }

    fn at(func: &str, file: &str, line: u32, addr: &str) -> FrameOut {
        FrameOut { file: Some(file.into()), line: Some(line), ..f(addr, Some(func)) }
    }

    #[test]
    fn operator_new_in_every_spelling_is_an_allocator_entry() {
        for name in [
            "operator new(unsigned long)",
            "operator new[](unsigned long)",
            "operator new(unsigned long, std::nothrow_t const&)",
            "operator new[](unsigned long, std::nothrow_t const&)",
            "operator new(unsigned long, std::align_val_t)",
            "operator new[](unsigned long, std::align_val_t, std::nothrow_t const&)",
            "operator new(unsigned long, std::__1::nothrow_t const&)",
            "operator new(std::size_t)",
            "operator new (unsigned long)",
            "operator new",
            "operator new[]",
            "operator new(unsigned long) [clone .cold]",
            "_Znwm",
            "_ZnamRKSt9nothrow_t",
            "_ZnwmSt11align_val_t",
            "__rust_alloc",
        ] {
            assert!(is_allocator_entry(name), "{name}");
        }
        for name in [
            "operator delete(void*)",
            "operator newer",
            "my_operator new",
            "Pool::operator new(unsigned long)",
            "std::__new_allocator<int>::allocate(unsigned long, void const*)",
            "malloc_new",
            "_Znwx",
            "leak_new()",
        ] {
            assert!(!is_allocator_entry(name), "{name}");
        }
    }

    #[test]
    fn only_leading_entry_points_are_stripped() {
        let frames = vec![
            f("0x1", Some("operator new(unsigned long)")),
            f("0x2", Some("leak")),
            f("0x3", Some("operator new(unsigned long)")),
        ];
        let kept = without_allocator_entries(frames);
        assert_eq!(kept.iter().map(|f| f.address.as_str()).collect::<Vec<_>>(), ["0x2", "0x3"]);
        // A stack of nothing but an entry point keeps it.
        assert_eq!(without_allocator_entries(vec![f("0x1", Some("operator new[](unsigned long)"))]).len(), 1);
    }

    #[test]
    fn equal_source_frames_are_one_location_unresolved_ones_compare_by_address() {
        let same_line = [at("leak", "a.c", 10, "0x10"), at("main", "a.c", 20, "0x30")];
        let other_call = [at("leak", "a.c", 10, "0x14"), at("main", "a.c", 20, "0x30")];
        let other_line = [at("leak", "a.c", 11, "0x18"), at("main", "a.c", 20, "0x30")];
        assert_eq!(location_key(&same_line), location_key(&other_call));
        assert_ne!(location_key(&same_line), location_key(&other_line));
        // Inlined frames count: one more inlined frame is another location.
        let inlined = [at("helper", "a.h", 3, "0x10"), at("leak", "a.c", 10, "0x10"), at("main", "a.c", 20, "0x30")];
        assert_ne!(location_key(&same_line), location_key(&inlined));
        // Without a line, a function's two calls stay two sites.
        assert_ne!(location_key(&[f("0x10", Some("leak"))]), location_key(&[f("0x14", Some("leak"))]));
        assert_ne!(location_key(&[f("0x10", None)]), location_key(&[f("0x14", None)]));
        assert_eq!(location_key(&[f("0x10", None)]), location_key(&[f("0x10", None)]));
    }

    #[test]
    fn freed_stacks_one_address_from_a_live_one_are_looked_up() {
        let stacks = vec![
            vec![0x10, 0x20, 0x30],
            vec![0x11, 0x20, 0x30],
            vec![0x10, 0x21, 0x30],
            vec![0x11, 0x21, 0x30],
            vec![0x10, 0x20],
            vec![0x10, 0x20, 0x30, 0x40],
        ];
        let live = [true, false, false, false, false, false];
        assert_eq!(near_live_stacks(&stacks, &live), [true, true, true, false, false, false]);
        assert_eq!(near_live_stacks(&stacks, &[false; 6]), [false; 6]);
    }

    #[test]
    fn sites_are_named_past_allocator_entries_but_not_past_unresolved_frames() {
        let s = [f("0x1", Some("operator new(unsigned long)")), f("0x2", Some("Cache::add")), f("0x3", Some("main"))];
        assert_eq!(naming_frame(&s).and_then(|f| f.function.as_deref()), Some("Cache::add"));
        let s = [f("0x1", None), f("0x2", Some("__libc_start_call_main"))];
        assert_eq!(naming_frame(&s).map(|f| f.address.as_str()), Some("0x1"));
        assert_eq!(SiteName::of(&s).quoted(), "`app+0x1000`");
        let s = [f("0x1", Some("__rust_alloc"))];
        assert_eq!(naming_frame(&s).map(|f| f.address.as_str()), Some("0x1"));
        // A libc function that allocates is the code that asked: the site is named by it.
        let s = [f("0x1", Some("__GI___strdup")), f("0x2", Some("leak_strdup"))];
        assert_eq!(naming_frame(&s).and_then(|f| f.function.as_deref()), Some("__GI___strdup"));
        assert_eq!(SiteName::of(&s).quoted(), "`__GI___strdup` in app");
        let s = [at("remember_session", "/src/leaky_service.c", 34, "0x5")];
        assert_eq!(SiteName::of(&s).quoted(), "`remember_session` at leaky_service.c:34");
        assert_eq!(SiteName::of(&s).plain(), "remember_session at leaky_service.c:34");
        assert!(naming_frame(&[]).is_none());
        assert_eq!(SiteName::of(&[]).plain(), LOST_STACK);
    }

    #[test]
    fn unresolved_frames_are_named_by_module_offset() {
        let m = ModuleRecord {
            path: "/opt/app/libx.so".into(),
            base: 0x7f00_0000_0000,
            segments: vec![leaktrace_format::Segment { vaddr: 0x1000, memsz: 0x2000, flags: 5 }],
            ..Default::default()
        };
        let frames = frames_of_address(std::slice::from_ref(&m), 0x7f00_0000_1234, &[]);
        assert_eq!(frame_label(&frames[0]), "libx.so+0x1234");
        let frames = frames_of_address(std::slice::from_ref(&m), 0x99, &[]);
        assert_eq!(frame_label(&frames[0]), "0x99");
        assert_eq!(frame_label(&f("0x99", Some("main"))), "main");
    }
}
