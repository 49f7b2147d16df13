//! `--format html`: one self-contained page (inline CSS, SVG and a few lines of JS; nothing is
//! fetched, and a Content-Security-Policy forbids fetching anything) with the verdict, RSS and
//! estimated live heap over time, the table of sites with sparklines and expandable stacks, and an
//! icicle flame graph of the unfreed bytes.
//!
//! The markup is maud templates (`page`, `chart`, `flame`): every value spliced into them is
//! escaped unless wrapped in `PreEscaped`, which only the static `style.css` and `script.js` and
//! markup built by other templates are. No trace string is ever placed inside the script: the
//! flame graph's names reach it through `data-` attributes. All geometry is computed here and
//! checked to be finite, so the page reads the same with JavaScript disabled (the script only
//! adds zooming to the flame graph).

mod chart;
mod flame;
mod page;

pub use page::render;

/// 1234567 -> "1,234,567".
fn group(n: u64) -> String {
    let digits: Vec<char> = n.to_string().chars().collect();
    let groups: Vec<String> = digits.rchunks(3).rev().map(|g| g.iter().collect()).collect();
    groups.join(",")
}

/// A finite number or 0: every coordinate written into the SVG goes through this.
fn fin(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

fn duration(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else if s < 2.0 * 86400.0 {
        format!("{:.0} h {:.0} min", (s / 3600.0).floor(), (s % 3600.0 / 60.0).floor())
    } else {
        format!("{:.0} d {:.0} h", (s / 86400.0).floor(), (s % 86400.0 / 3600.0).floor())
    }
}

/// Unix time in ns as "YYYY-MM-DD hh:mm:ss UTC" (proleptic Gregorian, no time-zone database).
fn utc(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// maud escapes markup but passes control characters through, and trace strings may hold any
/// of them: an HTML parser reports them as errors (and drops NUL), so they become U+FFFD, as
/// they did before the templates. The page's own text has no control character but newline.
fn without_control_chars(page: String) -> String {
    let bad = |c: char| c.is_control() && c != '\t' && c != '\n';
    if !page.contains(bad) {
        return page;
    }
    page.chars().map(|c| if bad(c) { '\u{fffd}' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{analyze_and_build, eight_mib_leak};
    use leaktrace_format::Trace;

    #[test]
    fn numbers_and_dates() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_000_000_000), "2023-11-14 22:13:20 UTC");
        assert!(utc(u64::MAX).ends_with("UTC"));
        assert_eq!(duration(6_100_000_000), "6.1 s");
        assert_eq!(duration(3 * 3600 * 1_000_000_000 + 60_000_000_000), "3 h 1 min");
    }

    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(without_control_chars("a\u{0}b\u{1b}c\td\n\r".into()), "a\u{fffd}b\u{fffd}c\td\n\u{fffd}");
        // The static parts would be mangled by the pass: they must not need it.
        for (name, text) in [("style.css", page::STYLE), ("script.js", page::SCRIPT)] {
            assert!(!text.contains(|c: char| c.is_control() && c != '\n'), "{name} has a control character");
        }
    }

    /// A name that closes the script or adds an element if pasted unescaped, in every place a
    /// trace string reaches: the site's function (verdict, table, stack, flame graph and its
    /// `data-n`), its file (text and `title`), a raw stack and a symbolization warning.
    #[test]
    fn trace_strings_are_escaped_everywhere() {
        const EVIL: &str = "</script><b>&<>\"'\u{7}";
        const ESCAPED: &str = "&lt;/script&gt;&lt;b&gt;&amp;&lt;&gt;&quot;'\u{fffd}";
        let bytes = eight_mib_leak().build();
        let trace = Trace::parse_from(&bytes).expect("synthetic trace parses");
        let (analysis, mut r) = analyze_and_build(&trace, &bytes);
        let site = r.sites.first_mut().expect("the leak is a site");
        let frame = site.frames.first_mut().expect("the leak has a stack");
        frame.function = Some(EVIL.into());
        frame.file = Some(format!("/src/{EVIL}.c"));
        frame.line = Some(7);
        site.stacks = vec![vec![EVIL.into()], vec!["0x1".into()]];
        r.process.exe = format!("/bin/{EVIL}");
        r.process.cmdline = vec![EVIL.into()];
        r.health_notes.push(EVIL.into());
        r.symbolization_warnings.push(EVIL.into());
        let html = render(&r, &analysis, &trace, 20);

        assert_eq!(html.matches("</script>").count(), 1, "only the page's own script is closed");
        assert_eq!(html.matches("<script>").count(), 1);
        assert!(!html.contains("<b>&") && !html.contains('\u{7}'), "a trace string was pasted unescaped");
        // Paths are shown by their last component, which starts inside EVIL's `</script>`.
        let tail = ESCAPED.strip_prefix("&lt;/").expect("EVIL starts with </");
        for needle in [
            format!("<code>{ESCAPED}</code> at "),
            format!(r#"title="/src/{ESCAPED}.c:7">{tail}.c:7</span>"#),
            format!(r#"data-n="{ESCAPED}""#),
            format!(r#"<li class="addr">{ESCAPED}</li>"#),
            format!("<title>leaktrace: {tail} (pid "),
            format!(r#"title="/bin/{ESCAPED}">{ESCAPED}</div>"#),
            format!("<li>{ESCAPED}</li></ul></section>"),
        ] {
            assert!(html.contains(&needle), "the page lacks {needle}");
        }
        // The script is the static file, whatever the trace holds.
        let script = html.split("<script>").nth(1).and_then(|s| s.split("</script>").next());
        assert_eq!(script, Some(page::SCRIPT));
    }
}
