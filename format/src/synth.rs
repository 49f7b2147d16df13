//! A writer of synthetic trace files, for tests (feature `synth`).
//!
//! [`TraceBuilder`] lays out a file as the writer would (header, metadata log, stack table,
//! live table, RSS series and its own-memory series, ring) from values a test chooses, so that
//! reader and analyzer logic can be tested on exact inputs without running a program under the
//! preload. Every header field is set through [`TraceBuilder::header`], which [`Header::encode`]
//! writes back byte for byte as [`Header::parse`] reads it.

use crate::layout::{self, hdr, live, Region, EVENT_SIZE, HEADER_SIZE, LIVE_SLOT_SIZE};
use crate::reader::{Event, Header, LiveAllocation, RssSample};
use crate::records::{MetaKind, ModuleRecord, ProcessInfo, SamplingChange};

impl Header {
    /// The header's 4096 bytes, every field where [`Header::parse`] reads it (the inverse of
    /// `parse` for any header it accepts).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(hdr::MAGIC, &layout::MAGIC);
        put(hdr::VERSION_MAJOR, &self.version_major.to_le_bytes());
        put(hdr::VERSION_MINOR, &self.version_minor.to_le_bytes());
        put(hdr::HEADER_SIZE, &(HEADER_SIZE as u32).to_le_bytes());
        put(hdr::FILE_SIZE, &self.file_size.to_le_bytes());
        put(hdr::PID, &self.pid.to_le_bytes());
        put(hdr::POINTER_SIZE, &8u32.to_le_bytes());
        put(hdr::START_UNIX_NS, &self.start_unix_ns.to_le_bytes());
        put(hdr::START_MONO_NS, &self.start_mono_ns.to_le_bytes());
        put(hdr::PAGE_SIZE, &self.page_size.to_le_bytes());
        put(hdr::INITIAL_MEAN_BYTES, &self.initial_mean_bytes.to_le_bytes());
        for (i, (off, len)) in self.regions.iter().enumerate() {
            put(hdr::REGIONS + i * 16, &off.to_le_bytes());
            put(hdr::REGIONS + i * 16 + 8, &len.to_le_bytes());
        }
        put(hdr::LIVE_CAPACITY, &self.live_capacity.to_le_bytes());
        put(hdr::RING_CAPACITY, &self.ring_capacity.to_le_bytes());
        put(hdr::RSS_CAPACITY, &self.rss_capacity.to_le_bytes());
        put(hdr::STATE, &self.state.to_le_bytes());
        put(hdr::END_REASON, &self.end_reason.to_le_bytes());
        put(hdr::CURRENT_MEAN_BYTES, &self.current_mean_bytes.to_le_bytes());
        put(hdr::RING_HEAD, &self.ring_head.to_le_bytes());
        put(hdr::EVENTS_DROPPED, &self.events_dropped.to_le_bytes());
        put(hdr::META_USED, &self.meta_used.to_le_bytes());
        put(hdr::STACKS_USED, &self.stacks_used.to_le_bytes());
        put(hdr::LIVE_COUNT, &self.live_count.to_le_bytes());
        put(hdr::LIVE_DROPPED, &self.live_dropped.to_le_bytes());
        put(hdr::STACKS_DROPPED, &self.stacks_dropped.to_le_bytes());
        put(hdr::RSS_COUNT, &self.rss_count.to_le_bytes());
        put(hdr::RSS_INTERVAL_MS, &self.rss_interval_ms.to_le_bytes());
        put(hdr::HEARTBEAT_NS, &self.heartbeat_ns.to_le_bytes());
        put(hdr::END_NS, &self.end_ns.to_le_bytes());
        put(hdr::SAMPLED_ALLOCS, &self.sampled_allocs.to_le_bytes());
        put(hdr::SAMPLED_FREES, &self.sampled_frees.to_le_bytes());
        put(hdr::FAILURE, &self.failure.to_le_bytes());
        put(hdr::UNWINDER, &self.unwinder.to_le_bytes());
        put(hdr::SKIPPED_NO_STACK, &self.skipped_no_stack.to_le_bytes());
        put(hdr::CFI_STACKS, &self.cfi_stacks.to_le_bytes());
        put(hdr::LIBGCC_STACKS, &self.libgcc_stacks.to_le_bytes());
        put(hdr::CONTROL_ACK_SEQ, &self.control_ack_seq.to_le_bytes());
        put(hdr::CONTROL_RESULT, &self.control_result.to_le_bytes());
        put(hdr::RESERVED_BYTES, &self.reserved_bytes.to_le_bytes());
        put(hdr::RSS_PEAK_BYTES, &self.rss_peak_bytes.to_le_bytes());
        put(hdr::RSS_PEAK_NS, &self.rss_peak_ns.to_le_bytes());
        put(hdr::CHILDREN_TRACED, &self.children_traced.to_le_bytes());
        put(hdr::CHILDREN_UNTRACED_BUDGET, &self.children_untraced_budget.to_le_bytes());
        put(hdr::CHILDREN_REMOVED, &self.children_removed.to_le_bytes());
        put(hdr::TREE_BUDGET, &self.tree_budget.to_le_bytes());
        put(hdr::TREE_ID, &self.tree_id.to_le_bytes());
        put(hdr::ATTACH_UNIX_NS, &self.attach_unix_ns.to_le_bytes());
        b
    }
}

/// A synthetic trace, built up by a test and written out by [`TraceBuilder::build`].
///
/// Defaults: format 1.1, exact sampling (mean 1), tracing, pid 4242, the writer's split of the
/// file. Counters that follow from the content (ring head, sampled counts, live count, RSS
/// count, metadata and stack bytes used) are filled in by `build` unless the test set them
/// (non-zero) in [`TraceBuilder::header`] already.
#[derive(Clone, Debug)]
pub struct TraceBuilder {
    /// Every header field; the region table and capacities come from the file size's plan.
    pub header: Header,
    pub process: Option<ProcessInfo>,
    pub modules: Vec<ModuleRecord>,
    pub sampling: Vec<SamplingChange>,
    /// Stacks, in id order (see [`TraceBuilder::stack`]).
    stacks: Vec<u8>,
    /// Ring events in sequence order (the oldest are overwritten if more than fit).
    pub events: Vec<Event>,
    /// The live table's entries.
    pub live: Vec<LiveAllocation>,
    /// The RSS series, `own_bytes` going to the own-memory series (format 1.1).
    pub rss: Vec<RssSample>,
}

impl TraceBuilder {
    /// A trace of `file_size` bytes (the writer's plan for that size; panics if out of range).
    pub fn new(file_size: u64) -> TraceBuilder {
        let plan = layout::Plan::for_file_size(file_size).expect("file size in the writer's range");
        let header = Header {
            version_major: layout::VERSION_MAJOR,
            version_minor: layout::VERSION_MINOR,
            file_size,
            pid: 4242,
            start_unix_ns: 1_700_000_000_000_000_000,
            start_mono_ns: 1_000_000_000,
            page_size: 4096,
            initial_mean_bytes: 1,
            regions: plan.regions,
            live_capacity: plan.live_capacity,
            ring_capacity: plan.ring_capacity,
            rss_capacity: plan.rss_capacity,
            state: layout::TraceState::Tracing as u32,
            current_mean_bytes: 1,
            rss_interval_ms: 1000,
            unwinder: layout::UnwinderInUse::Dwarf as u32,
            reserved_bytes: file_size,
            ..Header::default()
        };
        TraceBuilder {
            header,
            process: Some(ProcessInfo {
                pid: 4242,
                ppid: 1,
                exe: "/usr/bin/synthetic".into(),
                cmdline: vec!["synthetic".into(), "--serve".into()],
                hostname: "testhost".into(),
                tracer_version: "synth".into(),
                unwinder: "dwarf".into(),
            }),
            modules: Vec::new(),
            sampling: vec![SamplingChange { t_ns: 0, mean_bytes: 1 }],
            stacks: vec![0u8; layout::STACK_ALIGN],
            events: Vec::new(),
            live: Vec::new(),
            rss: Vec::new(),
        }
    }

    /// As a format 1.0 writer would have left it: minor version 0, no own-memory region (the
    /// ring follows the RSS series), every 1.1 header field zero. Call before adding content.
    pub fn version_1_0(mut self) -> TraceBuilder {
        let h = &mut self.header;
        h.version_minor = 0;
        let (rss_off, rss_len) = h.regions[Region::Rss as usize];
        let ring_off = rss_off + rss_len;
        let ring_capacity = (h.file_size - ring_off) / EVENT_SIZE as u64;
        h.regions[Region::RssOwn as usize] = (0, 0);
        h.regions[Region::Ring as usize] = (ring_off, ring_capacity * EVENT_SIZE as u64);
        h.ring_capacity = ring_capacity;
        h.reserved_bytes = 0;
        self
    }

    /// The sampling mean at start and now (also the start's sampling change).
    pub fn mean_bytes(mut self, mean: u64) -> TraceBuilder {
        self.header.initial_mean_bytes = mean;
        self.header.current_mean_bytes = mean;
        self.sampling = vec![SamplingChange { t_ns: 0, mean_bytes: mean }];
        self
    }

    /// The process ran its exit handlers at `t_ns`.
    pub fn exited_at(mut self, t_ns: u64) -> TraceBuilder {
        self.header.end_reason = layout::EndReason::Exit as u32;
        self.header.end_ns = t_ns;
        self
    }

    /// Store a stack (innermost frame first, 1..=128 frames) and return its id.
    pub fn stack(&mut self, frames: &[u64]) -> u32 {
        assert!((1..=layout::MAX_FRAMES).contains(&frames.len()));
        let id = (self.stacks.len() / layout::STACK_ALIGN) as u32;
        let head = layout::stack_head(frames.len() as u16, layout::stack_check(frames));
        self.stacks.extend_from_slice(&head.to_le_bytes());
        for f in frames {
            self.stacks.extend_from_slice(&f.to_le_bytes());
        }
        id
    }

    /// A sampled allocation at `t_ns`: an alloc event, and a live-table entry until it is freed.
    pub fn alloc(&mut self, t_ns: u64, addr: u64, size: u64, stack_id: u32) {
        let mean = self.mean_at(t_ns);
        self.events.push(Event {
            seq: 0,
            time_ns: t_ns,
            addr,
            size,
            stack_id,
            mean_bytes: mean,
            tid: self.header.pid,
            kind: layout::EventKind::Alloc,
            api: layout::Api::Malloc,
        });
        self.live.retain(|a| a.addr != addr);
        self.live.push(LiveAllocation { addr, size, time_ns: t_ns, stack_id, mean_bytes: mean });
    }

    /// The free at `t_ns` of the live sampled allocation at `addr` (ignored if there is none,
    /// as the writer ignores frees of unsampled blocks).
    pub fn free(&mut self, t_ns: u64, addr: u64) {
        let Some(i) = self.live.iter().position(|a| a.addr == addr) else { return };
        let a = self.live.remove(i);
        self.events.push(Event {
            seq: 0,
            time_ns: t_ns,
            addr,
            size: a.size,
            stack_id: a.stack_id,
            mean_bytes: a.mean_bytes,
            tid: self.header.pid,
            kind: layout::EventKind::Free,
            api: layout::Api::Free,
        });
    }

    /// An RSS sample, `own` bytes of it leaktrace's own.
    pub fn rss(&mut self, t_ns: u64, rss_bytes: u64, own_bytes: u64) {
        self.rss.push(RssSample { t_ns, rss_bytes, own_bytes });
    }

    fn mean_at(&self, t_ns: u64) -> u32 {
        let mean =
            self.sampling.iter().rfind(|s| s.t_ns <= t_ns).map_or(self.header.initial_mean_bytes, |s| s.mean_bytes);
        u32::try_from(mean.max(1)).unwrap_or(u32::MAX)
    }

    /// The file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut h = self.header.clone();
        let mut f = vec![0u8; h.file_size as usize];
        let region = |h: &Header, r: Region| {
            let (off, len) = h.regions[r as usize];
            (off as usize, len as usize)
        };

        // Metadata log.
        let (meta_off, meta_len) = region(&h, Region::Meta);
        let mut meta = Vec::new();
        if let Some(p) = &self.process {
            push_meta(&mut meta, MetaKind::Process, p);
        }
        for m in &self.modules {
            push_meta(&mut meta, MetaKind::Module, m);
        }
        for s in &self.sampling {
            push_meta(&mut meta, MetaKind::Sampling, s);
        }
        assert!(meta.len() <= meta_len, "metadata fits its region");
        f[meta_off..meta_off + meta.len()].copy_from_slice(&meta);
        if h.meta_used == 0 {
            h.meta_used = meta.len() as u64;
        }

        // Stack table.
        let (stacks_off, stacks_len) = region(&h, Region::Stacks);
        assert!(self.stacks.len() <= stacks_len, "stacks fit their region");
        f[stacks_off..stacks_off + self.stacks.len()].copy_from_slice(&self.stacks);
        if h.stacks_used == 0 {
            h.stacks_used = self.stacks.len() as u64;
        }

        // Live table, placed where the writer's probe sequence would put each entry.
        let (live_off, _) = region(&h, Region::Live);
        for a in &self.live {
            let slot = layout::live_runs(a.addr, h.live_capacity)
                .flat_map(|run| (0..run.len).map(move |i| run.slot(i)))
                .find(|&s| {
                    let at = live_off + s as usize * LIVE_SLOT_SIZE;
                    f[at..at + 8] == [0u8; 8]
                })
                .expect("the live table has room");
            let at = live_off + slot as usize * LIVE_SLOT_SIZE;
            f[at + live::KEY..][..8].copy_from_slice(&a.addr.to_le_bytes());
            f[at + live::SIZE..][..8].copy_from_slice(&a.size.to_le_bytes());
            f[at + live::TIME_NS..][..8].copy_from_slice(&a.time_ns.to_le_bytes());
            f[at + live::STACK_ID..][..4].copy_from_slice(&a.stack_id.to_le_bytes());
            f[at + live::MEAN_BYTES..][..4].copy_from_slice(&a.mean_bytes.to_le_bytes());
        }

        // RSS series and leaktrace's own share of each sample.
        let (rss_off, rss_len) = region(&h, Region::Rss);
        let (own_off, own_len) = region(&h, Region::RssOwn);
        assert!(self.rss.len() * layout::RSS_SAMPLE_SIZE <= rss_len, "RSS samples fit their region");
        for (i, s) in self.rss.iter().enumerate() {
            let at = rss_off + i * layout::RSS_SAMPLE_SIZE;
            f[at..at + 8].copy_from_slice(&s.t_ns.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&s.rss_bytes.to_le_bytes());
            // A test may point region 5 anywhere: write what lies inside the file.
            let at = own_off.saturating_add(i * layout::RSS_OWN_SIZE);
            if (i + 1) * layout::RSS_OWN_SIZE <= own_len {
                if let Some(dst) = f.get_mut(at..at.saturating_add(8)) {
                    dst.copy_from_slice(&s.own_bytes.to_le_bytes());
                }
            }
        }
        if h.rss_count == 0 {
            h.rss_count = self.rss.len() as u64;
        }

        // Ring: event n (1-based) has sequence number n, the newest overwrite the oldest.
        let (ring_off, _) = region(&h, Region::Ring);
        let cap = h.ring_capacity;
        let n = self.events.len() as u64;
        for (i, e) in self.events.iter().enumerate().skip(n.saturating_sub(cap) as usize) {
            let seq = i as u64 + 1;
            let at = ring_off + ((seq - 1) % cap) as usize * EVENT_SIZE;
            f[at..at + EVENT_SIZE].copy_from_slice(&e.encode(seq));
        }
        if h.ring_head == 0 {
            h.ring_head = n;
        }
        let allocs = self.events.iter().filter(|e| e.kind == layout::EventKind::Alloc).count() as u64;
        if h.sampled_allocs == 0 {
            h.sampled_allocs = allocs;
        }
        if h.sampled_frees == 0 {
            h.sampled_frees = n - allocs;
        }
        if h.live_count == 0 {
            h.live_count = self.live.len() as u64;
        }
        if h.heartbeat_ns == 0 {
            let last = self.events.iter().map(|e| e.time_ns).chain(self.rss.iter().map(|s| s.t_ns)).max();
            h.heartbeat_ns = last.unwrap_or(0);
        }
        f[..HEADER_SIZE].copy_from_slice(&h.encode());
        f
    }
}

/// Append one framed metadata record to `out`.
fn push_meta<T: serde::Serialize>(out: &mut Vec<u8>, kind: MetaKind, value: &T) {
    let mut buf = vec![0u8; 1 << 16];
    let n = crate::encode_meta(kind, value, &mut buf).expect("metadata record fits 64 KiB");
    out.extend_from_slice(&buf[..n]);
}
