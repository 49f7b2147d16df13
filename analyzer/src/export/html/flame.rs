//! The flame graph of unfreed bytes, as an icicle: "all" at the top, outermost callers below it,
//! allocating frames deepest. Each box carries its geometry and full name in `data-` attributes
//! for the zoom in `script.js`.

use std::collections::BTreeMap;

use maud::{html, Markup};

use super::fin;
use crate::export::{stack_outermost_first, whole};
use crate::report::{human_bytes, Report};

struct Node {
    name: String,
    bytes: u64,
    growing_bytes: u64,
    children: BTreeMap<String, usize>,
}

const FLAME_W: f64 = 1100.0;
const FLAME_ROW: f64 = 20.0;
/// Deeper frames are cut off (a trace allows 128 return addresses, each with inlined frames).
const FLAME_MAX_DEPTH: usize = 160;
/// Narrower boxes are not drawn (in viewBox units; the page is about 1100 px wide).
const FLAME_MIN_W: f64 = 0.1;
const FLAME_MAX_BOXES: usize = 20_000;
/// Advance of one character of the 12-unit monospace label font.
const FLAME_CHAR_W: f64 = 7.3;

/// Warm colours, redder as more of the box's bytes come from growing sites; a little variation
/// by name keeps neighbours apart.
pub(super) fn flame_color(name: &str, growing_share: f64) -> String {
    let h = leaktrace_format::layout::fnv1a_32(name.as_bytes());
    let share = fin(growing_share).clamp(0.0, 1.0);
    let hue = 44.0 - 40.0 * share + f64::from(h % 9) - 4.0;
    let sat = 70.0 + f64::from((h >> 8) % 16);
    let light = 62.0 + f64::from((h >> 16) % 10) - 6.0 * share;
    format!("hsl({hue:.0},{sat:.0}%,{light:.0}%)")
}

fn fit_label(name: &str, width: f64) -> String {
    let chars = ((width - 6.0) / FLAME_CHAR_W).floor();
    if chars.is_nan() || chars < 3.0 {
        return String::new();
    }
    let chars = chars as usize;
    if name.chars().count() <= chars {
        name.to_string()
    } else {
        name.chars().take(chars.saturating_sub(2)).chain("..".chars()).collect()
    }
}

/// The call tree of every site's unfreed bytes; node 0 is "all".
fn tree(report: &Report) -> Vec<Node> {
    let mut nodes = vec![Node { name: "all".into(), bytes: 0, growing_bytes: 0, children: BTreeMap::new() }];
    for s in &report.sites {
        let b = whole(s.unfreed_bytes);
        if b == 0 {
            continue;
        }
        let g = if s.growing { b } else { 0 };
        let mut cur = 0usize;
        nodes[0].bytes = nodes[0].bytes.saturating_add(b);
        nodes[0].growing_bytes = nodes[0].growing_bytes.saturating_add(g);
        for label in stack_outermost_first(s).into_iter().take(FLAME_MAX_DEPTH) {
            let next = match nodes[cur].children.get(&label) {
                Some(&i) => i,
                None => {
                    nodes.push(Node { name: label.clone(), bytes: 0, growing_bytes: 0, children: BTreeMap::new() });
                    let i = nodes.len() - 1;
                    nodes[cur].children.insert(label, i);
                    i
                }
            };
            nodes[next].bytes = nodes[next].bytes.saturating_add(b);
            nodes[next].growing_bytes = nodes[next].growing_bytes.saturating_add(g);
            cur = next;
        }
    }
    nodes
}

pub(super) fn flame_graph(report: &Report) -> Markup {
    let nodes = tree(report);
    let total = nodes[0].bytes;
    if total == 0 {
        return html! { p class="muted" { "Nothing unfreed to draw." } };
    }

    // Lay out depth-first, biggest child first, without recursion.
    let mut boxes: Vec<(usize, f64, f64, usize)> = Vec::new(); // (node, x, width, depth)
    let mut todo = vec![(0usize, 0.0f64, 0usize)];
    let mut max_depth = 0;
    while let Some((n, x, depth)) = todo.pop() {
        let w = nodes[n].bytes as f64 / total as f64 * FLAME_W;
        if w < FLAME_MIN_W || boxes.len() >= FLAME_MAX_BOXES {
            continue;
        }
        boxes.push((n, x, w, depth));
        max_depth = max_depth.max(depth);
        let mut kids: Vec<usize> = nodes[n].children.values().copied().collect();
        kids.sort_by(|&a, &b| nodes[b].bytes.cmp(&nodes[a].bytes).then_with(|| nodes[a].name.cmp(&nodes[b].name)));
        let mut cx = x;
        let mut placed = Vec::with_capacity(kids.len());
        for k in kids {
            placed.push((k, cx, depth + 1));
            cx += nodes[k].bytes as f64 / total as f64 * FLAME_W;
        }
        todo.extend(placed.into_iter().rev());
    }

    let height = (max_depth + 1) as f64 * FLAME_ROW;
    html! {
        svg id="flame" class="flame" viewBox={ "0 0 " (FLAME_W) " " (height) } width="100%" data-w=(FLAME_W) role="img"
            aria-label="flame graph of unfreed bytes" {
            @for (n, x, w, depth) in boxes {
                @let node = &nodes[n];
                @let y = depth as f64 * FLAME_ROW;
                g class="f" data-x=(format!("{x:.3}")) data-w=(format!("{w:.3}")) data-d=(depth) data-n=(node.name) {
                    title {
                        (node.name) "\n" (human_bytes(node.bytes as f64))
                        " (" (format!("{:.1}", node.bytes as f64 / total as f64 * 100.0)) "% of unfreed)"
                        @if node.growing_bytes > 0 {
                            ", " (human_bytes(node.growing_bytes as f64)) " in growing sites"
                        }
                    }
                    rect x=(format!("{x:.2}")) y=(format!("{y:.1}")) width=(format!("{:.2}", (w - 0.5).max(0.05)))
                        height=(format!("{:.1}", FLAME_ROW - 1.0))
                        fill=(if n == 0 {
                            "#c9ced6".to_string()
                        } else {
                            flame_color(&node.name, node.growing_bytes as f64 / node.bytes.max(1) as f64)
                        })
                        rx="2" {}
                    text x=(format!("{:.2}", x + 3.0)) y=(format!("{:.1}", y + 14.0)) { (fit_label(&node.name, w)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fit_their_boxes() {
        assert_eq!(fit_label("remember_session", 400.0), "remember_session");
        assert_eq!(fit_label("remember_session", 60.0), "remem..");
        assert_eq!(fit_label("remember_session", 10.0), "");
        assert_eq!(fit_label("ééééé", 30.0), "é..");
    }
}
