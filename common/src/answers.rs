//! Where an answer is in a text: how a completion states its final answer, and where a
//! reference solution keeps it (GSM8K's `#### 72`, MATH's `\boxed{...}`, this project's
//! `Answer:` line, a regex of your own).
//!
//! Task sources say it per file (`answers = "gsm8k"`, or `reference = ...` and
//! `completion = ...` apart); every grader reads it from the task.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// How to find the answer in a text.
#[derive(Clone, Debug, Default)]
pub enum Extract {
    /// `answer-line`: the rest of the line after the last `Answer:` (case-insensitive); the
    /// chat format this project's SFT data teaches.
    #[default]
    AnswerLine,
    /// `gsm8k`: the rest of the line after the last `####`.
    Gsm8k,
    /// `boxed`: the contents of the last `\boxed{...}` (nested braces allowed).
    Boxed,
    /// `last-number`: the last number in the text (`1,234`, `-3`, `2.5`).
    LastNumber,
    /// `whole`: the whole text, trimmed (a reference column that holds only the answer).
    Whole,
    /// `regex:PATTERN`: the first capture group (or the whole match) of the last match.
    Regex(Arc<regex::Regex>),
}

/// The names `Extract` is written as, for error messages.
pub const EXTRACT_NAMES: &str = "answer-line, gsm8k, boxed, last-number, whole, regex:PATTERN";

impl PartialEq for Extract {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Display for Extract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Extract::AnswerLine => f.write_str("answer-line"),
            Extract::Gsm8k => f.write_str("gsm8k"),
            Extract::Boxed => f.write_str("boxed"),
            Extract::LastNumber => f.write_str("last-number"),
            Extract::Whole => f.write_str("whole"),
            Extract::Regex(r) => write!(f, "regex:{}", r.as_str()),
        }
    }
}

impl FromStr for Extract {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "answer-line" => Extract::AnswerLine,
            "gsm8k" => Extract::Gsm8k,
            "boxed" => Extract::Boxed,
            "last-number" => Extract::LastNumber,
            "whole" => Extract::Whole,
            _ => match s.strip_prefix("regex:") {
                Some(p) => Extract::Regex(Arc::new(
                    regex::Regex::new(p).with_context(|| format!("answer extraction {s:?}: not a valid regex"))?,
                )),
                None => bail!("unknown answer extraction {s:?}: expected one of {EXTRACT_NAMES}"),
            },
        })
    }
}

impl Serialize for Extract {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Extract {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: anyhow::Error| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// The rest of the line after the last `marker` (ASCII case-insensitive), trimmed.
fn after_last(text: &str, marker: &str) -> Option<String> {
    let idx = text.to_ascii_lowercase().rfind(&marker.to_ascii_lowercase())?;
    let rest = text[idx + marker.len()..].trim_start();
    Some(rest.lines().next().unwrap_or("").trim().to_string())
}

/// The contents of the last `\boxed{...}`, braces balanced; `None` when absent or unclosed.
fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].trim().to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// Every number of `text` (commas inside digits allowed), as written.
fn numbers(text: &str) -> Vec<String> {
    static NUM: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = NUM.get_or_init(|| regex::Regex::new(r"-?\d[\d,]*(?:\.\d+)?").expect("a valid regex"));
    re.find_iter(text)
        .map(|m| m.as_str().trim_end_matches(',').to_string())
        .collect()
}

impl Extract {
    /// The answer `text` states this way; `None` when its marker is absent.
    pub fn find(&self, text: &str) -> Option<String> {
        match self {
            Extract::AnswerLine => after_last(text, "answer:"),
            Extract::Gsm8k => after_last(text, "####"),
            Extract::Boxed => last_boxed(text),
            Extract::LastNumber => numbers(text).pop(),
            Extract::Whole => Some(text.trim().to_string()).filter(|t| !t.is_empty()),
            Extract::Regex(re) => re.captures_iter(text).last().map(|c| {
                c.get(1)
                    .or_else(|| c.get(0))
                    .map_or("", |m| m.as_str())
                    .trim()
                    .to_string()
            }),
        }
    }
}

/// How a task's completions are read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// Where a completion states its final answer.
    #[serde(default)]
    pub completion: Extract,
    /// Strict: a completion without that marker is wrong (no falling back to its last line),
    /// and so is one cut off before it finished.
    #[serde(default)]
    pub strict: bool,
}

impl Reading {
    /// Whether this is the default reading (left out of serialised tasks).
    pub fn is_default(&self) -> bool {
        *self == Reading::default()
    }

    /// The completion's final answer: what its marker states; without one, its last
    /// non-empty line (`None` in strict mode).
    pub fn answer(&self, completion: &str) -> Option<String> {
        match self.completion.find(completion) {
            Some(a) => Some(a),
            None if self.strict => None,
            None => Some(last_line(completion)),
        }
    }

    /// Whether the completion states a non-empty answer with its marker.
    pub fn formatted(&self, completion: &str) -> bool {
        self.completion.find(completion).is_some_and(|a| !a.is_empty())
    }
}

/// Named ways a dataset writes its answers, for references and completions alike:
/// `gsm8k` (`#### 72`), `boxed` (`\boxed{72}`), `answer-line` (`Answer: 72`, this project's).
pub fn preset(name: &str) -> Result<Extract> {
    match name {
        "gsm8k" | "boxed" | "answer-line" => name.parse(),
        other => bail!("unknown answers preset {other:?}: expected gsm8k, boxed or answer-line (or set reference and completion apart: {EXTRACT_NAMES})"),
    }
}

/// The last non-empty line of `text`, trimmed (empty when there is none).
pub fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_extraction_finds_its_marker() -> Result<()> {
        let gsm = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72";
        assert_eq!(Extract::Gsm8k.find(gsm).as_deref(), Some("72"));
        assert_eq!(Extract::AnswerLine.find(gsm), None);
        assert_eq!(
            Extract::LastNumber.find("so 1,234 apples, then -3.5").as_deref(),
            Some("-3.5")
        );
        assert_eq!(Extract::LastNumber.find("total: 1,234.").as_deref(), Some("1,234"));
        let boxed = r"so $x = \frac{1}{2}$, hence \boxed{\frac{1}{2}} and not \boxed{3";
        assert_eq!(Extract::Boxed.find(boxed), None, "an unclosed last box is no answer");
        assert_eq!(
            Extract::Boxed
                .find(r"first \boxed{1}, finally \boxed{\frac{1}{2}}.")
                .as_deref(),
            Some(r"\frac{1}{2}")
        );
        assert_eq!(
            Extract::AnswerLine.find("work\nANSWER:  Velmora \nmore").as_deref(),
            Some("Velmora")
        );
        let re: Extract = r"regex:The answer is (\w+)".parse()?;
        assert_eq!(re.find("The answer is a. The answer is b.").as_deref(), Some("b"));
        assert_eq!(Extract::Whole.find("  42 \n").as_deref(), Some("42"));
        for name in ["answer-line", "gsm8k", "boxed", "last-number", "whole", "regex:(\\d+)"] {
            assert_eq!(name.parse::<Extract>()?.to_string(), name);
        }
        let e = "hashes".parse::<Extract>().unwrap_err().to_string();
        assert!(e.contains("gsm8k") && e.contains("regex:"), "{e}");
        assert!("regex:(".parse::<Extract>().is_err());
        Ok(())
    }

    #[test]
    fn strict_reading_needs_the_marker() {
        let lenient = Reading::default();
        let strict = Reading {
            strict: true,
            ..Reading::default()
        };
        assert_eq!(lenient.answer("I think\n42\n").as_deref(), Some("42"));
        assert_eq!(strict.answer("I think\n42\n"), None);
        assert_eq!(strict.answer("Answer: 42").as_deref(), Some("42"));
        assert!(!lenient.formatted("42") && lenient.formatted("Answer: 42"));
    }
}
