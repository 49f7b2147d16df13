//! `leak-analyze ctl` against synthetic trace files, with the traced process played by a
//! thread of the test: it watches the header as the preload's hooks do (acting only once the
//! gate word's epoch moved, then reading the request) and answers in control_ack_seq and
//! control_result. Covers several files and directories, applied / refused / pending / ended,
//! exit statuses, and hostile or foreign targets (nothing sent, exit 2).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use leaktrace_format::layout::{self, hdr, Control, ControlResult};
use leaktrace_format::synth::TraceBuilder;

const ANALYZER: &str = env!("CARGO_BIN_EXE_leak-analyze");
const MIB: u64 = 1 << 20;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ctl-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running, single-threaded-looking traced process's trace (dormant: paused, small).
fn write_trace(path: &Path, pid: u32) {
    let mut b = TraceBuilder::new(MIB);
    b.header.pid = pid;
    b.header.state = layout::TraceState::Paused as u32;
    b.header.current_mean_bytes = 0;
    std::fs::write(path, b.build()).unwrap();
}

fn u32_at(path: &Path, off: usize) -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open(path).unwrap().read_exact_at(&mut b, off as u64).unwrap();
    u32::from_le_bytes(b)
}

fn u64_at(path: &Path, off: usize) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(path).unwrap().read_exact_at(&mut b, off as u64).unwrap();
    u64::from_le_bytes(b)
}

fn put_u32(path: &Path, off: usize, v: u32) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(&v.to_le_bytes(), off as u64).unwrap();
}

/// What the played process saw of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    control: u32,
    requested_mean: u64,
    seq: u32,
    gate: u64,
}

/// The traced process, played by a thread: polls the header every 5 ms; when the gate word
/// moved and control_seq is new, reads the request, then stores `result` and acknowledges
/// `seq + ack_ahead` (a later request than ours, when ack_ahead > 0).
struct FakeProcess {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeProcess {
    fn start(path: &Path, result: u32, ack_ahead: u32) -> FakeProcess {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (p, s, v) = (path.to_path_buf(), stop.clone(), seen.clone());
        // Read before ctl can run: the gate as the process last knew it.
        let mut gate_seen = u64_at(&p, hdr::GATE);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let gate = u64_at(&p, hdr::GATE);
                let seq = u32_at(&p, hdr::CONTROL_SEQ);
                if gate != gate_seen && seq != u32_at(&p, hdr::CONTROL_ACK_SEQ) {
                    gate_seen = gate;
                    v.lock().unwrap().push(Seen {
                        control: u32_at(&p, hdr::CONTROL),
                        requested_mean: u64_at(&p, hdr::REQUESTED_MEAN_BYTES),
                        seq,
                        gate,
                    });
                    put_u32(&p, hdr::CONTROL_RESULT, result);
                    put_u32(&p, hdr::CONTROL_ACK_SEQ, seq.wrapping_add(ack_ahead));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        FakeProcess { stop, seen, thread: Some(thread) }
    }

    fn seen(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.take().map(JoinHandle::join);
        let v = self.seen.lock().unwrap().clone();
        v
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.take().map(JoinHandle::join);
    }
}

struct Ran {
    status: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// `leak-analyze ctl ARGS`, killed (and failed) if it takes more than 15 s.
fn ctl(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Ran {
    let mut cmd = Command::new(ANALYZER);
    cmd.arg("ctl").args(args.iter().map(|a| a.as_ref())).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("{cmd:?} did not finish in 15 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    Ran {
        status: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        took: start.elapsed(),
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {} after {:?}\n--- stdout\n{}--- stderr\n{}", self.status, self.took, self.stdout, self.stderr)
    }
}

fn line_for<'a>(r: &'a Ran, path: &Path) -> &'a str {
    let prefix = format!("{} (pid ", path.display());
    let lines: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 1, "one line for {}\n{r}", path.display());
    lines[0]
}

#[test]
fn a_directory_resumes_every_trace_in_it_and_passes_over_the_rest() {
    let dir = scratch("dir");
    let (a, b) = (dir.join("leaktrace.100.lt"), dir.join("leaktrace.101.lt"));
    write_trace(&a, 100);
    write_trace(&b, 101);
    // Not traces: the tree's ledger, a text file, a short file, a FIFO, and a directory
    // (with a trace in it, which is not reached: directories are not walked down).
    std::fs::write(dir.join("leaktrace.100.tree"), vec![7u8; 4096]).unwrap();
    std::fs::write(dir.join("notes.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("short.lt"), layout::MAGIC).unwrap();
    let fifo = dir.join("pipe.lt");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(dir.join("sub")).unwrap();
    let nested = dir.join("sub").join("leaktrace.102.lt");
    write_trace(&nested, 102);

    let (pa, pb) = (FakeProcess::start(&a, 1, 0), FakeProcess::start(&b, 1, 0));
    let r = ctl(&[&dir, &"--resume"]);
    assert_eq!(r.status, 0, "{r}");
    assert_eq!(r.stdout.lines().count(), 2, "one line per trace, nothing for the rest\n{r}");
    assert_eq!(line_for(&r, &a), format!("{} (pid 100): applied", a.display()));
    assert_eq!(line_for(&r, &b), format!("{} (pid 101): applied", b.display()));
    assert!(r.stderr.is_empty(), "{r}");
    for (p, seen) in [(&a, pa.seen()), (&b, pb.seen())] {
        // One request: control_seq bumped once, the gate moved by one epoch before it was read.
        let want = Seen { control: Control::Resume as u32, requested_mean: 0, seq: 1, gate: layout::GATE_EPOCH };
        assert_eq!(seen, [want], "{}", p.display());
        assert_eq!(u64_at(p, hdr::GATE), layout::GATE_EPOCH);
    }
    assert_eq!(u32_at(&nested, hdr::CONTROL_SEQ), 0, "the subdirectory's trace was not touched");
    assert_eq!(std::fs::read(dir.join("leaktrace.100.tree")).unwrap(), vec![7u8; 4096], "the ledger was not touched");
}

#[test]
fn several_files_sample_bytes_and_a_file_named_twice() {
    let dir = scratch("files");
    let (a, b) = (dir.join("a.lt"), dir.join("b.lt"));
    write_trace(&a, 200);
    write_trace(&b, 201);
    // A gate already carrying a mean and an epoch: ctl adds one epoch, whatever is there.
    let gate0 = 5 * layout::GATE_EPOCH + 524_288;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .write_all_at(&gate0.to_le_bytes(), hdr::GATE as u64)
        .unwrap();
    put_u32(&a, hdr::CONTROL_SEQ, 41);
    put_u32(&a, hdr::CONTROL_ACK_SEQ, 41);
    // b's process acknowledges a later request than ours: ours is answered too.
    let (pa, pb) = (FakeProcess::start(&a, 1, 0), FakeProcess::start(&b, 1, 3));
    let r = ctl(&[&a, &b, &dir.join("./a.lt"), &"--sample-bytes", &"65536", &"--wait", &"3000"]);
    assert_eq!(r.status, 0, "{r}");
    assert_eq!(r.stdout.lines().count(), 2, "a file named twice gets one request\n{r}");
    assert!(line_for(&r, &a).ends_with(": applied") && line_for(&r, &b).ends_with(": applied"), "{r}");
    let seen = pa.seen();
    assert_eq!(
        seen,
        [Seen {
            control: Control::SetMeanBytes as u32,
            requested_mean: 65536,
            seq: 42,
            gate: gate0 + layout::GATE_EPOCH
        }]
    );
    assert_eq!(pb.seen().len(), 1);
}

#[test]
fn a_refusal_is_said_per_file_and_exits_1() {
    let dir = scratch("refused");
    let names = ["applied.lt", "budget.lt", "disk.lt", "stopped.lt", "unknown.lt"];
    let results = [1, ControlResult::RefusedBudget as u32, 2, 4, 9];
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let procs: Vec<FakeProcess> = paths
        .iter()
        .zip(results)
        .enumerate()
        .map(|(i, (p, res))| {
            write_trace(p, 300 + i as u32);
            FakeProcess::start(p, res, 0)
        })
        .collect();
    let r = ctl(&[&dir, &"--resume", &"--wait", &"10000"]);
    assert_eq!(r.status, 1, "a refusal exits 1\n{r}");
    assert!(line_for(&r, &paths[0]).ends_with(": applied"), "{r}");
    assert!(
        line_for(&r, &paths[1]).ends_with(": REFUSED: the process tree's disk budget is spent (LEAKTRACE_TREE_BUDGET)"),
        "{r}"
    );
    assert!(line_for(&r, &paths[2]).ends_with(": REFUSED: the disk cannot hold the trace file's full size"), "{r}");
    assert!(line_for(&r, &paths[3]).ends_with(": REFUSED: tracing stopped after a failure"), "{r}");
    assert!(line_for(&r, &paths[4]).contains("answered with result 9"), "{r}");
    assert!(r.took < Duration::from_secs(5), "every process answered: no waiting out the 10 s\n{r}");
    drop(procs);
}

#[test]
fn a_process_that_has_not_allocated_since_is_pending_which_is_success() {
    let dir = scratch("pending");
    let a = dir.join("idle.lt");
    write_trace(&a, 400);
    let r = ctl(&[&a, &"--pause", &"--wait", &"150"]);
    assert_eq!(r.status, 0, "pending counts as success\n{r}");
    assert_eq!(
        line_for(&r, &a),
        format!(
            "{} (pid 400): requested; the process applies it at its next allocation (it has not allocated since)",
            a.display()
        )
    );
    assert!(r.took >= Duration::from_millis(150) && r.took < Duration::from_secs(5), "--wait 150\n{r}");
    // The request stays in the file for the process's next allocation.
    assert_eq!((u32_at(&a, hdr::CONTROL), u32_at(&a, hdr::CONTROL_SEQ)), (Control::Pause as u32, 1));
    assert_eq!(u64_at(&a, hdr::GATE), layout::GATE_EPOCH);

    // The wait is polled: an answer after 300 ms is seen long before the 10 s.
    let b = dir.join("late.lt");
    write_trace(&b, 401);
    let answerer = {
        let b = b.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            put_u32(&b, hdr::CONTROL_RESULT, 1);
            put_u32(&b, hdr::CONTROL_ACK_SEQ, 1);
        })
    };
    let r = ctl(&[&b, &"--resume", &"--wait", &"10000"]);
    answerer.join().unwrap();
    assert_eq!(r.status, 0, "{r}");
    assert!(line_for(&r, &b).ends_with(": applied"), "{r}");
    assert!(r.took < Duration::from_secs(5), "polled, not slept out\n{r}");
    let c = dir.join("never.lt");
    write_trace(&c, 402);
    let r = ctl(&[&c, &"--resume"]);
    assert!(r.took >= Duration::from_millis(1900) && r.took < Duration::from_secs(8), "default wait 2 s\n{r}");
}

#[test]
fn an_ended_process_is_said_and_its_trace_left_alone() {
    let dir = scratch("ended");
    let a = dir.join("exited.lt");
    let mut b = TraceBuilder::new(MIB).exited_at(5_000_000_000);
    b.header.pid = 500;
    std::fs::write(&a, b.build()).unwrap();
    let r = ctl(&[&a, &"--resume", &"--wait", &"10000"]);
    assert_eq!(r.status, 0, "{r}");
    assert!(line_for(&r, &a).ends_with(": not applied: the process has ended"), "{r}");
    assert!(r.took < Duration::from_secs(5), "nothing to wait for\n{r}");
    assert_eq!((u32_at(&a, hdr::CONTROL_SEQ), u64_at(&a, hdr::GATE)), (0, 0), "nothing written");

    // A process that exits while ctl waits.
    let c = dir.join("exiting.lt");
    write_trace(&c, 501);
    let exiter = {
        let c = c.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            put_u32(&c, hdr::END_REASON, layout::EndReason::Exit as u32);
        })
    };
    let r = ctl(&[&c, &"--resume", &"--wait", &"400"]);
    exiter.join().unwrap();
    assert_eq!(r.status, 0, "{r}");
    assert!(line_for(&r, &c).ends_with(": not applied: the process has ended"), "{r}");
}

#[test]
fn a_format_1_0_tracer_is_asked_without_a_gate_or_a_wait() {
    let dir = scratch("v1_0");
    let a = dir.join("old.lt");
    let mut b = TraceBuilder::new(MIB).version_1_0();
    b.header.pid = 600;
    std::fs::write(&a, b.build()).unwrap();
    let r = ctl(&[&a, &"--pause", &"--wait", &"10000"]);
    assert_eq!(r.status, 0, "{r}");
    assert!(line_for(&r, &a).contains("a format 1.0 tracer applies it"), "{r}");
    assert!(r.took < Duration::from_secs(5), "not waited for\n{r}");
    assert_eq!(u32_at(&a, hdr::CONTROL_SEQ), 1);
    assert_eq!(u64_at(&a, hdr::GATE), 0, "1.0 files have no gate word: bytes 448.. are reserved there");
}

#[test]
fn bad_input_sends_nothing_and_exits_2() {
    let dir = scratch("bad");
    let good = dir.join("good.lt");
    write_trace(&good, 700);
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a trace\n").unwrap();
    let fifo = dir.join("fifo.lt");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let ledger_only = dir.join("ledger_only");
    std::fs::create_dir(&ledger_only).unwrap();
    std::fs::write(ledger_only.join("leaktrace.1.tree"), vec![0u8; 4096]).unwrap();
    let missing = dir.join("missing.lt");

    let cases: Vec<(Vec<&dyn AsRef<std::ffi::OsStr>>, &str)> = vec![
        (vec![&good, &missing, &"--resume"], "cannot open"),
        (vec![&good, &text, &"--resume"], "not a leaktrace trace"),
        (vec![&good, &fifo, &"--resume"], "not a regular file"),
        (vec![&good, &empty, &"--resume"], "holds no trace file"),
        (vec![&good, &ledger_only, &"--resume"], "holds no trace file"),
        (vec![&good], "say what to change"),
        (vec![&good, &"--sample-bytes", &"0"], "out of range"),
        (vec![&good, &"--sample-bytes", &"99999999999"], "out of range"),
        (vec![&good, &"--resume", &"--wait", &"soon"], "invalid value"),
        (vec![&"--resume"], "required"),
    ];
    for (args, says) in cases {
        let r = ctl(&args);
        assert_eq!(r.status, 2, "{args:?}\n{r}", args = args.iter().map(|a| a.as_ref()).collect::<Vec<_>>());
        assert!(r.stderr.contains(says), "{says:?}\n{r}");
        assert!(r.stdout.is_empty(), "{r}");
        assert_eq!(u32_at(&good, hdr::CONTROL_SEQ), 0, "nothing was sent to the good trace\n{r}");
        assert_eq!(u64_at(&good, hdr::GATE), 0);
    }
    // A --wait too long for a clock is only a long wait, not a crash.
    let p = FakeProcess::start(&good, 1, 0);
    let r = ctl(&[&good, &"--resume", &"--wait", &u64::MAX.to_string()]);
    assert_eq!(r.status, 0, "{r}");
    assert!(line_for(&r, &good).ends_with(": applied"), "{r}");
    drop(p);
}
