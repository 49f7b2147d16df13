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
}

impl MetaKind {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Process,
            2 => Self::Module,
            3 => Self::Sampling,
            4 => Self::ModuleUnloaded,
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
    /// Which stack unwinder produced the stacks ("backtrace", "frame-pointer", ...).
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
