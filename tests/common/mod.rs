//! Shared test harness: the proxy started in-process on port 0 with its own temp store, the
//! library's scripted mock upstream, and a real HTTP client (reqwest).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use llm_tracer::{
    app::{self, Running},
    config::{self, Config, Flags},
};
use serde_json::Value;

pub use llm_tracer::mock::MockUpstream;

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A config for tests: both listeners on 127.0.0.1:0, the `/` route to `upstream`, store in `dir`.
pub fn test_config(dir: &Path, upstream: &str) -> Config {
    let flags = Flags {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.display().to_string()),
        upstream: Some(upstream.into()),
        batch_interval_ms: Some("5".into()),
        shutdown_timeout_ms: Some("5000".into()),
        ..Flags::default()
    };
    config::load(None, &flags, &|_| None).expect("test config is valid")
}

pub struct TestProxy {
    pub proxy: String,
    pub admin: String,
    pub running: Option<Running>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestProxy {
    pub async fn start(upstream: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let config = test_config(tmp.path(), upstream);
        let mut p = Self::start_with(config).await;
        p.dir = tmp.path().to_owned();
        p._tmp = Some(tmp);
        p
    }

    pub async fn start_with(config: Config) -> Self {
        install_crypto();
        let dir = config.data_dir.clone();
        let running = app::start(config).await.expect("proxy starts");
        Self {
            proxy: format!("http://{}", running.proxy_addr),
            admin: format!("http://{}", running.admin_addr),
            running: Some(running),
            dir,
            _tmp: None,
        }
    }

    /// Graceful shutdown; keeps the temp dir so a restart can reopen the store.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy)
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// Polls the admin API until the trace holds `spans` spans. The deadline guards against
    /// hangs; it is not a timing assertion.
    pub async fn wait_for_trace(&self, trace_id: &str, spans: usize) -> Value {
        let url = self.api(&format!("/api/traces/{trace_id}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rsp = client().get(&url).send().await.unwrap();
            if rsp.status() == 200 {
                let v: Value = rsp.json().await.unwrap();
                if v["spans"].as_array().map(Vec::len).unwrap_or(0) >= spans {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} never reached {spans} stored spans"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let rsp = client().get(self.api(path)).send().await.unwrap();
        let status = rsp.status().as_u16();
        let body = rsp.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

/// A real HTTP client, trusting nothing but webpki roots.
pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn chat_body(model: &str, content: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "temperature": 0.3,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": content}
        ]
    })
}

/// Every file under `dir`, concatenated (to prove a secret is nowhere in the store).
pub fn all_bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.extend(std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The value of one Prometheus sample line (`name` includes any labels, e.g.
/// `llm_tracer_captures_dropped_total{reason="queue_full"}`); `None` when the line is absent.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
}

/// The sum of every sample of `family` (all label sets), e.g. every
/// `llm_tracer_captures_dropped_total{reason=…}` line.
pub fn metric_family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let base = key.split('{').next()?;
            (base == family)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

impl TestProxy {
    /// The admin `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let rsp = client().get(self.api("/metrics")).send().await.unwrap();
        assert_eq!(rsp.status(), 200, "the metrics endpoint answers");
        rsp.text().await.unwrap()
    }

    /// Starts a graceful shutdown in a task of its own and returns its handle, so a test can
    /// observe the proxy while shutdown waits for in-flight calls. Keeps the temp dir.
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<()> {
        let running = self.running.take().expect("the proxy is running");
        tokio::spawn(running.shutdown())
    }
}
