//! `llm-tracer compact` through the real binary: a store that served traffic and lost most of
//! it to deletes is rewritten smaller, passes `check`, and serves the same answers; a running
//! server's store, a missing one and every interrupted state are handled as documented.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{chat_body, client, mount, test_config, MockUpstream, TestProxy};
use llm_tracer::store::{compact_paths, CompactPaths, COMPACT_MARKER};
use serde_json::{json, Value};
use tokio::process::Command;

fn llm_tracer(args: &[&str], dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llm-tracer"));
    c.env_remove("RUST_LOG")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .kill_on_drop(true);
    c
}

async fn compact(dir: &Path) -> (Option<i32>, String) {
    let out = llm_tracer(&["compact"], dir).output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                dir_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

/// Copies sled's own files (`db`, `conf`, `blobs/`, snapshots) of the store in `from`, as
/// compaction's copy holds them (the spool is moved in later).
fn copy_sled_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if matches!(name.as_str(), "db" | "conf" | "blobs") || name.starts_with("snap.") {
            copy_dir_entry(&e, &to.join(&name));
        }
    }
}

fn copy_dir_entry(e: &std::fs::DirEntry, target: &Path) {
    if e.file_type().unwrap().is_dir() {
        copy_dir(&e.path(), target);
    } else {
        std::fs::copy(e.path(), target).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        copy_dir_entry(&e, &to.join(e.file_name()));
    }
}

/// Every kept trace, as the API answers it, keyed by trace id.
async fn traces(proxy: &TestProxy, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        let (status, body) = proxy.get_json(&format!("/api/traces/{id}")).await;
        assert_eq!(status, 200, "trace {id}: {body}");
        out.push(body);
    }
    out
}

/// A store with 3 proxied calls and 300 app-side spans of ~4 kB, of which 270 deleted.
async fn served_store(dir: &Path) -> (Vec<String>, Vec<Value>) {
    let upstream = MockUpstream::start().await.unwrap();
    let mut proxy = TestProxy::start_with(test_config(dir, &upstream.url())).await;
    let mut kept = Vec::new();
    for (i, stream) in [false, true, false].into_iter().enumerate() {
        let id = format!("call-{i}");
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("x-tracer-trace-id", &id)
            .json(&chat_body("gpt-4o-mini", "compact me", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        rsp.bytes().await.unwrap();
        proxy.wait_for_trace(&id, 1).await;
        kept.push(id);
    }
    for chunk in 0..10 {
        let spans: Vec<Value> = (0..30)
            .map(|j| {
                let i = chunk * 30 + j;
                json!({
                    "trace_id": format!("bulk-{i}"),
                    "span_id": format!("{:016x}", 0xb000 + i),
                    "name": "retrieve",
                    "kind": "retriever",
                    "start_time": format!("2026-11-28T04:{:02}:00.{:06}Z", chunk, j),
                    "end_time": format!("2026-11-28T04:{:02}:01.{:06}Z", chunk, j),
                    "input": format!("document {i} ").repeat(400),
                })
            })
            .collect();
        let rsp = client()
            .post(proxy.api("/api/spans"))
            .json(&spans)
            .send()
            .await
            .unwrap();
        assert!(rsp.status().is_success(), "{}", rsp.text().await.unwrap());
    }
    proxy.wait_for_trace("bulk-299", 1).await;
    for i in 0..300 {
        let id = format!("bulk-{i}");
        if i % 10 == 0 {
            kept.push(id);
            continue;
        }
        let rsp = client()
            .delete(proxy.api(&format!("/api/traces/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 204, "delete {id}");
    }
    let answers = traces(&proxy, &kept).await;
    proxy.stop().await;
    (kept, answers)
}

#[tokio::test]
async fn compact_shrinks_a_store_that_serves_the_same_answers_after() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (kept, before_answers) = served_store(&dir).await;
    let before = dir_bytes(&dir);

    let (code, stderr) = compact(&dir).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("compacted") && stderr.contains("MiB on disk before"),
        "the sizes are reported: {stderr}"
    );
    let after = dir_bytes(&dir);
    assert!(
        after < before,
        "the files shrink: {before} bytes before, {after} after"
    );
    let paths = compact_paths(&dir);
    assert!(!paths.copy.exists() && !paths.previous.exists());

    let out = llm_tracer(&["check"], &dir).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the copy is consistent: {stdout}"
    );
    assert!(
        stdout.contains(&format!("{} traces", kept.len())),
        "only the kept traces: {stdout}"
    );

    let upstream = MockUpstream::start().await.unwrap();
    let mut proxy = TestProxy::start_with(test_config(&dir, &upstream.url())).await;
    assert_eq!(
        traces(&proxy, &kept).await,
        before_answers,
        "every kept trace reads back the same"
    );
    let (status, _) = proxy.get_json("/api/traces/bulk-1").await;
    assert_eq!(status, 404, "a deleted trace stays deleted");
    let (_, list) = proxy.get_json("/api/traces?limit=1000&q=document").await;
    assert_eq!(
        list["traces"].as_array().map(Vec::len),
        Some(30),
        "the full-text index came along: {list}"
    );
    // The compacted store takes writes.
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "after-compact")
        .json(&chat_body("gpt-4o-mini", "still here", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    proxy.wait_for_trace("after-compact", 1).await;

    // While the server runs, the store is locked: refused, untouched.
    let (code, stderr) = compact(&dir).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("is locked") && stderr.contains("Stop the server first"),
        "{stderr}"
    );
    assert!(!paths.copy.exists());
    proxy.stop().await;
}

/// Runs `compact` and expects it to succeed, saying `says`.
async fn compact_ok(dir: &Path, says: &str) {
    let (code, stderr) = compact(dir).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(says), "{says:?} in {stderr}");
}

/// A complete copy of the store in `dir`, as step 1 leaves it (made with a file copy here).
fn marked_copy(paths: &CompactPaths) {
    copy_sled_files(&paths.dir, &paths.copy);
    std::fs::write(paths.copy.join("copy-sentinel"), b"").unwrap();
    std::fs::write(paths.copy.join(COMPACT_MARKER), b"").unwrap();
}

/// The marked copy, not the old store, ended up as the data dir (and the sentinel goes).
fn the_copy_is_in_place(dir: &Path) {
    let sentinel = dir.join("copy-sentinel");
    assert!(sentinel.exists(), "the copy took the data dir's place");
    std::fs::remove_file(sentinel).unwrap();
}

/// `serve` on `dir` exits 2 naming the unfinished compaction.
async fn serve_refuses(dir: &Path) {
    let out = common::bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--upstream", "http://127.0.0.1:9", "--data-dir"])
        .arg(dir)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("data_dir") && stderr.contains("interrupted `llm-tracer compact` left"),
        "{stderr}"
    );
}

/// Each state an interrupted run can leave (module docs of `cli::compact`), built by hand and
/// finished by the next run through the real binary, the data dir's other contents (the spool)
/// carried over; states it cannot tell apart are refused; a server refuses to start while the
/// data dir is missing.
#[tokio::test]
async fn compact_finishes_what_an_interrupted_run_left() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (kept, answers) = served_store(&dir).await;
    let paths = compact_paths(&dir);
    let reopen_same = |kept: Vec<String>, answers: Vec<Value>| {
        let dir = dir.clone();
        async move {
            let upstream = MockUpstream::start().await.unwrap();
            let mut proxy = TestProxy::start_with(test_config(&dir, &upstream.url())).await;
            assert_eq!(traces(&proxy, &kept).await, answers);
            proxy.stop().await;
        }
    };
    // A file in the spool (the capture spool lives in the data dir) must survive every path.
    let spooled = dir.join("spool").join("segment-test");
    std::fs::create_dir_all(spooled.parent().unwrap()).unwrap();
    std::fs::write(&spooled, b"calls not yet stored").unwrap();
    let spool_kept = |after: &str| {
        assert_eq!(
            std::fs::read(&spooled).unwrap_or_else(|e| {
                let listing: Vec<_> = std::fs::read_dir(spooled.parent().unwrap())
                    .map(|d| d.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                panic!(
                    "after {after}: {}: {e}; the spool holds {listing:?}",
                    spooled.display()
                )
            }),
            b"calls not yet stored",
            "the spool came along"
        );
    };

    // Step 1 unfinished (a copy without the marker): removed, then a full run; with a trailing
    // slash on the data dir, which names the same siblings.
    std::fs::create_dir_all(paths.copy.join("blobs")).unwrap();
    std::fs::write(paths.copy.join("db"), b"half a copy").unwrap();
    let slashed = PathBuf::from(format!("{}/", dir.display()));
    compact_ok(&slashed, "compacted").await;
    assert!(!paths.copy.exists() && !dir.join(".compacting").exists());
    spool_kept("an unfinished copy");
    reopen_same(kept.clone(), answers.clone()).await;

    // After step 1: a marked copy beside the whole store. A server refuses to start (its writes
    // would be lost when the copy goes in); compact goes forward.
    marked_copy(&paths);
    serve_refuses(&dir).await;
    compact_ok(&dir, "finished an interrupted compaction").await;
    the_copy_is_in_place(&dir);
    assert!(!paths.copy.exists() && !paths.previous.exists());
    assert!(!dir.join(COMPACT_MARKER).exists());
    spool_kept("step 1");
    reopen_same(kept.clone(), answers.clone()).await;

    // After step 3: the store moved aside, the marked copy not yet in place. The real server
    // refuses to start (it would create an empty store); compact finishes.
    marked_copy(&paths);
    std::fs::rename(dir.join("spool"), paths.copy.join("spool")).unwrap(); // step 2
    std::fs::rename(&dir, &paths.previous).unwrap();
    serve_refuses(&dir).await;
    assert!(!dir.exists(), "the refusing server created nothing");
    compact_ok(&dir, "finished an interrupted compaction").await;
    assert!(!paths.copy.exists() && !paths.previous.exists());
    the_copy_is_in_place(&dir);
    spool_kept("step 3");
    reopen_same(kept.clone(), answers.clone()).await;

    // After step 4: the copy in place with its marker, the old store still beside it.
    copy_sled_files(&dir, &paths.previous);
    std::fs::write(dir.join(COMPACT_MARKER), b"").unwrap();
    compact_ok(&dir, "finished an interrupted compaction").await;
    assert!(!paths.previous.exists() && !dir.join(COMPACT_MARKER).exists());
    reopen_same(kept.clone(), answers.clone()).await;

    // Not a state this procedure leaves: the old store beside an unmarked data dir. Refused,
    // both named, both kept.
    copy_sled_files(&dir, &paths.previous);
    let (code, stderr) = compact(&dir).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("both") && stderr.contains(".pre-compact"),
        "{stderr}"
    );
    assert!(dir.exists() && paths.previous.exists());
    std::fs::remove_dir_all(&paths.previous).unwrap();

    // Another run holds the lock: refused.
    let held = std::fs::File::create(&paths.lock).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let (code, stderr) = compact(&dir).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("another `llm-tracer compact`"), "{stderr}");
    drop(held);
    spool_kept("the lock");

    // Nothing to compact.
    let (code, stderr) = compact(&tmp.path().join("nothing-here")).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("data_dir") && stderr.contains("not a directory"),
        "{stderr}"
    );
}

/// Whether the kernel says if `path` is a mount root (statx, Linux 5.8+).
fn reports_mount_root(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    statx(CWD, path, AtFlags::empty(), StatxFlags::BASIC_STATS)
        .is_ok_and(|st| st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT))
}

/// A store in `dir` holding one proxied call, trace `id`.
async fn one_call_store(dir: &Path, id: &str) {
    let upstream = MockUpstream::start().await.unwrap();
    let mut proxy = TestProxy::start_with(test_config(dir, &upstream.url())).await;
    proxy.chat_stored(id, "on a volume").await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_data_dir_that_is_a_mount_point_is_refused_before_anything_is_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let bind_source = tmp.path().join("bind-source");
    std::fs::create_dir_all(&bind_source).unwrap();
    let Some(tmpfs) = mount(
        &["-t", "tmpfs", "-o", "size=256m", "tmpfs"],
        &tmp.path().join("volume"),
    ) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
        return;
    };
    // A bind mount stays on the parent's filesystem (same device): only the mount-root
    // attribute tells it apart, which kernels before 5.8 do not report.
    let bind = mount(
        &["--bind", bind_source.to_str().unwrap()],
        &tmp.path().join("bound"),
    )
    .filter(|m| reports_mount_root(&m.0));
    if bind.is_none() {
        eprintln!("bind mount case SKIPPED: no bind mount, or no statx mount-root attribute here");
    }

    for mounted in std::iter::once(&tmpfs.0).chain(bind.as_ref().map(|m| &m.0)) {
        one_call_store(mounted, "on-the-volume").await;
        let (code, stderr) = compact(mounted).await;
        assert_eq!(code, Some(2), "{}: {stderr}", mounted.display());
        assert!(
            stderr.contains("is a mount point") && stderr.contains("Nothing was changed"),
            "the error says why and that the store is untouched: {stderr}"
        );
        let paths = compact_paths(mounted);
        assert!(
            !paths.copy.exists() && !paths.previous.exists(),
            "no copy was started beside the mount point"
        );
        let out = llm_tracer(&["check"], mounted).output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "the store is intact: {stdout}");
        assert!(stdout.contains("1 traces"), "{stdout}");

        // A marked copy an older binary left beside the mount point is named, not used.
        marked_copy(&paths);
        let (code, stderr) = compact(mounted).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("An earlier run's copy waits at") && paths.copy.exists(),
            "{stderr}"
        );
        std::fs::remove_dir_all(&paths.copy).unwrap();

        // What the error suggests: a directory inside the volume compacts.
        let inside = mounted.join("store");
        one_call_store(&inside, "inside-the-volume").await;
        let (code, stderr) = compact(&inside).await;
        assert_eq!(code, Some(0), "{}: {stderr}", inside.display());
        let out = llm_tracer(&["check"], &inside).output().await.unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    drop(bind);
    drop(tmpfs);
}
