//! One proxy connection from accept to close, and the limits that keep connections from
//! exhausting the process (fds, tasks, buffers, upstream requests).
//!
//! - At accept: a global cap (`server.max_connections`) and an optional per-IP cap
//!   (`server.max_connections_per_ip`). Over either, the socket is closed at once: cheaper
//!   than leaving it in the backlog, and `accept` itself never starts failing with EMFILE.
//! - Before the first request: `server.first_request_timeout`. hyper-util's protocol
//!   detection and h2's preface and SETTINGS exchange have no timeout of their own, and
//!   HTTP/1's `header_read_timeout` only starts once the version is known, so a client that
//!   sends nothing, part of the preface, or the preface and then silence, is cut here.
//! - Afterwards: no request in flight and none started for `server.idle_timeout` closes the
//!   connection gracefully (GOAWAY on HTTP/2). HTTP/2 keep-alive PINGs and the stream cap are
//!   set on the builder in the parent module.
//! - Client resets: a request the client cancels before its response head (RST_STREAM on
//!   HTTP/2) has already started the upstream work it aborts. h2's own limit counts only
//!   streams reset before hyper accepted them; past `server.max_client_resets` cancellations
//!   in 10 s the connection gets GOAWAY and is cut shortly after, in the spirit of Envoy's
//!   premature-reset handling (CVE-2023-44487 and its slower variants).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::body::Holding;
use crate::config::Config;
use crate::metrics::{ConnMetrics, Metrics};
use crate::proxy::Proxy;

/// The window over which client cancellations are counted against `max_client_resets`.
const RESET_WINDOW: Duration = Duration::from_secs(10);

/// Every proxy connection: the limits, and the drain signal and count.
pub(super) struct Conns {
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    slots: Arc<Semaphore>,
    per_ip: Option<Arc<PerIp>>,
    metrics: Arc<ConnMetrics>,
    shutdown: watch::Sender<bool>,
    /// Each connection task holds a clone; the drain waits until all are dropped.
    live: mpsc::Sender<()>,
    all_done: mpsc::Receiver<()>,
}

#[derive(Clone, Copy)]
struct Limits {
    first_request: Duration,
    idle: Duration,
    max_resets: u32,
}

impl Conns {
    pub(super) fn new(
        config: &Config,
        builder: auto::Builder<TokioExecutor>,
        metrics: &Metrics,
    ) -> Conns {
        let s = &config.server;
        let (live, all_done) = mpsc::channel(1);
        Conns {
            builder,
            limits: Limits {
                first_request: s.first_request_timeout,
                idle: s.idle_timeout,
                max_resets: s.max_client_resets,
            },
            slots: Arc::new(Semaphore::new(
                s.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            per_ip: (s.max_connections_per_ip > 0).then(|| {
                Arc::new(PerIp {
                    max: s.max_connections_per_ip,
                    open: Mutex::new(HashMap::new()),
                })
            }),
            metrics: Arc::new(metrics.connections()),
            shutdown: watch::channel(false).0,
            live,
            all_done,
        }
    }

    /// Admit the connection (or close it, over a cap) and serve it on its own task.
    pub(super) fn serve(&self, proxy: &Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.refused_max.increment(1);
            tracing::debug!(%peer, "max_connections reached; connection closed");
            return;
        };
        let ip = match &self.per_ip {
            Some(table) => match PerIp::enter(table, peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    self.metrics.refused_per_ip.increment(1);
                    tracing::debug!(%peer, "max_connections_per_ip reached; connection closed");
                    return;
                }
            },
            None => None,
        };
        let slot = Slot::new(permit, ip, &self.metrics);
        let state = Arc::new(State::new(self.limits.max_resets));
        let svc = {
            let proxy = proxy.clone();
            let state = state.clone();
            service_fn(move |req| {
                let proxy = proxy.clone();
                let active = Active::start(state.clone());
                async move {
                    let cancel = CancelGuard(Some(active.0.clone()));
                    let resp = proxy.handle(req, peer).await;
                    cancel.disarm();
                    // The request counts as in flight until its body ends or is dropped.
                    Ok::<_, Infallible>(resp.map(|body| Holding::new(body, active)))
                }
            })
        };
        let conn = self
            .builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let task = Task {
            state,
            limits: self.limits,
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.subscribe(),
            peer,
        };
        let live = self.live.clone();
        tokio::spawn(async move {
            task.run(conn, |c| c.graceful_shutdown()).await;
            drop((slot, live));
        });
    }

    /// Ask every connection to finish gracefully; completes when all have closed.
    pub(super) async fn shutdown(self) {
        let Conns {
            shutdown,
            live,
            mut all_done,
            ..
        } = self;
        let _ = shutdown.send(true);
        drop(live);
        // `None` once the last connection task dropped its sender.
        let _ = all_done.recv().await;
        drop(shutdown);
    }
}

/// One connection's task: the connection future, raced against its deadlines.
struct Task {
    state: Arc<State>,
    limits: Limits,
    metrics: Arc<ConnMetrics>,
    shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Task {
    /// `graceful` starts the connection's graceful shutdown (a closure, so that this loop does
    /// not have to spell out hyper-util's connection bounds).
    async fn run<C, E>(mut self, conn: C, graceful_shutdown: impl Fn(Pin<&mut C>))
    where
        C: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        tokio::pin!(conn);
        let mut graceful = false;
        // Once Augur closes a connection itself: how long the client has to let it go.
        let mut cut_at: Option<Instant> = None;
        loop {
            let deadline = cut_at.unwrap_or_else(|| self.state.next_deadline(self.limits));
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    if cut_at.is_some() {
                        return;
                    }
                    if self.state.started.load(Ordering::Acquire) == 0 {
                        self.metrics.closed_first_request.increment(1);
                        tracing::debug!(peer = %self.peer, "no request within first_request_timeout; closed");
                        return;
                    }
                    if self.state.idle_since(self.limits.idle).is_some_and(|at| at <= Instant::now()) {
                        self.metrics.closed_idle.increment(1);
                        graceful_shutdown(conn.as_mut());
                        graceful = true;
                        cut_at = Some(Instant::now() + self.limits.first_request);
                    }
                }
                () = self.state.abusive.notified(), if cut_at.is_none() => {
                    self.metrics.closed_resets.increment(1);
                    tracing::info!(peer = %self.peer, "too many requests cancelled by the client; GOAWAY");
                    if !graceful {
                        graceful_shutdown(conn.as_mut());
                        graceful = true;
                    }
                    cut_at = Some(Instant::now() + self.limits.first_request);
                }
                _ = self.shutdown.wait_for(|stop| *stop), if !graceful => {
                    graceful_shutdown(conn.as_mut());
                    graceful = true;
                }
            }
        }
    }
}

/// What the connection task needs to know about the requests on its connection.
struct State {
    born: Instant,
    /// Requests started so far (0 = still waiting for the first).
    started: AtomicU64,
    /// Requests whose response (head and body) is not finished.
    in_flight: AtomicUsize,
    /// When the connection was last busy, in ms since `born`.
    last_active_ms: AtomicU64,
    /// Client cancellations in the current window: (window start, count).
    resets: Mutex<(Instant, u32)>,
    max_resets: u32,
    abusive: Notify,
}

impl State {
    fn new(max_resets: u32) -> State {
        let born = Instant::now();
        State {
            born,
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            resets: Mutex::new((born, 0)),
            max_resets,
            abusive: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(ms, Ordering::Release);
    }

    /// When the connection becomes idle for `idle`, if nothing is in flight now.
    fn idle_since(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Acquire));
        Some(self.born + last + idle)
    }

    /// The next moment the connection task must look at this connection.
    fn next_deadline(&self, limits: Limits) -> Instant {
        if self.started.load(Ordering::Acquire) == 0 {
            return self.born + limits.first_request;
        }
        // Busy: look again in `idle`; the request that ends first touches `last_active`.
        self.idle_since(limits.idle)
            .unwrap_or_else(|| Instant::now() + limits.idle)
    }

    /// A request was cancelled by the client before its response head.
    fn client_reset(&self) {
        let mut r = self.resets.lock();
        let now = Instant::now();
        if now.duration_since(r.0) > RESET_WINDOW {
            *r = (now, 0);
        }
        r.1 += 1;
        if r.1 > self.max_resets {
            self.abusive.notify_one();
        }
    }
}

/// One request in flight on a connection, from its head until its response body is done.
struct Active(Arc<State>);

impl Active {
    fn start(state: Arc<State>) -> Active {
        state.started.fetch_add(1, Ordering::AcqRel);
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.touch();
        Active(state)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Armed while a request's response head is being made; dropped armed = the client
/// cancelled it (hyper drops the service future when the stream is reset).
struct CancelGuard(Option<Arc<State>>);

impl CancelGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.client_reset();
        }
    }
}

/// A connection's place under the caps; released when the connection task ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _ip: Option<IpSlot>,
    open: metrics::Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, ip: Option<IpSlot>, m: &ConnMetrics) -> Slot {
        m.open.increment(1);
        Slot {
            _permit: permit,
            _ip: ip,
            open: m.open.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1);
    }
}

/// Open connections per client IP.
struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn enter(table: &Arc<PerIp>, ip: IpAddr) -> Option<IpSlot> {
        let mut open = table.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= table.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: table.clone(),
            ip,
        })
    }
}

struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}
