//! `leak-analyze attach PID` and `detach PID`: start and stop tracing a process that is already
//! running, without a restart, a debugger or a helper on the host.
//!
//! Everything that can be checked from outside is checked before the process is touched (it
//! exists, we may trace it, it runs glibc dynamically linked, nobody traces it already). Then
//! one thread is stopped at a safe point (see `inject`), made to `dlopen` libleaktrace.so and
//! call `leaktrace_attach`, which starts the trace and redirects the malloc family through the
//! GOTs; the thread is put back as it was. `detach` calls `leaktrace_detach` the same way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use object::{Object, ObjectSymbol};

use crate::inject::{self, Mapping, Unsafe};
use crate::launch;

/// `leaktrace_status` values (preload/src/shim.rs).
const STATUS_PRELOADED: u32 = 1;
const STATUS_ATTACHED: u32 = 2;

const RTLD_NOW: u64 = 2;
/// How long the attach waits for a thread to be at a safe point.
const PATIENCE: Duration = Duration::from_secs(3);
/// How long one call in the process may take (dlopen reads and relocates a 7 MB library).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
const OUT_LEN: usize = 4096;

/// What we learned about the process without touching it.
struct Target {
    pid: i32,
    maps: Vec<Mapping>,
    exe: String,
    /// Another mount namespace (a container): its files are not at their paths here.
    foreign_mounts: bool,
    /// /proc/PID/status as read once at the start.
    status: String,
}

impl Target {
    fn inspect(pid: i32) -> Result<Target> {
        if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process {pid}");
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| anyhow!("cannot read /proc/{pid}/status: {e}"))?;
        if status.lines().any(|l| l.starts_with("State:") && l.contains("zombie")) {
            bail!("process {pid} has exited (a zombie)");
        }
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("");
        if pid == std::process::id() as i32 {
            bail!("leak-analyze cannot attach to itself");
        }
        check_permission(pid, field("Uid:"))?;
        let tracer: i32 = field("TracerPid:").parse().unwrap_or(0);
        if tracer != 0 {
            let name = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
            bail!(
                "process {pid} is already traced by process {tracer} ({}); detach that debugger or tracer first",
                name.trim()
            );
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
        let maps =
            inject::read_maps(pid).map_err(|e| anyhow!("not permitted to read process {pid}'s memory map ({e:#})"))?;
        if maps.is_empty() {
            bail!("process {pid} has no memory map (a kernel thread?)");
        }
        let file_name = |m: &Mapping| m.path.rsplit('/').next().unwrap_or("").to_string();
        if !maps.iter().any(|m| is_glibc(&file_name(m))) {
            if maps.iter().any(|m| file_name(m).contains("musl")) {
                bail!("process {pid} runs on musl libc; leaktrace needs glibc");
            }
            if !maps.iter().any(|m| file_name(m).starts_with("ld-")) {
                bail!("process {pid} ({exe}) is statically linked: it has no loader to load leaktrace into; start it with LD_PRELOAD on a dynamically linked build");
            }
            bail!("process {pid} ({exe}) does not use glibc's libc.so.6; leaktrace needs glibc");
        }
        let same_mounts =
            match (std::fs::metadata(format!("/proc/{pid}/ns/mnt")), std::fs::metadata("/proc/self/ns/mnt")) {
                (Ok(a), Ok(b)) => a.ino() == b.ino(),
                _ => true,
            };
        if status.lines().any(|l| l.starts_with("Seccomp:") && l.trim().ends_with('2')) {
            eprintln!("note: process {pid} runs under a seccomp filter; if it forbids openat, mmap or fallocate, the attach fails (and a filter that kills would end the process)");
        }
        Ok(Target { pid, maps, exe, foreign_mounts: !same_mounts, status })
    }

    /// The numbers of a `Uid:`, `Gid:` or `Groups:` line of its status.
    fn ids(&self, field: &str) -> Vec<u32> {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Its effective user.
    fn euid(&self) -> u32 {
        self.ids("Uid:").get(1).copied().unwrap_or(0)
    }

    /// A path of the process's, opened from here: through /proc/PID/root, which resolves in the
    /// process's own mount namespace and root (a container's).
    fn in_its_fs(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(inside.trim_start_matches('/'))
    }

    /// A path of the process's as the user should use it from here: the same path in our mount
    /// namespace, else through /proc/PID/root (valid while the process lives).
    fn shown(&self, inside: &str) -> PathBuf {
        if self.foreign_mounts {
            self.in_its_fs(inside)
        } else {
            PathBuf::from(inside)
        }
    }

    /// The mappings of the object at `path` (as the process's maps name it).
    fn object_base(&self, matches: impl Fn(&Mapping) -> bool) -> Option<&Mapping> {
        self.maps.iter().find(|m| m.offset == 0 && matches(m))
    }

    /// The bytes of a mapped object's file: through map_files (works for a file replaced on
    /// disk since, as after a package upgrade), else through the process's root.
    fn object_file(&self, m: &Mapping) -> Result<Vec<u8>> {
        let by_map = format!("/proc/{}/map_files/{:x}-{:x}", self.pid, m.start, m.end);
        std::fs::read(&by_map)
            .or_else(|_| std::fs::read(self.in_its_fs(m.path.trim_end_matches(" (deleted)"))))
            .with_context(|| format!("cannot read {} of process {}", m.path, self.pid))
    }

    /// The run-time address of the first of `names` the object defines.
    fn symbol(&self, m: &Mapping, names: &[&str]) -> Result<u64> {
        let [found] = self.symbols(m, [names])?;
        found.ok_or_else(|| anyhow!("{} defines none of {}", m.path, names.join(", ")))
    }

    /// For each list of alternative names, the run-time address of the first the object
    /// defines: one read and parse of its file for all of them.
    fn symbols<const N: usize>(&self, m: &Mapping, wanted: [&[&str]; N]) -> Result<[Option<u64>; N]> {
        let data = self.object_file(m)?;
        let file = object::File::parse(&*data).with_context(|| format!("cannot parse {}", m.path))?;
        let first_load = file.segments().map(|s| object::ObjectSegment::address(&s)).min().unwrap_or(0);
        let address = |name: &str| {
            file.dynamic_symbols()
                .find(|s| s.is_definition() && s.name().is_ok_and(|n| n == name))
                .map(|s| m.start + s.address() - first_load)
        };
        Ok(wanted.map(|names| names.iter().find_map(|name| address(name))))
    }

    fn libc(&self) -> Result<&Mapping> {
        self.object_base(|m| is_glibc(m.path.rsplit('/').next().unwrap_or("")))
            .ok_or_else(|| anyhow!("cannot find libc in process {}", self.pid))
    }

    /// The leaktrace library mapped in the process, if any.
    fn leaktrace(&self) -> Option<&Mapping> {
        self.object_base(|m| m.path.rsplit('/').next().is_some_and(|f| f.starts_with("libleaktrace")))
    }

    /// `leaktrace_status` of the library mapped in the process (0 if none is).
    fn leaktrace_status(&self) -> Result<u32> {
        let Some(m) = self.leaktrace() else { return Ok(0) };
        let addr = self.symbol(m, &["leaktrace_status"])?;
        let mem = std::fs::File::open(format!("/proc/{}/mem", self.pid))
            .map_err(|e| anyhow!("not permitted to read process {}'s memory ({e})", self.pid))?;
        let mut word = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut word, addr)
            .with_context(|| format!("reading leaktrace's state in process {}", self.pid))?;
        Ok(u32::from_le_bytes(word))
    }
}

fn is_glibc(file_name: &str) -> bool {
    file_name == "libc.so.6" || (file_name.starts_with("libc-2.") && file_name.ends_with(".so"))
}

/// Say which rule forbids tracing `pid`, before trying: another user, Yama's ptrace_scope, a
/// missing CAP_SYS_PTRACE.
fn check_permission(pid: i32, uid_line: &str) -> Result<()> {
    let uids: Vec<u32> = uid_line.split_whitespace().filter_map(|u| u.parse().ok()).collect();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let cap_sys_ptrace = own_capability(19);
    let scope =
        std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok().and_then(|s| s.trim().parse::<u32>().ok());
    if scope == Some(3) {
        bail!("not permitted: kernel.yama.ptrace_scope is 3, which forbids attaching to any process until reboot; start the service with LD_PRELOAD (leak-analyze run) instead");
    }
    if scope == Some(2) && !cap_sys_ptrace {
        bail!("not permitted: kernel.yama.ptrace_scope is 2 (only CAP_SYS_PTRACE may attach); run as root");
    }
    if scope == Some(1) && !cap_sys_ptrace {
        bail!("not permitted: kernel.yama.ptrace_scope is 1 (only a parent may trace its children); run as root, or lower it with `sysctl kernel.yama.ptrace_scope=0`");
    }
    if !cap_sys_ptrace && uids.iter().take(3).any(|&u| u != me) {
        let owner = uids.first().copied().unwrap_or(0);
        if me == 0 {
            bail!("not permitted: process {pid} runs as user {owner} and this root lacks CAP_SYS_PTRACE (in a container: docker run --cap-add SYS_PTRACE, or the pod's securityContext)");
        }
        bail!("not permitted: process {pid} runs as user {owner}, you are user {me}; run leak-analyze as that user or as root");
    }
    Ok(())
}

/// Is capability `bit` in our effective set?
fn own_capability(bit: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

/// The library path the process can open: ours if it sees the same file there and may read it,
/// else a copy in its /tmp.
fn library_for(target: &Target, ours: &Path, target_uid: u32) -> Result<String> {
    let ours_md = std::fs::metadata(ours).with_context(|| format!("cannot read {}", ours.display()))?;
    let ours_str = ours.to_str().ok_or_else(|| anyhow!("{} is not a UTF-8 path", ours.display()))?;
    let seen = std::fs::metadata(target.in_its_fs(ours_str)).ok();
    let same_file = seen.is_some_and(|m| m.dev() == ours_md.dev() && m.ino() == ours_md.ino());
    if same_file && (target_uid == 0 || readable_by_all(ours)) {
        return Ok(ours_str.to_string());
    }
    let inside = format!("/tmp/libleaktrace-{}-{:x}.so", target.pid, ours_md.ino());
    let copy = target.in_its_fs(&inside);
    let bytes = std::fs::read(ours).with_context(|| format!("cannot read {}", ours.display()))?;
    // A copy from an earlier attach may be mapped in the process: reuse it as it is (a second
    // dlopen of it is the same object), and never write into it (a truncated mapped file
    // faults its pages). A changed library goes in by rename: a new inode.
    if std::fs::read(&copy).is_ok_and(|old| old == bytes) {
        return Ok(inside);
    }
    let staging = target.in_its_fs(&format!("{inside}.{}", std::process::id()));
    std::fs::write(&staging, &bytes).with_context(|| format!("cannot copy the library to {}", staging.display()))?;
    std::fs::set_permissions(&staging, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    std::fs::rename(&staging, &copy).with_context(|| format!("cannot copy the library to {}", copy.display()))?;
    Ok(inside)
}

fn readable_by_all(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let file_ok = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0);
    file_ok && path.ancestors().skip(1).all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// The trace is created by the process, with its credentials: refuse a directory it cannot
/// write before touching it.
fn check_writable_by_target(target: &Target, path: &str) -> Result<()> {
    let euid = target.euid();
    if euid == 0 {
        return Ok(());
    }
    let mut gids = target.ids("Groups:");
    gids.extend(target.ids("Gid:").get(1));
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    let Ok(md) = std::fs::metadata(target.in_its_fs(&dir.to_string_lossy())) else {
        bail!("the trace's directory {} does not exist for process {}", dir.display(), target.pid);
    };
    let mode = md.mode();
    let writable = (md.uid() == euid && mode & 0o200 != 0)
        || (gids.contains(&md.gid()) && mode & 0o020 != 0)
        || (md.uid() != euid && !gids.contains(&md.gid()) && mode & 0o002 != 0);
    if !writable {
        bail!(
            "process {} runs as user {euid}, which cannot write to {}: give -o a path in a directory it can write (e.g. /tmp/{})",
            target.pid,
            dir.display(),
            Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
        );
    }
    Ok(())
}

/// `leak-analyze attach`.
pub fn attach(pid: i32, settings: &launch::Settings) -> Result<String> {
    let target = Target::inspect(pid)?;
    match target.leaktrace_status()? {
        STATUS_PRELOADED => {
            bail!("process {pid} is traced by leaktrace already (preloaded); use ctl on its trace file")
        }
        STATUS_ATTACHED => bail!("process {pid} is attached already; `leak-analyze detach {pid}` first"),
        _ => {}
    }
    let library = launch::find_library()?;
    let lib_inside = library_for(&target, &library, target.euid())?;
    let libc = target.libc()?;
    // glibc 2.34 and later export dlopen from libc.so.6; older ones have __libc_dlopen_mode.
    let [dlopen, dlerror] = target.symbols(libc, [&["dlopen", "__libc_dlopen_mode"], &["dlerror"]])?;
    let dlopen = dlopen.ok_or_else(|| anyhow!("{} defines none of dlopen, __libc_dlopen_mode", libc.path))?;
    let mut env = settings.env();
    if let Some((_, path)) = env.iter_mut().find(|(k, _)| *k == "LEAKTRACE_FILE") {
        // A relative path is the caller's: the process's working directory is not.
        if !path.starts_with('/') {
            *path = std::env::current_dir()?.join(&*path).display().to_string();
        }
    }
    if let Some((_, path)) = env.iter().find(|(k, _)| *k == "LEAKTRACE_FILE") {
        check_writable_by_target(&target, path)?;
    }
    let settings_text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    if settings_text.chars().filter(|&c| c == '\n').count() != env.len() {
        bail!("a setting contains a newline");
    }

    let mut stopped = inject::stop_safely(pid, &Unsafe::from_maps(&target.maps), PATIENCE)?;
    let where_ = stopped.in_syscall.map_or("running its own code".to_string(), |s| format!("in {s}"));
    let tid = stopped.tid;
    let mut path_arg = lib_inside.clone().into_bytes();
    path_arg.push(0);
    let (handle, _) = stopped.call(dlopen, &path_arg, |a| vec![a, RTLD_NOW], CALL_TIMEOUT)?;
    if handle == 0 {
        let why = match dlerror {
            Some(f) => {
                let (msg, _) = stopped.call(f, &[], |_| vec![], CALL_TIMEOUT)?;
                stopped.read_c_string(msg, 1024)
            }
            None => String::new(),
        };
        stopped.release()?;
        bail!("process {pid} could not load {lib_inside}: {why}");
    }
    // Where the library landed, and its entry point.
    let loaded = Target { maps: inject::read_maps(pid)?, ..target };
    let entry = loaded
        .leaktrace()
        .ok_or_else(|| anyhow!("the library does not appear in process {pid}'s map after dlopen"))
        .and_then(|m| loaded.symbol(m, &["leaktrace_attach"]));
    let entry = match entry {
        Ok(e) => e,
        Err(e) => {
            stopped.release()?;
            return Err(e);
        }
    };
    let mut data = settings_text.into_bytes();
    data.push(0);
    let out_at = data.len();
    data.resize(out_at + OUT_LEN, 0);
    let (rc, after) = stopped.call(entry, &data, |a| vec![a, a + out_at as u64, OUT_LEN as u64], CALL_TIMEOUT)?;
    let stop = stopped.release()?;
    let message = c_string(&after[out_at..]);
    if rc as i32 != 0 {
        bail!("process {pid} did not start tracing: {message}");
    }
    let mut lines = message.lines();
    let trace = lines.next().unwrap_or_default().to_string();
    let slots = lines.next().unwrap_or_default();
    let shown = loaded.shown(&trace);
    Ok(format!(
        "attached to process {pid} ({}): thread {tid} stopped for {:.1} ms ({where_}); {slots} redirected\n{}\n",
        loaded.exe,
        stop.as_secs_f64() * 1e3,
        shown.display()
    ))
}

/// `leak-analyze detach`.
pub fn detach(pid: i32) -> Result<String> {
    let target = Target::inspect(pid)?;
    match target.leaktrace_status()? {
        STATUS_ATTACHED => {}
        STATUS_PRELOADED => {
            bail!("process {pid} was started with the preload, not attached; pause it with ctl --pause")
        }
        _ => bail!("process {pid} is not attached"),
    }
    let lib = target.leaktrace().ok_or_else(|| anyhow!("no leaktrace library in process {pid}"))?;
    let entry = target.symbol(lib, &["leaktrace_detach"])?;
    let mut stopped = inject::stop_safely(pid, &Unsafe::from_maps(&target.maps), PATIENCE)?;
    let tid = stopped.tid;
    let data = vec![0u8; OUT_LEN];
    let (rc, after) = stopped.call(entry, &data, |a| vec![a, OUT_LEN as u64], CALL_TIMEOUT)?;
    let stop = stopped.release()?;
    let message = c_string(&after);
    if rc as i32 != 0 {
        bail!("process {pid} did not detach: {message}");
    }
    let mut lines = message.lines();
    let trace = lines.next().unwrap_or_default().to_string();
    let restored = lines.next().unwrap_or_default();
    Ok(format!(
        "detached from process {pid}: thread {tid} stopped for {:.1} ms; {restored}\n{}\n",
        stop.as_secs_f64() * 1e3,
        target.shown(&trace).display()
    ))
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
