//! Serving a checkpoint over the OpenAI HTTP API: the wire format ([`api`]), the
//! continuous-batching engine on its own libtorch thread ([`engine`]), the axum/hyper
//! side ([`server`]), Prometheus counters ([`metrics`]) and a loopback load generator
//! ([`load`]) for the tests and `just bench`.
pub mod api;
pub mod engine;
pub mod load;
pub mod metrics;
pub mod server;
