//! Admin query strings (`api::fuzz::trace_query`, `api::fuzz::bucket`): any bytes give a query
//! or a message naming the parameter, never a panic or a silent clamp.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    if let Err(message) = llm_tracer::api::fuzz::trace_query(&query) {
        assert!(!message.is_empty(), "a refusal names the problem");
    }
    match llm_tracer::api::fuzz::bucket(&query) {
        Ok(seconds) => assert!(
            (1..=366 * 86_400).contains(&seconds),
            "bucket in 1s..=366d: {seconds}"
        ),
        Err(message) => assert!(
            message.starts_with("bucket"),
            "the refusal names bucket: {message}"
        ),
    }
});
