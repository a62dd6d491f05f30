//! Download progress: a bar on a terminal, nothing otherwise (CI logs stay quiet).

use std::io::IsTerminal as _;
use std::sync::Mutex;

use kip_core::fetch::Progress;

/// A progress bar per download, drawn on stderr only when it is a terminal.
#[derive(Debug, Default)]
pub struct Bar {
    bar: Mutex<Option<indicatif::ProgressBar>>,
    enabled: bool,
}

impl Bar {
    pub fn for_stderr() -> Self {
        Bar {
            bar: Mutex::new(None),
            enabled: std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for Bar {
    fn start(&self, label: &str, total: Option<u64>) {
        if !self.enabled {
            return;
        }
        let bar = match total {
            Some(total) => indicatif::ProgressBar::new(total),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let style = indicatif::ProgressStyle::with_template(
            "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label.to_owned());
        *self.bar.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self
            .bar
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .as_ref()
        {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self
            .bar
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
        {
            bar.finish_and_clear();
        }
    }
}
