//! The data path against real Parquet files: mixes, the sampler, real-data layouts, bad input.
use anyhow::Result;
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::data::mix::{load_mix, MixConfig};
use common::data::parquet::{read_all, Doc};
use common::data::sampler::{Cursor, DocCounts, LmSampler, Overlong, PackMode, SamplerOptions, IGNORE};
use common::data::writer::{write_chat, write_tasks, write_text};
use common::tokenizer::{Message, Tok};
use common::verify::Task;
use parquet::arrow::ArrowWriter;
use std::path::Path;
use std::sync::Arc;

fn tok(dir: &Path) -> Result<Tok> {
    let texts: Vec<String> = (0..300)
        .map(|i| format!("alpha beta gamma {i} delta. What is {i}? Answer: {i}"))
        .collect();
    let t = Tok::train(texts.iter(), 300)?;
    t.save(&dir.join("tokenizer.json"))?;
    Ok(t)
}

fn write_mix(dir: &Path, body: &str) -> Result<std::path::PathBuf> {
    let p = dir.join("mix.toml");
    std::fs::write(&p, body)?;
    Ok(p)
}

fn err_of<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn weights_3_to_1_hold_within_2_percent_over_1m_tokens() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let tok = tok(d)?;
    // Documents of different lengths per source, so token shares differ from document shares.
    let a: Vec<String> = (0..500).map(|i| format!("alpha {i} ").repeat(1 + i % 7)).collect();
    let b: Vec<String> = (0..500)
        .map(|i| format!("gamma delta {i} ").repeat(1 + i % 3))
        .collect();
    write_text(&d.join("a.parquet"), &a)?;
    write_text(&d.join("b.parquet"), &b)?;
    let mix = write_mix(d, &format!(
        "[[source]]\nname = \"a\"\npath = \"{0}/a.parquet\"\nformat = \"text\"\nweight = 3\n\n[[source]]\nname = \"b\"\npath = \"{0}/b.parquet\"\nformat = \"text\"\nweight = 1\n",
        d.display()
    ))?;
    let mix = load_mix(&mix, None)?;
    let mut s = LmSampler::new(
        &mix,
        &tok,
        SamplerOptions {
            seq_len: 256,
            mode: PackMode::Stream,
            assistant_only: false,
            seed: 7,
            shuffle: true,
            overlong: Default::default(),
        },
        None,
    )?;
    let mut per = [0i64; 2];
    let mut total = 0;
    while total < 1_000_000 {
        let b = s.next_batch(32)?;
        per[0] += b.per_source[0];
        per[1] += b.per_source[1];
        total += b.trained_tokens;
    }
    let ratio = per[0] as f64 / per[1] as f64;
    assert!((ratio / 3.0 - 1.0).abs() < 0.02, "ratio {ratio} over {total} tokens");
    Ok(())
}

#[test]
fn resumed_sampler_yields_exactly_the_uninterrupted_sequence() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let tok = tok(d)?;
    let docs: Vec<String> = (0..3000).map(|i| format!("alpha {i} beta {}", i * 7)).collect();
    write_text(&d.join("t-0.parquet"), &docs[..1500])?;
    write_text(&d.join("t-1.parquet"), &docs[1500..])?;
    // Every seventh conversation is longer than a row: dropped or cut, and counted.
    let convs: Vec<Vec<Message>> = (0..300)
        .map(|i| {
            let answer = if i % 7 == 0 {
                format!("{}Answer: {i}", "alpha beta gamma delta. ".repeat(8))
            } else {
                format!("Answer: {i}")
            };
            vec![
                Message::new("user", format!("What is {i}?")),
                Message::new("assistant", answer),
            ]
        })
        .collect();
    write_chat(&d.join("c.parquet"), &convs)?;
    for (mode, format, path, only, overlong) in [
        (PackMode::Stream, "text", "t-*.parquet", false, Overlong::Drop),
        (PackMode::Documents, "chat", "c.parquet", true, Overlong::Drop),
        (PackMode::Documents, "chat", "c.parquet", true, Overlong::Cut),
    ] {
        let mix = write_mix(
            d,
            &format!(
                "[[source]]\nname = \"s\"\npath = \"{}/{path}\"\nformat = \"{format}\"\nweight = 1\n",
                d.display()
            ),
        )?;
        let mix = load_mix(&mix, None)?;
        let mut full = LmSampler::new(
            &mix,
            &tok,
            SamplerOptions {
                seq_len: 32,
                mode,
                assistant_only: only,
                seed: 11,
                shuffle: true,
                overlong,
            },
            None,
        )?;
        let mut part = LmSampler::new(
            &mix,
            &tok,
            SamplerOptions {
                seq_len: 32,
                mode,
                assistant_only: only,
                seed: 11,
                shuffle: true,
                overlong,
            },
            None,
        )?;
        let mut expected = Vec::new();
        // Long enough to cross record batches, files and an epoch boundary.
        for _ in 0..400 {
            expected.push(Vec::<i64>::try_from(full.next_batch(4)?.target.flatten(0, -1))?);
        }
        for _ in 0..137 {
            part.next_batch(4)?;
        }
        let cursor = serde_json::to_string(&part.cursor())?;
        let mut resumed = LmSampler::new(
            &mix,
            &tok,
            SamplerOptions {
                seq_len: 32,
                mode,
                assistant_only: only,
                seed: 11,
                shuffle: true,
                overlong,
            },
            Some(serde_json::from_str(&cursor)?),
        )?;
        for (i, e) in expected.iter().enumerate().skip(137) {
            let got = Vec::<i64>::try_from(resumed.next_batch(4)?.target.flatten(0, -1))?;
            assert_eq!(&got, e, "{mode:?} {overlong:?}: batch {i} differs after resume");
        }
        assert!(resumed.epochs(0) >= 1, "the test crossed an epoch");
        // The counts resume too: the resumed run read, cut and dropped what the uninterrupted one did.
        assert_eq!(resumed.doc_counts(), full.doc_counts(), "{mode:?} {overlong:?}");
        let c = full.doc_counts()[0].1;
        match (mode, overlong) {
            (PackMode::Stream, _) => assert_eq!((c.cut, c.dropped), (0, 0), "streams cut nothing"),
            (_, Overlong::Drop) => assert!(c.dropped > 0 && c.cut == 0, "{c:?}"),
            (_, Overlong::Cut) => assert!(c.cut > 0 && c.dropped == 0, "{c:?}"),
        }
    }
    Ok(())
}

#[test]
fn document_packing_confines_attention_and_masks_users() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let tok = tok(d)?;
    let convs: Vec<Vec<Message>> = (0..20)
        .map(|i| {
            vec![
                Message::new("user", format!("What is {i}?")),
                Message::new("assistant", format!("Answer: {i}")),
            ]
        })
        .collect();
    write_chat(&d.join("c.parquet"), &convs)?;
    let mix = load_mix(
        &write_mix(
            d,
            &format!(
                "[[source]]\nname = \"c\"\npath = \"{}/c.parquet\"\nformat = \"chat\"\nweight = 1\n",
                d.display()
            ),
        )?,
        None,
    )?;
    let mut s = LmSampler::new(
        &mix,
        &tok,
        SamplerOptions {
            seq_len: 64,
            mode: PackMode::Documents,
            assistant_only: true,
            seed: 0,
            shuffle: false,
            overlong: Default::default(),
        },
        None,
    )?;
    let b = s.next_batch(1)?;
    let input: Vec<i64> = Vec::try_from(b.input.flatten(0, -1))?;
    let target: Vec<i64> = Vec::try_from(b.target.flatten(0, -1))?;
    let pos: Vec<i64> = Vec::try_from(b.positions.as_ref().map(|p| p.flatten(0, -1)).unwrap_or_default())?;
    let mask = b.mask.as_ref().map(|m| m.squeeze()).unwrap_or_default();
    // Several conversations share the row; each starts with <|bos|> at position 0.
    let starts: Vec<usize> = input
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == tok.bos as i64)
        .map(|(i, _)| i)
        .collect();
    assert!(starts.len() >= 2, "packed several conversations: {starts:?}");
    for &s0 in &starts {
        assert_eq!(pos[s0], 0);
    }
    // The first token of the second conversation attends to itself only, not the first conversation.
    let s1 = starts[1] as i64;
    assert_eq!(mask.get(s1).get(s1 - 1).int64_value(&[]), 0);
    assert_eq!(mask.get(s1).get(s1).int64_value(&[]), 1);
    // Targets: only assistant content and <|end|> are trained; every user token is IGNORE.
    let trained: Vec<u32> = target.iter().filter(|&&t| t != IGNORE).map(|&t| t as u32).collect();
    let text = tok.decode(&trained)?;
    assert!(text.starts_with("Answer: 0") && !text.contains("What is"), "{text}");
    Ok(())
}

#[test]
fn overlong_conversations_are_dropped_or_cut_and_counted_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let tok = tok(d)?;
    // Ten conversations, read in file order; numbers 2, 5 and 8 are longer than a row of 33
    // tokens, and only they say "zebra".
    let long = [2usize, 5, 8];
    let convs: Vec<Vec<Message>> = (0..10usize)
        .map(|i| {
            let answer = if long.contains(&i) {
                format!("zebra {}Answer: {i}", "alpha beta gamma delta. ".repeat(8))
            } else {
                format!("Answer: {i}")
            };
            vec![
                Message::new("user", format!("What is {i}?")),
                Message::new("assistant", answer),
            ]
        })
        .collect();
    write_chat(&d.join("c.parquet"), &convs)?;
    let mix = load_mix(
        &write_mix(
            d,
            &format!(
                "[[source]]\nname = \"c\"\npath = \"{}/c.parquet\"\nformat = \"chat\"\nweight = 1\n",
                d.display()
            ),
        )?,
        None,
    )?;
    let opts = |overlong| SamplerOptions {
        seq_len: 32,
        mode: PackMode::Documents,
        assistant_only: true,
        seed: 0,
        shuffle: false,
        overlong,
    };
    for overlong in [Overlong::Drop, Overlong::Cut] {
        let mut s = LmSampler::new(&mix, &tok, opts(overlong), None)?;
        let mut trained = String::new();
        for _ in 0..12 {
            let b = s.next_batch(1)?;
            let t: Vec<i64> = Vec::try_from(b.target.flatten(0, -1))?;
            let ids: Vec<u32> = t.iter().filter(|&&x| x != IGNORE).map(|&x| x as u32).collect();
            trained.push_str(&tok.decode(&ids)?);
        }
        // Read in file order, epoch after epoch: the j-th document read is conversation j % 10.
        let c = s.doc_counts()[0].1;
        let long_read = (0..c.documents).filter(|j| long.contains(&((j % 10) as usize))).count() as u64;
        assert!(c.documents > 10, "read more than an epoch: {c:?}");
        match overlong {
            Overlong::Drop => {
                assert_eq!(
                    c,
                    DocCounts {
                        documents: c.documents,
                        cut: 0,
                        dropped: long_read
                    }
                );
                assert!(
                    !trained.contains("zebra"),
                    "a dropped conversation was trained on: {trained}"
                );
                assert!(trained.contains("Answer: 9"), "{trained}");
            }
            Overlong::Cut => {
                assert_eq!(
                    c,
                    DocCounts {
                        documents: c.documents,
                        cut: long_read,
                        dropped: 0
                    }
                );
                // The start of a cut answer is trained on, never its final answer line.
                assert!(trained.contains("zebra"), "{trained}");
                assert!(
                    !trained.contains("Answer: 2") && !trained.contains("Answer: 5"),
                    "{trained}"
                );
            }
        }
    }
    // A cursor saved before the policy existed resumes as those runs ran: cutting.
    let s = LmSampler::new(&mix, &tok, opts(Overlong::Drop), None)?;
    let mut old = serde_json::to_value(s.cursor())?;
    for k in ["counts", "overlong"] {
        old.as_object_mut().map(|o| o.remove(k));
    }
    let old: Cursor = serde_json::from_value(old)?;
    let resumed = LmSampler::new(&mix, &tok, opts(Overlong::Drop), Some(old))?;
    assert_eq!(resumed.overlong(), Overlong::Cut);
    // Every conversation too long to keep: an error naming both fixes, not a silent spin.
    let only_long: Vec<Vec<Message>> = long.iter().map(|&i| convs[i].clone()).collect();
    write_chat(&d.join("c.parquet"), &only_long)?;
    let mix = load_mix(&d.join("mix.toml"), None)?;
    let e = err_of(LmSampler::new(&mix, &tok, opts(Overlong::Drop), None).and_then(|mut s| s.next_batch(1)));
    assert!(e.contains("data.seq_len") && e.contains("overlong = \"cut\""), "{e}");
    Ok(())
}

fn write_batch(path: &Path, batch: RecordBatch) -> Result<()> {
    let f = std::fs::File::create(path)?;
    let mut w = ArrowWriter::try_new(f, batch.schema(), None)?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

fn strings(cols: &[(&str, Vec<&str>)]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays = cols
        .iter()
        .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as arrow::array::ArrayRef)
        .collect();
    Ok(RecordBatch::try_new(schema, arrays)?)
}

#[test]
fn hub_layouts_read_through_a_mix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // FineWeb-style: text plus metadata columns.
    let schema = Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("token_count", DataType::Int64, false),
    ]));
    write_batch(
        &d.join("fineweb.parquet"),
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["The quick brown fox.", "Jumps over."])),
                Arc::new(StringArray::from(vec!["<urn:1>", "<urn:2>"])),
                Arc::new(Int64Array::from(vec![5, 3])),
            ],
        )?,
    )?;
    // SmolTalk-style messages.
    write_chat(
        &d.join("smoltalk.parquet"),
        &[vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
        ]],
    )?;
    // GSM8K-style.
    write_batch(
        &d.join("gsm8k.parquet"),
        strings(&[
            ("question", vec!["Tom has 3 apples and buys 2. How many?"]),
            ("answer", vec!["3 + 2 = 5\n#### 5"]),
        ])?,
    )?;
    // Alpaca-style.
    write_batch(
        &d.join("alpaca.parquet"),
        strings(&[
            ("instruction", vec!["Translate to French"]),
            ("input", vec!["cat"]),
            ("output", vec!["chat"]),
        ])?,
    )?;
    let mix = write_mix(
        d,
        &format!(
            r#"
[[source]]
name = "fineweb"
path = "{0}/fineweb.parquet"
format = "text"
weight = 1
[[source]]
name = "smoltalk"
path = "{0}/smoltalk.parquet"
format = "chat"
weight = 1
[[source]]
name = "gsm8k"
path = "{0}/gsm8k.parquet"
format = "prompt_answer"
columns = {{ prompt = "question", answer = "answer" }}
weight = 1
[[source]]
name = "alpaca"
path = "{0}/alpaca.parquet"
format = "prompt_answer"
columns = {{ prompt = "instruction", input = "input", answer = "output" }}
weight = 1
"#,
            d.display()
        ),
    )?;
    let mix = load_mix(&mix, None)?;
    let all: Vec<Vec<Doc>> = mix.sources.iter().map(|s| read_all(s, None)).collect::<Result<_>>()?;
    assert_eq!(
        all[0],
        vec![
            Doc::Text("The quick brown fox.".into()),
            Doc::Text("Jumps over.".into())
        ]
    );
    assert_eq!(
        all[1][0],
        Doc::Chat(vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!")
        ])
    );
    assert_eq!(
        all[2][0],
        Doc::Chat(vec![
            Message::new("user", "Tom has 3 apples and buys 2. How many?"),
            Message::new("assistant", "3 + 2 = 5\n#### 5")
        ])
    );
    assert_eq!(
        all[3][0],
        Doc::Chat(vec![
            Message::new("user", "Translate to French\n\ncat"),
            Message::new("assistant", "chat")
        ])
    );
    // And the sampler packs them all, whole.
    let tok = tok(d)?;
    let mut s = LmSampler::new(
        &mix,
        &tok,
        SamplerOptions {
            seq_len: 64,
            mode: PackMode::Documents,
            assistant_only: true,
            seed: 0,
            shuffle: true,
            overlong: Default::default(),
        },
        None,
    )?;
    assert!(s.next_batch(8)?.trained_tokens > 0);
    assert!(s.doc_counts().iter().all(|(_, c)| c.documents > 0 && c.dropped == 0));
    Ok(())
}

#[test]
fn bad_inputs_are_named_with_their_fix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    write_text(&d.join("ok.parquet"), &["hello".to_string()])?;
    write_tasks(
        &d.join("tasks.parquet"),
        &[Task {
            prompt: "p".into(),
            answer: "a".into(),
            kind: "facts".into(),
            ..Task::default()
        }],
    )?;
    std::fs::write(d.join("corrupt.parquet"), b"PAR1 this is not parquet at all")?;
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Int64, false)]));
    write_batch(
        &d.join("ints.parquet"),
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))])?,
    )?;
    let one = |path: &str, extra: &str| -> Result<String> {
        let m = write_mix(
            d,
            &format!(
                "[[source]]\nname = \"s\"\npath = \"{}/{path}\"\nformat = \"text\"\nweight = 1\n{extra}",
                d.display()
            ),
        )?;
        Ok(
            match load_mix(&m, None).and_then(|mix| read_all(&mix.sources[0], None)) {
                Ok(_) => String::new(),
                Err(e) => format!("{e:#}"),
            },
        )
    };
    let e = one("missing.parquet", "")?;
    assert!(
        e.contains("missing.parquet") && e.contains("does not exist") && e.contains("just datasets"),
        "{e}"
    );
    let e = one("nothing-*.parquet", "")?;
    assert!(e.contains("no file matches") && e.contains("nothing-*.parquet"), "{e}");
    let e = one("tasks.parquet", "")?;
    assert!(
        e.contains("column `text`") && e.contains("prompt, answer, task") && e.contains("columns = {"),
        "{e}"
    );
    let e = one("ints.parquet", "")?;
    assert!(
        e.contains("ints.parquet") && e.contains("column `text` has type Int64, expected string"),
        "{e}"
    );
    let e = one("corrupt.parquet", "")?;
    assert!(
        e.contains("corrupt.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
    let m = write_mix(
        d,
        &format!(
            "[[source]]\nname = \"s\"\npath = \"{}/ok.parquet\"\nformat = \"text\"\nweight = -1\n",
            d.display()
        ),
    )?;
    assert!(err_of(load_mix(&m, None)).contains("weight -1"));
    let m = write_mix(
        d,
        &format!(
            "[[source]]\nname = \"s\"\npath = \"{}/ok.parquet\"\nformat = \"text\"\nweight = 0\n",
            d.display()
        ),
    )?;
    assert!(err_of(load_mix(&m, None)).contains("all weights are zero"));
    let m = write_mix(
        d,
        "[[source]]\nname = \"s\"\npath = \"x\"\nformat = \"texty\"\nweight = 1\n",
    )?;
    let e = err_of(MixConfig::load(&m));
    assert!(e.contains("mix.toml:4") && e.contains("texty"), "{e}");
    Ok(())
}

#[test]
fn exhausted_source_is_an_error_not_a_silent_repeat() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let tok = tok(d)?;
    write_text(
        &d.join("small.parquet"),
        &(0..10).map(|i| format!("alpha {i}")).collect::<Vec<_>>(),
    )?;
    let m = write_mix(d, &format!("[[source]]\nname = \"small\"\npath = \"{}/small.parquet\"\nformat = \"text\"\nweight = 1\nmax_epochs = 2\n", d.display()))?;
    let mut s = LmSampler::new(
        &load_mix(&m, None)?,
        &tok,
        SamplerOptions {
            seq_len: 32,
            mode: PackMode::Stream,
            assistant_only: false,
            seed: 0,
            shuffle: true,
            overlong: Default::default(),
        },
        None,
    )?;
    let e = err_of((0..100).try_for_each(|_| s.next_batch(4).map(|_| ())));
    assert!(e.contains("source `small`") && e.contains("max_epochs = 2"), "{e}");
    Ok(())
}

#[test]
fn masked_user_tokens_contribute_no_gradient() -> Result<()> {
    use common::model::{Gpt, GptConfig};
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let tok = tok(d)?;
    let convs = vec![vec![
        Message::new("user", "What is 12?"),
        Message::new("assistant", "Answer: 12"),
    ]];
    write_chat(&d.join("c.parquet"), &convs)?;
    let mix = load_mix(
        &write_mix(
            d,
            &format!(
                "[[source]]\nname = \"c\"\npath = \"{}/c.parquet\"\nformat = \"chat\"\nweight = 1\n",
                d.display()
            ),
        )?,
        None,
    )?;
    let mut s = LmSampler::new(
        &mix,
        &tok,
        SamplerOptions {
            seq_len: 24,
            mode: PackMode::Documents,
            assistant_only: true,
            seed: 0,
            shuffle: false,
            overlong: Default::default(),
        },
        None,
    )?;
    let b = s.next_batch(1)?;
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = Gpt::new(vs.root(), &GptConfig::preset("tiny", tok.vocab_size() as i64)?);
    let pos = b.positions();
    let logits = model.forward(&b.input, &pos, None).detach().set_requires_grad(true);
    let loss_of = |target: &tch::Tensor| {
        logits
            .view([-1, tok.vocab_size() as i64])
            .cross_entropy_loss::<tch::Tensor>(&target.view([-1]), None, tch::Reduction::Sum, IGNORE, 0.0)
    };
    let loss = loss_of(&b.target);
    loss.backward();
    let grad = logits
        .grad()
        .abs()
        .sum_dim_intlist(2, false, tch::Kind::Float)
        .view([-1]);
    let target: Vec<i64> = Vec::try_from(b.target.flatten(0, -1))?;
    let grad: Vec<f32> = Vec::try_from(grad)?;
    let user_positions: Vec<usize> = (0..target.len()).filter(|&i| target[i] == IGNORE).collect();
    assert!(user_positions.len() >= 4, "the user turn is masked");
    for &i in &user_positions {
        assert_eq!(grad[i], 0.0, "position {i} is masked but has a gradient");
    }
    assert!(
        grad.iter().zip(&target).any(|(g, &t)| t != IGNORE && *g > 0.0),
        "assistant tokens do get gradient"
    );
    // Changing what a user position would predict leaves the loss unchanged: it is never scored.
    let mut changed = target.clone();
    let i = user_positions[1];
    changed[i] = (tok.vocab_size() - 1) as i64; // a different token...
    let changed_t = tch::Tensor::from_slice(&changed).view([1, -1]);
    let masked_again = changed_t.masked_fill(&b.target.eq(IGNORE), IGNORE); // ...still masked by the chat mask
    assert_eq!(loss_of(&masked_again).double_value(&[]), loss.double_value(&[]));
    Ok(())
}

#[test]
fn empty_sources_and_blank_columns_are_named_instead_of_looping() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let t = tok(d)?;
    let docs: Vec<String> = (0..50).map(|i| format!("alpha beta gamma {i} delta.")).collect();
    write_text(&d.join("good.parquet"), &docs)?;
    write_text(&d.join("empty.parquet"), &[])?;
    let opts = SamplerOptions {
        seq_len: 16,
        mode: PackMode::Stream,
        assistant_only: false,
        seed: 0,
        shuffle: true,
        overlong: Default::default(),
    };
    let source = |name: &str, path: &str| {
        format!(
            "[[source]]\nname = \"{name}\"\npath = \"{}/{path}\"\nformat = \"text\"\nweight = 1.0\n\n",
            d.display()
        )
    };
    let sampler = |body: String| -> Result<LmSampler> {
        let m = write_mix(d, &body)?;
        LmSampler::new(&load_mix(&m, None)?, &t, opts, None)
    };
    // A 0-row source alone used to loop forever reading it; now: an error naming the file.
    let e = err_of(sampler(source("empty", "empty.parquet")));
    assert!(e.contains("empty.parquet") && e.contains("no rows"), "{e}");
    // Beside a good source: the same error (its share of the mix cannot be met).
    let e = err_of(sampler(
        source("good", "good.parquet") + &source("empty", "empty.parquet"),
    ));
    assert!(e.contains("source `empty`") && e.contains("empty.parquet"), "{e}");
    // An empty file among a source's files is skipped with a warning; the rows of the others count.
    std::fs::create_dir_all(d.join("parts"))?;
    std::fs::copy(d.join("good.parquet"), d.join("parts/p-0.parquet"))?;
    std::fs::copy(d.join("empty.parquet"), d.join("parts/p-1.parquet"))?;
    let mut s = sampler(source("parts", "parts/p-*.parquet"))?;
    for _ in 0..20 {
        assert!(s.next_batch(4)?.trained_tokens > 0);
    }
    // A text column that is null in every row, or empty in every row: the file and column named.
    let nulls = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)])),
        vec![Arc::new(StringArray::from(vec![None::<&str>; 10]))],
    )?;
    write_batch(&d.join("nulls.parquet"), nulls)?;
    write_batch(&d.join("blank.parquet"), strings(&[("text", vec![""; 10])])?)?;
    for f in ["nulls.parquet", "blank.parquet"] {
        let e = err_of(sampler(source("bad", f)));
        assert!(
            e.contains(f) && e.contains("column `text`") && e.contains("null or empty in every row"),
            "{e}"
        );
    }
    Ok(())
}
