//! `POST /api/spans` body parsing (`api::fuzz::ingest`): any bytes give spans or a message
//! naming the problem, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match llm_tracer::api::fuzz::ingest(data) {
        Ok(n) => assert!(n >= 1, "an accepted body holds at least one span"),
        Err(message) => assert!(!message.is_empty(), "a refusal says why"),
    }
});
