//! App: the composition root. Opens the store, starts the writer, binds both listeners (printing
//! `proxy listening on http://ADDR` / `admin listening on http://ADDR`), and on shutdown stops
//! accepting, lets in-flight calls finish (bounded), drains the capture queue and flushes.
//! `start(Config) -> Running` is what `main`, `demo` and the tests call.

use std::{convert::Infallible, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use hyper::service::service_fn;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::task::TaskTracker;

use crate::{
    api::Admin,
    backend::{Backend, ClickHouseBackend, SledBackend},
    clickhouse::ClickHouseOptions,
    config::{Config, StoreBackend},
    error::StartError,
    forward::Proxy,
    listener, malloc,
    metrics::Metrics,
    queue::{self, SpanQueue, StoreFaults, WriterOptions},
    span::{AssembleOptions, Timestamp},
    spool::Spool,
    store::{Store, StoreOptions},
};

/// After the proxy listener has stopped, recorders get this long to hand over their records.
const RECORDER_GRACE: Duration = Duration::from_secs(2);
/// At shutdown, the writer gets this long to store every queued capture and flush.
const WRITER_GRACE: Duration = Duration::from_secs(30);
/// At shutdown, after the writer's own bounded flush, the ClickHouse writer's last try.
const BACKEND_CLOSE: Duration = Duration::from_secs(2);
/// Admin connections get this long to finish once the writer has drained.
const ADMIN_GRACE: Duration = Duration::from_secs(2);
/// Start-up waits this long for the sled store to open. Most opens take a few milliseconds,
/// and their errors (a locked or unwritable `data_dir`) stay start-up errors; a large store's
/// recovery can take seconds, and then the listeners start without waiting for it.
const OPEN_WAIT: Duration = Duration::from_millis(150);

/// A started server.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub backend: Backend,
    /// Fault injection for the writer's store writes (tests only; see [`StoreFaults`]).
    pub faults: Arc<StoreFaults>,
    stop: watch::Sender<bool>,
    lifecycle: JoinHandle<()>,
}

impl Running {
    /// Graceful shutdown: stop accepting, finish in-flight calls (bounded by
    /// `shutdown_timeout`), store every queued capture, flush, stop the admin listener.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.lifecycle.await {
            tracing::error!(error = %e, "shutdown task failed");
        }
    }
}

/// Starts the proxy and admin listeners. Returns once both are bound.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = open_backend(&config).await?;

    let metrics = Arc::new(Metrics::with_capture_budget(config.capture_budget_bytes));
    let faults = Arc::new(StoreFaults::default());
    let (export, exporter) = match config.otlp.clone() {
        Some(cfg) => {
            let (sink, exporter) = crate::otlp::export::Exporter::start(cfg, metrics.clone())
                .map_err(|m| StartError::Tls {
                    key: "otlp.endpoint".into(),
                    message: m,
                })?;
            (sink, Some(exporter))
        }
        None => (crate::otlp::ExportSink::default(), None),
    };
    let recorders = TaskTracker::new();
    let (queue, queue_rx) = if config.capture {
        let (q, rx) = SpanQueue::new(config.queue_capacity, metrics.clone());
        (Some(q), Some(rx))
    } else {
        (None, None)
    };

    let proxy = Arc::new(Proxy::new(
        &config,
        queue.clone(),
        recorders.clone(),
        metrics.clone(),
    )?);
    let admin = Arc::new(
        Admin::new(
            store.clone(),
            metrics.clone(),
            queue,
            config.queue_capacity,
            config.admin_listen.ip().is_loopback(),
            config.admin_token.clone(),
            config.redactor.clone(),
        )
        .with_export(export.clone()),
    );

    // TLS material is loaded before binding, so a bad file stops start-up naming its key.
    let proxy_tls = config
        .tls
        .as_ref()
        .map(listener::tls_acceptor)
        .transpose()?;
    let admin_tls = config
        .admin_tls
        .as_ref()
        .map(listener::tls_acceptor)
        .transpose()?;
    let proxy_listener = listener::bind("listen", config.listen, proxy_tls.is_some()).await?;
    let admin_listener =
        listener::bind("admin_listen", config.admin_listen, admin_tls.is_some()).await?;
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            key: "listen",
            addr: config.listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            key: "admin_listen",
            addr: config.admin_listen,
            source,
        })?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (writer_stop_tx, writer_stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);

    let spool = match (&queue_rx, config.spool_max_bytes) {
        (Some(_), max) if max > 0 => open_spool(&config.data_dir, max, &metrics).await,
        _ => None,
    };
    let writer = queue_rx.map(|rx| {
        let opts = WriterOptions {
            batch_size: config.batch_size,
            batch_interval: config.batch_interval,
            assemble: AssembleOptions {
                capture_embeddings: config.capture_embeddings,
                pricing: config.pricing.clone(),
                redactor: config.redactor.clone(),
                ..AssembleOptions::default()
            },
            export: export.clone(),
        };
        tokio::spawn(queue::run_writer(
            rx,
            store.clone(),
            metrics.clone(),
            opts,
            writer_stop_rx,
            faults.clone(),
            spool,
        ))
    });

    let proxy_service = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req).await) }
    });
    let admin_service = service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.handle(req).await) }
    });
    let proxy_task = tokio::spawn(listener::serve(
        proxy_listener,
        proxy_service,
        stop_rx.clone(),
        listener::ServeOptions {
            grace: config.shutdown_timeout,
            tls: proxy_tls,
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
        },
    ));
    let admin_task = tokio::spawn(listener::serve(
        admin_listener,
        admin_service,
        admin_stop_rx,
        listener::ServeOptions {
            grace: ADMIN_GRACE,
            tls: admin_tls,
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
        },
    ));

    let retention_task =
        (config.retention.is_some() || config.max_store_bytes.is_some()).then(|| {
            tokio::spawn(run_retention(
                store.clone(),
                config.retention,
                config.max_store_bytes,
                config.retention_interval,
                stop_rx.clone(),
            ))
        });

    // Gives freed heap pages back once a burst of traffic is over (see `malloc`); ends on stop.
    tokio::spawn(malloc::Trimmer::new(metrics.clone()).run(stop_rx.clone()));

    let closing_backend = store.clone();
    let mut stop_signal = stop_rx;
    let lifecycle = tokio::spawn(async move {
        let _ = stop_signal.wait_for(|s| *s).await;
        tracing::info!("shutting down: no new connections; waiting for in-flight calls");
        if let Err(e) = proxy_task.await {
            tracing::error!(error = %e, "proxy listener task failed");
        }
        if let Some(task) = retention_task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "retention task failed");
            }
        }
        // The listener is done (connections finished or dropped at the grace deadline), so every
        // body has reported or is about to: recorders need only a moment to offer their records.
        recorders.close();
        if tokio::time::timeout(RECORDER_GRACE, recorders.wait())
            .await
            .is_err()
        {
            tracing::warn!("some calls were still being recorded at shutdown");
        }
        let _ = writer_stop_tx.send(true);
        if let Some(writer) = writer {
            // Bounded: a store that cannot write (sled blocks on a full disk) must not keep the
            // process from exiting. What is still queued then is lost, and logged.
            match tokio::time::timeout(WRITER_GRACE, writer).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "writer task failed"),
                Err(_) => tracing::error!(
                    ?WRITER_GRACE,
                    "the store did not finish writing the queued captures; exiting without them"
                ),
            }
        }
        let _ = admin_stop_tx.send(true);
        if let Err(e) = admin_task.await {
            tracing::error!(error = %e, "admin listener task failed");
        }
        // ClickHouse: the capture writer has already waited for the buffer to drain (bounded);
        // this stops its task, with a last short try.
        closing_backend.close(BACKEND_CLOSE).await;
        // Last: everything stored (captures and ingested spans) has been offered.
        if let Some(exporter) = exporter {
            exporter.shutdown().await;
        }
        tracing::info!("shutdown complete");
    });

    Ok(Running {
        proxy_addr,
        admin_addr,
        metrics,
        backend: store,
        faults,
        stop: stop_tx,
        lifecycle,
    })
}

/// Opens the capture spool in `<data_dir>/spool`. A spool that cannot be opened (a read-only
/// data dir next to a ClickHouse store) is not a reason to refuse to start: the queue then
/// works in memory only, as with `spool_max_bytes = 0`, and the log says why.
async fn open_spool(data_dir: &Path, max: u64, metrics: &Arc<Metrics>) -> Option<Arc<Spool>> {
    let dir = data_dir.join("spool");
    let metrics = metrics.clone();
    let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, max, metrics)).await;
    match opened {
        Ok(Ok(spool)) => Some(Arc::new(spool)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no capture spool: captures wait in memory only");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "no capture spool: open task failed");
            None
        }
    }
}

/// Opens the configured store: sled (on the blocking pool, errors name `data_dir`), or
/// ClickHouse (never waits for the server: unreachable is a degraded start, see `backend`).
async fn open_backend(config: &Config) -> Result<Backend, StartError> {
    match config.store_backend {
        StoreBackend::Sled => {
            let store_opts = StoreOptions {
                cache_capacity: config.cache_capacity_bytes,
                flush_every_ms: config.flush_every_ms,
            };
            let dir = config.data_dir.clone();
            let opts = store_opts.clone();
            let delay = config.store_open_delay;
            // Opened at normal priority: captures wait for the open, which must not starve
            // behind request threads (it once ran at SCHED_IDLE and, on a busy machine, never
            // finished). The threads it started (sled's flusher) are lowered afterwards: see
            // `priority`.
            let open = move || {
                std::thread::sleep(delay);
                let opened = Store::open(&dir, &opts);
                crate::priority::lower_store_threads();
                opened
            };
            let task_failed = |e: tokio::task::JoinError| {
                StartError::Internal(format!("store open task failed: {e}"))
            };
            // A store another process holds is a start-up error, however long recovery takes.
            let dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || Store::wait_unlocked(&dir))
                .await
                .map_err(task_failed)??;
            let mut opening = tokio::task::spawn_blocking(open);
            if let Ok(opened) = tokio::time::timeout(OPEN_WAIT, &mut opening).await {
                let store = opened.map_err(task_failed)??;
                return Ok(Backend::Sled(
                    SledBackend::new(store, &config.data_dir, &store_opts)
                        .with_min_free_bytes(config.store_min_free_bytes),
                ));
            }
            // Still recovering: traffic is not held up by it (see `backend`).
            tracing::info!(
                dir = %config.data_dir.display(),
                "store: still opening (recovering its log); serving meanwhile: queries answer 503 store_opening, captures wait"
            );
            let backend = SledBackend::opening(&config.data_dir, &store_opts)
                .with_min_free_bytes(config.store_min_free_bytes);
            let when_open = backend.clone();
            tokio::spawn(async move {
                let result = match opening.await {
                    Ok(result) => result,
                    Err(e) => Err(crate::store::StoreError::io(std::io::Error::other(
                        format!("store open task failed: {e}"),
                    ))),
                };
                when_open.opened(result);
            });
            Ok(Backend::Sled(backend))
        }
        StoreBackend::Clickhouse => {
            let opts = ClickHouseOptions::new(&config.clickhouse_url, &config.clickhouse_database);
            let writer = crate::clickhouse::WriterOptions {
                capacity: config.clickhouse_buffer_spans,
                ..crate::clickhouse::WriterOptions::default()
            };
            let backend = ClickHouseBackend::start(&opts, writer)?;
            tracing::info!(
                url = config.clickhouse_url,
                database = config.clickhouse_database,
                "store: clickhouse"
            );
            Ok(Backend::ClickHouse(Box::new(backend)))
        }
    }
}

/// Deletes old traces now and every `interval` until `stop` (see [`Backend::enforce_retention`]).
/// A failed pass is logged and retried at the next tick.
async fn run_retention(
    store: Backend,
    max_age: Option<Duration>,
    max_bytes: Option<u64>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let cutoff = max_age.map(|age| {
            let now = Timestamp::now().micros();
            let age_us = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
            Timestamp(now.saturating_sub(age_us))
        });
        if let Err(e) = store.enforce_retention(cutoff, max_bytes).await {
            tracing::warn!(error = %e, "retention pass failed; retrying later");
        }
    }
}
