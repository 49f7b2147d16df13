//! Suppressions: call sites a report leaves out of its list (never out of its totals).
//!
//! Most sites of a real program are one-time runtime allocations that are never freed by
//! design: the dynamic loader's link maps and TLS blocks, stdio's buffers, libstdc++'s emergency
//! exception pool, locale data. A built-in list hides those (`--no-default-suppressions` shows
//! them); `--suppressions FILE` adds the user's own, in the forms valgrind, LeakSanitizer and
//! heaptrack users know:
//!
//! ```text
//! # a comment
//! fun:cache_*          a frame's function matches (glob: * any run, ? one character)
//! obj:libfoo.so*       a frame's module (file name) matches
//! src:*/vendor/*       a frame's source file matches
//! leak:legacy_init     LeakSanitizer's form: a frame's function, module or file contains it
//!                      (* wildcards; ^ and $ anchor it at the start or end)
//! ```
//!
//! A user rule matches a site when it matches any of its frames. The built-in rules match only
//! the innermost frame (the code that asked for memory): a leak in a library constructor that
//! the loader happened to call must not be hidden because the loader is further out.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::report::FrameOut;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Function,
    Module,
    File,
    /// LeakSanitizer's `leak:`: any of the three, as a substring.
    Any,
}

#[derive(Clone, Debug)]
struct Rule {
    field: Field,
    pattern: String,
    /// Only the innermost frame is looked at (the built-in rules).
    innermost_only: bool,
}

/// A set of suppression rules.
#[derive(Clone, Debug, Default)]
pub struct Suppressions {
    rules: Vec<Rule>,
}

/// The built-in list: (field, pattern), matched against the innermost frame.
const BUILTIN: &[(Field, &str)] = &[
    // The dynamic loader: link maps, search paths, TLS blocks and DTVs of loaded objects.
    (Field::Module, "ld-linux*.so*"),
    (Field::Module, "ld-*.so"),
    // stdio's buffers, allocated on a stream's first use and kept while it is open.
    (Field::Function, "*_IO_file_doallocate"),
    // libstdc++'s emergency pool for exceptions thrown when memory is short.
    (Field::Function, "(anonymous namespace)::pool::pool*"),
    // Locale data, loaded once by setlocale and kept.
    (Field::Function, "_nl_*"),
    (Field::Function, "*setlocale*"),
    (Field::Function, "new_composite_name"),
    // atexit / on_exit registrations, kept until exit runs them.
    (Field::Function, "__new_exitfn"),
    // Time zone data, read once.
    (Field::Function, "__tzfile_read"),
    // iconv's conversion steps, cached.
    (Field::Function, "__gconv_*"),
];

impl Suppressions {
    /// The built-in rules for runtime allocations that live as long as the process.
    pub fn builtin() -> Suppressions {
        let rules = BUILTIN
            .iter()
            .map(|&(field, pattern)| Rule { field, pattern: pattern.to_string(), innermost_only: true })
            .collect();
        Suppressions { rules }
    }

    /// The rules of a suppression file; an unreadable file or a line that is not a rule is an
    /// error naming the line.
    pub fn load(path: &Path) -> Result<Suppressions> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Suppressions::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Suppressions> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((kind, pattern)) = line.split_once(':') else {
                bail!("line {}: {line:?} is not KIND:PATTERN (fun, obj, src or leak)", n + 1);
            };
            let field = match kind.trim() {
                "fun" => Field::Function,
                "obj" => Field::Module,
                "src" => Field::File,
                "leak" => Field::Any,
                other => bail!("line {}: unknown kind {other:?} (fun, obj, src or leak)", n + 1),
            };
            let pattern = pattern.trim();
            if pattern.is_empty() {
                bail!("line {}: empty pattern", n + 1);
            }
            rules.push(Rule { field, pattern: pattern.to_string(), innermost_only: false });
        }
        Ok(Suppressions { rules })
    }

    pub fn extend(&mut self, other: Suppressions) {
        self.rules.extend(other.rules);
    }

    /// Does a rule match this site's frames (innermost first)?
    pub fn matches(&self, frames: &[FrameOut]) -> bool {
        self.rules.iter().any(|r| {
            let frames = if r.innermost_only { &frames[..frames.len().min(1)] } else { frames };
            frames.iter().any(|f| r.matches(f))
        })
    }
}

impl Rule {
    fn matches(&self, f: &FrameOut) -> bool {
        let module = f.module.as_deref().map(|m| m.rsplit('/').next().unwrap_or(m));
        let test = |value: Option<&str>| value.is_some_and(|v| glob(&self.pattern, v));
        match self.field {
            Field::Function => test(f.function.as_deref()),
            Field::Module => test(module),
            Field::File => test(f.file.as_deref()),
            Field::Any => {
                let p = lsan_pattern(&self.pattern);
                [f.function.as_deref(), module, f.file.as_deref()].into_iter().flatten().any(|v| glob(&p, v))
            }
        }
    }
}

/// LeakSanitizer matches a substring unless `^` or `$` anchors the pattern.
fn lsan_pattern(p: &str) -> String {
    let (start, p) = match p.strip_prefix('^') {
        Some(rest) => ("", rest),
        None => ("*", p),
    };
    let (p, end) = match p.strip_suffix('$') {
        Some(rest) => (rest, ""),
        None => (p, "*"),
    };
    format!("{start}{p}{end}")
}

/// Whole-string glob match: `*` any run of characters, `?` any one.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: Option<&str>, module: &str, file: Option<&str>) -> FrameOut {
        FrameOut {
            address: "0x1".into(),
            module: Some(module.into()),
            function: function.map(String::from),
            file: file.map(String::from),
            line: None,
            module_offset: None,
        }
    }

    #[test]
    fn globs() {
        assert!(glob("cache_*", "cache_add"));
        assert!(!glob("cache_*", "my_cache_add"));
        assert!(glob("*_IO_file_doallocate", "__GI__IO_file_doallocate"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
        assert!(glob("*", "") && glob("**x", "x") && !glob("x", ""));
        assert_eq!(lsan_pattern("^init$"), "init");
        assert_eq!(lsan_pattern("init"), "*init*");
    }

    #[test]
    fn builtin_rules_look_at_the_innermost_frame_only() {
        let s = Suppressions::builtin();
        assert!(s.matches(&[frame(Some("__GI__IO_file_doallocate"), "libc.so.6", None)]));
        assert!(s.matches(&[frame(Some("_dl_new_object"), "ld-linux-x86-64.so.2", None)]));
        // A program's leak in a constructor the loader called is not hidden.
        let ctor =
            [frame(Some("plugin_init"), "libplugin.so", None), frame(Some("call_init"), "ld-linux-x86-64.so.2", None)];
        assert!(!s.matches(&ctor));
        assert!(!s.matches(&[]));
    }

    #[test]
    fn file_rules_match_any_frame_and_bad_lines_are_named() {
        let s = Suppressions::parse("# mine\nfun:legacy_*\n\nobj:libvendor.so*\nleak:third_party/\n").unwrap();
        let f = [frame(Some("helper"), "app", None), frame(Some("legacy_init"), "app", None)];
        assert!(s.matches(&f));
        assert!(s.matches(&[frame(Some("x"), "/usr/lib/libvendor.so.3", None)]));
        assert!(s.matches(&[frame(Some("x"), "app", Some("/src/third_party/zlib.c"))]));
        assert!(!s.matches(&[frame(Some("x"), "app", Some("/src/mine.c"))]));
        let e = Suppressions::parse("fun:ok\nbogus line\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(Suppressions::parse("what:x").is_err());
        assert!(Suppressions::parse("fun:").is_err());
    }
}
