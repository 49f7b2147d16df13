//! `--format pprof`: a gzipped `profile.proto`, readable by `go tool pprof`, pprof's web UI,
//! speedscope, Pyroscope and most IDE profilers.
//!
//! - Sample types `inuse_objects/count` and `inuse_space/bytes` (the names Go's heap profiles
//!   use, so `-sample_index=inuse_space` and friends work), one sample per site, with labels
//!   `site` (its number in the report), `growing` and `growth_bytes_per_sec`.
//! - One Location per unique return address. Its `address` is the call instruction (return
//!   address − 1), the address symbolization looked up; its Line entries are the inlined frames,
//!   innermost first, the function holding the call last, as pprof expects.
//! - Functions are deduplicated by (name, file); Mappings are the trace's modules (path, GNU
//!   build ID in hex, the memory range their PT_LOAD segments span). `file_offset` is 0: the trace
//!   records segment addresses, not file offsets, and the first PT_LOAD of an ELF object starts
//!   at offset 0.
//! - IDs and the string table follow the report's order and ascending addresses; the gzip header
//!   carries no time stamp. The same trace gives byte-identical output.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::Result;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use leaktrace_format::ModuleRecord;

use super::proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use super::{group_by_address, module_of, whole};
use crate::analysis::Analysis;
use crate::report::{FrameOut, Report};

/// The string table: "" at index 0, then strings in first-use order.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        Strings { table: vec![String::new()], index: HashMap::from([(String::new(), 0)]) }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = i64::try_from(self.table.len()).unwrap_or(i64::MAX);
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The runtime address range `[start, limit)` a module's segments span.
fn module_range(m: &ModuleRecord) -> (u64, u64) {
    let start = m.segments.iter().map(|s| m.base.wrapping_add(s.vaddr)).min().unwrap_or(0);
    let limit = m.segments.iter().map(|s| m.base.wrapping_add(s.vaddr).saturating_add(s.memsz)).max().unwrap_or(0);
    (start, limit.max(start))
}

/// Build the profile message (not yet encoded).
pub fn build(report: &Report, analysis: &Analysis, modules: &[ModuleRecord]) -> Profile {
    let mut strings = Strings::new();
    let sample_type = vec![
        ValueType { r#type: strings.id("inuse_objects"), unit: strings.id("count") },
        ValueType { r#type: strings.id("inuse_space"), unit: strings.id("bytes") },
    ];
    let period_type = ValueType { r#type: strings.id("space"), unit: strings.id("bytes") };

    // Per-site stacks grouped by return address; every address's frames, first seen wins.
    let grouped: Vec<_> = report.sites.iter().map(|s| group_by_address(analysis, s)).collect();
    let mut frames_of: BTreeMap<u64, &[FrameOut]> = BTreeMap::new();
    for g in grouped.iter().flatten() {
        frames_of.entry(g.addr).or_insert(g.frames);
    }

    // Mappings: one per module, in the trace's order; remember which module each address is in.
    let mut mappings: Vec<Mapping> = modules
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (memory_start, memory_limit) = module_range(m);
            Mapping {
                id: i as u64 + 1,
                memory_start,
                memory_limit,
                file_offset: 0,
                filename: strings.id(&m.path),
                build_id: strings.id(&hex(&m.build_id)),
                ..Default::default()
            }
        })
        .collect();
    // Per mapping: (locations, locations with lines, whether any line has a file name, i.e. the
    // module had line tables; `_start` and friends have none even then).
    let mut resolved: Vec<(usize, usize, bool)> = vec![(0, 0, false); mappings.len()];

    let mut functions: Vec<Function> = Vec::new();
    let mut function_ids: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: Vec<Location> = Vec::with_capacity(frames_of.len());
    let mut location_ids: HashMap<u64, u64> = HashMap::with_capacity(frames_of.len());
    for (&addr, frames) in &frames_of {
        let id = locations.len() as u64 + 1;
        let mut lines = Vec::new();
        let mut any_file = false;
        for f in frames.iter() {
            let Some(name) = f.function.as_deref() else { continue };
            let file = f.file.as_deref().unwrap_or("");
            any_file |= !file.is_empty();
            let key = (name.to_string(), file.to_string());
            let function_id = match function_ids.get(&key) {
                Some(&fid) => fid,
                None => {
                    let fid = functions.len() as u64 + 1;
                    let name_id = strings.id(name);
                    functions.push(Function {
                        id: fid,
                        name: name_id,
                        system_name: name_id,
                        filename: strings.id(file),
                        start_line: 0,
                    });
                    function_ids.insert(key, fid);
                    fid
                }
            };
            lines.push(Line { function_id, line: f.line.map_or(0, i64::from), column: 0 });
        }
        let mapping = module_of(modules, addr);
        if let Some((mi, _)) = mapping {
            if let Some(r) = resolved.get_mut(mi) {
                r.0 += 1;
                r.1 += usize::from(!lines.is_empty());
                r.2 |= any_file;
            }
        }
        locations.push(Location {
            id,
            mapping_id: mapping.map_or(0, |(mi, _)| mi as u64 + 1),
            address: addr.saturating_sub(1),
            line: lines,
            is_folded: false,
        });
        location_ids.insert(addr, id);
    }
    for (m, &(locs, with_lines, files)) in mappings.iter_mut().zip(&resolved) {
        let symbolized = locs > 0 && with_lines == locs;
        m.has_functions = symbolized;
        m.has_filenames = symbolized && files;
        m.has_line_numbers = symbolized && files;
        m.has_inline_frames = symbolized;
    }

    let (k_site, k_growing, k_rate) = (strings.id("site"), strings.id("growing"), strings.id("growth_bytes_per_sec"));
    let (yes, no) = (strings.id("true"), strings.id("false"));
    let samples = report
        .sites
        .iter()
        .zip(&grouped)
        .map(|(s, g)| Sample {
            location_id: g.iter().filter_map(|a| location_ids.get(&a.addr).copied()).collect(),
            value: vec![to_i64(whole(s.unfreed_allocations)), to_i64(whole(s.unfreed_bytes))],
            label: vec![
                Label { key: k_site, num: to_i64(s.id as u64), ..Default::default() },
                Label { key: k_growing, str: if s.growing { yes } else { no }, ..Default::default() },
                Label {
                    key: k_rate,
                    num: if s.growth_bytes_per_sec.is_finite() { s.growth_bytes_per_sec.round() as i64 } else { 0 },
                    ..Default::default()
                },
            ],
        })
        .collect();

    let p = &report.process;
    let mut comment = vec![strings.id(&format!(
        "leaktrace: unfreed memory at the end of the trace of pid {}: {}",
        p.pid,
        p.cmdline.join(" ")
    ))];
    if report.partial {
        comment.push(strings.id("partial: the trace was damaged; figures cover what could be read"));
    }
    let default_sample_type = strings.id("inuse_space");
    Profile {
        sample_type,
        sample: samples,
        mapping: mappings,
        location: locations,
        function: functions,
        time_nanos: to_i64(p.start_unix_ns),
        duration_nanos: to_i64(p.duration_ns),
        period_type: Some(period_type),
        period: to_i64(report.sampling.mean_bytes),
        comment,
        default_sample_type,
        string_table: strings.table,
        ..Default::default()
    }
}

/// The gzipped, encoded profile.
pub fn render(report: &Report, analysis: &Analysis, modules: &[ModuleRecord]) -> Result<Vec<u8>> {
    let raw = build(report, analysis, modules).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 2 + 64), Compression::default());
    gz.write_all(&raw)?;
    Ok(gz.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_table_starts_empty_and_dedups() {
        let mut s = Strings::new();
        assert_eq!(s.id(""), 0);
        assert_eq!(s.id("a"), 1);
        assert_eq!(s.id("b"), 2);
        assert_eq!(s.id("a"), 1);
        assert_eq!(s.table, vec!["", "a", "b"]);
    }

    #[test]
    fn module_ranges_never_overflow() {
        let m = ModuleRecord {
            base: u64::MAX - 10,
            segments: vec![leaktrace_format::Segment { vaddr: 5, memsz: u64::MAX, flags: 0 }],
            ..Default::default()
        };
        let (start, limit) = module_range(&m);
        assert!(limit >= start);
        assert_eq!(module_range(&ModuleRecord::default()), (0, 0));
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }

    #[test]
    fn encodes_and_decodes() {
        let p = Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }],
            sample: vec![Sample { location_id: vec![1, 2], value: vec![42], label: vec![] }],
            string_table: vec!["".into(), "inuse_space".into(), "bytes".into()],
            ..Default::default()
        };
        let back = Profile::decode(p.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back, p);
    }
}
