//! Arbitrary bytes into the trace reader. Seeds: format/tests/data/*.lt (see scripts/fuzz).
//! The input is also tried with a valid header prefix spliced in, so mutations reach the
//! regions behind the header instead of dying on the magic check.
#![no_main]

use leaktrace_format::Trace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Trace::parse(data) {
        for a in &t.live {
            let _ = t.stack(a.stack_id);
        }
        for e in t.events(data) {
            let _ = t.stack(e.stack_id);
        }
        let _ = t.end_ns();
        let _ = t.mean_bytes_at(u64::MAX);
    }
});
