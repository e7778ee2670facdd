//! `run(config, listeners, shutdown)`: accept loops for the proxy, admin and (optional)
//! metrics listeners, and the graceful drain on shutdown.
//!
//! Takes already-bound listeners (so tests bind port 0, and `main` can refuse to bind anything
//! before the config is valid) and a shutdown future (a signal in `main`, a channel in tests).
//! On shutdown: readiness turns 503, the listeners close, in-flight requests get up to
//! `shutdown_grace` to finish, then whatever is left is cut.
//!
//! Every proxy connection is bounded ([`conn`]): a global and an optional per-IP cap at
//! accept, a deadline for the first request (which also covers the HTTP/2 preface), an idle
//! timeout, HTTP/2 keep-alive and a stream cap, and a budget of requests the client cancels.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod conn;

use crate::admin::{Admin, Listener};
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// The listeners Augur serves on, bound by the caller.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
    /// `server.metrics_listen`: `/metrics` and the health endpoints only.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Bind the configured addresses.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let proxy = TcpListener::bind(config.server.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding listen {}: {e}", config.server.listen),
            )
        })?;
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("binding admin_listen {}: {e}", config.server.admin_listen),
                )
            })?;
        let metrics = match config.server.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("binding metrics_listen {addr}: {e}"))
            })?),
            None => None,
        };
        Ok(Listeners {
            proxy,
            admin,
            metrics,
        })
    }
}

/// A running instance's shared parts, handed to tests and to the admin listener.
pub struct Instance {
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

impl Instance {
    pub fn new(config: &Config, clock: Clock) -> Result<Instance, String> {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        let metrics = Arc::new(Metrics::new(&names));
        let proxy = Arc::new(Proxy::new(config, clock, metrics.clone())?);
        Ok(Instance {
            proxy,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Serve until `shutdown` completes, then drain.
pub async fn run(
    config: Config,
    instance: Instance,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let Instance {
        proxy,
        metrics,
        ready,
    } = instance;
    let admin = Arc::new(Admin::new(
        proxy.clone(),
        metrics.clone(),
        ready.clone(),
        &config.admin,
    ));
    let background = Background::start(&proxy, metrics.clone());
    let conns = conn::Conns::new(&config, proxy_conn_builder(&config), &metrics);
    let admin_graceful = GracefulShutdown::new();
    tracing::info!(
        listen = %listeners.proxy.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        metrics = ?listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()),
        admin_tokens = config.admin.tokens.len(),
        routes = config.routes.len(),
        "augur serving"
    );
    if config.admin.tokens.is_empty() && !config.admin.allow_unauthenticated_loopback {
        tracing::warn!(
            "no [admin] token_file: /cache, /prefetch/* and /purge answer 403 until one is configured"
        );
    }
    ready.store(true, Ordering::Release);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listeners.proxy.accept() => {
                let Some((stream, peer)) = accepted_or_pause(accepted).await else { continue };
                conns.serve(&proxy, stream, peer);
            }
            accepted = listeners.admin.accept() => {
                let Some((stream, _peer)) = accepted_or_pause(accepted).await else { continue };
                serve_admin(&admin_graceful, &admin, stream, Listener::Admin);
            }
            Some(accepted) = accept_if_some(listeners.metrics.as_ref()) => {
                let Some((stream, _peer)) = accepted_or_pause(accepted).await else { continue };
                serve_admin(&admin_graceful, &admin, stream, Listener::Metrics);
            }
            () = &mut shutdown => break,
        }
    }

    ready.store(false, Ordering::Release);
    drop(listeners);
    drain(&config, conns, admin_graceful).await;
    background.stop(&proxy).await;
    Ok(())
}

/// The tasks that run beside the listeners, started before the first request.
struct Background {
    upkeep: JoinHandle<()>,
    refresher: Option<JoinHandle<()>>,
    prefetch_worker: Option<JoinHandle<()>>,
}

impl Background {
    fn start(proxy: &Arc<Proxy>, metrics: Arc<Metrics>) -> Background {
        // stale-while-revalidate refreshes run here, off the request path.
        let refresher = proxy.spawn_refresher();
        let prefetch_worker = proxy.prefetcher().spawn_worker(proxy.clone());
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.upkeep();
            }
        });
        Background {
            upkeep,
            refresher,
            prefetch_worker,
        }
    }

    /// After the drain: stop the tasks, give the prefetch worker a moment to finish what it
    /// learned, and save the model.
    async fn stop(self, proxy: &Proxy) {
        self.upkeep.abort();
        if let Some(r) = self.refresher {
            r.abort();
        }
        if let Some(worker) = self.prefetch_worker {
            proxy.prefetcher().stop();
            if tokio::time::timeout(Duration::from_secs(2), worker)
                .await
                .is_err()
            {
                tracing::warn!(
                    "prefetch worker did not stop in time; saving what it learned so far"
                );
            }
        }
        match proxy.prefetcher().save() {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "prefetch model not saved"),
        }
    }
}

/// HTTP/1.1 with the configured head limits, plus h2c unless `server.http2` is off, with
/// keep-alive PINGs (a peer that stops answering is dropped) and an explicit stream cap
/// rather than h2's default of 200.
fn proxy_conn_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let s = &config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .max_buf_size(s.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(s.http2_keep_alive_interval)
        .keep_alive_timeout(s.http2_keep_alive_timeout)
        .max_concurrent_streams(s.http2_max_concurrent_streams);
    if !config.server.http2 {
        builder = builder.http1_only();
    }
    builder
}

/// One admin or metrics connection: HTTP/1.1 only, a fixed head timeout.
fn serve_admin(
    graceful: &GracefulShutdown,
    admin: &Arc<Admin>,
    stream: TcpStream,
    listener: Listener,
) {
    let admin = admin.clone();
    let svc = service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.handle(req, listener).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), svc);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _ = conn.await;
    });
}

/// Up to `shutdown_grace` for in-flight requests on both listeners; the rest are cut.
async fn drain(config: &Config, conns: conn::Conns, admin_graceful: GracefulShutdown) {
    tracing::info!(grace = ?config.server.shutdown_grace, "shutting down: draining in-flight requests");
    let drained = tokio::time::timeout(config.server.shutdown_grace, async {
        tokio::join!(conns.shutdown(), admin_graceful.shutdown());
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained; bye"),
        Err(_) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}

/// `accept` on an optional listener; never ready without one, so its `select!` arm sleeps.
async fn accept_if_some(
    listener: Option<&TcpListener>,
) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
    match listener {
        Some(l) => Some(l.accept().await),
        None => std::future::pending().await,
    }
}

/// Accept errors (EMFILE, ECONNABORTED…) must not end the server: log, pause briefly, go on.
async fn accepted_or_pause(
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
) -> Option<(TcpStream, SocketAddr)> {
    match accepted {
        Ok((stream, peer)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, peer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
            None
        }
    }
}
