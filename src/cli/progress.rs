//! A progress line on stderr: redrawn in place (at most ten times a second) when stderr is a
//! terminal, a single summary line otherwise (logs and CI stay readable).

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

pub struct Progress {
    verb: &'static str,
    tty: bool,
    spans: u64,
    traces: u64,
    started: Instant,
    drawn: Option<Instant>,
}

impl Progress {
    pub fn new(verb: &'static str) -> Self {
        Self {
            verb,
            tty: std::io::stderr().is_terminal(),
            spans: 0,
            traces: 0,
            started: Instant::now(),
            drawn: None,
        }
    }

    pub fn add(&mut self, spans: u64, traces: u64) {
        self.spans += spans;
        self.traces += traces;
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if self
            .drawn
            .is_some_and(|d| now - d < Duration::from_millis(100))
        {
            return;
        }
        self.drawn = Some(now);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let spinner = ['|', '/', '-', '\\'][(self.spans / 97 % 4) as usize];
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{spinner} {} {} spans, {} traces ({:.0} spans/s)\x1b[K",
            self.verb,
            self.spans,
            self.traces,
            self.spans as f64 / secs
        );
        let _ = err.flush();
    }

    pub fn finish(&self, suffix: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty && self.drawn.is_some() {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(
            err,
            "{} {} spans in {} traces {suffix}",
            self.verb, self.spans, self.traces
        );
    }
}
