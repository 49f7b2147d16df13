//! `leak-analyze run -- CMD`: start a program under the preload without typing `LD_PRELOAD` and
//! the settings by hand (what `heaptrack CMD` and `memray run` give their users).
//!
//! The command replaces `leak-analyze` (exec, same pid), so its exit status, its signals and its
//! terminal are its own, and the trace file's name is known before it starts.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Where `libleaktrace.so` is looked for, in order.
pub fn library_candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("LEAKTRACE_LIB") {
        c.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        // Beside the binary (a cargo build), then the packaged layout (bin/ and lib/leaktrace/).
        c.push(dir.join("libleaktrace.so"));
        c.push(dir.join("../lib/leaktrace/libleaktrace.so"));
    }
    c.push(PathBuf::from("/usr/lib/leaktrace/libleaktrace.so"));
    c
}

/// The preload library, or an error naming every place looked at.
pub fn find_library() -> Result<PathBuf> {
    let candidates = library_candidates();
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.canonicalize().unwrap_or_else(|_| p.clone())),
        None => bail!(
            "cannot find libleaktrace.so (looked at {}); set LEAKTRACE_LIB to its path",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Settings given on the command line, as the environment variables the library reads.
#[derive(Default)]
pub struct Settings {
    pub output: Option<String>,
    pub sample_bytes: Option<String>,
    pub file_size: Option<String>,
    pub rss_ms: Option<u64>,
    pub start: Option<String>,
    pub unwinder: Option<String>,
    pub tree_budget: Option<String>,
}

impl Settings {
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        let mut put = |k, val: &Option<String>| {
            if let Some(x) = val {
                v.push((k, x.clone()));
            }
        };
        put("LEAKTRACE_FILE", &self.output);
        put("LEAKTRACE_SAMPLE_BYTES", &self.sample_bytes);
        put("LEAKTRACE_FILE_SIZE", &self.file_size);
        put("LEAKTRACE_RSS_MS", &self.rss_ms.map(|m| m.to_string()));
        put("LEAKTRACE_START", &self.start);
        put("LEAKTRACE_UNWINDER", &self.unwinder);
        put("LEAKTRACE_TREE_BUDGET", &self.tree_budget);
        v
    }
}

/// Exec `command` under the preload; returns only if the exec failed.
pub fn run(command: &[OsString], settings: &Settings) -> Result<()> {
    let Some((program, args)) = command.split_first() else {
        bail!("say what to run: leak-analyze run [OPTIONS] -- CMD [ARGS...]");
    };
    let library = find_library()?;
    // Ahead of whatever the caller preloads already: our malloc must be the one the program gets.
    let preload = match std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty()) {
        Some(old) => {
            let mut p = library.clone().into_os_string();
            p.push(" ");
            p.push(old);
            p
        }
        None => library.clone().into_os_string(),
    };
    let pattern = settings
        .output
        .clone()
        .or_else(|| std::env::var("LEAKTRACE_FILE").ok())
        .unwrap_or_else(|| "leaktrace.%p.lt".into());
    // exec keeps our pid: the program's trace gets this name.
    let path = pattern.replace("%p", &std::process::id().to_string());
    eprintln!("leak-analyze run: tracing {} into {path}", program.to_string_lossy());
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env("LD_PRELOAD", preload);
    for (k, v) in settings.env() {
        cmd.env(k, v);
    }
    let err = cmd.exec();
    bail!("cannot run {}: {err}", program.to_string_lossy())
}
