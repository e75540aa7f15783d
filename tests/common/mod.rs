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

/// [`test_config`] with `[store] backend = "clickhouse"` at `url`, database `database`, the
/// writer's buffer bounded to `buffer_spans`.
pub fn clickhouse_config(
    dir: &Path,
    upstream: &str,
    url: &str,
    database: &str,
    buffer_spans: usize,
) -> Config {
    let flags = Flags {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.display().to_string()),
        upstream: Some(upstream.into()),
        batch_interval_ms: Some("5".into()),
        shutdown_timeout_ms: Some("5000".into()),
        store_backend: Some("clickhouse".into()),
        clickhouse_url: Some(url.into()),
        clickhouse_database: Some(database.into()),
        clickhouse_buffer_spans: Some(buffer_spans.to_string()),
        ..Flags::default()
    };
    config::load(None, &flags, &|_| None).expect("clickhouse test config is valid")
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
        // Generous: on a loaded 2-core machine the low-priority writer can take many seconds to
        // tokenize a large capture in a debug build.
        let deadline = Instant::now() + Duration::from_secs(60);
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

    /// Polls `/healthz` until its status is `want` and returns it (bounded; the deadline is a
    /// hang guard, not a timing assertion).
    pub async fn wait_health(&self, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, health) = self.get_json("/healthz").await;
            if health["status"] == want {
                return health;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz never became {want}: {health}"
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
    /// A `gpt-4o-mini` chat call saying `content` under trace `trace`, through the proxy.
    async fn chat(&self, trace: &str, content: &str, stream: bool) -> reqwest::Response {
        client()
            .post(self.url("/v1/chat/completions"))
            .header("x-tracer-trace-id", trace)
            .json(&chat_body("gpt-4o-mini", content, stream))
            .send()
            .await
            .unwrap()
    }

    /// One non-streamed chat call saying `content` under trace `trace`, answered 200 and then
    /// stored (waits until its span is in the store).
    pub async fn chat_stored(&self, trace: &str, content: &str) {
        let rsp = self.chat(trace, content, false).await;
        assert_eq!(rsp.status(), 200);
        rsp.bytes().await.unwrap();
        self.wait_for_trace(trace, 1).await;
    }

    /// One chat call under trace `trace` (streamed or not) that must succeed with the mock's
    /// answer, whatever happens to its capture.
    pub async fn call_traced(&self, trace: &str, stream: bool) {
        let rsp = self.chat(trace, trace, stream).await;
        assert_eq!(rsp.status(), 200, "a capture problem never fails a call");
        let body = rsp.text().await.unwrap();
        assert!(
            body.contains("Mock"),
            "the upstream's answer reaches the app: {body}"
        );
    }

    /// Polls `/metrics` until `done` holds (bounded; the deadline is a hang guard, not a timing
    /// assertion) and returns that text.
    pub async fn wait_metrics(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let text = self.metrics_text().await;
            if done(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "never reached: {what}\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

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

// === The real binary ===

/// The `llm-tracer` binary, with `RUST_LOG` cleared and killed when dropped.
pub fn bin() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_llm-tracer"));
    c.env_remove("RUST_LOG").kill_on_drop(true);
    c
}

/// A spawned `serve`/`demo` whose two `… listening on URL` lines were read.
pub struct Served {
    pub child: tokio::process::Child,
    /// As printed: `http://ADDR` or `https://ADDR`.
    pub proxy: String,
    pub admin: String,
    /// The rest of stdout, for callers that wait for more lines (e.g. the demo's report).
    pub lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

/// Spawns `cmd` (stdout piped; stderr as the caller set it, else discarded) and reads stdout
/// until both `proxy listening on` and `admin listening on` lines have come. The deadline guards
/// against a hang; it is not a timing assertion.
pub async fn spawn_served(mut cmd: tokio::process::Command) -> Served {
    use tokio::io::AsyncBufReadExt;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut proxy, mut admin) = (None, None);
    while proxy.is_none() || admin.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the binary prints its addresses")
            .unwrap()
            .expect("the binary starts and prints both `listening on` lines");
        if let Some(a) = line.strip_prefix("proxy listening on ") {
            proxy = Some(a.to_string());
        } else if let Some(a) = line.strip_prefix("admin listening on ") {
            admin = Some(a.to_string());
        }
    }
    Served {
        child,
        proxy: proxy.unwrap(),
        admin: admin.unwrap(),
        lines,
    }
}

impl Served {
    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.sigterm().await;
        self.wait_exit().await
    }

    /// Sends SIGTERM.
    pub async fn sigterm(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success(), "kill -TERM {pid} worked");
    }

    /// Waits (bounded) for the exit status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the binary exits after SIGTERM")
            .unwrap()
    }
}

// === TLS material ===

/// A fresh CA and a leaf for localhost / 127.0.0.1: (ca_pem, leaf_pem, leaf_key_pem).
pub fn make_certs() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "llm-tracer test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}

// === A raw upstream ===

/// An upstream that answers every request with `body` (as `content_type`, with a
/// content-length), then closes the connection. Returns its base URL.
pub async fn raw_upstream(content_type: &'static str, body: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the head and the (small, content-length) body, then answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for _ in 0..10_000 {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A mount made by [`mount`], unmounted when dropped (lazily, so a still-open file cannot leak
/// the mount).
pub struct Mount(pub PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// `mount ARGS... target` (the directory is created first); `None` when this machine does not
/// allow it (it needs root with CAP_SYS_ADMIN).
pub fn mount(args: &[&str], target: &Path) -> Option<Mount> {
    std::fs::create_dir_all(target).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(args)
        .arg(target)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    mounted.then(|| Mount(target.to_path_buf()))
}
