//! `llm-tracer check` through the real binary: exit 0 on a store written by the server, 1 with
//! the problem named once the store is corrupted, 2 when there is nothing to check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{chat_body, client, test_config, MockUpstream, TestProxy};
use tokio::process::Command;

fn check(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llm-tracer"));
    c.env_remove("RUST_LOG")
        .args(["check", "--data-dir"])
        .arg(dir)
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn check_passes_a_served_store_and_names_a_stray_key() {
    let upstream = MockUpstream::start().await.unwrap();
    let mut proxy = TestProxy::start(&upstream.url()).await;
    for (i, stream) in [false, true, false].into_iter().enumerate() {
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("x-tracer-trace-id", format!("check-{i}"))
            .header("x-tracer-tags", "a,b")
            .json(&chat_body("gpt-4o-mini", "hi", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        rsp.bytes().await.unwrap();
        proxy.wait_for_trace(&format!("check-{i}"), 1).await;
    }
    proxy.stop().await;
    let dir = proxy.dir.clone();

    let out = check(&dir).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a store written by the server is consistent: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 traces, 3 spans") && stdout.contains("clean"),
        "the report counts the records: {stdout}"
    );

    let json = check(&dir).arg("--json").output().await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["traces"], 3, "--json reports the same counts");

    // Corrupt it from outside, as a bad disk or a foreign writer would.
    {
        let db = open_sled(&dir);
        let tree = db.open_tree("v3").unwrap(); // the store's tree (schema 7)
        tree.insert(b"qstray", b"x").unwrap();
        tree.remove(b"ucheck-1").unwrap();
        db.flush().unwrap();
    }
    let out = check(&dir).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "problems exit 1: {stdout}");
    assert!(
        stdout.contains("unknown key qstray"),
        "the stray key is named: {stdout}"
    );
    assert!(
        stdout.contains("trace check-1 has spans but no summary"),
        "the missing summary is named: {stdout}"
    );
}

/// The store's sled database, opened from outside as a foreign writer would. A server that has
/// just stopped may still hold sled's directory lock for a moment (sled lets go of it from its
/// own threads), so the open is retried for up to 10 s.
fn open_sled(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("could not acquire lock"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("the store stays locked: {e}"),
        }
    }
}

/// The trace ids a full-text search over the admin API returns.
async fn search(proxy: &TestProxy, q: &str) -> Vec<String> {
    let (status, page) = proxy
        .get_json(&format!("/api/traces?limit=100&q={q}"))
        .await;
    assert_eq!(status, 200, "{page}");
    let mut ids: Vec<String> = page["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Postings of a few small writes wait in the posting journal: a search over the admin API finds
/// them at once and again after a restart, `check` counts them (`journal_edits`), and a journal
/// record that does not decode is named.
#[tokio::test]
async fn searches_and_check_see_the_posting_journal_across_a_restart() {
    let upstream = MockUpstream::start().await.unwrap();
    let mut proxy = TestProxy::start(&upstream.url()).await;
    let ids: Vec<String> = (0..5).map(|i| format!("journal-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        proxy.chat_stored(id, &format!("zebra{i} quokka")).await;
    }
    assert_eq!(search(&proxy, "quokka").await, ids);
    assert_eq!(search(&proxy, "zebra3").await, ["journal-3"]);
    proxy.stop().await;
    let dir = proxy.dir.clone();

    let json = check(&dir).arg("--json").output().await.unwrap();
    assert_eq!(json.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let waiting = report["journal_edits"].as_u64().unwrap();
    assert!(waiting >= 10, "small writes are journalled: {report}");
    assert!(report["postings"].as_u64().unwrap() >= waiting, "{report}");
    let out = check(&dir).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("({waiting} posting edits waiting in the journal)")),
        "{stdout}"
    );

    let mut again = TestProxy::start_with(test_config(&dir, &upstream.url())).await;
    assert_eq!(
        search(&again, "quokka").await,
        ids,
        "the journal is read back at start"
    );
    assert_eq!(search(&again, "zebra0").await, ["journal-0"]);
    again.stop().await;

    {
        let db = open_sled(&dir);
        let tree = db.open_tree("v3").unwrap();
        let mut key = vec![b'j'];
        key.extend_from_slice(&u64::MAX.to_be_bytes());
        tree.insert(key, &[1u8, 1, 40][..]).unwrap();
        db.flush().unwrap();
    }
    let out = check(&dir).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("posting journal record") && stdout.contains("does not decode"),
        "the bad record is named: {stdout}"
    );
    drop(proxy);
}

#[tokio::test]
async fn check_without_a_store_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = check(&tmp.path().join("nothing-here"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing data dir is an error, not a clean store"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("data_dir"),
        "the error names data_dir"
    );
}
