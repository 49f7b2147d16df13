//! Variable-size metadata records, postcard-encoded inside length-framed entries.
//!
//! Each record type has an explicit, never-reused kind number ([`MetaKind`]); its postcard
//! payload may gain fields at the end in a later minor version, so readers decode with
//! `take_from_bytes` and ignore what follows.

use serde::{Deserialize, Serialize};

/// Kind numbers of metadata records. Never renumber; retire by leaving a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum MetaKind {
    Process = 1,
    Module = 2,
    Sampling = 3,
    ModuleUnloaded = 4,
    /// A heap scan ended (1.2): [`ScanSummary`].
    Scan = 5,
    /// What a heap scan found about one stack's sampled objects (1.2): [`Retention`].
    Retention = 6,
}

impl MetaKind {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Process,
            2 => Self::Module,
            3 => Self::Sampling,
            4 => Self::ModuleUnloaded,
            5 => Self::Scan,
            6 => Self::Retention,
            _ => return None,
        })
    }
}

/// Who was traced. Written once, first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// `/proc/self/exe` at start.
    pub exe: String,
    pub cmdline: Vec<String>,
    pub hostname: String,
    /// leaktrace's version, for bug reports.
    pub tracer_version: String,
    /// Which stack unwinder produced the stacks, as the writer named it ("cfi" now; older
    /// writers said "backtrace" or "frame-pointer").
    pub unwinder: String,
}

/// One PT_LOAD segment of a module, unrelocated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub flags: u32,
}

/// A loaded ELF object: runtime address = `base + vaddr`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    pub path: String,
    /// Load bias (`dlpi_addr`); 0 for a non-PIE executable.
    pub base: u64,
    /// NT_GNU_BUILD_ID, empty if the object has none.
    pub build_id: Vec<u8>,
    pub segments: Vec<Segment>,
    /// ns since start when the writer first saw the module.
    pub seen_ns: u64,
    /// True for libleaktrace.so itself, whose frames the analyzer strips.
    pub is_tracer: bool,
}

impl ModuleRecord {
    /// Does this module's mapped image hold `addr`?
    pub fn contains(&self, addr: u64) -> bool {
        self.segments.iter().any(|s| {
            let start = self.base.wrapping_add(s.vaddr);
            addr >= start && addr - start < s.memsz
        })
    }
}

/// The sampling mean changed (or was set at start) at `t_ns`. `mean_bytes == 0` means sampling
/// was paused (`ctl --pause`, or `LEAKTRACE_START=off`) until the next change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplingChange {
    pub t_ns: u64,
    pub mean_bytes: u64,
}

/// A module was unloaded (dlclose) at `t_ns`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleUnloaded {
    pub base: u64,
    pub t_ns: u64,
}

/// How a heap scan (`leak-analyze ctl --scan`) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ScanOutcome {
    /// Every readable writable mapping was scanned.
    Complete = 0,
    /// Stopped early: another request (a pause), or the process exiting.
    Stopped = 1,
    /// The scan could not run (no memory for its tables, /proc/self/maps unreadable).
    Failed = 2,
}

/// A heap scan ended at `t_ns` (ns since start, when it began); its [`Retention`] records, with
/// the same `t_ns`, come before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanSummary {
    pub t_ns: u64,
    pub duration_ns: u64,
    /// Bytes of memory read.
    pub bytes_scanned: u64,
    /// Sampled live objects examined.
    pub objects: u64,
    /// Mappings scanned.
    pub regions: u32,
    /// A [`ScanOutcome`].
    pub outcome: u32,
}

/// Referenced from a writable segment of a loaded object (a global), at `address` (absolute;
/// the module map names it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldByGlobal {
    pub address: u64,
    pub objects: u32,
}

/// Referenced from inside sampled objects allocated at `stack_id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBySite {
    pub stack_id: u32,
    pub objects: u32,
}

/// A sampled object's address, size and first bytes, to show what it holds. Generic over where
/// the bytes are: owned when read ([`ObjectSample`]), borrowed when written
/// ([`ObjectSampleOut`]: the scanning child may not allocate); one wire form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSampleOf<Bytes> {
    pub address: u64,
    pub size: u64,
    pub bytes: Bytes,
}

pub type ObjectSample = ObjectSampleOf<Vec<u8>>;
pub type ObjectSampleOut<'a> = ObjectSampleOf<&'a [u8]>;

/// What a heap scan found about the sampled live objects allocated at one stack. Each object is
/// counted once, by its strongest holder: a global, else a thread stack, else another sampled
/// object, else heap memory no sampled object covers, else any other mapping; `unreferenced`
/// if no word of the process pointed into it.
///
/// Generic over its lists: owned when read ([`Retention`]), borrowed slices when written
/// ([`RetentionOut`]: the scan runs in a forked child of a process whose malloc locks may be
/// held, and may not allocate); one wire form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionOf<Globals, Sites, Samples> {
    /// The scan's `t_ns` ([`ScanSummary`]).
    pub scan_t_ns: u64,
    pub stack_id: u32,
    pub objects: u32,
    pub unreferenced: u32,
    pub by_global: u32,
    pub by_stack: u32,
    /// Held by other sampled objects.
    pub by_site: u32,
    pub by_heap: u32,
    pub by_other: u32,
    /// Where the globals that hold them are: the referencing words of up to
    /// [`RETENTION_GLOBALS`] of the `by_global` objects, equal addresses merged. The analyzer
    /// names them by symbol and shares `by_global` out in proportion.
    pub globals: Globals,
    /// The stacks of the sampled objects that hold them, exact for up to [`RETENTION_SITES`]
    /// stacks (the rest count in `by_site` only).
    pub sites: Sites,
    pub samples: Samples,
}

pub type Retention = RetentionOf<Vec<HeldByGlobal>, Vec<HeldBySite>, Vec<ObjectSample>>;
pub type RetentionOut<'a> = RetentionOf<&'a [HeldByGlobal], &'a [HeldBySite], &'a [ObjectSampleOut<'a>]>;

/// Most referencing addresses a [`Retention`] record lists.
pub const RETENTION_GLOBALS: usize = 32;
/// Most holding stacks a [`Retention`] record lists.
pub const RETENTION_SITES: usize = 16;
/// Most objects a [`Retention`] record shows, and how many of their first bytes.
pub const RETENTION_SAMPLES: usize = 3;
pub const RETENTION_SAMPLE_BYTES: usize = 64;

#[cfg(test)]
mod retention_tests {
    use super::*;

    #[test]
    fn the_borrowed_writer_form_decodes_as_the_owned_one() {
        let globals = [HeldByGlobal { address: 0x5555_0000_1000, objects: 7 }];
        let sites = [HeldBySite { stack_id: 9, objects: 2 }];
        let bytes = *b"session-42\0\x01\x02";
        let samples = [ObjectSampleOut { address: 0x7f00_0000_0010, size: 48, bytes: &bytes }];
        let out = RetentionOut {
            scan_t_ns: 5,
            stack_id: 3,
            objects: 12,
            unreferenced: 1,
            by_global: 7,
            by_stack: 1,
            by_site: 2,
            by_heap: 0,
            by_other: 1,
            globals: &globals,
            sites: &sites,
            samples: &samples,
        };
        let mut buf = [0u8; 256];
        let encoded = postcard::to_slice(&out, &mut buf).unwrap();
        let (back, rest) = postcard::take_from_bytes::<Retention>(encoded).unwrap();
        assert!(rest.is_empty());
        assert_eq!(back.globals, globals);
        assert_eq!(back.sites, sites);
        assert_eq!(back.samples[0].bytes, bytes);
        assert_eq!((back.scan_t_ns, back.stack_id, back.objects, back.unreferenced), (5, 3, 12, 1));
        assert_eq!((back.by_global, back.by_stack, back.by_site, back.by_heap, back.by_other), (7, 1, 2, 0, 1));
    }
}
