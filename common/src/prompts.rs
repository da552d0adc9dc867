//! Where RL prompts come from: a prompt mix of Parquet prompt sets and generators.
//!
//! `[data] prompts` names either one Parquet file (this project's `prompt`/`answer`/`task`
//! layout, every task kind in it) or a prompt mix, a TOML file like the data mixes:
//!
//! ```toml
//! world = "data/default"          # generators rebuild this world (seed and scale from its manifest)
//! [curriculum]                    # optional: band = [0.2, 0.8], explore = 0.1, window = 32
//! [[source]]
//! name = "arithmetic"
//! generator = "arithmetic"        # arithmetic | facts | program | unanswerable
//! levels = [1, 2, 3, 4]           # default: every level of the family
//! weight = 0.5
//! [[source]]
//! name = "gsm8k"
//! path = "data/gsm8k/train-*.parquet"
//! columns = { prompt = "question", answer = "answer" }
//! kind = "gsm8k"                  # task kind of rows (when the file has no task column)
//! weight = 0.5
//! ```
//!
//! Every (source, level) or (file, task kind) is a slot of the [`Curriculum`]. The stream is
//! seeded and its whole state (random position, curriculum, file cursors, what generators
//! emitted) is saved with the checkpoint, so a resumed run draws what an uninterrupted one would.
use crate::curriculum::{Curriculum, CurriculumConfig};
use crate::tasks::TaskSource;
use crate::verify::Task;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use world::{Family, GenState, Scale, TaskGen};

/// A prompt mix file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptMix {
    /// Directory of a generated world (`datasets build --out`), for generator sources.
    pub world: Option<PathBuf>,
    /// Edge-of-competence sampling.
    #[serde(default)]
    pub curriculum: CurriculumConfig,
    /// The sources.
    pub source: Vec<PromptSource>,
}

/// One `[[source]]` of a prompt mix: a generator or a Parquet prompt set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSource {
    /// Name for logs.
    pub name: String,
    /// A task family of the world: arithmetic | facts | program | unanswerable.
    pub generator: Option<String>,
    /// Generator levels to draw (default: all).
    pub levels: Option<Vec<u32>>,
    /// Entity kinds the facts and unanswerable generators ask about: town, person, mineral,
    /// river (default: all).
    pub kinds: Option<Vec<String>>,
    /// Parquet file(s), globs allowed.
    pub path: Option<String>,
    /// Column names of the file: prompt, answer, task (each defaults to its own name).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Task kind of rows when the file has no task column.
    pub kind: Option<String>,
    /// How the file writes its answers (`gsm8k`, `boxed`, `answer-line`), for its reference
    /// answers and for the completions graded against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<String>,
    /// Where the reference column keeps the answer (overrides `answers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::answers::Extract>,
    /// Where completions state their answer (overrides `answers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<crate::answers::Extract>,
    /// A completion without the answer marker, or cut off, earns no reward for being right.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Share of prompts (relative to the other sources).
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

impl PromptMix {
    /// Reads a prompt mix file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading prompt mix {}", path.display()))?;
        let m: PromptMix = toml::from_str(&text).with_context(|| format!("parsing prompt mix {}", path.display()))?;
        if m.source.is_empty() {
            bail!("{}: no [[source]] entries", path.display());
        }
        Ok(m)
    }

    /// One Parquet file in this project's layout, every kind in it, no curriculum: the
    /// meaning of `[data] prompts = "file.parquet"`.
    pub fn single_file(path: &Path) -> Self {
        PromptMix {
            world: None,
            curriculum: CurriculumConfig {
                enabled: false,
                ..CurriculumConfig::default()
            },
            source: vec![PromptSource {
                name: path
                    .file_stem()
                    .map_or("prompts".into(), |s| s.to_string_lossy().into_owned()),
                generator: None,
                levels: None,
                kinds: None,
                path: Some(path.display().to_string()),
                columns: BTreeMap::new(),
                kind: None,
                answers: None,
                reference: None,
                completion: None,
                strict: false,
                weight: 1.0,
            }],
        }
    }

    /// A prompt mix file (`.toml`, found from the current directory) or a single Parquet
    /// file; relative data paths (the Parquet file, a mix's `world` and source files) are found
    /// under the data root `root`.
    pub fn open(path: &Path, root: Option<&Path>) -> Result<Self> {
        use crate::data::mix::{glob_in_root, in_root};
        if path.extension().is_some_and(|e| e == "toml") {
            let mut m = Self::load(path)?;
            m.world = m.world.map(|w| in_root(root, w));
            for s in &mut m.source {
                s.path = s.path.as_deref().map(|p| glob_in_root(root, p));
            }
            return Ok(m);
        }
        Ok(Self::single_file(&in_root(root, path)))
    }
}

/// Seed and scale of a generated world, from its manifest.
fn world_seed(dir: &Path) -> Result<(u64, Scale)> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (generator sources need a world built by `datasets build --out {}`)",
            path.display(),
            dir.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let seed = v["seed"]
        .as_u64()
        .with_context(|| format!("{}: no seed", path.display()))?;
    let scale: Scale = v["scale"].as_str().unwrap_or("small").parse()?;
    Ok((seed, scale))
}

/// Where a slot's prompts come from.
enum Slot {
    /// A generator level.
    Gen {
        family: Family,
        level: u32,
        /// Entity kinds asked about (empty: all).
        kinds: Vec<world::Kind>,
    },
    /// The rows of one task kind of a file source (file order), drawn in a fresh shuffled
    /// `order` per pass.
    File {
        rows: Vec<Task>,
        order: Vec<usize>,
        pass: u64,
        index: usize,
        salt: u64,
    },
}

/// A drawn prompt and the curriculum slot it came from.
#[derive(Clone, Debug)]
pub struct Drawn {
    /// The task.
    pub task: Task,
    /// Its curriculum slot.
    pub slot: usize,
}

/// The resumable part of a [`PromptStream`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StreamState {
    /// Position of the random stream (32-bit words drawn).
    pub word_pos: u128,
    /// Curriculum statistics.
    pub curriculum: Option<Curriculum>,
    /// (pass, index) of each file slot, in slot order (generator slots hold (0, 0)).
    pub cursors: Vec<(u64, usize)>,
    /// What the generator emitted.
    pub generator: Option<GenState>,
}

/// An endless, seeded stream of prompts from a [`PromptMix`].
pub struct PromptStream {
    rng: ChaCha8Rng,
    slots: Vec<Slot>,
    gen: Option<TaskGen>,
    /// The curriculum over the slots.
    pub curriculum: Curriculum,
    seed: u64,
}

impl PromptStream {
    /// Opens every source (reads the files, rebuilds the world of the generators).
    pub fn open(mix: &PromptMix, seed: u64) -> Result<Self> {
        let mut slots = Vec::new();
        let mut named = Vec::new();
        let mut gen = None;
        let total: f64 = mix.source.iter().map(|s| s.weight.max(0.0)).sum();
        for src in &mix.source {
            if !(src.weight >= 0.0) {
                bail!("prompt source {}: weight must be >= 0", src.name);
            }
            let share = src.weight / total.max(1e-12);
            match (&src.generator, &src.path) {
                (Some(g), None) => {
                    let family = Family::parse(g).with_context(|| format!("prompt source {}", src.name))?;
                    if gen.is_none() {
                        let dir = mix.world.clone().with_context(|| {
                            format!("prompt source {} is a generator: set world = \"data/default\" (a directory built by `datasets build`) at the top of the prompt mix", src.name)
                        })?;
                        let (seed, scale) = world_seed(&dir)?;
                        gen = Some(TaskGen::new(seed, scale));
                    }
                    let kinds: Vec<world::Kind> = src
                        .kinds
                        .iter()
                        .flatten()
                        .map(|k| k.parse())
                        .collect::<Result<_>>()
                        .with_context(|| format!("prompt source {}: kinds", src.name))?;
                    if !kinds.is_empty() {
                        if !matches!(family, Family::Facts | Family::Unanswerable) {
                            bail!("prompt source {}: kinds applies to the facts and unanswerable generators only", src.name);
                        }
                        if !gen.as_ref().is_some_and(|g: &TaskGen| g.has_questions(family, &kinds)) {
                            bail!("prompt source {}: the world has no {} questions about {:?}", src.name, family.kind(), src.kinds);
                        }
                    }
                    let all: Vec<u32> = family.levels().collect();
                    let levels = src.levels.clone().unwrap_or_else(|| all.clone());
                    if levels.is_empty() {
                        bail!("prompt source {}: levels is empty", src.name);
                    }
                    for &l in &levels {
                        if !all.contains(&l) {
                            bail!("prompt source {}: level {l} does not exist (the {} generator has levels {:?})", src.name, family.kind(), all);
                        }
                        slots.push(Slot::Gen {
                            family,
                            level: l,
                            kinds: kinds.clone(),
                        });
                        named.push((format!("{}/{l}", src.name), share / levels.len() as f64));
                    }
                }
                (None, Some(pattern)) => {
                    let files = crate::data::mix::expand(pattern).with_context(|| format!("prompt source {}", src.name))?;
                    let mut by_kind: BTreeMap<String, Vec<Task>> = BTreeMap::new();
                    for f in &files {
                        let tasks = src
                            .task_source(f)
                            .load()
                            .with_context(|| format!("prompt source {}", src.name))?;
                        for t in tasks {
                            by_kind.entry(t.kind.clone()).or_default().push(t);
                        }
                    }
                    let n: usize = by_kind.values().map(Vec::len).sum();
                    for (kind, rows) in by_kind {
                        let w = share * rows.len() as f64 / n as f64;
                        named.push((format!("{}/{kind}", src.name), w));
                        let salt = slots.len() as u64;
                        slots.push(Slot::File {
                            order: Vec::new(),
                            rows,
                            pass: 0,
                            index: 0,
                            salt,
                        });
                    }
                }
                _ => bail!(
                    "prompt source {}: give either generator = \"arithmetic\" (or facts, program, unanswerable) or path = \"file.parquet\"",
                    src.name
                ),
            }
        }
        let curriculum = Curriculum::new(mix.curriculum.clone(), named)?;
        let mut s = PromptStream {
            rng: ChaCha8Rng::seed_from_u64(seed),
            slots,
            gen,
            curriculum,
            seed,
        };
        for i in 0..s.slots.len() {
            s.shuffle(i);
        }
        Ok(s)
    }

    /// The order of a file slot's rows in its current pass (a function of seed, slot and pass).
    fn shuffle(&mut self, i: usize) {
        let seed = self.seed;
        if let Slot::File {
            rows,
            order,
            pass,
            salt,
            ..
        } = &mut self.slots[i]
        {
            let mut r = ChaCha8Rng::seed_from_u64(seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (*salt << 48));
            *order = (0..rows.len()).collect();
            order.shuffle(&mut r);
        }
    }

    /// The next prompt.
    pub fn draw(&mut self) -> Drawn {
        let slot = self.curriculum.pick(&mut self.rng);
        let task = match &mut self.slots[slot] {
            Slot::Gen { family, level, kinds } => {
                let t = self
                    .gen
                    .as_mut()
                    .expect("generator slots open the generator")
                    .sample_of(&mut self.rng, *family, *level, kinds);
                Task {
                    prompt: t.prompt,
                    answer: t.answer,
                    kind: t.family.kind().to_string(),
                    ..Task::default()
                }
            }
            Slot::File { rows, order, index, .. } => {
                let t = rows[order[*index]].clone();
                *index += 1;
                t
            }
        };
        if let Slot::File { rows, pass, index, .. } = &mut self.slots[slot] {
            if *index >= rows.len() {
                *pass += 1;
                *index = 0;
                self.shuffle(slot);
            }
        }
        Drawn { task, slot }
    }

    /// Slot names, in slot order.
    pub fn slot_names(&self) -> Vec<String> {
        self.curriculum.slots.iter().map(|s| s.name.clone()).collect()
    }

    /// Passes over finite pools (file slots and generator levels that ran dry), by slot name.
    pub fn repeats(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (i, s) in self.slots.iter().enumerate() {
            let passes = match s {
                Slot::File { pass, .. } => *pass,
                Slot::Gen { family, level, .. } => self
                    .gen
                    .as_ref()
                    .and_then(|g| g.passes().get(&(*family, *level)).copied())
                    .unwrap_or(0) as u64,
            };
            if passes > 0 {
                out.insert(self.curriculum.slots[i].name.clone(), passes);
            }
        }
        out
    }

    /// The resumable state.
    pub fn state(&self) -> StreamState {
        StreamState {
            word_pos: self.rng.get_word_pos(),
            curriculum: Some(self.curriculum.clone()),
            cursors: self
                .slots
                .iter()
                .map(|s| match s {
                    Slot::File { pass, index, .. } => (*pass, *index),
                    Slot::Gen { .. } => (0, 0),
                })
                .collect(),
            generator: self.gen.as_ref().map(TaskGen::state),
        }
    }

    /// Continues from a saved state (the same mix and seed).
    pub fn restore(&mut self, st: &StreamState) -> Result<()> {
        if st.cursors.len() != self.slots.len() {
            bail!(
                "the saved prompt stream has {} slots, this prompt mix {}: resume with the prompt mix the run started with",
                st.cursors.len(),
                self.slots.len()
            );
        }
        self.rng.set_word_pos(st.word_pos);
        if let Some(c) = &st.curriculum {
            self.curriculum = c.clone();
        }
        for i in 0..self.slots.len() {
            if let Slot::File { pass, index, .. } = &mut self.slots[i] {
                (*pass, *index) = st.cursors[i];
                self.shuffle(i);
            }
        }
        if let (Some(g), Some(s)) = (self.gen.as_mut(), &st.generator) {
            g.restore(s);
        }
        Ok(())
    }
}

impl PromptSource {
    /// How to read one of this source's files.
    fn task_source(&self, file: &Path) -> TaskSource {
        TaskSource {
            path: file.to_path_buf(),
            columns: self.columns.clone(),
            kind: self.kind.clone(),
            answers: self.answers.clone(),
            reference: self.reference.clone(),
            completion: self.completion.clone(),
            strict: self.strict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::writer::write_tasks;

    fn world_dir(seed: u64) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("manifest.json"),
            format!("{{\"seed\": {seed}, \"scale\": \"small\"}}"),
        )
        .unwrap();
        d
    }

    fn gen_mix(world: &Path) -> PromptMix {
        let text = format!(
            "world = {:?}\n[[source]]\nname = \"arith\"\ngenerator = \"arithmetic\"\nlevels = [1, 2, 4]\nweight = 3\n[[source]]\nname = \"idk\"\ngenerator = \"unanswerable\"\nweight = 1\n",
            world.display().to_string()
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn resumed_stream_equals_uninterrupted() -> Result<()> {
        let w = world_dir(3);
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("tasks.parquet");
        let rows: Vec<Task> = (0..7)
            .map(|i| Task {
                prompt: format!("q{i}"),
                answer: format!("{i}"),
                kind: if i % 2 == 0 { "even" } else { "odd" }.into(),
                ..Task::default()
            })
            .collect();
        write_tasks(&file, &rows)?;
        let mut mix = gen_mix(w.path());
        mix.source.push(PromptSource {
            path: Some(file.display().to_string()),
            ..PromptMix::single_file(&file).source[0].clone()
        });
        let mut a = PromptStream::open(&mix, 42)?;
        assert_eq!(
            a.slot_names(),
            ["arith/1", "arith/2", "arith/4", "idk/1", "tasks/even", "tasks/odd"]
        );
        let mut first = Vec::new();
        for i in 0..60 {
            let d = a.draw();
            a.curriculum.record(d.slot, (i % 3) as f64 / 2.0);
            first.push(d.task);
        }
        let saved = serde_json::to_value(a.state())?;
        let mut b = PromptStream::open(&mix, 42)?;
        b.restore(&serde_json::from_value(saved)?)?;
        for i in 0..200 {
            let (x, y) = (a.draw(), b.draw());
            assert_eq!(x.task, y.task, "draw {i} after resume");
            a.curriculum.record(x.slot, (i % 5) as f64 / 4.0);
            b.curriculum.record(y.slot, (i % 5) as f64 / 4.0);
        }
        // The 7-row file went through several passes, each a permutation of its rows.
        assert!(a.repeats().contains_key("tasks/even"), "{:?}", a.repeats());
        let mut c = PromptStream::open(&mix, 42)?;
        assert_eq!(c.draw().task, first[0], "the stream is a function of the seed");
        Ok(())
    }

    #[test]
    fn weights_split_over_levels_and_kinds() -> Result<()> {
        let w = world_dir(4);
        let s = PromptStream::open(&gen_mix(w.path()), 1)?;
        let ws: Vec<f64> = s.curriculum.slots.iter().map(|s| s.weight).collect();
        // 3:1 between the sources, the arithmetic share split over its three levels.
        for (x, e) in ws.iter().zip([0.25, 0.25, 0.25, 0.25]) {
            assert!((x - e).abs() < 1e-12, "{ws:?}");
        }
        Ok(())
    }

    #[test]
    fn hub_layout_files_map_their_columns() -> Result<()> {
        use arrow::array::{RecordBatch, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("gsm8k.parquet");
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("question", DataType::Utf8, false),
            Field::new("answer", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                std::sync::Arc::new(StringArray::from(vec!["Tom has 3 apples and buys 4. How many?"])),
                std::sync::Arc::new(StringArray::from(vec!["3 + 4 = 7\n#### 7"])),
            ],
        )?;
        let mut wtr = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&file)?, schema, None)?;
        wtr.write(&batch)?;
        wtr.close()?;
        let text = format!(
            "[[source]]\nname = \"gsm8k\"\npath = {:?}\ncolumns = {{ prompt = \"question\" }}\nkind = \"gsm8k\"\n",
            file.display().to_string()
        );
        let mix: PromptMix = toml::from_str(&text)?;
        let mut s = PromptStream::open(&mix, 0)?;
        let d = s.draw();
        assert_eq!(d.task.kind, "gsm8k");
        assert!(d.task.prompt.starts_with("Tom has"));
        assert_eq!(
            d.task.answer, "3 + 4 = 7\n#### 7",
            "no answer format: the column as written"
        );
        // With GSM8K's answer format the reference is the number after ####, and completions
        // are read the same way.
        let gsm: PromptMix = toml::from_str(&format!("{text}answers = \"gsm8k\"\nstrict = true\n"))?;
        let d = PromptStream::open(&gsm, 0)?.draw();
        assert_eq!(d.task.answer, "7");
        assert_eq!(d.task.reading.completion, crate::answers::Extract::Gsm8k);
        assert!(d.task.reading.strict);
        let g = crate::verify::Grader::new(Default::default(), Default::default());
        assert!(g.grade(&d.task, "3 + 4 = 7\n#### 7").correct);
        assert!(
            !g.grade(&d.task, "3 + 4 = 7\nAnswer: 7").correct,
            "strict: the #### marker is required"
        );
        assert!(
            !g.grade_completion(&d.task, "#### 7", false).correct,
            "strict: a cut-off completion is wrong"
        );
        // Without the mapping the error names the missing column and the fix.
        let bad: PromptMix = toml::from_str(&text.replace("columns = { prompt = \"question\" }\n", ""))?;
        let e = format!("{:#}", PromptStream::open(&bad, 0).err().unwrap());
        assert!(
            e.contains("`prompt`") && e.contains("question") && e.contains("columns"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn generator_without_a_world_is_named() {
        let mix: PromptMix = toml::from_str("[[source]]\nname = \"a\"\ngenerator = \"arithmetic\"\n").unwrap();
        let e = format!("{:#}", PromptStream::open(&mix, 0).err().unwrap());
        assert!(e.contains("world = "), "{e}");
        let mix: PromptMix = toml::from_str("[[source]]\nname = \"a\"\ngenerator = \"algebra\"\n").unwrap();
        let e = format!("{:#}", PromptStream::open(&mix, 0).err().unwrap());
        assert!(e.contains("unknown generator"), "{e}");
    }

    #[test]
    fn kinds_restrict_the_entities_asked_about() -> Result<()> {
        let w = world_dir(3);
        let g = world::generate(3, Scale::Small);
        let kind_of = |prompt: &str| {
            g.world
                .phantoms
                .iter()
                .filter(|e| prompt.contains(&e.name))
                .map(|e| e.kind)
                .next()
        };
        let text = format!(
            "world = {:?}\n[[source]]\nname = \"idk\"\ngenerator = \"unanswerable\"\nkinds = [\"towns\", \"person\"]\n",
            w.path().display().to_string()
        );
        let mix: PromptMix = toml::from_str(&text)?;
        let mut s = PromptStream::open(&mix, 5)?;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let t = s.draw().task;
            assert_eq!(t.answer, world::IDK);
            let k = kind_of(&t.prompt).expect("a phantom's question");
            assert!(
                matches!(k, world::Kind::Town | world::Kind::Person),
                "{k:?}: {}",
                t.prompt
            );
            seen.insert(k);
        }
        assert_eq!(seen.len(), 2, "both kinds drawn");
        // Only where it means something, and only kinds that exist.
        for (gen, kinds, err) in [
            ("arithmetic", "[\"town\"]", "facts and unanswerable"),
            ("facts", "[\"dragon\"]", "unknown entity kind"),
        ] {
            let text = format!(
                "world = {:?}\n[[source]]\nname = \"x\"\ngenerator = \"{gen}\"\nkinds = {kinds}\n",
                w.path().display().to_string()
            );
            let e = format!(
                "{:#}",
                PromptStream::open(&toml::from_str(&text)?, 5).err().expect("an error")
            );
            assert!(e.contains(err), "{e}");
        }
        Ok(())
    }
}
