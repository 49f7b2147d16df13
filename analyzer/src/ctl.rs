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
    pub fn from_flags(pause: bool, resume: bool, sample_bytes: Option<u64>) -> Result<Request> {
        Ok(match (pause, resume, sample_bytes) {
            (true, _, _) => Request { control: Control::Pause, mean_bytes: 0 },
            (_, true, _) => Request { control: Control::Resume, mean_bytes: 0 },
            (_, _, Some(n)) if (1..=u64::from(u32::MAX)).contains(&n) => {
                Request { control: Control::SetMeanBytes, mean_bytes: n }
            }
            (_, _, Some(n)) => bail!("--sample-bytes {n} is out of range (1 to 4294967295)"),
            _ => bail!("say what to change: --pause, --resume or --sample-bytes N"),
        })
    }
}

/// How one process answered.
enum Outcome {
    Applied,
    Refused(&'static str),
    /// Not acknowledged within the wait.
    Pending {
        ended: bool,
    },
}

/// One trace file a request went to.
struct Sent {
    path: PathBuf,
    pid: u32,
    seq: u32,
    file: std::fs::File,
}

/// Send `request` to every trace named (a directory stands for the trace files in it), wait up
/// to `wait` for the processes to answer, and say per file what came of it. The bool is true
/// when a process refused.
pub fn ctl(targets: &[PathBuf], request: Request, wait: Duration) -> Result<(String, bool)> {
    let files = expand(targets)?;
    let mut sent = Vec::new();
    for path in files {
        sent.push(send(&path, request)?);
    }
    let deadline = Instant::now() + wait;
    let mut outcomes: Vec<Option<Outcome>> = sent.iter().map(|_| None).collect();
    loop {
        for (s, o) in sent.iter().zip(outcomes.iter_mut()) {
            if o.is_none() {
                *o = answer(s)?;
            }
        }
        if outcomes.iter().all(Option::is_some) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    let mut refused = false;
    for (s, o) in sent.iter().zip(outcomes) {
        let o = match o {
            Some(o) => o,
            None => Outcome::Pending { ended: header_u32(&s.file, hdr::END_REASON)? == layout::EndReason::Exit as u32 },
        };
        let what = match o {
            Outcome::Applied => "applied".to_string(),
            Outcome::Refused(why) => {
                refused = true;
                format!("REFUSED: {why}")
            }
            Outcome::Pending { ended: true } => "not applied: the process has ended".to_string(),
            Outcome::Pending { ended: false } => {
                "requested; the process applies it at its next allocation (it has not allocated since)".to_string()
            }
        };
        out.push_str(&format!("{} (pid {}): {what}\n", s.path.display(), s.pid));
    }
    Ok((out, refused))
}

/// The trace files named: files as they are, directories by the trace files in them (anything
/// else in a directory, such as a tree's `.tree` ledger, is passed over).
fn expand(targets: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for t in targets {
        if !t.is_dir() {
            files.push(t.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(t)
            .with_context(|| format!("cannot list {}", t.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && looks_like_trace(p))
            .collect();
        if found.is_empty() {
            bail!("{} holds no trace file", t.display());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn looks_like_trace(p: &Path) -> bool {
    let mut head = vec![0u8; layout::HEADER_SIZE];
    std::fs::File::open(p)
        .and_then(|f| f.read_exact_at(&mut head, 0))
        .is_ok_and(|()| leaktrace_format::Header::parse(&head).is_ok())
}

fn send(path: &Path, request: Request) -> Result<Sent> {
    // Opening for writing is the permission check: only who can write the trace can steer it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    let mut head = vec![0u8; layout::HEADER_SIZE];
    file.read_exact_at(&mut head, 0).with_context(|| format!("{}: too short for a trace header", path.display()))?;
    let header = leaktrace_format::Header::parse(&head).with_context(|| format!("{}", path.display()))?;
    file.write_all_at(&request.mean_bytes.to_le_bytes(), hdr::REQUESTED_MEAN_BYTES as u64)?;
    file.write_all_at(&(request.control as u32).to_le_bytes(), hdr::CONTROL as u64)?;
    let seq = u32::from_le_bytes(head[hdr::CONTROL_SEQ..hdr::CONTROL_SEQ + 4].try_into()?).wrapping_add(1);
    file.write_all_at(&seq.to_le_bytes(), hdr::CONTROL_SEQ as u64)?;
    // SAFETY: a shared mapping of the header page of a file just checked to be a trace; the
    // process maps the same page, and both sides touch the gate word only atomically.
    let page = unsafe { memmap2::MmapOptions::new().len(layout::HEADER_SIZE).map_mut(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    // SAFETY: the gate word is 8-byte aligned inside the page-aligned mapping, which lives
    // until the end of this function.
    let gate = unsafe { AtomicU64::from_ptr(page.as_ptr().add(hdr::GATE) as *mut u64) };
    gate.fetch_add(layout::GATE_EPOCH, Ordering::SeqCst);
    Ok(Sent { path: path.to_path_buf(), pid: header.pid, seq, file })
}

fn header_u32(file: &std::fs::File, off: usize) -> Result<u32> {
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, off as u64)?;
    Ok(u32::from_le_bytes(b))
}

/// The process's answer to our request, if it gave one. A writer older than format 1.1 never
/// acknowledges: its request is then "pending", as it always was.
fn answer(s: &Sent) -> Result<Option<Outcome>> {
    let acked = header_u32(&s.file, hdr::CONTROL_ACK_SEQ)?;
    // A later request from someone else acknowledges ours too (the process acts on the last).
    if acked.wrapping_sub(s.seq) >= u32::MAX / 2 {
        return Ok(None);
    }
    Ok(Some(match ControlResult::from_u32(header_u32(&s.file, hdr::CONTROL_RESULT)?) {
        Some(ControlResult::RefusedDiskFull) => Outcome::Refused("the disk cannot hold the trace file's full size"),
        Some(ControlResult::RefusedBudget) => {
            Outcome::Refused("the process tree's disk budget is spent (LEAKTRACE_TREE_BUDGET)")
        }
        Some(ControlResult::RefusedStopped) => Outcome::Refused("tracing stopped after an internal failure"),
        _ => Outcome::Applied,
    }))
}
