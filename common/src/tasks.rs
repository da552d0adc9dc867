//! Generation-based evaluation on verifiable tasks: the model answers each held-out
//! question in the chat format, verifiers grade the answers, and the report gives accuracy
//! per task (with a 95% Wilson interval), format compliance, abstention and hallucination
//! rates, answer length, and pass@k / maj@k when several samples are drawn.
use crate::answers::{Extract, Reading};
use crate::data::mix::Format;
use crate::data::parquet::{batch_docs, open_checked, Doc};
use crate::model::Gpt;
use crate::sampling::{fits_context, generate, SamplingConfig};
use crate::tokenizer::{Message, Tok};
use crate::verify::{normalize, Grader, Task, UnitTests, Verdict};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Device;

/// Where a task file keeps its fields (hub files name their columns differently).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskColumns {
    /// Column of the question.
    pub prompt: String,
    /// Column of the reference answer.
    pub answer: String,
    /// Column of the task kind; `None`: every row is of kind `kind`.
    pub task: Option<String>,
    /// Kind of rows when there is no task column (e.g. "gsm8k", graded numerically).
    pub kind: String,
    /// Column of unit-test code (HumanEval's `test`), if any.
    #[serde(default)]
    pub test: Option<String>,
    /// Column of the function the tests call (HumanEval's `entry_point`), if any.
    #[serde(default)]
    pub entry_point: Option<String>,
    /// Column of the turns before the question (`list<struct<role, content>>`, the chat layout),
    /// if any; `None` reads a column named `history` where the file has one.
    #[serde(default)]
    pub history: Option<String>,
}

impl Default for TaskColumns {
    /// This project's layout: string columns `prompt`, `answer` and `task`.
    fn default() -> Self {
        TaskColumns {
            prompt: "prompt".into(),
            answer: "answer".into(),
            task: Some("task".into()),
            kind: "exact".into(),
            test: None,
            entry_point: None,
            history: None,
        }
    }
}

/// The fields a task source's `columns` may map.
pub const TASK_FIELDS: &str = "prompt, answer, task, test, entry_point, history";

/// A task file and how to read it, as every grader takes it (`evaluate --tasks`, RL's
/// `[eval] tasks` and prompt sources, SFT's `[tasks]`). In a config: a path (this project's
/// layout: string columns `prompt`, `answer`, `task`), or a table, e.g. GSM8K as the hub ships it:
///
/// ```toml
/// tasks = { path = "gsm8k/test.parquet", columns = { prompt = "question" }, kind = "gsm8k", answers = "gsm8k" }
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskSource {
    /// Parquet file.
    pub path: PathBuf,
    /// Column of each field, where the file names it otherwise: prompt, answer, task, test,
    /// entry_point.
    pub columns: BTreeMap<String, String>,
    /// Kind of every row when the file has no task column (`gsm8k`, `math`, `humaneval`, ...;
    /// it picks the verifier).
    pub kind: Option<String>,
    /// How the file writes its answers, for references and completions alike: `gsm8k`
    /// (`#### 72`), `boxed` (`\boxed{72}`) or `answer-line` (`Answer: 72`).
    pub answers: Option<String>,
    /// Where the reference column keeps the answer (overrides `answers`; default: the whole
    /// column is the answer).
    pub reference: Option<Extract>,
    /// Where completions state their answer (overrides `answers`; default: `answer-line`).
    pub completion: Option<Extract>,
    /// A completion without the marker, or cut off before it finished, is wrong.
    pub strict: bool,
}

/// The table form of a [`TaskSource`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskSourceTable {
    path: PathBuf,
    #[serde(default)]
    columns: BTreeMap<String, String>,
    kind: Option<String>,
    answers: Option<String>,
    reference: Option<Extract>,
    completion: Option<Extract>,
    #[serde(default)]
    strict: bool,
}

impl Serialize for TaskSource {
    /// A plain file is written as its path (as configs wrote it before task sources had
    /// options, so saved settings compare equal on resume); otherwise a table of the options set.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.is_plain() {
            return self.path.serialize(s);
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("path", &self.path)?;
        if !self.columns.is_empty() {
            m.serialize_entry("columns", &self.columns)?;
        }
        if let Some(k) = &self.kind {
            m.serialize_entry("kind", k)?;
        }
        if let Some(a) = &self.answers {
            m.serialize_entry("answers", a)?;
        }
        if let Some(r) = &self.reference {
            m.serialize_entry("reference", r)?;
        }
        if let Some(c) = &self.completion {
            m.serialize_entry("completion", c)?;
        }
        if self.strict {
            m.serialize_entry("strict", &true)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for TaskSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TaskSource;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a Parquet path, or a table { path, columns, kind, answers, reference, completion, strict }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<TaskSource, E> {
                Ok(TaskSource::file(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<TaskSource, A::Error> {
                let t = TaskSourceTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(TaskSource {
                    path: t.path,
                    columns: t.columns,
                    kind: t.kind,
                    answers: t.answers,
                    reference: t.reference,
                    completion: t.completion,
                    strict: t.strict,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl TaskSource {
    /// A file in this project's layout.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        TaskSource {
            path: path.into(),
            ..Default::default()
        }
    }

    /// The same source with a relative path found under the data root `root`.
    pub fn under(&self, root: Option<&Path>) -> TaskSource {
        TaskSource {
            path: crate::data::mix::in_root(root, &self.path),
            ..self.clone()
        }
    }

    /// Whether the file is read in this project's layout (columns, kind and answers as is).
    pub fn is_plain(&self) -> bool {
        *self == TaskSource::file(&self.path)
    }

    /// The columns to read, checked.
    pub fn task_columns(&self) -> Result<TaskColumns> {
        for k in self.columns.keys() {
            if !TASK_FIELDS.split(", ").any(|f| f == k) {
                bail!(
                    "tasks {}: columns.{k} is not a field (expected {TASK_FIELDS})",
                    self.path.display()
                );
            }
        }
        let col = |k: &str| self.columns.get(k).cloned().unwrap_or_else(|| k.to_string());
        let test = self.columns.get("test").cloned();
        Ok(TaskColumns {
            prompt: col("prompt"),
            answer: col("answer"),
            // An explicit kind means the file has no task column, unless one is mapped.
            task: match (self.columns.get("task"), &self.kind) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(_)) => None,
                (None, None) if test.is_some() => None,
                (None, None) => Some("task".into()),
            },
            kind: self
                .kind
                .clone()
                .unwrap_or_else(|| if test.is_some() { "unit-test" } else { "exact" }.into()),
            entry_point: self.columns.get("entry_point").cloned(),
            history: self.columns.get("history").cloned(),
            test,
        })
    }

    /// Where the reference column keeps the answer.
    pub fn reference(&self) -> Result<Extract> {
        match (&self.reference, &self.answers) {
            (Some(r), _) => Ok(r.clone()),
            (None, Some(a)) => crate::answers::preset(a),
            (None, None) => Ok(Extract::Whole),
        }
    }

    /// How completions are read.
    pub fn reading(&self) -> Result<Reading> {
        Ok(Reading {
            completion: match (&self.completion, &self.answers) {
                (Some(c), _) => c.clone(),
                (None, Some(a)) => crate::answers::preset(a)?,
                (None, None) => Extract::AnswerLine,
            },
            strict: self.strict,
        })
    }

    /// Reads the tasks: mapped columns, the reference answers extracted, the reading set.
    pub fn load(&self) -> Result<Vec<Task>> {
        let cols = self.task_columns()?;
        let reference = self.reference()?;
        let reading = self.reading()?;
        let mut tasks = load_tasks_mapped(&self.path, &cols)?;
        for (i, t) in tasks.iter_mut().enumerate() {
            if reference != Extract::Whole {
                t.answer = reference.find(&t.answer).with_context(|| {
                    format!(
                        "{}, row {i}: its reference answer has no `{reference}` answer ({:?}); set `reference` \
                         to how this file writes its answers ({})",
                        self.path.display(),
                        t.answer.chars().take(80).collect::<String>(),
                        crate::answers::EXTRACT_NAMES
                    )
                })?;
            }
            t.reading = reading.clone();
        }
        Ok(tasks)
    }
}

/// The mapping of `--columns` flags (`FIELD=COLUMN`, comma-separated or repeated, e.g.
/// `prompt=question`), as every command that reads a task file takes it.
pub fn parse_column_flags(flags: &[String]) -> Result<BTreeMap<String, String>> {
    let mut columns = BTreeMap::new();
    for c in flags {
        let (field, col) = c
            .split_once('=')
            .with_context(|| format!("--columns {c:?}: expected FIELD=COLUMN, e.g. prompt=question"))?;
        columns.insert(field.trim().to_string(), col.trim().to_string());
    }
    Ok(columns)
}

/// Reads tasks from Parquet with string columns `prompt`, `answer` and `task` (the kind).
pub fn load_tasks(path: &Path) -> Result<Vec<Task>> {
    load_tasks_mapped(path, &TaskColumns::default())
}

/// Reads tasks from Parquet whose columns are named by `cols` (answers as written).
pub fn load_tasks_mapped(path: &Path, cols: &TaskColumns) -> Result<Vec<Task>> {
    let columns: BTreeMap<String, String> = [("prompt", &cols.prompt), ("answer", &cols.answer)]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut with_kind = columns.clone();
    let extra = [
        ("task", &cols.task),
        ("test", &cols.test),
        ("entry_point", &cols.entry_point),
    ];
    for (field, col) in extra {
        if let Some(c) = col {
            with_kind.insert(field.into(), c.clone());
        }
    }
    // Earlier turns: the mapped column, else a `history` column where the file has one.
    let history = match &cols.history {
        Some(c) => Some(c.clone()),
        None => crate::data::parquet::has_column(path, "history")?.then(|| "history".to_string()),
    };
    if let Some(h) = &history {
        with_kind.insert("history".into(), h.clone());
    }
    let reader = open_checked(path, Format::Text, &with_kind)
        .with_context(|| {
            format!(
                "reading tasks {} (needs string columns {}; map others with `columns = {{ prompt = \"question\", ... }}`, \
                 or `--columns prompt=question,...` on the command line)",
                path.display(),
                with_kind.values().cloned().collect::<Vec<_>>().join(", ")
            )
        })?
        .build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("decoding {}", path.display()))?;
        let docs = batch_docs(&batch, Format::PromptAnswer, &columns)?;
        let strings = |name: &Option<String>| -> Result<Option<arrow::array::ArrayRef>> {
            name.as_ref()
                .map(|t| {
                    batch
                        .column_by_name(t)
                        .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8))
                        .transpose()?
                        .with_context(|| format!("column {t} vanished"))
                })
                .transpose()
        };
        let (kinds, tests, entries) = (strings(&cols.task)?, strings(&cols.test)?, strings(&cols.entry_point)?);
        let histories: Vec<Vec<Message>> = match &history {
            Some(h) => batch_docs(
                &batch,
                Format::Chat,
                &BTreeMap::from([("messages".to_string(), h.clone())]),
            )?
            .into_iter()
            .map(|d| match d {
                Doc::Chat(m) => m,
                Doc::Text(_) => Vec::new(),
            })
            .collect(),
            None => Vec::new(),
        };
        let as_str = |a: &Option<arrow::array::ArrayRef>, i: usize| -> Option<String> {
            use arrow::array::{Array, AsArray};
            a.as_ref()
                .map(|a| a.as_string::<i32>())
                .filter(|a| !a.is_null(i))
                .map(|a| a.value(i).to_string())
        };
        for (i, d) in docs.into_iter().enumerate() {
            if let Doc::Chat(m) = d {
                out.push(Task {
                    prompt: m[0].content.clone(),
                    answer: m[1].content.clone(),
                    kind: as_str(&kinds, i).unwrap_or_else(|| cols.kind.clone()),
                    tests: as_str(&tests, i).map(|code| UnitTests {
                        code,
                        entry_point: as_str(&entries, i),
                    }),
                    history: histories.get(i).cloned().unwrap_or_default(),
                    ..Task::default()
                });
            }
        }
    }
    if out.is_empty() {
        bail!("{} holds no tasks", path.display());
    }
    Ok(out)
}

/// Keeps at most `n` tasks of each kind (in file order).
pub fn limit_per_kind(tasks: Vec<Task>, n: usize) -> Vec<Task> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    tasks
        .into_iter()
        .filter(|t| {
            let c = counts.entry(t.kind.clone()).or_default();
            *c += 1;
            *c <= n
        })
        .collect()
}

/// Unbiased pass@k from `n` samples of which `c` are correct: `1 − C(n−c, k) / C(n, k)`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k > n {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    // Product form avoids huge binomials: C(n−c, k)/C(n, k) = Π_{i=n−c+1}^{n} (1 − k/i).
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// 95% Wilson score interval of `successes` out of `n`.
pub fn wilson(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.96f64;
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let denom = 1.0 + z * z / n_f;
    let centre = (p + z * z / (2.0 * n_f)) / denom;
    let half = z * ((p * (1.0 - p) / n_f + z * z / (4.0 * n_f * n_f)).sqrt()) / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Metrics of one task kind (or of all together).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KindReport {
    /// Questions.
    pub n: usize,
    /// Accuracy of the first sample.
    pub accuracy: f64,
    /// 95% Wilson interval of `accuracy`.
    pub ci95: (f64, f64),
    /// Share of first samples with an `Answer:` line.
    pub format_rate: f64,
    /// Share of first samples that abstain.
    pub abstention_rate: f64,
    /// Unanswerable questions only: share answered confidently (not abstaining).
    pub hallucination_rate: Option<f64>,
    /// Mean completion length in tokens.
    pub mean_tokens: f64,
    /// Share of completions cut at the length limit.
    pub truncation_rate: f64,
    /// pass@k for k = 1, 2, 4, … (unbiased estimator over all samples).
    pub pass_at_k: BTreeMap<usize, f64>,
    /// Majority vote over the first k samples, for k = 1, 2, 4, …
    pub maj_at_k: BTreeMap<usize, f64>,
    /// Greedy answers the verifier could not judge (a reference program that did not run, no
    /// sandbox on this machine, ...): counted wrong, and named here so that a 0% is never a
    /// broken grader in disguise.
    #[serde(default)]
    pub verifier_errors: usize,
}

/// A whole evaluation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskReport {
    /// Per kind.
    pub per_kind: BTreeMap<String, KindReport>,
    /// Answerable kinds pooled.
    pub answerable: KindReport,
    /// Samples per question.
    pub samples: usize,
    /// Generation speed.
    pub gen_tokens_per_sec: f64,
    /// A few examples (prompt, completion, verdict) for the report.
    pub examples: Vec<(String, String, bool)>,
    /// Tasks left out because their prompt leaves no room in the model's context (not in
    /// `n` or any rate).
    #[serde(default)]
    pub skipped_overlong: usize,
    /// Every sample with its grade (written by `evaluate --log-samples`; not part of meta.json).
    #[serde(skip)]
    pub log: Vec<SampleLog>,
}

/// One graded answer, for inspection (`evaluate --log-samples`, one JSON object per line).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleLog {
    /// Task kind.
    pub task: String,
    /// The question.
    pub prompt: String,
    /// The turns before the question (multi-turn tasks only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Message>,
    /// The reference answer.
    pub answer: String,
    /// Which sample of this question (0 = the first; greedy when only one is drawn).
    pub sample: usize,
    /// The model's completion, decoded.
    pub completion: String,
    /// The final answer the verifier extracted, normalised.
    pub extracted: String,
    /// Graded correct.
    pub correct: bool,
    /// Said "I don't know".
    pub abstained: bool,
    /// Had an `Answer:` line.
    pub formatted: bool,
    /// Stopped before the token limit.
    pub finished: bool,
}

struct Graded {
    kind: String,
    verdicts: Vec<Verdict>,
    answers: Vec<String>,
    lengths: Vec<usize>,
    truncated: Vec<bool>,
}

fn ks(max: usize) -> Vec<usize> {
    let mut v = vec![1];
    while v.last().copied().unwrap_or(1) * 2 <= max {
        let next = v.last().copied().unwrap_or(1) * 2;
        v.push(next);
    }
    v
}

fn kind_report(items: &[&Graded], samples: usize) -> KindReport {
    let n = items.len();
    if n == 0 {
        return KindReport::default();
    }
    let first = |f: &dyn Fn(&Graded) -> bool| items.iter().filter(|g| f(g)).count();
    let correct = first(&|g| g.verdicts[0].correct);
    let mut r = KindReport {
        n,
        accuracy: correct as f64 / n as f64,
        ci95: wilson(correct, n),
        format_rate: first(&|g| g.verdicts[0].formatted) as f64 / n as f64,
        abstention_rate: first(&|g| g.verdicts[0].abstained) as f64 / n as f64,
        hallucination_rate: None,
        mean_tokens: items
            .iter()
            .map(|g| g.lengths.iter().sum::<usize>() as f64 / g.lengths.len() as f64)
            .sum::<f64>()
            / n as f64,
        truncation_rate: items
            .iter()
            .map(|g| g.truncated.iter().filter(|&&t| t).count() as f64 / g.truncated.len() as f64)
            .sum::<f64>()
            / n as f64,
        verifier_errors: first(&|g| g.verdicts[0].errored),
        ..Default::default()
    };
    if items.iter().all(|g| g.kind == "unanswerable") {
        r.hallucination_rate = Some(1.0 - r.abstention_rate);
    }
    for k in ks(samples) {
        let pk = items
            .iter()
            .map(|g| pass_at_k(samples, g.verdicts.iter().filter(|v| v.correct).count(), k))
            .sum::<f64>()
            / n as f64;
        r.pass_at_k.insert(k, pk);
        let mk = items
            .iter()
            .filter(|g| {
                let mut votes: Vec<(String, usize, usize)> = Vec::new();
                for (i, a) in g.answers.iter().take(k).enumerate() {
                    match votes.iter_mut().find(|v| v.0 == *a) {
                        Some(v) => v.1 += 1,
                        None => votes.push((a.clone(), 1, i)),
                    }
                }
                // Most votes; ties go to the earliest answer.
                votes.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
                votes.first().is_some_and(|v| g.verdicts[v.2].correct)
            })
            .count() as f64
            / n as f64;
        r.maj_at_k.insert(k, mk);
    }
    r
}

/// How [`evaluate_tasks`] generates.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Sampling settings (`SamplingConfig::greedy` for greedy answers).
    pub sampling: SamplingConfig,
    /// Answers per task.
    pub samples: usize,
    /// Rows generated together.
    pub batch_size: usize,
    /// Device the model is on.
    pub device: Device,
    /// Show progress over the tasks under this label (`None`: silent, as inside a stage).
    pub progress: Option<String>,
}

/// Graded samples as they come, then the report.
struct Tally {
    samples: usize,
    graded: Vec<Graded>,
    examples: Vec<(String, String, bool)>,
    log: Vec<SampleLog>,
}

impl Tally {
    fn new(samples: usize) -> Self {
        Tally {
            samples,
            graded: Vec::new(),
            examples: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Records the graded samples of one task: their texts, whether each finished, their
    /// lengths and their verdicts (see [`grade_tasks`]).
    fn add(&mut self, t: &Task, texts: &[String], finished: &[bool], lengths: Vec<usize>, verdicts: Vec<Verdict>) {
        if self.examples.len() < 12 && self.graded.iter().filter(|g| g.kind == t.kind).count() < 3 {
            self.examples
                .push((t.prompt.clone(), texts[0].clone(), verdicts[0].correct));
        }
        let answers: Vec<String> = texts
            .iter()
            .map(|c| t.reading.answer(c).map(|a| normalize(&a)).unwrap_or_default())
            .collect();
        for (j, (text, v)) in texts.iter().zip(&verdicts).enumerate() {
            self.log.push(SampleLog {
                task: t.kind.clone(),
                prompt: t.prompt.clone(),
                history: t.history.clone(),
                answer: t.answer.clone(),
                sample: j,
                completion: text.clone(),
                extracted: answers[j].clone(),
                correct: v.correct,
                abstained: v.abstained,
                formatted: v.formatted,
                finished: finished[j],
            });
        }
        self.graded.push(Graded {
            kind: t.kind.clone(),
            answers,
            verdicts,
            lengths,
            truncated: finished.iter().map(|f| !f).collect(),
        });
    }

    fn right(&self) -> usize {
        self.graded.iter().filter(|g| g.verdicts[0].correct).count()
    }

    fn report(self, gen_tokens_per_sec: f64, skipped_overlong: usize) -> TaskReport {
        let mut per_kind = BTreeMap::new();
        let kinds: std::collections::BTreeSet<String> = self.graded.iter().map(|g| g.kind.clone()).collect();
        for k in kinds {
            let items: Vec<&Graded> = self.graded.iter().filter(|g| g.kind == k).collect();
            per_kind.insert(k, kind_report(&items, self.samples));
        }
        let answerable: Vec<&Graded> = self.graded.iter().filter(|g| g.kind != "unanswerable").collect();
        TaskReport {
            per_kind,
            answerable: kind_report(&answerable, self.samples),
            samples: self.samples,
            gen_tokens_per_sec,
            examples: self.examples,
            skipped_overlong,
            log: self.log,
        }
    }
}

/// Grades the samples of `tasks` (the same number each, task after task, as `texts` and
/// `finished` hold them) side by side on the verification pool; verdicts in the same order.
fn grade_tasks(grader: &Grader, tasks: &[&Task], texts: &[String], finished: &[bool]) -> Vec<Verdict> {
    let samples = texts.len() / tasks.len().max(1);
    let items: Vec<(&Task, &str, bool)> = texts
        .iter()
        .zip(finished)
        .enumerate()
        .map(|(i, (c, &f))| (tasks[i / samples.max(1)], c.as_str(), f))
        .collect();
    grader.grade_all(&items)
}

/// Generates `opts.samples` answers per task (greedy when `samples == 1` and temperature 0),
/// grades them and summarises.
pub fn evaluate_tasks(
    model: &Gpt,
    tok: &Tok,
    tasks: &[Task],
    grader: &Grader,
    opts: &EvalOptions,
) -> Result<TaskReport> {
    let (sampling, batch_size, device) = (&opts.sampling, opts.batch_size, opts.device);
    let samples = opts.samples.max(1);
    let mut tally = Tally::new(samples);
    let mut gen_tokens = 0usize;
    let mut gen_secs = 0.0;
    let per_batch = (batch_size / samples).max(1);
    // A prompt longer than the context cannot be answered: it is skipped and counted, and
    // the rest of the evaluation goes on.
    let max_len = model.config().max_seq_len;
    let mut kept: Vec<(&Task, Vec<u32>)> = Vec::with_capacity(tasks.len());
    let mut skipped_overlong = 0;
    for t in tasks {
        let p = tok.render_prompt(&t.messages())?;
        if fits_context(p.len(), max_len) {
            kept.push((t, p));
        } else {
            skipped_overlong += 1;
        }
    }
    if skipped_overlong > 0 {
        eprintln!(
            "warning: skipped {skipped_overlong} of {} tasks whose prompt does not fit the model's context of {max_len} tokens (reported as skipped_overlong)",
            tasks.len()
        );
    }
    let mut progress = opts
        .progress
        .as_deref()
        .map(|label| crate::progress::Progress::new(label, kept.len() as u64));
    for chunk in kept.chunks(per_batch) {
        let mut prompts = Vec::with_capacity(chunk.len() * samples);
        for (_, p) in chunk {
            prompts.extend(std::iter::repeat_n(p.clone(), samples));
        }
        let gen = generate(model, &prompts, sampling, tok.stops(), tok.pad, device)?;
        gen_tokens += gen.tokens.iter().map(Vec::len).sum::<usize>();
        gen_secs += gen.secs;
        let texts: Vec<String> = gen.tokens.iter().map(|ids| tok.decode(ids)).collect::<Result<_>>()?;
        let tasks: Vec<&Task> = chunk.iter().map(|&(t, _)| t).collect();
        let mut verdicts = grade_tasks(grader, &tasks, &texts, &gen.finished).into_iter();
        for (i, t) in tasks.into_iter().enumerate() {
            let rows = i * samples..(i + 1) * samples;
            let lengths = gen.tokens[rows.clone()].iter().map(Vec::len).collect();
            let v = verdicts.by_ref().take(samples).collect();
            tally.add(t, &texts[rows.clone()], &gen.finished[rows], lengths, v);
        }
        if let Some(p) = progress.as_mut() {
            p.update(
                tally.graded.len() as u64,
                format!(
                    "{} right | {:.0} tok/s",
                    tally.right(),
                    gen_tokens as f64 / gen_secs.max(1e-9)
                ),
            );
        }
    }
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    Ok(tally.report(gen_tokens as f64 / gen_secs.max(1e-9), skipped_overlong))
}

/// Given completions to grade, without a model: per task, its samples (text, and whether it
/// finished rather than being cut at a token budget) and their lengths in tokens (or another
/// unit the caller names).
pub struct Completions {
    /// Per task, in the order of the tasks: its samples.
    pub samples: Vec<Vec<(String, bool)>>,
    /// Per task: each sample's length.
    pub lengths: Vec<Vec<usize>>,
}

/// Grades given completions of `tasks` (e.g. logged samples, or the tasks' own reference
/// solutions to check a task set: those must score 100%). Every task has the same number of
/// samples.
pub fn grade_completions(tasks: &[Task], given: &Completions, grader: &Grader) -> Result<TaskReport> {
    anyhow::ensure!(
        given.samples.len() == tasks.len() && given.lengths.len() == tasks.len(),
        "{} tasks but completions for {}",
        tasks.len(),
        given.samples.len()
    );
    let samples = given.samples.first().map_or(1, Vec::len);
    anyhow::ensure!(
        samples > 0 && given.samples.iter().all(|s| s.len() == samples),
        "every task needs the same number of completions (the first has {samples})"
    );
    let mut tally = Tally::new(samples);
    let texts: Vec<String> = given.samples.iter().flatten().map(|x| x.0.clone()).collect();
    let finished: Vec<bool> = given.samples.iter().flatten().map(|x| x.1).collect();
    let mut verdicts = grade_tasks(grader, &tasks.iter().collect::<Vec<_>>(), &texts, &finished).into_iter();
    for (i, (t, lengths)) in tasks.iter().zip(&given.lengths).enumerate() {
        let rows = i * samples..(i + 1) * samples;
        let v = verdicts.by_ref().take(samples).collect();
        tally.add(t, &texts[rows.clone()], &finished[rows], lengths.clone(), v);
    }
    Ok(tally.report(0.0, 0))
}

/// `arithmetic 42.0% | facts 10.0% | … | hallucination 80%`
pub fn summarize(r: &TaskReport) -> String {
    let mut parts: Vec<String> = r
        .per_kind
        .iter()
        .map(|(k, v)| format!("{k} {:.1}%", 100.0 * v.accuracy))
        .collect();
    if let Some(h) = r.per_kind.get("unanswerable").and_then(|u| u.hallucination_rate) {
        parts.push(format!("hallucination {:.0}%", 100.0 * h));
    }
    parts.push(format!("format {:.0}%", 100.0 * r.answerable.format_rate));
    let errors: usize = r.per_kind.values().map(|k| k.verifier_errors).sum();
    if errors > 0 {
        parts.push(format!("{errors} NOT GRADED (verifier errors, counted wrong)"));
    }
    if r.skipped_overlong > 0 {
        parts.push(format!("{} skipped (longer than the context)", r.skipped_overlong));
    }
    parts.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_task_source_saves_as_its_path_and_options_as_a_table() -> Result<()> {
        // Saved settings of runs started before task sources had options compare equal.
        let plain = TaskSource::file("data/default/eval/tasks.parquet");
        assert_eq!(
            serde_json::to_value(&plain)?,
            serde_json::json!("data/default/eval/tasks.parquet")
        );
        let gsm = TaskSource {
            columns: [("prompt".to_string(), "question".to_string())].into(),
            kind: Some("gsm8k".into()),
            answers: Some("gsm8k".into()),
            strict: true,
            ..TaskSource::file("gsm8k.parquet")
        };
        let v = serde_json::to_value(&gsm)?;
        assert_eq!(
            v,
            serde_json::json!({"path": "gsm8k.parquet", "columns": {"prompt": "question"}, "kind": "gsm8k", "answers": "gsm8k", "strict": true})
        );
        assert_eq!(serde_json::from_value::<TaskSource>(v)?, gsm);
        assert_eq!(
            serde_json::from_value::<TaskSource>(serde_json::to_value(&plain)?)?,
            plain
        );
        let bad = toml::from_str::<BTreeMap<String, TaskSource>>("t = { path = \"x\", colums = {} }");
        assert!(format!("{:#}", bad.unwrap_err()).contains("colums"));
        Ok(())
    }

    #[test]
    fn given_completions_are_graded_and_verifier_errors_are_counted() -> Result<()> {
        let task = |answer: &str| Task {
            prompt: format!("What is {answer}?"),
            answer: answer.into(),
            kind: "gsm8k".into(),
            ..Task::default()
        };
        // The second reference is no number: the numeric verifier cannot judge it.
        let tasks = [task("72"), task("seventy-two"), task("10")];
        let given = Completions {
            samples: vec![
                vec![("#### 72\nAnswer: 72".into(), true)],
                vec![("Answer: 72".into(), true)],
                vec![("Answer: 11".into(), true)],
            ],
            lengths: vec![vec![3], vec![2], vec![2]],
        };
        let g = Grader::new(Default::default(), Default::default());
        let r = grade_completions(&tasks, &given, &g)?;
        let k = &r.per_kind["gsm8k"];
        assert_eq!((k.n, k.verifier_errors), (3, 1));
        assert!((k.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert!(summarize(&r).contains("1 NOT GRADED"), "{}", summarize(&r));
        assert!((k.mean_tokens - 7.0 / 3.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn multi_turn_tasks_keep_their_history_through_parquet() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let hist = vec![
            Message::new("user", "What is 23 + 58?"),
            Message::new("assistant", "23 + 58 = 81\nAnswer: 81"),
        ];
        let tasks = vec![
            Task {
                prompt: "Now add 10 to that.".into(),
                answer: "91".into(),
                kind: "arithmetic".into(),
                history: hist.clone(),
                ..Task::default()
            },
            Task {
                prompt: "What is 2 + 2?".into(),
                answer: "4".into(),
                kind: "arithmetic".into(),
                ..Task::default()
            },
        ];
        let path = dir.path().join("multiturn.parquet");
        crate::data::writer::write_tasks(&path, &tasks)?;
        let back = TaskSource::file(&path).load()?;
        assert_eq!(back[0].history, hist);
        assert!(back[1].history.is_empty());
        // The model is asked the history, then the question.
        let m = back[0].messages();
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[2].role.as_str(), m[2].content.as_str()),
            ("user", "Now add 10 to that.")
        );
        // Named explicitly, and a column of the wrong type named as history.
        let named = TaskSource {
            columns: [("history".to_string(), "history".to_string())].into(),
            ..TaskSource::file(&path)
        };
        assert_eq!(named.load()?[0].history, hist);
        let wrong = TaskSource {
            columns: [("history".to_string(), "answer".to_string())].into(),
            ..TaskSource::file(&path)
        };
        let err = format!("{:#}", wrong.load().expect_err("a string column is no history"));
        assert!(
            err.contains("`answer`") && err.contains("list<struct<role: string, content: string>>"),
            "{err}"
        );
        // A single-turn file has no history column at all.
        let single = dir.path().join("single.parquet");
        crate::data::writer::write_tasks(&single, &tasks[1..])?;
        assert!(!crate::data::parquet::has_column(&single, "history")?);
        assert!(TaskSource::file(&single).load()?[0].history.is_empty());
        Ok(())
    }

    #[test]
    fn pass_at_k_matches_hand_computation() {
        // n = 4 samples, c = 1 correct: pass@1 = 1/4; pass@2 = 1 − C(3,2)/C(4,2) = 1 − 3/6 = 1/2.
        assert!((pass_at_k(4, 1, 1) - 0.25).abs() < 1e-12);
        assert!((pass_at_k(4, 1, 2) - 0.5).abs() < 1e-12);
        // n = 5, c = 2, k = 2: 1 − C(3,2)/C(5,2) = 1 − 3/10 = 0.7.
        assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
        assert_eq!(pass_at_k(4, 0, 4), 0.0);
        assert_eq!(pass_at_k(4, 3, 2), 1.0, "fewer wrong samples than k: always a hit");
        assert!(pass_at_k(2, 1, 4).is_nan(), "k larger than n is undefined");
    }

    #[test]
    fn wilson_interval_brackets_the_rate() {
        let (lo, hi) = wilson(50, 100);
        assert!((lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3, "{lo} {hi}");
        let (lo, hi) = wilson(0, 20);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.1 && hi < 0.2);
    }

    #[test]
    fn majority_vote_and_rates() {
        let v = |c: bool, a: bool| Verdict {
            reward: 0.0,
            correct: c,
            abstained: a,
            formatted: true,
            errored: false,
        };
        let g = Graded {
            kind: "facts".into(),
            verdicts: vec![v(false, false), v(true, false), v(true, false), v(false, false)],
            answers: vec!["x".into(), "y".into(), "y".into(), "z".into()],
            lengths: vec![3, 4, 5, 6],
            truncated: vec![false, false, false, true],
        };
        let r = kind_report(&[&g], 4);
        assert_eq!(r.accuracy, 0.0);
        assert_eq!(r.maj_at_k[&1], 0.0);
        assert_eq!(r.maj_at_k[&4], 1.0, "y has two votes of four");
        assert!((r.pass_at_k[&2] - (1.0 - 1.0 / 6.0)).abs() < 1e-12);
        assert!((r.truncation_rate - 0.25).abs() < 1e-12);
        assert_eq!(r.hallucination_rate, None);
    }
}
