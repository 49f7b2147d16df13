//! `leak-analyze ctl`: steer running traced processes through their trace files.
//!
//! A request is written into the file's header: the request fields, then `control_seq` bumped,
//! then a new epoch added to the `gate` word with an atomic add through a shared mapping (the
//! process stores to the same word). Every thread of the process finds the word changed at its
//! next allocation and acts on the request there; no thread of leaktrace's watches the file.
//! The process acknowledges in `control_ack_seq` and says what came of it in `control_result`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use leaktrace_format::layout::{self, hdr, Control, ControlResult};

/// What to ask.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub control: Control,
    pub mean_bytes: u64,
}

impl Request {
    pub fn from_flags(pause: bool, resume: bool, sample_bytes: Option<u64>, scan: bool) -> Result<Request> {
        Ok(match (pause, resume, sample_bytes) {
            _ if scan => Request { control: Control::Scan, mean_bytes: 0 },
            (true, _, _) => Request { control: Control::Pause, mean_bytes: 0 },
            (_, true, _) => Request { control: Control::Resume, mean_bytes: 0 },
            (_, _, Some(n)) if (1..=u64::from(u32::MAX)).contains(&n) => {
                Request { control: Control::SetMeanBytes, mean_bytes: n }
            }
            (_, _, Some(n)) => bail!("--sample-bytes {n} is out of range (1 to 4294967295)"),
            _ => bail!("say what to change: --pause, --resume, --sample-bytes N or --scan"),
        })
    }
}

/// How one process answered.
enum Outcome {
    Applied,
    Refused(&'static str),
    /// Acknowledged with a result this leak-analyze does not know (a newer writer).
    Unknown(u32),
    /// Not acknowledged within the wait.
    Pending,
    /// The process ran its exit handlers: nothing will apply the request.
    Ended,
    /// A format 1.0 writer: it applies requests but never acknowledges them.
    Unacknowledged,
    /// The request could not be written (a trace in a named directory that cannot be opened
    /// for writing, or a file that changed under us).
    NotSent(String),
}

/// One trace file a request goes to.
struct Target {
    path: PathBuf,
    pid: u32,
    file: Option<std::fs::File>,
    /// The control_seq our request carries, once sent.
    seq: Option<u32>,
    /// Already known without waiting.
    outcome: Option<Outcome>,
}

/// Send `request` to every trace named (a directory stands for the trace files in it), wait up
/// to `wait` for the processes to answer, and say per file what came of it. Every target is
/// checked before anything is sent: a named file that is not a trace is an error and nothing is
/// sent. Returns the lines and the exit status: 0 when nothing was refused (pending counts as
/// success), 1 when a process refused, 2 when a request could not be written to a trace.
pub fn ctl(targets: &[PathBuf], request: Request, wait: Duration) -> Result<(String, u8)> {
    let mut all = Vec::new();
    for t in expand(targets)? {
        // The same file named twice (or by its directory too) gets one request.
        if !all.iter().any(|a: &Target| same_file(&a.path, &t.path)) {
            all.push(t);
        }
    }
    for t in &mut all {
        if t.outcome.is_none() {
            if let Err(e) = send(t, request) {
                t.outcome = Some(Outcome::NotSent(format!("{e:#}")));
            }
        }
    }
    // A --wait beyond a day is a day (an Instant cannot hold u64::MAX milliseconds ahead).
    let deadline = Instant::now() + wait.min(Duration::from_secs(86_400));
    loop {
        for t in all.iter_mut().filter(|t| t.outcome.is_none()) {
            t.outcome = answer(t);
        }
        if all.iter().all(|t| t.outcome.is_some()) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    let mut status = 0;
    for t in &all {
        let outcome = match &t.outcome {
            Some(o) => o,
            None if ended(t) => &Outcome::Ended,
            None => &Outcome::Pending,
        };
        let what = match outcome {
            Outcome::Applied if matches!(request.control, Control::Scan) => scan_summary(&t.path),
            Outcome::Applied => "applied".to_string(),
            Outcome::Refused(why) => {
                status = status.max(1);
                format!("REFUSED: {why}")
            }
            Outcome::Unknown(code) => format!("answered with result {code}, which this leak-analyze does not know"),
            Outcome::Pending if matches!(request.control, Control::Scan) => {
                "requested; no results within the wait (a big heap takes seconds; a process that does not allocate starts at its next allocation): look again with report".to_string()
            }
            Outcome::Pending => {
                "requested; the process applies it at its next allocation (it has not allocated since)".to_string()
            }
            Outcome::Ended => "not applied: the process has ended".to_string(),
            Outcome::Unacknowledged => {
                "requested (a format 1.0 tracer applies it within a second and does not acknowledge)".to_string()
            }
            Outcome::NotSent(why) => {
                status = 2;
                format!("NOT SENT: {why}")
            }
        };
        out.push_str(&format!("{} (pid {}): {what}\n", t.path.display(), t.pid));
    }
    Ok((out, status))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

/// Open a trace file for reading and writing (opening for writing is the permission check:
/// only who can write the trace can steer it) and check its header. Never blocks on a FIFO or
/// a device: those are refused as not regular files.
fn open_trace(path: &Path) -> Result<(std::fs::File, leaktrace_format::Header)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    if !file.metadata().with_context(|| format!("cannot read {}", path.display()))?.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut head = vec![0u8; layout::HEADER_SIZE];
    let got = leaktrace_format::TraceSource::read_at(&file, 0, &mut head);
    let header = leaktrace_format::Header::parse(&head[..got]).with_context(|| format!("{}", path.display()))?;
    Ok((file, header))
}

/// The targets named: files as they are (each must be a trace), directories by the trace files
/// in them (anything else in a directory, such as a tree's `.tree` ledger, is passed over).
fn expand(targets: &[PathBuf]) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for t in targets {
        let md = std::fs::metadata(t).with_context(|| format!("cannot open {}", t.display()))?;
        if !md.is_dir() {
            let (file, header) = open_trace(t)?;
            out.push(target(t.clone(), file, &header));
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(t)
            .with_context(|| format!("cannot list {}", t.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        let before = out.len();
        for p in found {
            let Some(header) = read_header(&p) else { continue };
            match open_trace(&p) {
                Ok((file, header)) => out.push(target(p, file, &header)),
                Err(e) => out.push(Target {
                    path: p,
                    pid: header.pid,
                    file: None,
                    seq: None,
                    outcome: Some(Outcome::NotSent(format!("{:#}", e.root_cause()))),
                }),
            }
        }
        if out.len() == before {
            bail!("{} holds no trace file", t.display());
        }
    }
    Ok(out)
}

fn target(path: PathBuf, file: std::fs::File, header: &leaktrace_format::Header) -> Target {
    let outcome = if header.ended_cleanly() { Some(Outcome::Ended) } else { None };
    Target { path, pid: header.pid, file: Some(file), seq: None, outcome }
}

/// The header of `p` if it is a trace that can be read; `None` for anything else.
fn read_header(p: &Path) -> Option<leaktrace_format::Header> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = vec![0u8; layout::HEADER_SIZE];
    let got = leaktrace_format::TraceSource::read_at(&file, 0, &mut head);
    leaktrace_format::Header::parse(&head[..got]).ok()
}

/// Write the request into the trace's header: the request fields, then control_seq bumped, then
/// a new epoch added to the gate word, which every allocation hook of the process reads.
fn send(t: &mut Target, request: Request) -> Result<()> {
    let Some(file) = &t.file else { return Ok(()) };
    let path = &t.path;
    let mut head = vec![0u8; layout::HEADER_SIZE];
    file.read_exact_at(&mut head, 0).with_context(|| format!("{}: too short for a trace header", path.display()))?;
    let header = leaktrace_format::Header::parse(&head).with_context(|| format!("{}", path.display()))?;
    file.write_all_at(&request.mean_bytes.to_le_bytes(), hdr::REQUESTED_MEAN_BYTES as u64)?;
    file.write_all_at(&(request.control as u32).to_le_bytes(), hdr::CONTROL as u64)?;
    let seq = u32::from_le_bytes(head[hdr::CONTROL_SEQ..hdr::CONTROL_SEQ + 4].try_into()?).wrapping_add(1);
    file.write_all_at(&seq.to_le_bytes(), hdr::CONTROL_SEQ as u64)?;
    t.seq = Some(seq);
    if header.version_minor == 0 {
        // A 1.0 writer polls control_seq from its background thread and has no gate word.
        t.outcome = Some(Outcome::Unacknowledged);
        return Ok(());
    }
    // SAFETY: a shared mapping of the header page of a file just checked to be a trace; the
    // process maps the same page, and both sides touch the gate word only atomically.
    let page = unsafe { memmap2::MmapOptions::new().len(layout::HEADER_SIZE).map_mut(file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    // SAFETY: the gate word is 8-byte aligned inside the page-aligned mapping, which lives
    // until the end of this function.
    let gate = unsafe { AtomicU64::from_ptr(page.as_ptr().add(hdr::GATE) as *mut u64) };
    gate.fetch_add(layout::GATE_EPOCH, Ordering::SeqCst);
    Ok(())
}

fn header_u32(file: &std::fs::File, off: usize) -> Result<u32> {
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, off as u64)?;
    Ok(u32::from_le_bytes(b))
}

fn ended(t: &Target) -> bool {
    t.file.as_ref().is_some_and(|f| header_u32(f, hdr::END_REASON).is_ok_and(|r| r == layout::EndReason::Exit as u32))
}

/// The process's answer to our request, if it gave one (a header that cannot be read now is
/// no answer yet).
fn answer(t: &Target) -> Option<Outcome> {
    let (Some(file), Some(seq)) = (&t.file, t.seq) else { return None };
    let acked = header_u32(file, hdr::CONTROL_ACK_SEQ).ok()?;
    // A later request from someone else acknowledges ours too (the process acts on the last).
    if acked.wrapping_sub(seq) >= u32::MAX / 2 {
        return None;
    }
    let code = header_u32(file, hdr::CONTROL_RESULT).ok()?;
    Some(match ControlResult::from_u32(code) {
        Some(ControlResult::Applied | ControlResult::None) => Outcome::Applied,
        Some(ControlResult::RefusedDiskFull) => Outcome::Refused("the disk cannot hold the trace file's full size"),
        Some(ControlResult::RefusedBudget) => {
            Outcome::Refused("the process tree's disk budget is spent (LEAKTRACE_TREE_BUDGET)")
        }
        Some(ControlResult::RefusedStopped) => Outcome::Refused("tracing stopped after a failure"),
        Some(ControlResult::ScanFailed) => {
            Outcome::Refused("the scan could not run (one already running, fork refused, or it died)")
        }
        None => Outcome::Unknown(code),
    })
}

/// One line on the scan that just ended in the trace at `path`.
fn scan_summary(path: &Path) -> String {
    let Ok(file) = std::fs::File::open(path) else { return "scanned".to_string() };
    let Ok(trace) = leaktrace_format::Trace::parse_from(&file) else { return "scanned".to_string() };
    let Some(scan) = trace.scans.last() else { return "scanned".to_string() };
    let records = trace.retention.iter().filter(|r| r.scan_t_ns == scan.t_ns);
    let (mut unreferenced, mut held) = (0u64, 0u64);
    for r in records {
        unreferenced += u64::from(r.unreferenced);
        held += u64::from(r.objects - r.unreferenced.min(r.objects));
    }
    let outcome = match leaktrace_format::ScanOutcome::Complete as u32 == scan.outcome {
        true => "",
        false => " (stopped early: no findings)",
    };
    format!(
        "scanned {:.1} MiB in {:.2} s{outcome}: {} sampled objects, {unreferenced} referenced by nothing, {held} held; see report",
        scan.bytes_scanned as f64 / (1024.0 * 1024.0),
        scan.duration_ns as f64 / 1e9,
        scan.objects
    )
}
