//! The live metrics log of a stage: JSON lines appended to `<run dir>/<stage>.metrics.jsonl`
//! as training goes, and kept in memory so every checkpoint carries the log up to itself.
use anyhow::{Context, Result};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends JSON lines to `<out>.metrics.jsonl` beside the checkpoint directory `out`.
pub struct MetricsLog {
    path: PathBuf,
    /// Every line so far (including those kept from a resumed run).
    pub lines: Vec<Value>,
}

impl MetricsLog {
    /// Starts the log of `out`, keeping the `previous` lines (of a resumed run) whose step is
    /// at most the resumed step; the file is rewritten to match.
    pub fn open(out: &Path, stage: &str, previous: Option<(u64, Vec<Value>)>) -> Result<Self> {
        let name = format!(
            "{}.metrics.jsonl",
            out.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| stage.into())
        );
        let path = out.with_file_name(name);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lines: Vec<Value> = match previous {
            Some((step, lines)) => lines
                .into_iter()
                .filter(|l| l["step"].as_u64().is_none_or(|x| x <= step))
                .collect(),
            None => Vec::new(),
        };
        let mut text = String::new();
        for l in &lines {
            text.push_str(&serde_json::to_string(l)?);
            text.push('\n');
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(MetricsLog { path, lines })
    }

    /// Appends one line.
    pub fn push(&mut self, line: Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(f, "{}", serde_json::to_string(&line)?).with_context(|| format!("writing {}", self.path.display()))?;
        self.lines.push(line);
        Ok(())
    }
}

/// The lines of a JSONL file (unparsable lines skipped; a missing file is empty).
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}
