//! Reading a trace file that may be truncated, torn by a kill, still being written, or hostile.
//!
//! The reader never trusts a number from the file to size an allocation: every count is first
//! bounded by the bytes actually present. Damage it can step over is counted in [`Health`];
//! damage it cannot (no header, wrong magic, a newer major version) is a [`FormatError`].

use crate::layout::{self, ev, hdr, live, Region, EVENT_SIZE, HEADER_SIZE, LIVE_SLOT_SIZE};
use crate::records::{MetaKind, ModuleRecord, ModuleUnloaded, ProcessInfo, SamplingChange};
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
        rec[ev::SEQ..ev::SEQ + 8].copy_from_slice(&seq.to_le_bytes());
        rec[ev::TIME_NS..ev::TIME_NS + 8].copy_from_slice(&self.time_ns.to_le_bytes());
        rec[ev::ADDR..ev::ADDR + 8].copy_from_slice(&self.addr.to_le_bytes());
        rec[ev::SIZE..ev::SIZE + 8].copy_from_slice(&self.size.to_le_bytes());
        rec[ev::STACK_ID..ev::STACK_ID + 4].copy_from_slice(&self.stack_id.to_le_bytes());
        rec[ev::MEAN_BYTES..ev::MEAN_BYTES + 4].copy_from_slice(&self.mean_bytes.to_le_bytes());
        rec[ev::TID..ev::TID + 4].copy_from_slice(&self.tid.to_le_bytes());
        rec[ev::KIND] = self.kind as u8;
        rec[ev::API] = self.api as u8;
        let check = layout::record_check(&rec);
        rec[ev::CHECK..ev::CHECK + 2].copy_from_slice(&check.to_le_bytes());
        rec
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
        self.truncated
            || self.torn_events > 0
            || self.torn_meta_records > 0
            || self.torn_live_slots > 0
    }
}

/// A fully decoded trace.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub header: Header,
    pub process: Option<ProcessInfo>,
    pub modules: Vec<ModuleRecord>,
    pub unloaded: Vec<ModuleUnloaded>,
    pub sampling: Vec<SamplingChange>,
    /// Valid ring events, in sequence order.
    pub events: Vec<Event>,
    pub live: Vec<LiveAllocation>,
    pub rss: Vec<RssSample>,
    pub health: Health,
    stacks: Vec<u8>,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
    })
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
            ..Header::default()
        };
        if h.version_major != layout::VERSION_MAJOR {
            return Err(FormatError::UnsupportedVersion {
                major: h.version_major,
                minor: h.version_minor,
            });
        }
        if u32_at(bytes, hdr::HEADER_SIZE) as usize != HEADER_SIZE {
            return Err(FormatError::BadHeader("header size field is not 4096".into()));
        }
        if !(layout::MIN_FILE_SIZE..=layout::MAX_FILE_SIZE).contains(&h.file_size) {
            return Err(FormatError::BadHeader(format!(
                "file size field {} is out of range",
                h.file_size
            )));
        }
        let mut prev_end = HEADER_SIZE as u64;
        for i in 0..layout::REGION_COUNT {
            let off = u64_at(bytes, hdr::REGIONS + i * 16);
            let len = u64_at(bytes, hdr::REGIONS + i * 16 + 8);
            let in_order = i >= 5 || off >= prev_end;
            let end = off.checked_add(len);
            if !in_order || end.is_none_or(|e| e > h.file_size) {
                return Err(FormatError::BadHeader(format!(
                    "region {i} ({off:#x}+{len:#x}) lies outside the file"
                )));
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

    pub fn ended_cleanly(&self) -> bool {
        self.end_reason == layout::EndReason::Exit as u32
    }
}

/// The bytes of region `r` actually present in the file (may be short if truncated).
fn region_bytes<'a>(bytes: &'a [u8], h: &Header, r: Region) -> &'a [u8] {
    let (off, len) = h.region(r);
    let start = (off as usize).min(bytes.len());
    let end = (off.saturating_add(len) as usize).min(bytes.len());
    &bytes[start..end]
}

impl Trace {
    /// Decode a whole trace from its bytes.
    pub fn parse(bytes: &[u8]) -> Result<Trace, FormatError> {
        let header = Header::parse(bytes)?;
        let mut t = Trace { header, ..Trace::default() };
        if (bytes.len() as u64) < t.header.file_size {
            t.health.truncated = true;
            t.health.missing_bytes = t.header.file_size - bytes.len() as u64;
            t.health.notes.push(format!(
                "file is {} bytes short of the {} its header declares; regions past the end are lost",
                t.health.missing_bytes, t.header.file_size
            ));
        }
        t.read_meta(region_bytes(bytes, &t.header, Region::Meta));
        let stacks = region_bytes(bytes, &t.header, Region::Stacks);
        let used = (t.header.stacks_used as usize).min(stacks.len());
        t.stacks = stacks[..used].to_vec();
        t.read_live(region_bytes(bytes, &t.header, Region::Live));
        t.read_ring(region_bytes(bytes, &t.header, Region::Ring));
        t.read_rss(region_bytes(bytes, &t.header, Region::Rss));
        Ok(t)
    }

    fn read_meta(&mut self, region: &[u8]) {
        let used = (self.header.meta_used as usize).min(region.len());
        let mut pos = 0usize;
        while pos + layout::META_HEAD_SIZE <= used {
            let len = u32_at(region, pos) as usize;
            let kind = u16_at(region, pos + 4);
            let check = u32_at(region, pos + 8);
            let body_start = pos + layout::META_HEAD_SIZE;
            if len == 0 || body_start + len > used {
                // A writer reserved this space but never committed it: everything after is unframed.
                self.health.torn_meta_records += 1;
                self.health.torn_meta_bytes += (used - pos) as u64;
                self.health.notes.push(format!(
                    "metadata record at byte {pos:#x} of its region is torn; skipped {} bytes",
                    used - pos
                ));
                return;
            }
            let payload = &region[body_start..body_start + len];
            let next = body_start + layout::align_up(len as u64, 8) as usize;
            if layout::meta_check(payload) != check {
                self.health.torn_meta_records += 1;
                self.health.torn_meta_bytes += (next - pos) as u64;
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
                None => {} // a record kind from a newer minor version: skip it
            }
            pos = next;
        }
    }

    fn read_live(&mut self, region: &[u8]) {
        let slots = (self.header.live_capacity as usize).min(region.len() / LIVE_SLOT_SIZE);
        for i in 0..slots {
            let s = &region[i * LIVE_SLOT_SIZE..(i + 1) * LIVE_SLOT_SIZE];
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

    fn read_ring(&mut self, region: &[u8]) {
        let cap = self.header.ring_capacity;
        let slots = (cap as usize).min(region.len() / EVENT_SIZE);
        let head = self.header.ring_head;
        // Sequence numbers a complete ring would hold now: (head - cap, head].
        let oldest_kept = head.saturating_sub(cap) + 1;
        self.health.overwritten_events = head.saturating_sub(cap);
        let mut torn = 0u64;
        for i in 0..slots {
            let raw: &[u8; EVENT_SIZE] = match region[i * EVENT_SIZE..(i + 1) * EVENT_SIZE].try_into()
            {
                Ok(r) => r,
                Err(_) => break,
            };
            let seq = u64_at(raw, ev::SEQ);
            // A slot never reached by the writer, in a ring that has not wrapped yet.
            if seq == 0 && (i as u64) >= head {
                continue;
            }
            let valid_slot = seq != 0 && (seq - 1) % cap == i as u64;
            // Writers may commit a little past the head we read; the ring can only be a lap ahead.
            let in_window = seq >= oldest_kept && seq <= head.saturating_add(cap);
            match Event::decode(raw).filter(|_| valid_slot && in_window) {
                Some(e) => self.events.push(e),
                None => {
                    // Reserved by a writer that has not (or never) committed it, or damaged.
                    if (i as u64) < head {
                        torn += 1;
                    }
                }
            }
        }
        self.health.torn_events = torn;
        if torn > 0 {
            self.health.notes.push(format!(
                "{torn} ring records were torn (killed or still being written) and were skipped"
            ));
        }
        self.events.sort_unstable_by_key(|e| e.seq);
    }

    fn read_rss(&mut self, region: &[u8]) {
        let n = (self.header.rss_count.min(self.header.rss_capacity) as usize)
            .min(region.len() / layout::RSS_SAMPLE_SIZE);
        let mut last = 0u64;
        for i in 0..n {
            let t_ns = u64_at(region, i * 16);
            let rss_bytes = u64_at(region, i * 16 + 8);
            if (i > 0 && t_ns <= last) || rss_bytes == 0 {
                self.health.bad_rss_samples += 1;
                continue;
            }
            last = t_ns;
            self.rss.push(RssSample { t_ns, rss_bytes });
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
        self.sampling
            .iter().rfind(|s| s.t_ns <= t_ns)
            .map_or(self.header.initial_mean_bytes, |s| s.mean_bytes)
    }

    /// The last moment the trace knows of: the clean exit, else the newest event, RSS sample or
    /// background heartbeat.
    pub fn end_ns(&self) -> u64 {
        if self.header.ended_cleanly() && self.header.end_ns > 0 {
            return self.header.end_ns;
        }
        let ev = self.events.last().map_or(0, |e| e.time_ns);
        let rss = self.rss.last().map_or(0, |r| r.t_ns);
        let live = self.live.last().map_or(0, |a| a.time_ns);
        ev.max(rss).max(live).max(self.header.heartbeat_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
