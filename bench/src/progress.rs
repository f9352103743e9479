//! Progress bars on standard error while connections open and while a
//! scenario runs (indicatif; hidden when standard error is not a terminal,
//! and with `--json`).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar for `count` connections opening.
pub fn connecting(count: usize, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(count as u64), target(visible));
    bar.set_style(
        ProgressStyle::with_template("connecting {bar:40} {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A bar for a measured run of `duration`, advanced with [`Running::tick`].
#[derive(Debug)]
pub struct Running {
    bar: ProgressBar,
    start: Instant,
}

impl Running {
    /// Starts the bar now.
    pub fn start(scenario: &str, duration: Duration, visible: bool) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let bar = ProgressBar::with_draw_target(Some(millis), target(visible));
        let template = format!(
            "{scenario} {{bar:40}} {{elapsed}} of {}s",
            duration.as_secs()
        );
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            bar,
            start: Instant::now(),
        }
    }

    /// Moves the bar to the time elapsed (cheap: indicatif redraws at most
    /// a few times a second).
    pub fn tick(&self) {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.bar.set_position(millis);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn target(visible: bool) -> ProgressDrawTarget {
    if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}
