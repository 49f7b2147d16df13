//! `--format folded`: collapsed stacks, the input of flamegraph.pl, inferno-flamegraph and
//! speedscope. One line per stack, frames outermost first joined by `;`, a space, then the
//! estimated unfreed bytes as an integer.
//!
//! Sites whose symbolized stacks read the same (different return addresses on the same lines)
//! are merged, as the collapse tools do; lines are sorted by stack, so the output is stable.

use std::collections::BTreeMap;

use super::{stack_outermost_first, whole};
use crate::report::Report;

/// Make a frame label safe for the line format: `;` separates frames and a newline separates
/// stacks, so neither may appear inside a name (C++ operator names can hold `;`-free spaces,
/// which the tools handle: they split the count off at the last space).
pub fn clean(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c == ';' {
                ':'
            } else if c.is_control() {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// Merged stacks (labels joined by `;`) with their unfreed bytes, sorted by stack.
pub fn stacks(report: &Report) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for s in &report.sites {
        let bytes = whole(s.unfreed_bytes);
        if bytes == 0 {
            continue;
        }
        let key = stack_outermost_first(s).iter().map(|l| clean(l)).collect::<Vec<_>>().join(";");
        let e = out.entry(key).or_insert(0);
        *e = e.saturating_add(bytes);
    }
    out
}

pub fn render(report: &Report) -> String {
    let mut o = String::new();
    for (stack, bytes) in stacks(report) {
        o.push_str(&stack);
        o.push(' ');
        o.push_str(&bytes.to_string());
        o.push('\n');
    }
    o
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn separators_cannot_be_smuggled_in() {
        assert_eq!(clean("a;b\nc"), "a:b?c");
        assert_eq!(
            clean("std::vector<int, std::allocator<int> >::push_back"),
            "std::vector<int, std::allocator<int> >::push_back"
        );
    }
}
