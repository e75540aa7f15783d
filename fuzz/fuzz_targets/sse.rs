//! The SSE parser (`span::sse`): never panics, and splitting the input anywhere gives exactly
//! the events of a one-shot parse (the upstream's frames may split an event at any byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_tracer::span::sse::{parse, Parser};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    // The first two bytes choose the split points, so libFuzzer explores them too.
    let (a, b) = match data {
        [x, y, ..] => (*x as usize, *y as usize),
        [x] => (*x as usize, 0),
        [] => (0, 0),
    };
    let cut1 = if data.is_empty() {
        0
    } else {
        a % (data.len() + 1)
    };
    let cut2 = cut1
        + if data.len() > cut1 {
            b % (data.len() - cut1 + 1)
        } else {
            0
        };
    let mut parser = Parser::new();
    let mut pieces = Vec::new();
    parser.feed(&data[..cut1], &mut pieces);
    parser.feed(&data[cut1..cut2], &mut pieces);
    parser.feed(&data[cut2..], &mut pieces);
    parser.finish(&mut pieces);
    assert_eq!(
        whole, pieces,
        "split at {cut1} and {cut2}: same events as one piece"
    );
    let mut last_end = 0;
    for e in &whole {
        assert!(
            e.end >= last_end && e.end <= data.len() as u64,
            "event offsets are in order and in bounds"
        );
        last_end = e.end;
    }
});
