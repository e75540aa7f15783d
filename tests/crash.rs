//! `kill -9` under load, 20 times on the same store: the real binary must reopen it every time,
//! `llm-tracer check` must find it consistent, and every trace acknowledged by a flush before a
//! kill must still be there.
//!
//! "Acknowledged by a flush": the trace was readable through `GET /api/traces/{id}` and then a
//! `POST /api/flush` (an fsync of the store) returned. That is deterministic, unlike waiting out
//! `flush_every_ms`, which also runs (small) so kills land during background flushes too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::Path,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{chat_body, MockUpstream};
use tokio::process::{Child, Command};

const ROUNDS: usize = 20;
const CLIENTS: usize = 4;
/// Calls acknowledged per round before the kill.
const ACKS_PER_ROUND: usize = 3;
/// Most calls one client makes in a round (bounds the loop if the kill never comes).
const MAX_CALLS_PER_CLIENT: usize = 500;

fn client() -> reqwest::Client {
    common::install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Starts `serve` on port 0 and returns (child, proxy URL, admin URL).
async fn serve(dir: &Path, upstream: &str) -> (Child, String, String) {
    let mut cmd = common::bin();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--flush-every-ms",
        "5",
        "--batch-interval-ms",
        "2",
        "--upstream",
        upstream,
        "--data-dir",
    ])
    .arg(dir)
    .stderr(Stdio::null());
    // The server must start on the store left by kill -9 (the helper fails the test if not).
    let served = common::spawn_served(cmd).await;
    (served.child, served.proxy, served.admin)
}

async fn trace_status(admin: &str, id: &str) -> u16 {
    match client()
        .get(format!("{admin}/api/traces/{id}"))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_twenty_times_loses_nothing_acknowledged() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut acknowledged: Vec<String> = Vec::new();

    for round in 0..=ROUNDS {
        let (mut child, proxy, admin) = serve(&dir, &upstream.url()).await;
        for id in &acknowledged {
            assert_eq!(
                trace_status(&admin, id).await,
                200,
                "round {round}: trace {id}, acknowledged by a flush before a kill -9, is still stored"
            );
        }
        if round == ROUNDS {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            break;
        }

        // Load: a few clients calling in a loop, streamed and not, until the kill.
        let stop = Arc::new(AtomicBool::new(false));
        let done: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (stop, done, proxy) = (stop.clone(), done.clone(), proxy.clone());
            clients.push(tokio::spawn(async move {
                let http = client();
                for n in 0..MAX_CALLS_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("crash-{round}-{c}-{n}");
                    let mut body = chat_body("gpt-4o-mini", "hello", n % 2 == 0);
                    // Reported usage: no tokenizer start-up (slow in debug builds) per restart.
                    body["stream_options"] = serde_json::json!({ "include_usage": true });
                    let sent = http
                        .post(format!("{proxy}/v1/chat/completions"))
                        .header("x-tracer-trace-id", &id)
                        .json(&body)
                        .send()
                        .await;
                    let Ok(rsp) = sent else { break };
                    if rsp.status() != 200 || rsp.bytes().await.is_err() {
                        break;
                    }
                    done.lock().unwrap().push(id);
                }
            }));
        }

        // Acknowledge a few completed calls: readable through the API, then a flush returned.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut acked_now: Vec<String> = Vec::new();
        while acked_now.len() < ACKS_PER_ROUND {
            assert!(
                Instant::now() < deadline,
                "round {round}: completed calls became readable through the API"
            );
            let candidate = done
                .lock()
                .unwrap()
                .iter()
                .find(|id| !acked_now.contains(id))
                .cloned();
            match candidate {
                Some(id) if trace_status(&admin, &id).await == 200 => acked_now.push(id),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let flushed = client()
            .post(format!("{admin}/api/flush"))
            .send()
            .await
            .unwrap();
        assert_eq!(flushed.status(), 200, "round {round}: the store flushes");
        acknowledged.extend(acked_now);

        // Keep the load on for a few more calls, so the kill lands mid-traffic.
        let seen = done.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while done.lock().unwrap().len() < seen + CLIENTS && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }

        let out = Command::new(env!("CARGO_BIN_EXE_llm-tracer"))
            .env_remove("RUST_LOG")
            .args(["check", "--data-dir"])
            .arg(&dir)
            .output()
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: the store left by kill -9 is consistent: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        acknowledged.len(),
        ROUNDS * ACKS_PER_ROUND,
        "every round acknowledged its calls"
    );
}
