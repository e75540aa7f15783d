//! llm-tracer: a capturing reverse proxy for OpenAI-compatible LLM endpoints.
//!
//! Data flows one way: accept → route → forward → tap → queue → span → store → query/UI.

pub mod api;
pub mod app;
pub mod backend;
pub mod cli;
pub mod clickhouse;
pub mod config;
mod deadline;
pub mod demo;
pub mod error;
pub mod forward;
pub mod hop;
pub mod idle;
pub mod listener;
pub mod malloc;
pub mod metrics;
pub mod mock;
pub mod otlp;
pub mod priority;
pub mod propagate;
pub mod queue;
pub mod route;
pub mod span;
pub mod spool;
pub mod store;
pub mod tap;
pub mod upstream;
mod varint;

/// glibc's malloc, with mimalloc inside store writes (`malloc::Allocator`): for everything that
/// links this library, the binary, its tests and benches alike.
#[global_allocator]
static ALLOCATOR: malloc::Allocator = malloc::Allocator;
