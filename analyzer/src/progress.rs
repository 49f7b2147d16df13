//! A spinner naming the current stage of a long analysis, on stderr when it is a terminal;
//! nothing at all when output is piped or redirected (CI logs, scripts).

use std::io::IsTerminal;
use std::time::Duration;

pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// A spinner on stderr if it is a terminal, else nothing.
    pub fn on_stderr() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    pub fn stage(&self, what: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.set_message(what.into());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
