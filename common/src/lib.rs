//! lib2expert's shared machinery: configuration, devices, the GPT and its KV cache,
//! the tokenizer and chat template, checkpoints, Parquet data and mixes, the optimiser
//! and schedules, generation, verifiers, progress reporting, the stage harness every stage
//! runs on ([`stage`]) and the LM loop that pretrain, midtrain and SFT share ([`lm`]). Each
//! stage's own loop and spec live in its crate (`pretrain/`, `midtrain/`, `sft/`, `rl/`).
pub mod answers;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod curriculum;
pub mod data;
pub mod device;
pub mod dist;
pub mod hf;
pub mod lm;
pub mod lora;
pub mod memory;
pub mod meta;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod outdir;
pub mod perf;
pub mod progress;
pub mod prompts;
pub mod provenance;
pub mod sampling;
pub mod schedule;
pub mod stage;
pub mod tasks;
pub mod tokenizer;
pub mod verify;
