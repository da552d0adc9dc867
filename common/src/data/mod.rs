//! Data: Parquet sources, mix files, and the streaming mixture sampler.
pub mod mix;
pub mod parquet;
pub mod sampler;
pub mod writer;

pub use mix::{Format, MixConfig, ResolvedMix, ResolvedSource, SourceConfig};
pub use parquet::{Doc, SourceReader};
pub use sampler::{Cursor, DocCounts, LmSampler, Overlong, PackMode, PackedBatch, SamplerOptions};
