//! Shared test parts: a real upstream on 127.0.0.1:0 that counts what it served, the real
//! proxy on port 0, and a real HTTP client. No mocks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur::body::Body;
use augur::clock::Clock;
use augur::config::Config;
use augur::server::{self, Instance, Listeners};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The query that makes the upstream's answer fresh for a minute
/// (`Cache-Control: public, max-age=60`).
pub const CACHED: &str = "cc=public%2C%20max-age%3D60";

/// How long a test waits for background work (a prefetch, a write-behind) before it fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Poll `check` every 10 ms for up to `within`; whether it came to hold. A bounded wait, never
/// a sleep that decides the outcome.
pub async fn poll<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Poll `check` until it holds; after `within`, fail the test naming `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(poll(within, check).await, "timed out waiting for: {what}");
}

/// [`eventually`] for a check that needs no `.await`, within [`PATIENCE`].
pub async fn until(what: &str, mut check: impl FnMut() -> bool) {
    eventually(PATIENCE, what, || std::future::ready(check())).await;
}

/// A real upstream. Its behaviour is chosen per request by query parameters:
/// `delay_ms=N` (wait before the head), `cc=...` (Cache-Control), `size=N` (body bytes of
/// compressible JSON), `stream=1` (chunked, no Content-Length), `status=N`, `h_<name>=v`
/// (extra response header), `validate=1` (answer 304 when the request's `If-None-Match`
/// matches the `h_etag` value, or it carries `If-Modified-Since` and `h_last-modified` is set).
/// It echoes the request headers it received as `x-echo-<name>` and sends `x-count: N`, the
/// number of requests served for this path-and-query so far.
///
/// A fault switches every response at once (the URL, hence the cache key, stays the same):
/// [`TestUpstream::fail_with`] a status, [`TestUpstream::answer_after`] a delay, until
/// [`TestUpstream::recover`]. [`TestUpstream::stop`] drops every connection without answering and
/// closes the listener, so new connections are refused.
#[derive(Clone)]
pub struct TestUpstream {
    pub addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    inflight: Arc<AtomicUsize>,
    max_inflight: Arc<AtomicUsize>,
    last_headers: Arc<Mutex<Option<HeaderMap>>>,
    fault: Arc<Mutex<Option<Fault>>>,
    /// When set ([`TestUpstream::follow`]), the `Date` header follows this clock instead of the
    /// real time, so that the proxy's manual clock and the upstream agree on ages.
    clock: Arc<Mutex<Option<Clock>>>,
    accept: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        Self::listen_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// A new upstream on `addr`, the port a [`TestUpstream::stop`]ped one used: an upstream
    /// restart as the proxy sees it. Waits (up to [`PATIENCE`]) for the port to be free.
    pub async fn start_on(addr: SocketAddr) -> TestUpstream {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::listen_on(listener),
                Err(e) if Instant::now() >= deadline => panic!("rebinding {addr}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn listen_on(listener: TcpListener) -> TestUpstream {
        let up = TestUpstream {
            addr: listener.local_addr().unwrap(),
            counts: Default::default(),
            total: Default::default(),
            inflight: Default::default(),
            max_inflight: Default::default(),
            last_headers: Default::default(),
            fault: Default::default(),
            clock: Default::default(),
            accept: Default::default(),
        };
        let state = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move {
                            match state.fault() {
                                Some(Fault::Reset) => {
                                    state.total.fetch_add(1, Ordering::SeqCst);
                                    return Err(std::io::Error::other("upstream told to reset"));
                                }
                                Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
                                Some(Fault::Status(_)) | None => {}
                            }
                            Ok::<_, std::io::Error>(state.serve(req).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        *up.accept.lock().unwrap() = Some(task);
        up
    }

    /// Send `Date` from `clock` (normally the proxy's manual clock).
    pub fn follow(&self, clock: &Clock) {
        *self.clock.lock().unwrap() = Some(clock.clone());
    }

    /// Answer every request with `status` (and a small JSON body, no Cache-Control).
    pub fn fail_with(&self, status: u16) {
        self.set_fault(Some(Fault::Status(status)));
    }

    /// Answer every request only after `delay` (longer than the proxy's timeout to time out).
    pub fn answer_after(&self, delay: Duration) {
        self.set_fault(Some(Fault::Slow(delay)));
    }

    /// Answer as the query parameters ask again.
    pub fn recover(&self) {
        self.set_fault(None);
    }

    /// Stop accepting connections, and drop requests on the ones already open unanswered.
    pub fn stop(&self) {
        self.set_fault(Some(Fault::Reset));
        if let Some(t) = self.accept.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Wait (up to 2 s) until `pq` has been served `n` times; whether it was.
    pub async fn wait_count(&self, pq: &str, n: usize) -> bool {
        poll(Duration::from_secs(2), || {
            std::future::ready(self.count(pq) >= n)
        })
        .await
    }

    /// Requests served for this path-and-query.
    pub fn count(&self, pq: &str) -> usize {
        self.counts.lock().unwrap().get(pq).copied().unwrap_or(0)
    }

    /// Requests served in all.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// The most requests the upstream was answering at one time.
    pub fn peak_concurrency(&self) -> usize {
        self.max_inflight.load(Ordering::SeqCst)
    }

    /// The headers of the latest request the upstream received.
    pub fn last_request_headers(&self) -> HeaderMap {
        self.last_headers
            .lock()
            .unwrap()
            .clone()
            .expect("the upstream has received no request")
    }

    fn fault(&self) -> Option<Fault> {
        *self.fault.lock().unwrap()
    }

    fn set_fault(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap() = fault;
    }

    async fn serve(
        &self,
        req: Request<Incoming>,
    ) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let served = {
            let mut counts = self.counts.lock().unwrap();
            let c = counts.entry(pq).or_default();
            *c += 1;
            *c
        };
        self.total.fetch_add(1, Ordering::SeqCst);
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inflight.fetch_max(now, Ordering::SeqCst);
        *self.last_headers.lock().unwrap() = Some(req.headers().clone());

        let params: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned(),
                )
            })
            .collect();
        if let Some(ms) = params.get("delay_ms").and_then(|v| v.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let size: usize = params.get("size").and_then(|v| v.parse().ok()).unwrap_or(0);
        let status = params
            .get("status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        let forced = match self.fault() {
            Some(Fault::Status(status)) => Some(status),
            _ => None,
        };
        let status = forced.unwrap_or(status);
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("x-count", served.to_string());
        let clock = self.clock.lock().unwrap().clone();
        if let (Some(clock), false) = (clock, params.contains_key("h_date")) {
            let now = std::time::UNIX_EPOCH + Duration::from_millis(clock.now_ms());
            builder = builder.header("date", httpdate::fmt_http_date(now));
        }
        if forced.is_some() {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            return builder
                .body(Full::new(Bytes::from_static(b"{\"forced\":true}")).boxed())
                .unwrap();
        }
        if let Some(cc) = params.get("cc") {
            builder = builder.header("cache-control", cc.as_str());
        }
        for (k, v) in &params {
            if let Some(name) = k.strip_prefix("h_") {
                builder = builder.header(name, v.as_str());
            }
        }
        for (k, v) in req.headers() {
            builder = builder.header(format!("x-echo-{k}"), v.clone());
        }
        if params.get("validate").map(String::as_str) == Some("1") {
            let inm = req
                .headers()
                .get("if-none-match")
                .and_then(|v| v.to_str().ok());
            let etag_hit = match (inm, params.get("h_etag")) {
                (Some(inm), Some(etag)) => inm.split(',').any(|t| t.trim() == etag),
                _ => false,
            };
            let ims_hit = inm.is_none()
                && req.headers().contains_key("if-modified-since")
                && params.contains_key("h_last-modified");
            if etag_hit || ims_hit {
                self.inflight.fetch_sub(1, Ordering::SeqCst);
                return builder
                    .status(StatusCode::NOT_MODIFIED)
                    .body(Full::new(Bytes::new()).boxed())
                    .unwrap();
            }
        }
        builder = builder.header("content-type", "application/json");
        let body = if params.get("stream").map(String::as_str) == Some("1") {
            // Chunked, generated on the fly: never held whole in memory.
            let chunk = Bytes::from(json_body(64 * 1024));
            let mut left = size;
            let stream = futures_util::stream::poll_fn(move |_| {
                if left == 0 {
                    return std::task::Poll::Ready(None);
                }
                let n = left.min(chunk.len());
                left -= n;
                std::task::Poll::Ready(Some(Ok::<_, Infallible>(Frame::data(chunk.slice(..n)))))
            });
            StreamBody::new(stream).boxed()
        } else {
            let text = if size > 0 {
                json_body(size)
            } else {
                format!("{{\"path\":{:?}}}", req.uri().to_string())
            };
            Full::new(Bytes::from(text)).boxed()
        };
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        builder.body(body).unwrap()
    }
}

/// What the upstream does to every request instead of answering as asked.
#[derive(Clone, Copy)]
enum Fault {
    /// Drop the connection without answering.
    Reset,
    /// Answer as asked, after this long.
    Slow(Duration),
    /// Answer with this status.
    Status(u16),
}

/// Deterministic compressible JSON of exactly `size` bytes.
pub fn json_body(size: usize) -> String {
    let mut s = String::with_capacity(size + 64);
    s.push('[');
    let mut i = 0;
    while s.len() < size {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"user{i}\",\"active\":true}},"
        ));
        i += 1;
    }
    s.truncate(size);
    s
}

/// The admin tokens every [`config`] carries: `purge` (which includes `read`) and `read`.
pub const PURGE_TOKEN: &str = "test-purge-token-0123456789abcdef";
pub const READ_TOKEN: &str = "test-read-token-0123456789abcdef";

/// A real token file holding `lines`, removed when the handle drops.
pub fn token_file(lines: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), lines).unwrap();
    file
}

/// A config for one route `api` on path `/` to `upstream`, with both admin test tokens.
pub fn config(upstream: SocketAddr, extra: &str) -> Config {
    // Tokens are read while the config loads, so the file may go right after.
    let file = token_file(&format!("purge:{PURGE_TOKEN}\nread:{READ_TOKEN}\n"));
    let admin = format!("token_file = \"{}\"", file.path().display());
    config_with_admin(upstream, &admin, extra)
}

/// [`config`] with `admin` as the body of its `[admin]` table.
pub fn config_with_admin(upstream: SocketAddr, admin: &str, extra: &str) -> Config {
    let text = format!(
        r#"
[admin]
{admin}

[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "5s"
max_request_body = "1MiB"
max_header_bytes = "16KiB"

[cache]
memory = "64MiB"
max_entry_size = "8MiB"
compression_threshold = "1KiB"
coalesce_timeout = "5s"

[upstream]
timeout = "2s"
connect_timeout = "500ms"

[[route]]
name = "api"
upstream = "http://{upstream}"
{extra}
"#
    );
    Config::from_str(&text, "test.toml").unwrap_or_else(|e| panic!("test config: {e}"))
}

/// The real proxy, running on port 0 with its admin listener, under a manual clock unless
/// started with another.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The metrics-only listener, when the config sets `server.metrics_listen`.
    pub metrics: Option<SocketAddr>,
    pub clock: Clock,
    /// The proxy inside, for a test that reaches past HTTP.
    pub proxy: Arc<augur::proxy::Proxy>,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestProxy {
    pub async fn start(config: Config) -> TestProxy {
        Self::start_with_clock(config, Clock::manual()).await
    }

    pub async fn start_with_clock(config: Config, clock: Clock) -> TestProxy {
        let listeners = Listeners::bind(&config).await.unwrap();
        let addr = listeners.proxy.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let metrics = listeners.metrics.as_ref().map(|l| l.local_addr().unwrap());
        let instance = Instance::new(&config, clock.clone()).unwrap();
        let proxy = instance.proxy.clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::run(config, instance, listeners, async {
            let _ = rx.await;
        }));
        TestProxy {
            addr,
            admin,
            metrics,
            clock,
            proxy,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, pq: &str) -> String {
        format!("http://{}{}", self.addr, pq)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The admin URL that purges `target` (a full URL as a client asked for it).
    pub fn purge_url(&self, target: &str) -> String {
        let target =
            percent_encoding::utf8_percent_encode(target, percent_encoding::NON_ALPHANUMERIC);
        self.admin_url(&format!("/purge?url={target}"))
    }

    /// The value of one series on the admin `/metrics` (`name` or `name{labels}`); 0 when
    /// absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let got = get(&self.admin_url("/metrics")).await;
        let text = String::from_utf8_lossy(&got.body);
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Begin the graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A path-and-query whose parameters tell [`TestUpstream`] what to send (values URL-encoded).
pub fn pq(path: &str, params: &[(&str, &str)]) -> String {
    let enc = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    format!("{path}?{}", q.join("&"))
}

/// An upstream and the proxy in front of it ([`config`] with `extra` in its route), the
/// upstream's `Date` following the proxy's manual clock.
pub async fn start_following(extra: &str) -> (TestUpstream, TestProxy) {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, extra)).await;
    up.follow(&proxy.clock);
    (up, proxy)
}

/// A response read whole.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    pub fn x_cache(&self) -> &str {
        self.header("x-cache")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(req: Request<Full<Bytes>>) -> Got {
    let resp = client().request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Got {
    get_with(url, &[]).await
}

pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Got {
    send_with(Request::get(url), headers).await
}

pub async fn post(url: &str) -> Got {
    send(Request::post(url).body(Full::new(Bytes::new())).unwrap()).await
}

/// `POST url` with `headers`.
pub async fn post_with(url: &str, headers: &[(&str, &str)]) -> Got {
    send_with(Request::post(url), headers).await
}

/// `b` with `headers` and an empty body.
async fn send_with(mut b: http::request::Builder, headers: &[(&str, &str)]) -> Got {
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(Bytes::new())).unwrap()).await
}

/// An admin `GET` with the purge token (which includes read).
pub async fn admin_get(url: &str) -> Got {
    get_with(url, &[("authorization", &format!("Bearer {PURGE_TOKEN}"))]).await
}

/// An admin `POST` with the purge token.
pub async fn admin_post(url: &str) -> Got {
    post_with(url, &[("authorization", &format!("Bearer {PURGE_TOKEN}"))]).await
}

/// Write `request` on a fresh connection and read what comes back until the server closes
/// it or stops sending for a moment.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unused-import guard for Body in helper signatures.
pub fn _body_type(_: Body) {}
