//! A private ClickHouse server for one test: free loopback ports, a temp data dir, a minimal
//! config (Debian's `clickhouse-server` 18.16 starts with it as any user, no systemd), stopped
//! on drop. Without the binary the test FAILS, saying what to install: a skipped backend test
//! would pass without testing anything.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a fresh server may take to answer `SELECT 1` (about 3 s here; the machine is
/// shared, so leave plenty).
const START_WAIT: Duration = Duration::from_secs(120);

pub struct ClickHouseServer {
    pub http_port: u16,
    tcp_port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    let candidates = [
        PathBuf::from("/usr/sbin/clickhouse-server"),
        PathBuf::from("/usr/bin/clickhouse-server"),
    ];
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return found.clone();
    }
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("clickhouse-server"))
            .find(|p| p.exists())
    });
    from_path.unwrap_or_else(|| {
        panic!(
            "clickhouse-server is not installed, so the ClickHouse backend cannot be tested. \
             Install it (Debian: `apt-get install -y clickhouse-server clickhouse-client`; \
             .ci/run does this) and run the tests again."
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ClickHouseServer {
    /// Starts a server and waits until it answers over HTTP.
    pub async fn start() -> ClickHouseServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let binary = binary();
        let dir = tempfile::tempdir().unwrap();
        let mut server = ClickHouseServer {
            http_port: free_port(),
            tcp_port: free_port(),
            dir,
            binary,
            child: None,
        };
        // A free port can be taken by someone else between our probe and the server's bind:
        // then the server exits at once, and we try again on other ports.
        for attempt in 1..=3 {
            server.write_config();
            match server.run().await {
                Ok(()) => return server,
                Err(e) if attempt < 3 => {
                    eprintln!("clickhouse-server did not start ({e}); retrying on other ports");
                    server.http_port = free_port();
                    server.tcp_port = free_port();
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn write_config(&self) {
        let d = self.dir.path();
        for sub in ["data", "tmp", "user_files"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
"#,
            d = d.display(),
            http = self.http_port,
            tcp = self.tcp_port,
        );
        std::fs::write(d.join("config.xml"), config).unwrap();
        let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#;
        std::fs::write(d.join("users.xml"), users).unwrap();
    }

    /// Starts the server process again (same ports, same data) and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped server");
        if let Err(e) = self.run().await {
            panic!("{e}");
        }
    }

    /// Spawns the server and waits until it answers; `Err` when it exits first.
    async fn run(&mut self) -> Result<(), String> {
        let config = self.dir.path().join("config.xml");
        let child = Command::new(&self.binary)
            .arg(format!("--config-file={}", config.display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + START_WAIT;
        loop {
            let answer = client
                .get(format!("{}/?query=SELECT%201", self.url()))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(resp) = answer {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.path().join("server.err.log"))
                    .unwrap_or_default();
                self.child = None;
                return Err(format!(
                    "clickhouse-server exited with {status} before answering; its log:\n{log}"
                ));
            }
            assert!(
                Instant::now() < deadline,
                "clickhouse-server did not answer within {START_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server (like a crash or an outage) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
    }
}
