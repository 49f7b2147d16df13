//! Reading a trace file that may be truncated, torn by a kill, still being written, or hostile.
//!
//! The reader never trusts a number from the file to size an allocation: every count is first
//! bounded by the bytes actually present. Damage it can step over is counted in [`Health`];
//! damage it cannot (no header, wrong magic, a newer major version) is a [`FormatError`].

use crate::layout::{self, ev, hdr, live, Region, EVENT_SIZE, HEADER_SIZE, LIVE_SLOT_SIZE};
use crate::records::{MetaKind, ModuleRecord, ModuleUnloaded, ProcessInfo, Retention, SamplingChange, ScanSummary};
use crate::FormatError;

/// The fixed header, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub version_major: u16,
    pub version_minor: u16,
    pub file_size: u64,
    pub pid: u32,
    pub start_unix_ns: u64,
    pub start_mono_ns: u64,
    pub page_size: u32,
    pub initial_mean_bytes: u64,
    pub regions: [(u64, u64); layout::REGION_COUNT],
    pub live_capacity: u64,
    pub ring_capacity: u64,
    pub rss_capacity: u64,
    pub state: u32,
    pub end_reason: u32,
    pub current_mean_bytes: u64,
    pub ring_head: u64,
    pub events_dropped: u64,
    pub meta_used: u64,
    pub stacks_used: u64,
    pub live_count: u64,
    pub live_dropped: u64,
    pub stacks_dropped: u64,
    pub rss_count: u64,
    pub rss_interval_ms: u64,
    pub heartbeat_ns: u64,
    pub end_ns: u64,
    pub sampled_allocs: u64,
    pub sampled_frees: u64,
    pub failure: u32,
    pub unwinder: u32,
    pub skipped_no_stack: u64,
    pub cfi_stacks: u64,
    pub libgcc_stacks: u64,
    // Version 1.1 (zero in 1.0 files).
    pub control_ack_seq: u32,
    pub control_result: u32,
    pub reserved_bytes: u64,
    pub rss_peak_bytes: u64,
    pub rss_peak_ns: u64,
    pub children_traced: u64,
    pub children_untraced_budget: u64,
    pub children_removed: u64,
    pub tree_budget: u64,
    pub tree_id: u64,
    /// CLOCK_REALTIME when `leak-analyze attach` started the trace; 0 if preloaded (1.2).
    pub attach_unix_ns: u64,
}

/// One record of the event ring. The writer fills every field but `seq`, which the ring assigns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub time_ns: u64,
    pub addr: u64,
    pub size: u64,
    pub stack_id: u32,
    pub mean_bytes: u32,
    pub tid: u32,
    pub kind: layout::EventKind,
    pub api: layout::Api,
}

impl Event {
    /// The record's 48 bytes as stored in the ring, under sequence number `seq`, with its check.
    pub fn encode(&self, seq: u64) -> [u8; EVENT_SIZE] {
        let mut rec = [0u8; EVENT_SIZE];
        for (bytes, w) in rec.chunks_exact_mut(8).zip(self.encode_words(seq)) {
            bytes.copy_from_slice(&w.to_le_bytes());
        }
        rec
    }

    /// [`Event::encode`] as the record's six little-endian words: what the writer stores, with
    /// no byte array in between.
    #[inline]
    pub fn encode_words(&self, seq: u64) -> [u64; EVENT_SIZE / 8] {
        let head =
            [seq, self.time_ns, self.addr, self.size, u64::from(self.stack_id) | u64::from(self.mean_bytes) << 32];
        // Bytes 40..48: tid, kind, api, then the check (see `layout::ev`).
        let tail = u64::from(self.tid) | u64::from(self.kind as u8) << 32 | u64::from(self.api as u8) << 40;
        let check = layout::record_check_words(&head, tail);
        [head[0], head[1], head[2], head[3], head[4], tail | u64::from(check) << 48]
    }

    /// Decode a stored record; `None` if its check fails or its kind or API is unknown.
    pub fn decode(raw: &[u8; EVENT_SIZE]) -> Option<Event> {
        if layout::record_check(raw) != u16_at(raw, ev::CHECK) {
            return None;
        }
        Some(Event {
            seq: u64_at(raw, ev::SEQ),
            time_ns: u64_at(raw, ev::TIME_NS),
            addr: u64_at(raw, ev::ADDR),
            size: u64_at(raw, ev::SIZE),
            stack_id: u32_at(raw, ev::STACK_ID),
            mean_bytes: u32_at(raw, ev::MEAN_BYTES),
            tid: u32_at(raw, ev::TID),
            kind: layout::EventKind::from_u8(raw[ev::KIND])?,
            api: layout::Api::from_u8(raw[ev::API])?,
        })
    }
}

/// A sampled allocation that was still live when the trace was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAllocation {
    pub addr: u64,
    pub size: u64,
    pub time_ns: u64,
    pub stack_id: u32,
    pub mean_bytes: u32,
}

/// One point of the RSS series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RssSample {
    pub t_ns: u64,
    pub rss_bytes: u64,
    /// The part of `rss_bytes` that is leaktrace's own (format 1.1; 0 in older traces).
    pub own_bytes: u64,
}

/// What the reader had to step over. All zero and `truncated == false` means a clean file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The file is shorter than its header says (copied while growing, or cut).
    pub truncated: bool,
    /// Bytes missing from the end of the file.
    pub missing_bytes: u64,
    /// Ring records that failed their check: torn by a kill or lapped by a later writer.
    pub torn_events: u64,
    /// Events the ring had overwritten before it was read (normal after a wrap).
    pub overwritten_events: u64,
    /// Metadata records skipped as damaged, and the bytes they covered.
    pub torn_meta_records: u64,
    pub torn_meta_bytes: u64,
    /// Live-table slots caught mid-write.
    pub torn_live_slots: u64,
    /// RSS samples out of order or past the end, dropped.
    pub bad_rss_samples: u64,
    /// Human-readable notes, one line each.
    pub notes: Vec<String>,
}

impl Health {
    /// True when something was lost to damage (not to the ring wrapping, which is by design).
    pub fn is_partial(&self) -> bool {
        self.truncated || self.torn_events > 0 || self.torn_meta_records > 0 || self.torn_live_slots > 0
    }
}

/// A decoded trace: everything but the event ring, which [`Trace::events`] streams from the
/// source on demand (a ring is most of a file; holding it decoded would cost more than the file).
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub header: Header,
    pub process: Option<ProcessInfo>,
    pub modules: Vec<ModuleRecord>,
    pub unloaded: Vec<ModuleUnloaded>,
    pub sampling: Vec<SamplingChange>,
    /// Heap scans that ended (1.2), oldest first.
    pub scans: Vec<ScanSummary>,
    /// Their per-stack findings; each record's `scan_t_ns` names its scan.
    pub retention: Vec<Retention>,
    /// How many valid ring events the source held when it was parsed: what [`Trace::events`]
    /// yields, unless the file is still being written.
    pub readable_events: u64,
    /// How many of them are frees (the rest are allocations).
    pub readable_frees: u64,
    /// The distinct stack ids of those events, sorted, so that a reader can resolve every stack
    /// before it streams the events.
    pub event_stack_ids: Vec<u32>,
    pub live: Vec<LiveAllocation>,
    pub rss: Vec<RssSample>,
    /// True when the file has leaktrace's own-memory series (format 1.1, region 5) for every
    /// RSS sample read, so that each sample's `own_bytes` is known; false in 1.0 files, where
    /// they are 0 for want of the series, not because the tracer took nothing.
    pub has_own_series: bool,
    pub health: Health,
    stacks: Vec<u8>,
    ring: RingView,
    /// Time of the newest valid event, 0 if none.
    last_event_ns: u64,
}

/// Where a trace's bytes come from: a positioned, read-only source, so that regions can be read
/// a chunk at a time instead of the whole file at once.
pub trait TraceSource {
    /// Bytes in the source.
    fn len(&self) -> u64;
    /// Fill `buf` from `offset`; returns how many bytes were read, fewer than `buf.len()` only
    /// at the end of the source or on an error (a reader treats both as missing bytes).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TraceSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(<[u8]>::len(self));
        let n = buf.len().min(<[u8]>::len(self) - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        n
    }
}

impl TraceSource for Vec<u8> {
    fn len(&self) -> u64 {
        TraceSource::len(self.as_slice())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        TraceSource::read_at(self.as_slice(), offset, buf)
    }
}

impl<T: TraceSource + ?Sized> TraceSource for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        (**self).read_at(offset, buf)
    }
}

#[cfg(unix)]
impl TraceSource for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let at = offset.saturating_add(done as u64);
            match std::os::unix::fs::FileExt::read_at(self, &mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A file that cannot be read further reads as one that ends here: the reader
                // already copes with missing bytes, and a half-read trace beats none.
                Err(_) => break,
            }
        }
        done
    }
}

/// How much of a region is read at a time.
const CHUNK: usize = 1 << 20;

/// Records committed after the ring head was read (sequence numbers past it) sort after every
/// other event but sit at the start of the slot walk, so [`Events`] holds them back until the
/// end. A writer faster than the walk could commit up to a whole lap of them; past this many
/// the newest are left out, to keep the reader's memory small.
pub const MAX_LATE_EVENTS: usize = 1 << 16;

/// The part of a source that holds one region, read through a window of about `CHUNK` bytes.
struct Window<'s, S: ?Sized> {
    src: &'s S,
    /// Where the region starts in the source, and how many of its bytes the source holds.
    start: u64,
    len: u64,
    buf: Vec<u8>,
    /// Region offset of `buf[0]`.
    buf_at: u64,
}

impl<'s, S: TraceSource + ?Sized> Window<'s, S> {
    fn new(src: &'s S, (start, len): (u64, u64)) -> Self {
        Window { src, start, len, buf: Vec::new(), buf_at: 0 }
    }

    /// Bytes `pos..pos + n` of the region, or `None` if the source does not hold them all.
    fn get(&mut self, pos: u64, n: usize) -> Option<&[u8]> {
        let end = pos.checked_add(n as u64).filter(|&e| e <= self.len)?;
        let held = pos >= self.buf_at && end <= self.buf_at + self.buf.len() as u64;
        if !held {
            let want = (self.len - pos).min(n.max(CHUNK) as u64) as usize;
            self.buf.resize(want, 0);
            let got = self.src.read_at(self.start + pos, &mut self.buf);
            self.buf.truncate(got);
            self.buf_at = pos;
            if got < n {
                return None;
            }
        }
        let from = (pos - self.buf_at) as usize;
        Some(&self.buf[from..from + n])
    }

    /// The first `n` bytes of the region (fewer if the source holds fewer), read in one piece.
    fn prefix(&self, n: u64) -> Vec<u8> {
        let mut v = vec![0u8; n.min(self.len) as usize];
        let got = self.src.read_at(self.start, &mut v);
        v.truncate(got);
        v
    }
}

/// What a walk of the ring needs to know, fixed when the header is read.
#[derive(Clone, Copy, Debug, Default)]
struct RingView {
    /// The ring region's offset and the bytes of it the source held.
    region: (u64, u64),
    capacity: u64,
    head: u64,
}

/// The valid events of a trace's ring, in sequence order, read a chunk at a time (see
/// [`Trace::events`]).
pub struct Events<'s, S: ?Sized> {
    ring: RingView,
    win: Window<'s, S>,
    /// The slot walk: from the oldest slot to the end of the ring, then from slot 0 up to it.
    ranges: [(u64, u64); 2],
    range: usize,
    slot: u64,
    late: Vec<Event>,
    late_next: usize,
    torn: u64,
    late_left_out: u64,
}

impl<S: TraceSource + ?Sized> Events<'_, S> {
    /// Records in the window that failed their checks so far (see [`Health::torn_events`]).
    pub fn torn(&self) -> u64 {
        self.torn
    }

    /// Records committed after the ring head was read that were left out (see [`MAX_LATE_EVENTS`]).
    pub fn late_left_out(&self) -> u64 {
        self.late_left_out
    }
}

impl<S: TraceSource + ?Sized> Iterator for Events<'_, S> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let RingView { capacity: cap, head, .. } = self.ring;
        // Sequence numbers a complete ring would hold now: (head - cap, head].
        let oldest_kept = head.saturating_sub(cap) + 1;
        while self.range < self.ranges.len() {
            let i = self.slot;
            if i >= self.ranges[self.range].1 {
                self.range += 1;
                if let Some(&(lo, _)) = self.ranges.get(self.range) {
                    self.slot = lo;
                }
                continue;
            }
            self.slot += 1;
            let Some(raw) = self.win.get(i * EVENT_SIZE as u64, EVENT_SIZE) else {
                // The file shrank since it was parsed: nothing more of this range is there.
                self.slot = u64::MAX;
                continue;
            };
            let Ok(raw) = <&[u8; EVENT_SIZE]>::try_from(raw) else { continue };
            let seq = u64_at(raw, ev::SEQ);
            // A slot never reached by the writer, in a ring that has not wrapped yet.
            if seq == 0 && i >= head {
                continue;
            }
            let valid_slot = seq != 0 && (seq - 1) % cap == i;
            // Writers may commit a little past the head we read; the ring can only be a lap ahead.
            let in_window = seq >= oldest_kept && seq <= head.saturating_add(cap);
            match Event::decode(raw).filter(|_| valid_slot && in_window) {
                // Slot i holds only sequence numbers i + 1 (mod cap), so walking from the
                // oldest slot meets those up to the head in order, and those past it in order.
                Some(e) if e.seq <= head => return Some(e),
                Some(e) if self.late.len() < MAX_LATE_EVENTS => self.late.push(e),
                Some(_) => self.late_left_out += 1,
                // Reserved by a writer that has not (or never) committed it, or damaged.
                None if i < head => self.torn += 1,
                None => {}
            }
        }
        let e = self.late.get(self.late_next).copied();
        self.late_next += 1;
        e
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
}

impl Header {
    /// Decode and sanity-check the header. `available` is how many bytes the file really has.
    pub fn parse(bytes: &[u8]) -> Result<Header, FormatError> {
        if bytes.len() < layout::MAGIC.len() || bytes[..8] != layout::MAGIC {
            return Err(FormatError::NotATrace);
        }
        if bytes.len() < HEADER_SIZE {
            return Err(FormatError::TooShort { len: bytes.len() as u64 });
        }
        let mut h = Header {
            version_major: u16_at(bytes, hdr::VERSION_MAJOR),
            version_minor: u16_at(bytes, hdr::VERSION_MINOR),
            file_size: u64_at(bytes, hdr::FILE_SIZE),
            pid: u32_at(bytes, hdr::PID),
            start_unix_ns: u64_at(bytes, hdr::START_UNIX_NS),
            start_mono_ns: u64_at(bytes, hdr::START_MONO_NS),
            page_size: u32_at(bytes, hdr::PAGE_SIZE),
            initial_mean_bytes: u64_at(bytes, hdr::INITIAL_MEAN_BYTES),
            live_capacity: u64_at(bytes, hdr::LIVE_CAPACITY),
            ring_capacity: u64_at(bytes, hdr::RING_CAPACITY),
            rss_capacity: u64_at(bytes, hdr::RSS_CAPACITY),
            state: u32_at(bytes, hdr::STATE),
            end_reason: u32_at(bytes, hdr::END_REASON),
            current_mean_bytes: u64_at(bytes, hdr::CURRENT_MEAN_BYTES),
            ring_head: u64_at(bytes, hdr::RING_HEAD),
            events_dropped: u64_at(bytes, hdr::EVENTS_DROPPED),
            meta_used: u64_at(bytes, hdr::META_USED),
            stacks_used: u64_at(bytes, hdr::STACKS_USED),
            live_count: u64_at(bytes, hdr::LIVE_COUNT),
            live_dropped: u64_at(bytes, hdr::LIVE_DROPPED),
            stacks_dropped: u64_at(bytes, hdr::STACKS_DROPPED),
            rss_count: u64_at(bytes, hdr::RSS_COUNT),
            rss_interval_ms: u64_at(bytes, hdr::RSS_INTERVAL_MS),
            heartbeat_ns: u64_at(bytes, hdr::HEARTBEAT_NS),
            end_ns: u64_at(bytes, hdr::END_NS),
            sampled_allocs: u64_at(bytes, hdr::SAMPLED_ALLOCS),
            sampled_frees: u64_at(bytes, hdr::SAMPLED_FREES),
            failure: u32_at(bytes, hdr::FAILURE),
            unwinder: u32_at(bytes, hdr::UNWINDER),
            skipped_no_stack: u64_at(bytes, hdr::SKIPPED_NO_STACK),
            cfi_stacks: u64_at(bytes, hdr::CFI_STACKS),
            libgcc_stacks: u64_at(bytes, hdr::LIBGCC_STACKS),
            control_ack_seq: u32_at(bytes, hdr::CONTROL_ACK_SEQ),
            control_result: u32_at(bytes, hdr::CONTROL_RESULT),
            reserved_bytes: u64_at(bytes, hdr::RESERVED_BYTES),
            rss_peak_bytes: u64_at(bytes, hdr::RSS_PEAK_BYTES),
            rss_peak_ns: u64_at(bytes, hdr::RSS_PEAK_NS),
            children_traced: u64_at(bytes, hdr::CHILDREN_TRACED),
            children_untraced_budget: u64_at(bytes, hdr::CHILDREN_UNTRACED_BUDGET),
            children_removed: u64_at(bytes, hdr::CHILDREN_REMOVED),
            tree_budget: u64_at(bytes, hdr::TREE_BUDGET),
            tree_id: u64_at(bytes, hdr::TREE_ID),
            attach_unix_ns: u64_at(bytes, hdr::ATTACH_UNIX_NS),
            ..Header::default()
        };
        if h.version_major != layout::VERSION_MAJOR {
            return Err(FormatError::UnsupportedVersion { major: h.version_major, minor: h.version_minor });
        }
        if u32_at(bytes, hdr::HEADER_SIZE) as usize != HEADER_SIZE {
            return Err(FormatError::BadHeader("header size field is not 4096".into()));
        }
        if !(layout::MIN_FILE_SIZE..=layout::MAX_FILE_SIZE).contains(&h.file_size) {
            return Err(FormatError::BadHeader(format!("file size field {} is out of range", h.file_size)));
        }
        let mut prev_end = HEADER_SIZE as u64;
        for i in 0..layout::REGION_COUNT {
            let off = u64_at(bytes, hdr::REGIONS + i * 16);
            let len = u64_at(bytes, hdr::REGIONS + i * 16 + 8);
            let in_order = i >= 5 || off >= prev_end;
            let end = off.checked_add(len);
            if !in_order || end.is_none_or(|e| e > h.file_size) {
                return Err(FormatError::BadHeader(format!("region {i} ({off:#x}+{len:#x}) lies outside the file")));
            }
            h.regions[i] = (off, len);
            if i < 5 {
                prev_end = off + len;
            }
        }
        let fits = |cap: u64, unit: usize, r: Region| {
            cap.checked_mul(unit as u64).is_some_and(|b| b <= h.regions[r as usize].1)
        };
        if !fits(h.live_capacity, LIVE_SLOT_SIZE, Region::Live)
            || !h.live_capacity.is_power_of_two()
            || !fits(h.ring_capacity, EVENT_SIZE, Region::Ring)
            || h.ring_capacity == 0
            || !fits(h.rss_capacity, layout::RSS_SAMPLE_SIZE, Region::Rss)
        {
            return Err(FormatError::BadHeader("table capacities do not fit their regions".into()));
        }
        Ok(h)
    }

    pub fn region(&self, r: Region) -> (u64, u64) {
        self.regions[r as usize]
    }

    pub fn trace_state(&self) -> Option<layout::TraceState> {
        layout::TraceState::from_u32(self.state)
    }

    /// Did the writer end the trace itself (exit, or detach), so that nothing more will come and
    /// `end_ns` holds when?
    pub fn ended_cleanly(&self) -> bool {
        self.end_reason == layout::EndReason::Exit as u32 || self.detached()
    }

    /// Was the trace ended by `leak-analyze detach` (the process may still run)?
    pub fn detached(&self) -> bool {
        self.end_reason == layout::EndReason::Detached as u32
    }

    /// Was the trace started by `leak-analyze attach`, in a process already running?
    pub fn attached(&self) -> bool {
        self.attach_unix_ns != 0
    }
}

/// Offset of region `r` and how many of its bytes a source of `available` bytes holds (fewer
/// than the header says if the file is truncated).
fn region_present(h: &Header, r: Region, available: u64) -> (u64, u64) {
    let (off, len) = h.region(r);
    let start = off.min(available);
    let end = off.saturating_add(len).min(available);
    (start, end - start)
}

/// A trace decoded from bytes already in memory, with its ring's events decoded too: for tests
/// and tools that hold the whole file anyway. Everything else of the trace is reached through
/// `Deref`. (A reader of a file uses [`Trace::parse_from`] and streams [`Trace::events`]
/// instead, so that it never holds the ring.)
#[derive(Clone, Debug)]
pub struct ParsedTrace {
    pub trace: Trace,
    /// The valid ring events, in sequence order: what [`Trace::events`] yields.
    pub events: Vec<Event>,
}

impl std::ops::Deref for ParsedTrace {
    type Target = Trace;

    fn deref(&self) -> &Trace {
        &self.trace
    }
}

impl Trace {
    /// Decode a whole trace from its bytes, events included.
    pub fn parse(bytes: &[u8]) -> Result<ParsedTrace, FormatError> {
        let trace = Trace::parse_from(bytes)?;
        let events = trace.events(bytes).collect();
        Ok(ParsedTrace { trace, events })
    }

    /// Decode a trace from `src`, reading each region in chunks and keeping only what is used
    /// later: metadata, the used part of the stack table, the live entries and the RSS series.
    /// The ring is walked once to check it and count its events; [`Trace::events`] streams them.
    pub fn parse_from<S: TraceSource + ?Sized>(src: &S) -> Result<Trace, FormatError> {
        let available = src.len();
        let mut head = [0u8; HEADER_SIZE];
        let got = src.read_at(0, &mut head);
        let header = Header::parse(&head[..got])?;
        let mut t = Trace { header, ..Trace::default() };
        if available < t.header.file_size {
            t.health.truncated = true;
            t.health.missing_bytes = t.header.file_size - available;
            t.health.notes.push(format!(
                "file is {} bytes short of the {} its header declares; regions past the end are lost",
                t.health.missing_bytes, t.header.file_size
            ));
        }
        let region = |r| Window::new(src, region_present(&t.header, r, available));
        let (mut meta, stacks, mut live, rss, own) = (
            region(Region::Meta),
            region(Region::Stacks),
            region(Region::Live),
            region(Region::Rss),
            region(Region::RssOwn),
        );
        t.read_meta(&mut meta);
        t.stacks = stacks.prefix(t.header.stacks_used);
        t.read_live(&mut live);
        t.ring = RingView {
            region: region_present(&t.header, Region::Ring, available),
            capacity: t.header.ring_capacity,
            head: t.header.ring_head,
        };
        t.read_ring(src);
        t.read_rss(&rss, Some(&own));
        Ok(t)
    }

    /// The valid events of the ring, in sequence order, read from `src` (the source this trace
    /// was parsed from) a chunk at a time. A record counts if its seq maps to its slot, lies in
    /// the window of the ring head and its check matches (FORMAT.md, Event ring).
    ///
    /// The ring head is read again from `src` first: while the process runs, a head as old as
    /// the parse would make every record written since a "late" one that must be held back
    /// (see [`MAX_LATE_EVENTS`]); a fresh one leaves only those committed during the walk.
    pub fn events<'s, S: TraceSource + ?Sized>(&self, src: &'s S) -> Events<'s, S> {
        let mut ring = self.ring;
        let mut head = [0u8; 8];
        if src.read_at(hdr::RING_HEAD as u64, &mut head) == head.len() {
            ring.head = ring.head.max(u64::from_le_bytes(head));
        }
        let cap = ring.capacity.max(1);
        let slots = ring.capacity.min(ring.region.1 / EVENT_SIZE as u64);
        let oldest = (ring.head % cap).min(slots);
        Events {
            ring: RingView { capacity: cap, ..ring },
            win: Window::new(src, ring.region),
            ranges: [(oldest, slots), (0, oldest)],
            range: 0,
            slot: oldest,
            late: Vec::new(),
            late_next: 0,
            torn: 0,
            late_left_out: 0,
        }
    }

    fn read_meta<S: TraceSource + ?Sized>(&mut self, region: &mut Window<'_, S>) {
        let used = self.header.meta_used.min(region.len);
        let mut pos = 0u64;
        while pos + layout::META_HEAD_SIZE as u64 <= used {
            let Some(head) = region.get(pos, layout::META_HEAD_SIZE) else { return };
            let (len, kind, check) = (u32_at(head, 0) as u64, u16_at(head, 4), u32_at(head, 8));
            let body_start = pos + layout::META_HEAD_SIZE as u64;
            if len == 0 || body_start + len > used {
                // A writer reserved this space but never committed it: everything after is unframed.
                self.health.torn_meta_records += 1;
                self.health.torn_meta_bytes += used - pos;
                self.health.notes.push(format!(
                    "metadata record at byte {pos:#x} of its region is torn; skipped {} bytes",
                    used - pos
                ));
                return;
            }
            let Some(payload) = region.get(body_start, len as usize) else { return };
            let next = body_start + layout::align_up(len, 8);
            if layout::meta_check(payload) != check {
                self.health.torn_meta_records += 1;
                self.health.torn_meta_bytes += next - pos;
                pos = next;
                continue;
            }
            match MetaKind::from_u16(kind) {
                Some(MetaKind::Process) => {
                    if let Ok((p, _)) = postcard::take_from_bytes::<ProcessInfo>(payload) {
                        self.process.get_or_insert(p);
                    }
                }
                Some(MetaKind::Module) => {
                    if let Ok((m, _)) = postcard::take_from_bytes::<ModuleRecord>(payload) {
                        self.modules.push(m);
                    }
                }
                Some(MetaKind::Sampling) => {
                    if let Ok((s, _)) = postcard::take_from_bytes::<SamplingChange>(payload) {
                        self.sampling.push(s);
                    }
                }
                Some(MetaKind::ModuleUnloaded) => {
                    if let Ok((u, _)) = postcard::take_from_bytes::<ModuleUnloaded>(payload) {
                        self.unloaded.push(u);
                    }
                }
                Some(MetaKind::Scan) => {
                    if let Ok((x, _)) = postcard::take_from_bytes::<ScanSummary>(payload) {
                        self.scans.push(x);
                    }
                }
                Some(MetaKind::Retention) => {
                    if let Ok((r, _)) = postcard::take_from_bytes::<Retention>(payload) {
                        self.retention.push(r);
                    }
                }
                None => {} // a record kind from a newer minor version: skip it
            }
            pos = next;
        }
    }

    fn read_live<S: TraceSource + ?Sized>(&mut self, region: &mut Window<'_, S>) {
        let slots = self.header.live_capacity.min(region.len / LIVE_SLOT_SIZE as u64);
        for i in 0..slots {
            let Some(s) = region.get(i * LIVE_SLOT_SIZE as u64, LIVE_SLOT_SIZE) else { break };
            let key = u64_at(s, live::KEY);
            if key == layout::LIVE_EMPTY || key == layout::LIVE_TOMBSTONE {
                continue;
            }
            if key & layout::LIVE_WRITING_BIT != 0 {
                self.health.torn_live_slots += 1;
                continue;
            }
            self.live.push(LiveAllocation {
                addr: key,
                size: u64_at(s, live::SIZE),
                time_ns: u64_at(s, live::TIME_NS),
                stack_id: u32_at(s, live::STACK_ID),
                mean_bytes: u32_at(s, live::MEAN_BYTES),
            });
        }
        if self.health.torn_live_slots > 0 {
            self.health.notes.push(format!(
                "{} live allocations were being recorded when the trace was read and are left out",
                self.health.torn_live_slots
            ));
        }
        self.live.sort_by_key(|a| (a.time_ns, a.addr));
    }

    /// Walk the ring once: count what it holds and what is damaged, without keeping the events.
    fn read_ring<S: TraceSource + ?Sized>(&mut self, src: &S) {
        self.health.overwritten_events = self.header.ring_head.saturating_sub(self.header.ring_capacity);
        let mut ids = std::collections::HashSet::new();
        let mut events = self.events(src);
        let (mut count, mut last_ns, mut last_id) = (0u64, 0u64, None);
        let mut frees = 0u64;
        for e in &mut events {
            count += 1;
            frees += u64::from(e.kind == layout::EventKind::Free);
            last_ns = e.time_ns;
            // Runs of one stack are common (a loop allocating): skip the hash for them.
            if last_id != Some(e.stack_id) {
                ids.insert(e.stack_id);
                last_id = Some(e.stack_id);
            }
        }
        let (torn, late_left_out) = (events.torn(), events.late_left_out());
        self.readable_events = count;
        self.readable_frees = frees;
        self.last_event_ns = last_ns;
        self.event_stack_ids = ids.into_iter().collect();
        self.event_stack_ids.sort_unstable();
        self.health.torn_events = torn;
        if torn > 0 {
            self.health
                .notes
                .push(format!("{torn} ring records were torn (killed or still being written) and were skipped"));
        }
        if late_left_out > 0 {
            self.health
                .notes
                .push(format!("{late_left_out} ring records committed after the ring head was read were left out"));
        }
    }

    fn read_rss<S: TraceSource + ?Sized>(&mut self, region: &Window<'_, S>, own: Option<&Window<'_, S>>) {
        let n = self.header.rss_count.min(self.header.rss_capacity).min(region.len / layout::RSS_SAMPLE_SIZE as u64);
        let region = region.prefix(n * layout::RSS_SAMPLE_SIZE as u64);
        let n = region.len() / layout::RSS_SAMPLE_SIZE;
        // The own-memory series, where the file has it whole for these samples.
        let own: Option<Vec<u8>> = own
            .filter(|o| o.len >= (n * layout::RSS_OWN_SIZE) as u64)
            .map(|o| o.prefix((n * layout::RSS_OWN_SIZE) as u64))
            .filter(|v| v.len() >= n * layout::RSS_OWN_SIZE);
        self.has_own_series = own.is_some() && n > 0;
        let mut last = 0u64;
        for i in 0..n {
            let t_ns = u64_at(&region, i * 16);
            let rss_bytes = u64_at(&region, i * 16 + 8);
            if (i > 0 && t_ns <= last) || rss_bytes == 0 {
                self.health.bad_rss_samples += 1;
                continue;
            }
            last = t_ns;
            // Never more than the sample itself (a torn or damaged entry).
            let own_bytes = own.as_ref().map_or(0, |o| u64_at(o, i * 8)).min(rss_bytes);
            self.rss.push(RssSample { t_ns, rss_bytes, own_bytes });
        }
    }

    /// The frames of stack `id`, innermost first, or `None` if the id does not name a sound record.
    pub fn stack(&self, id: u32) -> Option<Vec<u64>> {
        if id == 0 {
            return None;
        }
        let off = (id as usize).checked_mul(layout::STACK_ALIGN)?;
        let head = u64_at(self.stacks.get(off..off + 8)?, 0);
        let nframes = (head & 0xffff) as usize;
        let check = (head >> 32) as u32;
        if nframes == 0 || nframes > layout::MAX_FRAMES {
            return None;
        }
        let body = self.stacks.get(off + 8..off + 8 + nframes * 8)?;
        let frames: Vec<u64> = body.chunks_exact(8).map(|c| u64_at(c, 0)).collect();
        (layout::stack_check(&frames) == check).then_some(frames)
    }

    /// Since when new allocations have been sampled without a pause: the time of the last
    /// change from paused (mean 0) to sampling, or 0 if tracing was never paused. `None` if the
    /// trace ends paused.
    pub fn sampling_since(&self) -> Option<u64> {
        let mut since = Some(0);
        for c in &self.sampling {
            match (c.mean_bytes, since) {
                (0, _) => since = None,
                (_, None) => since = Some(c.t_ns),
                _ => {}
            }
        }
        since
    }

    /// The sampling mean in force at `t_ns`, from the recorded changes (the header's if none;
    /// 0 while paused).
    pub fn mean_bytes_at(&self, t_ns: u64) -> u64 {
        self.sampling.iter().rfind(|s| s.t_ns <= t_ns).map_or(self.header.initial_mean_bytes, |s| s.mean_bytes)
    }

    /// The last moment the trace knows of: the clean exit, else the newest event, RSS sample or
    /// background heartbeat.
    pub fn end_ns(&self) -> u64 {
        if self.header.ended_cleanly() && self.header.end_ns > 0 {
            return self.header.end_ns;
        }
        let ev = self.last_event_ns;
        let rss = self.rss.last().map_or(0, |r| r.t_ns);
        let live = self.live.last().map_or(0, |a| a.time_ns);
        ev.max(rss).max(live).max(self.header.heartbeat_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace file of `file_size` bytes whose ring holds events 1..=`written` (as many as fit)
    /// under a header that says `head`.
    fn synthetic(file_size: u64, written: u64, head: u64) -> Vec<u8> {
        let plan = layout::Plan::for_file_size(file_size).unwrap();
        let mut f = vec![0u8; file_size as usize];
        let mut put = |off: usize, v: &[u8]| f[off..off + v.len()].copy_from_slice(v);
        put(0, &layout::MAGIC);
        put(hdr::VERSION_MAJOR, &layout::VERSION_MAJOR.to_le_bytes());
        put(hdr::HEADER_SIZE, &(HEADER_SIZE as u32).to_le_bytes());
        put(hdr::FILE_SIZE, &file_size.to_le_bytes());
        for (i, (off, len)) in plan.regions.iter().enumerate() {
            put(hdr::REGIONS + i * 16, &off.to_le_bytes());
            put(hdr::REGIONS + i * 16 + 8, &len.to_le_bytes());
        }
        put(hdr::LIVE_CAPACITY, &plan.live_capacity.to_le_bytes());
        put(hdr::RING_CAPACITY, &plan.ring_capacity.to_le_bytes());
        put(hdr::RSS_CAPACITY, &plan.rss_capacity.to_le_bytes());
        put(hdr::RING_HEAD, &head.to_le_bytes());
        let (ring, cap) = (plan.region(Region::Ring).0 as usize, plan.ring_capacity);
        for seq in written.saturating_sub(cap) + 1..=written {
            let e = Event {
                seq,
                time_ns: seq,
                addr: seq * 16,
                size: 8,
                stack_id: 0,
                mean_bytes: 1,
                tid: 1,
                kind: layout::EventKind::Alloc,
                api: layout::Api::Malloc,
            };
            put(ring + ((seq - 1) % cap) as usize * EVENT_SIZE, &e.encode(seq));
        }
        f
    }

    /// Format 1.1's own-memory series pairs with the RSS samples by index; a 1.0 file (region 5
    /// zero) reads as no own memory; an own entry larger than its sample is clamped.
    #[test]
    fn own_memory_series_pairs_with_rss_samples() {
        let size = layout::MIN_FILE_SIZE;
        let plan = layout::Plan::for_file_size(size).unwrap();
        let mut f = synthetic(size, 0, 0);
        let (rss, _) = plan.region(Region::Rss);
        let (own, _) = plan.region(Region::RssOwn);
        for (i, (t, r, o)) in [(10u64, 1000u64, 100u64), (20, 2000, 300), (30, 1500, 9999)].into_iter().enumerate() {
            f[rss as usize + i * 16..][..8].copy_from_slice(&t.to_le_bytes());
            f[rss as usize + i * 16 + 8..][..8].copy_from_slice(&r.to_le_bytes());
            f[own as usize + i * 8..][..8].copy_from_slice(&o.to_le_bytes());
        }
        f[hdr::RSS_COUNT..][..8].copy_from_slice(&3u64.to_le_bytes());
        f[hdr::RSS_PEAK_BYTES..][..8].copy_from_slice(&2500u64.to_le_bytes());
        f[hdr::RSS_PEAK_NS..][..8].copy_from_slice(&15u64.to_le_bytes());
        let t = Trace::parse(&f).unwrap();
        let got: Vec<(u64, u64)> = t.rss.iter().map(|s| (s.rss_bytes, s.own_bytes)).collect();
        assert_eq!(got, [(1000, 100), (2000, 300), (1500, 1500)]);
        assert_eq!((t.header.rss_peak_bytes, t.header.rss_peak_ns), (2500, 15));
        // As a 1.0 writer left it: no region 5.
        f[hdr::REGIONS + 5 * 16..][..16].fill(0);
        let t = Trace::parse(&f).unwrap();
        assert!(t.rss.iter().all(|s| s.own_bytes == 0) && t.rss.len() == 3);
    }

    #[test]
    fn word_encoding_is_the_byte_layout_and_checks() {
        let e = Event {
            seq: 0,
            time_ns: 0x0102_0304_0506_0708,
            addr: 0x7f00_dead_bee0,
            size: 4096,
            stack_id: 77,
            mean_bytes: 524_288,
            tid: 4242,
            kind: layout::EventKind::Free,
            api: layout::Api::Realloc,
        };
        let rec = e.encode(9);
        // The byte layout of FORMAT.md, field by field.
        assert_eq!(u64_at(&rec, ev::SEQ), 9);
        assert_eq!(u64_at(&rec, ev::ADDR), e.addr);
        assert_eq!(u32_at(&rec, ev::STACK_ID), 77);
        assert_eq!(u32_at(&rec, ev::MEAN_BYTES), 524_288);
        assert_eq!(u32_at(&rec, ev::TID), 4242);
        assert_eq!((rec[ev::KIND], rec[ev::API]), (layout::EventKind::Free as u8, layout::Api::Realloc as u8));
        // The check is the byte-wise one readers verify, and the value traces written before the
        // word-wise encoder carry (the mix chain over bytes 0..40, then 40..46).
        assert_eq!(u16_at(&rec, ev::CHECK), layout::record_check(&rec));
        assert_eq!(u16_at(&rec, ev::CHECK), 0xda5f);
        assert_eq!(Event::decode(&rec), Some(Event { seq: 9, ..e }));
    }

    #[test]
    fn records_far_past_the_head_are_left_out_but_the_rest_stay_in_order() {
        let file = synthetic(8 << 20, 0, 0);
        let cap = Trace::parse(&file).unwrap().header.ring_capacity;
        assert!(cap > MAX_LATE_EVENTS as u64 + 10_000, "the ring holds more than a lap of late records");
        // Writers committed 70,000 records, a lap and more, after the reader took the header.
        let written = cap + 1000;
        let head = written - 70_000;
        let file = synthetic(8 << 20, written, head);
        let t = Trace::parse(&file).unwrap();
        let seqs: Vec<u64> = t.events.iter().map(|e| e.seq).collect();
        let expected: Vec<u64> = (written - cap + 1..=head + MAX_LATE_EVENTS as u64).collect();
        assert_eq!(seqs, expected);
        assert_eq!(t.readable_events, expected.len() as u64);
        assert_eq!(t.end_ns(), head + MAX_LATE_EVENTS as u64);
        let mut events = t.events(&file);
        events.by_ref().for_each(drop);
        assert_eq!(events.late_left_out(), 70_000 - MAX_LATE_EVENTS as u64);
        assert_eq!(t.health.torn_events, 0);
        assert!(t.health.notes.iter().any(|n| n.contains("committed after the ring head")), "{:?}", t.health.notes);
    }

    #[test]
    fn sampling_since_follows_pauses() {
        let change = |t_ns, mean_bytes| SamplingChange { t_ns, mean_bytes };
        let mut t = Trace::default();
        assert_eq!(t.sampling_since(), Some(0));
        t.sampling = vec![change(0, 4096)];
        assert_eq!(t.sampling_since(), Some(0));
        t.sampling = vec![change(0, 4096), change(0, 0), change(50, 4096), change(70, 1)];
        assert_eq!(t.sampling_since(), Some(50));
        assert_eq!(t.mean_bytes_at(60), 4096);
        t.sampling.push(change(90, 0));
        assert_eq!(t.sampling_since(), None);
        assert_eq!(t.mean_bytes_at(95), 0);
    }
}
