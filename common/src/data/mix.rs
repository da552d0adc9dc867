//! Mix files: a list of sources, each a glob of Parquet files with a format, a column
//! mapping and a share of the sampled tokens.
//!
//! ```toml
//! [[source]]
//! name = "encyclopedia"
//! path = "data/default/library/encyclopedia-*.parquet"
//! format = "text"                 # text | chat | prompt_answer
//! columns = { text = "text" }     # optional; defaults per format
//! weight = 0.4                    # share of sampled tokens (or `tokens = 2_000_000`)
//! max_epochs = 4                  # optional: error if the source would repeat more often
//! ```
//!
//! Relative paths are relative to the data root: `--data-root`, else `data_root` in the stage
//! config, else the current directory (run from the repository root).
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layout of the rows of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Plain documents: column `text` (FineWeb-style).
    Text,
    /// Conversations: column `messages`, a `list<struct<role, content>>` (SmolTalk-style).
    Chat,
    /// A prompt and its answer: columns `prompt` and `answer`, optionally `input`
    /// (GSM8K: `prompt = "question"`; Alpaca: `prompt = "instruction"`, `input = "input"`,
    /// `answer = "output"`). Rendered as a user turn and an assistant turn.
    PromptAnswer,
}

impl Format {
    /// Logical columns of the format and whether each is required.
    pub fn columns(self) -> &'static [(&'static str, bool)] {
        match self {
            Format::Text => &[("text", true)],
            Format::Chat => &[("messages", true)],
            Format::PromptAnswer => &[("prompt", true), ("answer", true), ("input", false)],
        }
    }
}

/// One `[[source]]` of a mix file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// File or glob of Parquet files.
    pub path: String,
    /// Row layout.
    pub format: Format,
    /// Logical column → column in the file.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Relative share of sampled tokens.
    pub weight: Option<f64>,
    /// Target number of tokens (an alternative to `weight`; shares are then proportional).
    pub tokens: Option<u64>,
    /// Most passes allowed over this source before the run fails.
    pub max_epochs: Option<f64>,
}

/// A mix file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// Free text shown in reports.
    #[serde(default)]
    pub description: String,
    /// The sources.
    #[serde(default)]
    pub source: Vec<SourceConfig>,
}

/// A source whose files exist and whose share is known.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolvedSource {
    /// The configuration as written.
    pub config: SourceConfig,
    /// Matching files, sorted.
    pub files: Vec<PathBuf>,
    /// Share of sampled tokens, summing to 1 over the mix.
    pub share: f64,
    /// Logical column → file column, defaults filled in.
    pub columns: BTreeMap<String, String>,
}

/// A mix whose sources are resolved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolvedMix {
    /// File it came from.
    pub path: PathBuf,
    /// Description.
    pub description: String,
    /// Sources.
    pub sources: Vec<ResolvedSource>,
}

impl MixConfig {
    /// Reads a mix file.
    pub fn load(path: &Path) -> Result<Self> {
        crate::config::load_toml(path)
    }

    /// Expands globs (relative ones under `root`, see [`in_root`]), fills default columns and
    /// normalises shares; every problem names the source and the fix.
    pub fn resolve(&self, origin: &Path, root: Option<&Path>) -> Result<ResolvedMix> {
        if self.source.is_empty() {
            bail!("mix {} has no [[source]] entries", origin.display());
        }
        let mut raw = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.source {
            if !seen.insert(s.name.clone()) {
                bail!("mix {}: source name `{}` appears twice", origin.display(), s.name);
            }
            let w = match (s.weight, s.tokens) {
                (Some(_), Some(_)) => bail!(
                    "mix {}: source `{}` sets both weight and tokens; keep one",
                    origin.display(),
                    s.name
                ),
                (Some(w), None) => w,
                (None, Some(t)) => t as f64,
                (None, None) => bail!(
                    "mix {}: source `{}` needs a weight (or a tokens budget)",
                    origin.display(),
                    s.name
                ),
            };
            if !w.is_finite() || w < 0.0 {
                bail!(
                    "mix {}: source `{}` has weight {w}; weights must be >= 0",
                    origin.display(),
                    s.name
                );
            }
            if let Some(e) = s.max_epochs {
                if !(e > 0.0) {
                    bail!(
                        "mix {}: source `{}` has max_epochs {e}; it must be > 0",
                        origin.display(),
                        s.name
                    );
                }
            }
            let mut columns = BTreeMap::new();
            for (logical, required) in s.format.columns() {
                match s.columns.get(*logical) {
                    Some(c) => {
                        columns.insert(logical.to_string(), c.clone());
                    }
                    None if *required => {
                        columns.insert(logical.to_string(), logical.to_string());
                    }
                    None => {}
                }
            }
            for k in s.columns.keys() {
                if !s.format.columns().iter().any(|(l, _)| l == k) {
                    let known: Vec<&str> = s.format.columns().iter().map(|(l, _)| *l).collect();
                    bail!(
                        "mix {}: source `{}` maps unknown column `{k}` (format {:?} takes {})",
                        origin.display(),
                        s.name,
                        s.format,
                        known.join(", ")
                    );
                }
            }
            let files = expand(&glob_in_root(root, &s.path))
                .with_context(|| format!("mix {}: source `{}`", origin.display(), s.name))?;
            raw.push((s.clone(), files, w, columns));
        }
        let total: f64 = raw.iter().map(|r| r.2).sum();
        if !(total > 0.0) {
            bail!(
                "mix {}: all weights are zero; give at least one source a positive weight",
                origin.display()
            );
        }
        let sources = raw
            .into_iter()
            .map(|(config, files, w, columns)| ResolvedSource {
                config,
                files,
                share: w / total,
                columns,
            })
            .collect();
        Ok(ResolvedMix {
            path: origin.to_path_buf(),
            description: self.description.clone(),
            sources,
        })
    }
}

/// Loads and resolves a mix file; its relative data paths are found under `root` (`None`: the
/// current directory).
pub fn load_mix(path: &Path, root: Option<&Path>) -> Result<ResolvedMix> {
    MixConfig::load(path)?.resolve(path, root)
}

/// `path` under the data root: a relative path joined to `root`; an absolute one, or any path
/// without a root, as it is.
pub fn in_root(root: Option<&Path>, path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    match root {
        Some(r) if path.is_relative() => r.join(path),
        _ => path.to_path_buf(),
    }
}

/// A glob pattern under the data root (the root's own glob characters escaped).
pub fn glob_in_root(root: Option<&Path>, pattern: &str) -> String {
    match root {
        Some(r) if Path::new(pattern).is_relative() => {
            let r = glob::Pattern::escape(&r.display().to_string());
            format!("{}/{pattern}", r.trim_end_matches('/'))
        }
        _ => pattern.to_string(),
    }
}

/// Files matching `pattern`, sorted; an error when nothing matches.
pub fn expand(pattern: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = glob::glob(pattern)
        .with_context(|| format!("bad glob pattern `{pattern}`"))?
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        if pattern.contains(['*', '?', '[']) {
            bail!("no file matches `{pattern}` (run `just datasets` to build the default data, or fix the path)");
        }
        bail!("file `{pattern}` does not exist (run `just datasets` to build the default data, or fix the path)");
    }
    Ok(files)
}
