//! TLS on the proxy and admin listeners (`tls_cert`/`tls_key`, `admin_tls_cert`/`admin_tls_key`):
//! HTTP/1.1 and h2 by ALPN, `https://` in the start-up lines, bad files are start-up errors that
//! name the key, and a failed or stalled handshake never affects other clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use common::{bin, chat_body, make_certs, spawn_served, test_config, MockUpstream, TestProxy};
use llm_tracer::config::{self, Flags, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes the CA, leaf and key PEMs into `dir`; returns the CA PEM and the file paths.
fn write_certs(dir: &Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let (ca, leaf, key) = make_certs();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, leaf).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (ca, cert_path, key_path)
}

/// A client that trusts only the test CA.
fn tls_client(ca: &str, http1_only: bool) -> reqwest::Client {
    common::install_crypto();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()]);
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn files(cert: &Path, key: &Path, admin: bool) -> TlsFiles {
    TlsFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
        cert_key: if admin { "admin_tls_cert" } else { "tls_cert" },
        key_key: if admin { "admin_tls_key" } else { "tls_key" },
    }
}

#[tokio::test]
async fn both_listeners_serve_tls_over_http1_and_h2() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(tmp.path());
    let mut config = test_config(&tmp.path().join("data"), &upstream.url());
    config.tls = Some(files(&cert, &key, false));
    config.admin_tls = Some(files(&cert, &key, true));
    let proxy = TestProxy::start_with(config).await;
    let running = proxy.running.as_ref().unwrap();
    let proxy_url = format!("https://127.0.0.1:{}", running.proxy_addr.port());
    let admin_url = format!("https://127.0.0.1:{}", running.admin_addr.port());

    for (http1_only, version, trace) in [
        (true, reqwest::Version::HTTP_11, "tls-listen-h1"),
        (false, reqwest::Version::HTTP_2, "tls-listen-h2"),
    ] {
        let client = tls_client(&ca, http1_only);
        let rsp = client
            .post(format!("{proxy_url}/v1/chat/completions"))
            .header("x-tracer-trace-id", trace)
            .json(&chat_body("gpt-4o-mini", "over tls", true))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.version(), version, "ALPN picked the protocol");
        let text = rsp.text().await.unwrap();
        assert!(text.contains("[DONE]"), "the stream came through TLS");

        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let rsp = client
                .get(format!("{admin_url}/api/traces/{trace}"))
                .send()
                .await
                .unwrap();
            assert_eq!(rsp.version(), version, "the admin listener speaks it too");
            if rsp.status() == 200 {
                let v: serde_json::Value = rsp.json().await.unwrap();
                assert_eq!(v["spans"][0]["status"], "ok");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the span is readable over TLS"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let plain = common::client()
        .get(format!(
            "http://127.0.0.1:{}/healthz",
            running.admin_addr.port()
        ))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP is not served on a TLS listener"
    );
}

#[tokio::test]
async fn a_failed_or_stalled_handshake_never_affects_other_clients() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(tmp.path());
    let mut config = test_config(&tmp.path().join("data"), &upstream.url());
    config.tls = Some(files(&cert, &key, false));
    let proxy = TestProxy::start_with(config).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;

    // One client stalls mid-handshake (connects, says nothing) and stays connected.
    let _staller = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Another speaks plain HTTP to the TLS port: its handshake fails and it is closed.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), garbage.read(&mut buf))
        .await
        .expect("a failed handshake is closed, not left hanging");
    assert!(
        matches!(read, Ok(n) if n == 0 || !buf[..n].starts_with(b"HTTP/1.1 200")),
        "a non-TLS client gets no HTTP answer"
    );

    // Meanwhile a real client is served.
    let rsp = tls_client(&ca, false)
        .post(format!(
            "https://127.0.0.1:{}/v1/chat/completions",
            addr.port()
        ))
        .json(&chat_body("gpt-4o-mini", "still here", false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        rsp.status(),
        200,
        "a good client is served while others fail their handshakes"
    );
}

#[tokio::test]
async fn a_tls_client_that_sends_nothing_after_its_handshake_is_disconnected() {
    use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(tmp.path());
    let mut config = test_config(&tmp.path().join("data"), &upstream.url());
    config.tls = Some(files(&cert, &key, false));
    config.header_read_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start_with(config).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;

    common::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("the handshake completes");
    // Handshake done, then not a byte: the head timeout applies from here too.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a TLS client silent after its handshake was still connected after 20 s \
         (header_read_timeout 300 ms)"
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn bad_tls_files_are_start_up_errors_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, cert, key) = write_certs(tmp.path());
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a pem file\n").unwrap();
    let flags = |cert: &Path, key: Option<&Path>| Flags {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        data_dir: Some(tmp.path().join("data").display().to_string()),
        tls_cert: Some(cert.display().to_string()),
        tls_key: key.map(|k| k.display().to_string()),
        ..Flags::default()
    };
    let err = config::load(None, &flags(&cert, None), &|_| None).unwrap_err();
    assert!(
        err.to_string().contains("tls_key"),
        "a certificate without its key names tls_key: {err}"
    );
    let missing = tmp.path().join("missing.key");
    let err = config::load(None, &flags(&cert, Some(&missing)), &|_| None).unwrap_err();
    assert!(
        err.to_string().contains("tls_key") && err.to_string().contains("missing.key"),
        "a missing file names the key and the path: {err}"
    );

    common::install_crypto();
    for (c, k, named) in [(&junk, &key, "tls_cert"), (&cert, &junk, "tls_key")] {
        let config = config::load(None, &flags(c, Some(k)), &|_| None).unwrap();
        let err = match llm_tracer::app::start(config).await {
            Ok(_) => panic!("a bad PEM must stop start-up"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(named), "bad PEM in {named} is named: {err}");
    }
}

#[tokio::test]
async fn the_binary_prints_https_for_a_tls_listener() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(tmp.path());
    let mut cmd = bin();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
    ])
    .arg(upstream.url())
    .arg("--data-dir")
    .arg(tmp.path().join("data"))
    .arg("--tls-cert")
    .arg(&cert)
    .arg("--tls-key")
    .arg(&key)
    .stderr(Stdio::null());
    let mut served = spawn_served(cmd).await;
    assert!(
        served.proxy.starts_with("https://"),
        "the proxy line says https: {}",
        served.proxy
    );
    assert!(
        served.admin.starts_with("http://"),
        "the admin listener without admin_tls_* stays plain: {}",
        served.admin
    );
    let rsp = tls_client(&ca, false)
        .get(format!("{}/v1/models", served.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "the printed URL works as printed");
    assert_eq!(served.terminate().await.code(), Some(0));
}
