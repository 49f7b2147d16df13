//! `LEAKTRACE_*` settings. Any value that does not parse disables tracing with one line on
//! stderr: guessing what a user meant is worse than telling them.

use leaktrace_format::layout;

pub const DEFAULT_SAMPLE_BYTES: u64 = 512 << 10;
pub const DEFAULT_FILE_SIZE: u64 = 64 << 20;
pub const DEFAULT_RSS_MS: u64 = 1000;
pub const DEFAULT_FILE_PATTERN: &str = "leaktrace.%p.lt";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `LEAKTRACE_FILE`; `%p` becomes the pid. Relative paths are tried in the working directory,
    /// then in $TMPDIR or /tmp.
    pub file_pattern: String,
    pub file_size: u64,
    pub sample_bytes: u64,
    pub seed: Option<u64>,
    pub rss_ms: u64,
    /// `LEAKTRACE_START=off` starts dormant: hooks pass through until `leak-analyze ctl --resume`.
    pub start_paused: bool,
    /// `LEAKTRACE_UNWINDER`: how stacks are captured.
    pub unwinder: Unwinder,
    /// `LEAKTRACE_TREE_BUDGET`: the disk all traces of the process tree may take together
    /// (see [`crate::budget`]); None for the default, [`DEFAULT_TREE_FILES`] file sizes (unset,
    /// empty or 0). A size like `LEAKTRACE_FILE_SIZE`, at least one file size. Only the process
    /// that creates the tree's ledger (the root) applies it: its descendants, forked or exec'd,
    /// use the ledger's budget whatever their own environment says.
    pub tree_budget: Option<u64>,
    /// `LEAKTRACE_SCAN_RATE`: how fast `ctl --scan` reads memory, bytes a second (0: no cap).
    pub scan_rate_bytes_per_s: u64,
}

/// The default tree budget, in file sizes: the root's trace and a few children's.
pub const DEFAULT_TREE_FILES: u64 = 4;

/// `LEAKTRACE_UNWINDER` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwinder {
    /// Compare both on the first samples; use frame pointers if they give the same stacks.
    Auto,
    FramePointers,
    Dwarf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file_pattern: DEFAULT_FILE_PATTERN.into(),
            file_size: DEFAULT_FILE_SIZE,
            sample_bytes: DEFAULT_SAMPLE_BYTES,
            seed: None,
            rss_ms: DEFAULT_RSS_MS,
            start_paused: false,
            unwinder: Unwinder::Auto,
            tree_budget: None,
            scan_rate_bytes_per_s: crate::scan::DEFAULT_RATE_BYTES_PER_S,
        }
    }
}

/// Parse "64M", "1g", "4096", "512K" into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

impl Config {
    /// Read the settings from a lookup function (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let mut c = Config::default();
        if let Some(v) = get("LEAKTRACE_FILE") {
            if v.is_empty() || v.contains('\0') {
                return Err("LEAKTRACE_FILE is empty".into());
            }
            c.file_pattern = v;
        }
        if let Some(v) = get("LEAKTRACE_FILE_SIZE") {
            c.file_size = parse_size(&v)
                .filter(|n| (layout::MIN_FILE_SIZE..=layout::MAX_FILE_SIZE).contains(n))
                .ok_or_else(|| format!("LEAKTRACE_FILE_SIZE={v:?} is not a size between 1M and 1024G"))?;
        }
        if let Some(v) = get("LEAKTRACE_SAMPLE_BYTES") {
            c.sample_bytes = parse_size(&v)
                .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                .ok_or_else(|| format!("LEAKTRACE_SAMPLE_BYTES={v:?} is not a size between 1 and 4G-1"))?;
        }
        if let Some(v) = get("LEAKTRACE_SEED") {
            c.seed = Some(v.trim().parse().map_err(|_| format!("LEAKTRACE_SEED={v:?} is not a number"))?);
        }
        if let Some(v) = get("LEAKTRACE_RSS_MS") {
            c.rss_ms =
                v.trim().parse().ok().filter(|n| (10..=3_600_000).contains(n)).ok_or_else(|| {
                    format!("LEAKTRACE_RSS_MS={v:?} is not a number of milliseconds from 10 to 3600000")
                })?;
        }
        if let Some(v) = get("LEAKTRACE_START") {
            c.start_paused = match v.trim() {
                "on" | "1" | "" => false,
                "off" | "0" => true,
                _ => return Err(format!("LEAKTRACE_START={v:?} is neither on nor off")),
            };
        }
        if let Some(v) = get("LEAKTRACE_UNWINDER") {
            c.unwinder = match v.trim() {
                "auto" | "" => Unwinder::Auto,
                "fp" | "frame-pointers" => Unwinder::FramePointers,
                "dwarf" => Unwinder::Dwarf,
                _ => return Err(format!("LEAKTRACE_UNWINDER={v:?} is not auto, fp or dwarf")),
            };
        }
        if let Some(v) = get("LEAKTRACE_SCAN_RATE") {
            c.scan_rate_bytes_per_s = parse_size(&v)
                .ok_or_else(|| format!("LEAKTRACE_SCAN_RATE={v:?} is not a size a second (e.g. 256M)"))?;
        }
        if let Some(v) = get("LEAKTRACE_TREE_BUDGET") {
            // Empty or 0: the default. Otherwise at least one file: a smaller budget could never
            // hold a whole trace, so nothing would ever be traced.
            c.tree_budget = match parse_size(&v) {
                _ if v.trim().is_empty() => None,
                Some(0) => None,
                Some(n) if n >= c.file_size => Some(n),
                Some(n) => {
                    return Err(format!(
                        "LEAKTRACE_TREE_BUDGET={v:?} ({n} bytes) is less than one trace file \
                         (LEAKTRACE_FILE_SIZE, {} bytes): nothing could ever be traced",
                        c.file_size
                    ))
                }
                None => return Err(format!("LEAKTRACE_TREE_BUDGET={v:?} is not a size (like 256M or 4G)")),
            };
        }
        Ok(c)
    }

    /// The process tree's disk budget in bytes: `LEAKTRACE_TREE_BUDGET`, or 4 file sizes.
    pub fn tree_budget_bytes(&self) -> u64 {
        self.tree_budget.unwrap_or(self.file_size.saturating_mul(DEFAULT_TREE_FILES))
    }

    /// The file path for process `pid`: every `%p` replaced. A pattern without `%p` is used as
    /// is by the first process; a forked child appends `.<pid>` so it never reuses a file.
    pub fn path_for(&self, pid: u32, is_child: bool) -> String {
        let p = self.file_pattern.replace("%p", &pid.to_string());
        if is_child && !self.file_pattern.contains("%p") {
            format!("{p}.{pid}")
        } else {
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_and_suffixes() {
        assert_eq!(cfg(&[]).unwrap(), Config::default());
        let c = cfg(&[("LEAKTRACE_FILE_SIZE", "8M"), ("LEAKTRACE_SAMPLE_BYTES", "4k"), ("LEAKTRACE_START", "off")])
            .unwrap();
        assert_eq!((c.file_size, c.sample_bytes, c.start_paused), (8 << 20, 4096, true));
        assert_eq!(c.tree_budget_bytes(), 32 << 20, "four file sizes by default");
        assert_eq!(cfg(&[("LEAKTRACE_TREE_BUDGET", "1G")]).unwrap().tree_budget_bytes(), 1 << 30);
        assert_eq!(cfg(&[]).unwrap().tree_budget_bytes(), 256 << 20, "256 MiB at the defaults");
        for unset in ["0", "", " 0 "] {
            assert_eq!(cfg(&[("LEAKTRACE_TREE_BUDGET", unset)]).unwrap().tree_budget, None, "{unset:?}");
        }
        // At least one file: exactly one is allowed, and the file size is read whatever the order.
        let c = cfg(&[("LEAKTRACE_TREE_BUDGET", "3M"), ("LEAKTRACE_FILE_SIZE", "3M")]).unwrap();
        assert_eq!(c.tree_budget_bytes(), 3 << 20);
        let e = cfg(&[("LEAKTRACE_TREE_BUDGET", "2M"), ("LEAKTRACE_FILE_SIZE", "3M")]).unwrap_err();
        assert!(e.contains("LEAKTRACE_TREE_BUDGET") && e.contains("LEAKTRACE_FILE_SIZE"), "{e}");
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    #[test]
    fn garbage_is_refused_with_the_variable_named() {
        for (k, v) in [
            ("LEAKTRACE_FILE_SIZE", "12"),
            ("LEAKTRACE_FILE_SIZE", "lots"),
            ("LEAKTRACE_SAMPLE_BYTES", "0"),
            ("LEAKTRACE_SAMPLE_BYTES", "8G"),
            ("LEAKTRACE_SEED", "abc"),
            ("LEAKTRACE_RSS_MS", "1"),
            ("LEAKTRACE_START", "maybe"),
            ("LEAKTRACE_FILE", ""),
            ("LEAKTRACE_UNWINDER", "libunwind"),
            ("LEAKTRACE_TREE_BUDGET", "10K"),
            ("LEAKTRACE_TREE_BUDGET", "63M"),
            ("LEAKTRACE_TREE_BUDGET", "lots"),
            ("LEAKTRACE_TREE_BUDGET", "-1"),
        ] {
            let e = cfg(&[(k, v)]).unwrap_err();
            assert!(e.contains(k), "{e}");
        }
    }

    #[test]
    fn pid_in_path() {
        let c = cfg(&[("LEAKTRACE_FILE", "/tmp/t.%p.lt")]).unwrap();
        assert_eq!(c.path_for(12, false), "/tmp/t.12.lt");
        assert_eq!(c.path_for(13, true), "/tmp/t.13.lt");
        let c = cfg(&[("LEAKTRACE_FILE", "/tmp/t.lt")]).unwrap();
        assert_eq!(c.path_for(13, true), "/tmp/t.lt.13");
    }
}
