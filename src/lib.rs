//! llm-tracer: a capturing reverse proxy for OpenAI-compatible LLM endpoints.
//!
//! Data flows one way: accept → route → forward → tap → queue → span → store → query/UI.

pub mod propagate;
pub mod span;
pub mod store;
pub mod tap;
