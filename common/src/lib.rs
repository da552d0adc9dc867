//! lib2expert's shared machinery: configuration, devices, the GPT and its KV cache,
//! the tokenizer and chat template, checkpoints, Parquet data and mixes, the optimiser
//! and schedules, generation, and progress reporting. Stage binaries stay thin and call
//! into this crate.
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod curriculum;
pub mod data;
pub mod device;
pub mod grpo;
pub mod hf;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod perf;
pub mod progress;
pub mod prompts;
pub mod rl;
pub mod sampling;
pub mod schedule;
pub mod tasks;
pub mod testing;
pub mod tokenizer;
pub mod train;
pub mod verify;
