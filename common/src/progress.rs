//! Progress reporting: a bar with rate, loss and ETA on a terminal; plain periodic
//! lines when stderr is not a terminal or `CI` is set (logs stay readable).
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// An animated bar (interactive terminal).
    Bar,
    /// One plain line every `interval` (pipes, files, CI).
    Lines,
    /// Nothing (tests).
    Quiet,
}

impl ProgressMode {
    /// Bar on an interactive terminal, plain lines otherwise; `L2E_PROGRESS=bar|lines|quiet` overrides.
    pub fn detect() -> Self {
        // Rank 0 alone reports a data-parallel run.
        if crate::dist::ranks().rank != 0 {
            return ProgressMode::Quiet;
        }
        match std::env::var("L2E_PROGRESS").as_deref() {
            Ok("bar") => return ProgressMode::Bar,
            Ok("lines") => return ProgressMode::Lines,
            Ok("quiet") => return ProgressMode::Quiet,
            _ => {}
        }
        if std::env::var_os("CI").is_some() || !std::io::stderr().is_terminal() {
            ProgressMode::Lines
        } else {
            ProgressMode::Bar
        }
    }
}

/// A progress reporter over `total` steps of some unit (optimizer steps, rows, tokens).
pub struct Progress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    pos: u64,
    start: Instant,
    last_line: Instant,
    interval: Duration,
    message: String,
}

impl Progress {
    /// A reporter in the mode detected for this process.
    pub fn new(label: &str, total: u64) -> Self {
        Self::with_mode(label, total, ProgressMode::detect())
    }

    /// A reporter in an explicit mode.
    pub fn with_mode(label: &str, total: u64, mode: ProgressMode) -> Self {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>9} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        let now = Instant::now();
        Progress {
            mode,
            bar,
            label: label.to_string(),
            total,
            pos: 0,
            start: now,
            last_line: now,
            interval: Duration::from_secs(
                std::env::var("L2E_LOG_SECS")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(10),
            ),
            message: String::new(),
        }
    }

    /// Moves to `pos` (absolute) and shows `message` (e.g. "loss 3.21 | 5.1k tok/s").
    pub fn update(&mut self, pos: u64, message: impl Into<String>) {
        self.pos = pos;
        self.message = message.into();
        match self.mode {
            ProgressMode::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(pos);
                    bar.set_message(self.message.clone());
                }
            }
            ProgressMode::Lines => {
                if self.last_line.elapsed() >= self.interval || pos >= self.total {
                    self.last_line = Instant::now();
                    eprintln!("{}", self.line());
                }
            }
            ProgressMode::Quiet => {}
        }
    }

    /// Prints a line above the bar (or plainly) without breaking the bar.
    pub fn println(&self, line: impl AsRef<str>) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.println(line.as_ref()),
            (None, ProgressMode::Quiet) => {}
            (None, _) => eprintln!("{}", line.as_ref()),
        }
    }

    /// Prints a warning above the bar; unlike [`Self::println`], also in quiet mode.
    pub fn warn(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(line.as_ref()),
            None => eprintln!("{}", line.as_ref()),
        }
    }

    /// Estimated seconds left, from the average rate so far.
    pub fn eta_secs(&self) -> Option<f64> {
        if self.pos == 0 {
            return None;
        }
        let rate = self.pos as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        Some(self.total.saturating_sub(self.pos) as f64 / rate)
    }

    fn line(&self) -> String {
        let eta = self.eta_secs().map(format_secs).unwrap_or_else(|| "?".into());
        format!(
            "{} {}/{} [{} elapsed, eta {}] {}",
            self.label,
            self.pos,
            self.total,
            format_secs(self.start.elapsed().as_secs_f64()),
            eta,
            self.message
        )
    }

    /// Ends the bar, leaving a final line.
    pub fn finish(&mut self) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.finish(),
            (None, ProgressMode::Lines) => eprintln!("{}", self.line()),
            _ => {}
        }
    }
}

/// `83.2s`, `4m05s`, `1h02m`.
pub fn format_secs(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

/// `950`, `12.3k`, `4.5M`.
pub fn format_count(x: f64) -> String {
    if x.abs() >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x.abs() >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x.abs() >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_and_counts() {
        assert_eq!(format_secs(5.0), "5.0s");
        assert_eq!(format_secs(245.0), "4m05s");
        assert_eq!(format_secs(3720.0), "1h02m");
        assert_eq!(format_count(950.0), "950");
        assert_eq!(format_count(12_345.0), "12.3k");
        assert_eq!(format_count(4_500_000.0), "4.50M");
    }

    #[test]
    fn eta_follows_rate() {
        let mut p = Progress::with_mode("test", 100, ProgressMode::Quiet);
        assert!(p.eta_secs().is_none());
        std::thread::sleep(Duration::from_millis(20));
        p.update(50, "halfway");
        let eta = p.eta_secs().unwrap_or(f64::NAN);
        // Half done after ~20ms: about 20ms left (generous bounds: the machine is noisy).
        assert!(eta > 0.005 && eta < 1.0, "eta {eta}");
        p.finish();
    }
}
