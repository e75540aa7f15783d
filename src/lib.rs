//! llm-tracer: a capturing reverse proxy for OpenAI-compatible LLM endpoints.
//!
//! Data flows one way: accept → route → forward → tap → queue → span → store → query/UI.

pub mod api;
pub mod app;
pub mod backend;
pub mod cli;
pub mod clickhouse;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod idle;
pub mod listener;
pub mod metrics;
pub mod mock;
pub mod otlp;
pub mod propagate;
pub mod queue;
pub mod route;
pub mod span;
pub mod spool;
pub mod store;
pub mod tap;
pub mod upstream;
mod varint;

/// jemalloc instead of glibc's malloc: the writer allocates and frees many small, short-lived
/// objects (sled's nodes, span strings), and glibc spent ~40 % of the writer's CPU in
/// `_int_malloc`, `unlink_chunk` and `malloc_consolidate` (perf, while storing a spooled backlog).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
