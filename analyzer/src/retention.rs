//! What holds each site's objects, from the last heap scan in the trace (`ctl --scan`): the
//! per-stack findings of the scanning child, gathered per site, its globals named by symbol,
//! its holding sites by the ids and names the report gives them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use leaktrace_format::{Retention, ScanOutcome, Trace};

use crate::symbolize::Symbolizer;

/// `sites[].retention` in the JSON.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RetentionOut {
    /// When the scan began, ns since the start of the trace.
    pub scanned_at_ns: u64,
    /// Sampled live objects of this site the scan examined.
    pub objects: u64,
    /// Of those, the ones no word of the process pointed into.
    pub unreferenced: u64,
    /// "unreferenced" (nothing points at 90% or more of them: a missing free), "held" (90% or
    /// more are referenced), or "mixed".
    pub verdict: String,
    /// Who points at the rest, most objects first; each object counts once, by its strongest
    /// holder (global, stack, another site, heap, other).
    pub held_by: Vec<HeldBy>,
    /// A few of the objects: address, size, first bytes in hex, printable text in them.
    pub samples: Vec<SampleOut>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HeldBy {
    Global {
        /// The global's symbol; null without a symbol table (then `module` and `module_offset`).
        symbol: Option<String>,
        module: String,
        module_offset: String,
        /// Where it is declared, where debug info says.
        file: Option<String>,
        line: Option<u32>,
        objects: u64,
    },
    Site {
        site_id: usize,
        /// The holding site's name, and what holds it in turn (one line, or null).
        name: String,
        held_by: Option<String>,
        objects: u64,
    },
    Stack {
        objects: u64,
    },
    Heap {
        objects: u64,
    },
    Other {
        objects: u64,
    },
}

impl HeldBy {
    pub fn objects(&self) -> u64 {
        match self {
            HeldBy::Global { objects, .. }
            | HeldBy::Site { objects, .. }
            | HeldBy::Stack { objects }
            | HeldBy::Heap { objects }
            | HeldBy::Other { objects } => *objects,
        }
    }

    /// A few words: "global `g_sessions`", "objects of #3 `map_grow`", "a thread's stack".
    pub fn describe(&self) -> String {
        match self {
            HeldBy::Global { symbol: Some(s), file: Some(f), line: Some(l), .. } => {
                format!("global `{s}` ({}:{l})", f.rsplit('/').next().unwrap_or(f))
            }
            HeldBy::Global { symbol: Some(s), .. } => format!("global `{s}`"),
            HeldBy::Global { module, module_offset, .. } => {
                format!("a global at {}+{module_offset}", module.rsplit('/').next().unwrap_or(module))
            }
            HeldBy::Site { site_id, name, held_by, .. } => match held_by {
                Some(h) => format!("objects of site #{site_id} ({name}), held by {h}"),
                None => format!("objects of site #{site_id} ({name})"),
            },
            HeldBy::Stack { .. } => "a thread's stack".to_string(),
            HeldBy::Heap { .. } => "heap memory no sampled object covers".to_string(),
            HeldBy::Other { .. } => "another mapping".to_string(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SampleOut {
    pub address: String,
    pub size: u64,
    pub hex: String,
    /// Printable runs of 4 or more characters, joined by " | ".
    pub text: String,
}

/// Per site (in `site_stack_ids` order, each the site's stack ids), its retention from the last
/// complete scan, or None. `names[i]` is site i's report id and name.
pub fn for_sites(
    trace: &Trace,
    symbolizer: &Symbolizer,
    site_stack_ids: &[&[u32]],
    names: &[(usize, String)],
) -> Vec<Option<RetentionOut>> {
    let Some(scan) = trace.scans.iter().rev().find(|s| s.outcome == ScanOutcome::Complete as u32) else {
        return vec![None; site_stack_ids.len()];
    };
    let mut by_stack: HashMap<u32, &Retention> = HashMap::new();
    for r in trace.retention.iter().filter(|r| r.scan_t_ns == scan.t_ns) {
        by_stack.insert(r.stack_id, r);
    }
    let mut site_of_stack: HashMap<u32, usize> = HashMap::new();
    for (i, ids) in site_stack_ids.iter().enumerate() {
        for &id in ids.iter() {
            site_of_stack.insert(id, i);
        }
    }
    // First pass: each site's own holders, with holding sites by index.
    let mut out: Vec<Option<RetentionOut>> = Vec::with_capacity(site_stack_ids.len());
    let mut holder_sites: Vec<Vec<(usize, u64)>> = Vec::with_capacity(site_stack_ids.len());
    for ids in site_stack_ids {
        let records: Vec<&Retention> = ids.iter().filter_map(|id| by_stack.get(id).copied()).collect();
        if records.is_empty() {
            out.push(None);
            holder_sites.push(Vec::new());
            continue;
        }
        let sum = |f: fn(&Retention) -> u32| records.iter().map(|r| u64::from(f(r))).sum::<u64>();
        let objects = sum(|r| r.objects);
        let unreferenced = sum(|r| r.unreferenced);
        let mut held_by = globals(&records, symbolizer);
        let mut sites: HashMap<usize, u64> = HashMap::new();
        for r in &records {
            let listed: u64 = r.sites.iter().map(|s| u64::from(s.objects)).sum();
            for s in &r.sites {
                if let Some(&i) = site_of_stack.get(&s.stack_id) {
                    *sites.entry(i).or_default() += u64::from(s.objects);
                }
            }
            // Holding stacks beyond the record's list: counted, not named.
            let unlisted = u64::from(r.by_site).saturating_sub(listed);
            if unlisted > 0 {
                held_by.push(HeldBy::Other { objects: unlisted });
            }
        }
        let mut sites: Vec<(usize, u64)> = sites.into_iter().collect();
        sites.sort_by_key(|&(i, n)| (std::cmp::Reverse(n), i));
        let others = [
            HeldBy::Stack { objects: sum(|r| r.by_stack) },
            HeldBy::Heap { objects: sum(|r| r.by_heap) },
            HeldBy::Other { objects: sum(|r| r.by_other) },
        ];
        held_by.extend(others.into_iter().filter(|h| h.objects() > 0));
        let samples = records
            .iter()
            .flat_map(|r| r.samples.iter())
            .take(leaktrace_format::RETENTION_SAMPLES)
            .map(sample)
            .collect();
        let verdict = if objects > 0 && unreferenced * 10 >= objects * 9 {
            "unreferenced"
        } else if objects > 0 && (objects - unreferenced) * 10 >= objects * 9 {
            "held"
        } else {
            "mixed"
        };
        let verdict = verdict.to_string();
        out.push(Some(RetentionOut { scanned_at_ns: scan.t_ns, objects, unreferenced, verdict, held_by, samples }));
        holder_sites.push(sites);
    }
    // Second pass: holding sites named, with what holds them in turn (one step: the chain
    // "global -> container's array -> entries" reads as one line).
    let strongest: Vec<Option<String>> = out
        .iter()
        .map(|r| {
            let r = r.as_ref()?;
            let top = r.held_by.iter().filter(|h| !matches!(h, HeldBy::Site { .. })).max_by_key(|h| h.objects());
            match top {
                Some(h) if h.objects() > 0 => Some(h.describe()),
                _ if r.verdict == "unreferenced" => Some("nothing (a missing free)".to_string()),
                _ => None,
            }
        })
        .collect();
    for (i, sites) in holder_sites.into_iter().enumerate() {
        let Some(r) = out[i].as_mut() else { continue };
        for (holder, n) in sites {
            let (site_id, name) = names.get(holder).cloned().unwrap_or((0, String::new()));
            let held_by = if holder == i { None } else { strongest.get(holder).cloned().flatten() };
            r.held_by.push(HeldBy::Site { site_id, name, held_by, objects: n });
        }
        r.held_by.sort_by_key(|h| std::cmp::Reverse(h.objects()));
    }
    out
}

/// The globals holding `records`' objects, by symbol: each record lists where the referencing
/// words of some of its global-held objects are; `by_global` is shared out in proportion.
fn globals(records: &[&Retention], symbolizer: &Symbolizer) -> Vec<HeldBy> {
    type Declared = (Option<String>, Option<u32>);
    let mut by_name: HashMap<(String, Option<String>), (u64, f64, Declared)> = HashMap::new();
    for r in records {
        let listed: u64 = r.globals.iter().map(|g| u64::from(g.objects)).sum();
        if listed == 0 {
            continue;
        }
        let scale = f64::from(r.by_global) / listed as f64;
        for g in &r.globals {
            let name = symbolizer.global_at(g.address);
            let (module, symbol, offset, declared) = match name {
                Some(n) => (n.module, n.symbol, n.module_offset - n.offset, (n.file, n.line)),
                None => (String::from("?"), None, g.address, (None, None)),
            };
            let e = by_name.entry((module, symbol)).or_insert((offset, 0.0, declared));
            e.0 = e.0.min(offset);
            e.1 += f64::from(g.objects) * scale;
        }
    }
    let mut v: Vec<HeldBy> = by_name
        .into_iter()
        .map(|((module, symbol), (offset, n, (file, line)))| HeldBy::Global {
            symbol,
            module,
            module_offset: format!("{offset:#x}"),
            file,
            line,
            objects: n.round() as u64,
        })
        .collect();
    v.sort_by_key(|h| std::cmp::Reverse(h.objects()));
    v
}

fn sample(s: &leaktrace_format::ObjectSample) -> SampleOut {
    let hex = s.bytes.iter().take(32).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    let mut runs = Vec::new();
    let mut cur = String::new();
    for &b in &s.bytes {
        if (0x20..0x7f).contains(&b) {
            cur.push(b as char);
        } else {
            if cur.len() >= 4 {
                runs.push(std::mem::take(&mut cur));
            }
            cur.clear();
        }
    }
    if cur.len() >= 4 {
        runs.push(cur);
    }
    SampleOut { address: format!("{:#x}", s.address), size: s.size, hex, text: runs.join(" | ") }
}

/// One line for the text report.
pub fn describe(r: &RetentionOut) -> String {
    let held = r.objects - r.unreferenced.min(r.objects);
    let top = r.held_by.first();
    match (r.verdict.as_str(), top) {
        ("unreferenced", _) => {
            format!("{} of {} sampled objects are referenced by nothing: a missing free", r.unreferenced, r.objects)
        }
        (_, Some(h)) => format!("{held} of {} sampled objects are held; most by {}", r.objects, h.describe()),
        _ => format!("{held} of {} sampled objects are held", r.objects),
    }
}
