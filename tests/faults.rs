//! Exhaustion and fault tests (security review H5, H6, M7, M10, M2): real sockets on
//! 127.0.0.1, the real proxy, a real upstream that misbehaves on purpose, raw TCP and raw
//! HTTP/2 clients. Every wait has a hard `tokio::time::timeout`, so a regression fails
//! instead of hanging; every loop is bounded in count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use augur::config::Config;
use bytes::Bytes;
use common::{eventually, get, TestProxy, TestUpstream};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A hard bound for one step of a test: past it the test fails, it never hangs.
const BOUND: Duration = Duration::from_secs(10);

/// A config with one route `api` to `upstream`: `server` lines go in `[server]`, `upstream`
/// lines in `[upstream]`, `route` lines in the route.
fn config(upstream: SocketAddr, server: &str, up: &str, route: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "2s"
{server}

[cache]
memory = "64MiB"
max_entry_size = "1MiB"

[upstream]
timeout = "1s"
connect_timeout = "500ms"
{up}

[[route]]
name = "api"
upstream = "http://{upstream}"
{route}
"#
    );
    Config::from_str(&text, "faults.toml").unwrap_or_else(|e| panic!("test config: {e}"))
}

/// Read until the server closes the connection (EOF or reset); how long that took. Fails the
/// test if it is still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "connection still open after {within:?} (the server should have closed it)"
    );
    started.elapsed()
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// H5: a connection that sends nothing, part of the HTTP/2 preface, or the whole preface and
/// SETTINGS and then nothing, is closed within `first_request_timeout` (here the default,
/// `header_read_timeout`) + 1 s.
#[tokio::test]
async fn silent_connections_are_closed_within_the_first_request_timeout() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, r#"header_read_timeout = "1s""#, "", "")).await;
    let openings: [(&str, Vec<u8>); 3] = [
        ("no bytes", Vec::new()),
        ("partial HTTP/2 preface", H2_PREFACE[..10].to_vec()),
        (
            "HTTP/2 preface and SETTINGS",
            [H2_PREFACE, H2_EMPTY_SETTINGS].concat(),
        ),
    ];
    for (what, bytes) in openings {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let took = closed_within(&mut s, Duration::from_secs(2)).await;
        assert!(
            took >= Duration::from_millis(500),
            "{what}: closed too early ({took:?})"
        );
    }
    assert_eq!(
        proxy
            .metric(r#"augur_connections_closed_total{reason="first_request_timeout"}"#)
            .await,
        3.0
    );
}

/// One HTTP/1.1 request on an open connection; the status line.
async fn h1_request(s: &mut TcpStream, pq: &str) -> String {
    let req = format!("GET {pq} HTTP/1.1\r\nhost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(BOUND, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before a response");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no response head");
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or("").to_owned()
}

/// H5: connections over `max_connections` are closed at accept, while the ones already open
/// keep working; per-IP the same with `max_connections_per_ip`.
#[tokio::test]
async fn connections_over_the_caps_are_closed_and_earlier_ones_work() {
    let up = TestUpstream::start().await;
    for (key, limit) in [
        ("max_connections", "max_connections"),
        ("max_connections_per_ip", "max_connections_per_ip"),
    ] {
        let server = format!("{key} = 2");
        let proxy = TestProxy::start(config(up.addr, &server, "", "")).await;
        let mut a = TcpStream::connect(proxy.addr).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(h1_request(&mut a, "/one").await.contains("200"));
        assert!(h1_request(&mut b, "/two").await.contains("200"));
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        let _ = c.write_all(b"GET /three HTTP/1.1\r\nhost: t\r\n\r\n").await;
        closed_within(&mut c, Duration::from_secs(2)).await;
        assert!(h1_request(&mut a, "/four").await.contains("200"), "{key}");
        let series = format!(r#"augur_connections_refused_total{{limit="{limit}"}}"#);
        assert_eq!(proxy.metric(&series).await, 1.0, "{key}");
        // A slot frees when a connection closes.
        drop(b);
        eventually(BOUND, "a slot to free", || async {
            let Ok(mut d) = TcpStream::connect(proxy.addr).await else {
                return false;
            };
            d.write_all(b"GET /five HTTP/1.1\r\nhost: t\r\n\r\n")
                .await
                .is_ok()
                && tokio::time::timeout(Duration::from_secs(1), d.read(&mut [0u8; 64]))
                    .await
                    .is_ok_and(|r| r.is_ok_and(|n| n > 0))
        })
        .await;
    }
}

/// H6: a client that requests a large unstored response and never reads it must not keep
/// the route's only upstream permit: a second request gets 200 within a few route timeouts.
#[tokio::test]
async fn a_slow_reader_does_not_pin_the_upstream_permit() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "", "", "max_connections = 1")).await;
    // 20 MiB, chunked, `no-store`: streamed through, never buffered.
    let big = "/big?size=20971520&stream=1&cc=no-store";
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(proxy.addr).await.unwrap();
    slow.write_all(format!("GET {big} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(
        up.wait_count(big, 1).await,
        "the big request reached the upstream"
    );
    let got = tokio::time::timeout(BOUND, async {
        loop {
            let got = get(&proxy.url("/fast?cc=no-store")).await;
            if got.status == 200 {
                return got;
            }
        }
    })
    .await
    .expect("a second request got no 200 while the slow reader held the permit");
    assert_eq!(got.status, 200);
    drop(slow);
}

/// What the misbehaving upstream does, by path.
#[derive(Clone, Copy)]
enum Misbehave {
    /// `Content-Length: 100`, then one byte every `gap`.
    Trickle { gap: Duration },
    /// `Content-Length: 1 MiB`, 64 KiB, then the connection is dropped.
    ResetMidBody,
    /// `Content-Length: 1 MiB`, 64 KiB, then nothing, forever.
    StallMidBody,
}

/// A real hyper upstream that misbehaves on `/trickle`, `/reset` and `/stall` (the query
/// passes `cc=...` through as `Cache-Control`) and answers anything else at once.
async fn misbehaving_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, Infallible>(misbehave(&req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, served)
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn misbehave(req: &Request<hyper::body::Incoming>) -> Response<TestBody> {
    let cc = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("cc="))
        .unwrap_or("no-store");
    let cc = percent_encoding::percent_decode_str(cc)
        .decode_utf8_lossy()
        .into_owned();
    let how = match req.uri().path() {
        "/trickle" => Some(Misbehave::Trickle {
            gap: Duration::from_millis(900),
        }),
        "/reset" => Some(Misbehave::ResetMidBody),
        "/stall" => Some(Misbehave::StallMidBody),
        _ => None,
    };
    let builder = Response::builder().header("cache-control", cc);
    let Some(how) = how else {
        return builder
            .body(
                Full::new(Bytes::from_static(b"fast"))
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap();
    };
    let (len, body) = match how {
        Misbehave::Trickle { gap } => {
            let s = futures_util::stream::unfold(0u32, move |i| async move {
                if i == 100 {
                    return None;
                }
                tokio::time::sleep(gap).await;
                Some((Ok(Frame::data(Bytes::from_static(b"x"))), i + 1))
            });
            (100, StreamBody::new(s).boxed())
        }
        Misbehave::ResetMidBody | Misbehave::StallMidBody => {
            let reset = matches!(how, Misbehave::ResetMidBody);
            let s = futures_util::stream::unfold(0u32, move |i| async move {
                match i {
                    0 => Some((Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))), 1)),
                    _ if reset => Some((Err(std::io::Error::other("upstream resets")), 2)),
                    _ => std::future::pending().await,
                }
            });
            (1 << 20, StreamBody::new(s).boxed())
        }
    };
    builder
        .header("content-length", len.to_string())
        .body(body)
        .unwrap()
}

/// Send a GET through the proxy and read the whole body: `Ok(status)` when the body came
/// whole, `Err` when the response failed or was cut short; how long it took. Fails the test
/// if it has not ended within [`BOUND`].
async fn fetch(url: &str) -> (Result<u16, String>, Duration) {
    let started = Instant::now();
    let got = tokio::time::timeout(BOUND, async {
        let resp = common::client()
            .request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    })
    .await
    .unwrap_or_else(|_| panic!("{url}: still not finished after {BOUND:?} (a hang)"));
    (got, started.elapsed())
}

/// M10: an upstream that trickles a body one byte per `timeout - 100 ms` (each chunk in
/// time, the whole never) fails within `body_timeout`, buffered for the store or streamed,
/// and the route's only permit is free again afterwards.
#[tokio::test]
async fn a_trickling_upstream_fails_within_the_body_deadline() {
    let (addr, served) = misbehaving_upstream().await;
    let proxy = TestProxy::start(config(
        addr,
        "",
        r#"body_timeout = "3s""#,
        "max_connections = 1",
    ))
    .await;
    for cc in ["public%2C%20max-age%3D60", "no-store"] {
        let (got, took) = fetch(&proxy.url(&format!("/trickle?cc={cc}"))).await;
        assert!(
            !matches!(got, Ok(200)),
            "{cc}: a 100-byte trickle over 90 s came back whole: {got:?}"
        );
        assert!(took < Duration::from_secs(6), "{cc}: took {took:?}");
        let (fast, _) = fetch(&proxy.url("/fast")).await;
        assert_eq!(fast, Ok(200), "{cc}: the permit was not released");
    }
    assert_eq!(served.load(Ordering::SeqCst), 4);
}

/// An upstream that resets or stalls mid-body gives the client a clean failure (an error
/// status, or a body cut short), never a hang, and the next request works.
#[tokio::test]
async fn an_upstream_reset_or_stall_mid_body_fails_cleanly() {
    let (addr, _) = misbehaving_upstream().await;
    let proxy = TestProxy::start(config(addr, "", "", "max_connections = 1")).await;
    for path in ["/reset", "/stall"] {
        for cc in ["public%2C%20max-age%3D60", "no-store"] {
            let (got, took) = fetch(&proxy.url(&format!("{path}?cc={cc}"))).await;
            assert!(
                !matches!(got, Ok(200)),
                "{path} {cc}: came back whole: {got:?}"
            );
            assert!(took < Duration::from_secs(5), "{path} {cc}: took {took:?}");
            let (fast, _) = fetch(&proxy.url("/fast")).await;
            assert_eq!(fast, Ok(200), "{path} {cc}: the next request failed");
        }
    }
}

/// M7: over one HTTP/2 connection, streams that are accepted and then reset 2 ms later
/// (each one starts an upstream request) get the connection GOAWAY after
/// `max_client_resets`, so the upstream sees a bounded number of requests.
#[tokio::test]
async fn http2_resets_after_accept_are_bounded_by_goaway() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "max_client_resets = 20", "", "")).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut goaway = false;
    let attempts = tokio::time::timeout(BOUND, async {
        for i in 0..500 {
            let ready = match client.ready().await {
                Ok(c) => c,
                Err(_) => {
                    goaway = true;
                    return i;
                }
            };
            client = ready;
            let req = Request::get(format!("http://t/r?i={i}&delay_ms=200&cc=no-store"))
                .body(())
                .unwrap();
            let Ok((_resp, mut stream)) = client.send_request(req, true) else {
                goaway = true;
                return i;
            };
            tokio::time::sleep(Duration::from_millis(2)).await;
            stream.send_reset(h2::Reason::CANCEL);
        }
        500
    })
    .await
    .expect("the reset loop hung");
    let upstream = up.total();
    assert!(
        goaway,
        "no GOAWAY after {attempts} reset streams; the upstream saw {upstream} requests"
    );
    assert!(
        upstream <= 40,
        "{upstream} upstream requests from one connection's resets (bound: 40)"
    );
    assert_eq!(
        proxy
            .metric(r#"augur_connections_closed_total{reason="client_resets"}"#)
            .await,
        1.0
    );
    let _ = tokio::time::timeout(BOUND, conn).await;
}

/// M2: while `max_inflight_bytes` is spent by a body being buffered, another storable miss
/// streams through whole but unstored (not an error); once the budget is back, it is stored.
#[tokio::test]
async fn misses_over_the_inflight_budget_stream_unstored() {
    let (addr, _) = misbehaving_upstream().await;
    let up = TestUpstream::start().await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[cache]
memory = "64MiB"
max_entry_size = "1MiB"

[upstream]
timeout = "1s"
max_inflight_bytes = "1MiB"

[[route]]
name = "stall"
path_prefix = "/stall"
upstream = "http://{addr}"

[[route]]
name = "api"
upstream = "http://{}"
"#,
        up.addr
    );
    let proxy = TestProxy::start(Config::from_str(&text, "m2.toml").unwrap()).await;
    // Holds the whole 1 MiB budget (sized from its Content-Length) until it is cut.
    let stalled = tokio::spawn(fetch(
        proxy.url("/stall?cc=public%2C%20max-age%3D60").leak(),
    ));
    eventually(BOUND, "the stalled body to hold the budget", || async {
        proxy.metric("augur_upstream_inflight_bytes").await >= 1_048_576.0
    })
    .await;
    let pq = format!("/a?size=600000&{}", common::CACHED);
    let first = get(&proxy.url(&pq)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), 600_000, "streamed whole");
    let second = get(&proxy.url(&pq)).await;
    assert_eq!(
        second.x_cache(),
        "MISS",
        "stored although the budget was spent"
    );
    assert_eq!(
        proxy.metric("augur_upstream_store_skipped_total").await,
        2.0
    );
    // The stall is cut after the route timeout; its budget comes back.
    let _ = tokio::time::timeout(BOUND, stalled).await.unwrap();
    eventually(BOUND, "the budget to be free again", || async {
        proxy.metric("augur_upstream_inflight_bytes").await == 0.0
    })
    .await;
    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "MISS");
    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "HIT");
    // A stored miss gives back everything it drew.
    eventually(BOUND, "the stored miss to give its budget back", || async {
        proxy.metric("augur_upstream_inflight_bytes").await == 0.0
    })
    .await;
}

/// L12: an upstream restart leaves the proxy's pooled keep-alive connections stale: a GET
/// sent on one fails before any response byte. Such a GET is retried once on a fresh
/// connection, so a client that keeps sending misses through the restart sees no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_on_stale_pooled_connections_survive_an_upstream_restart() {
    let old = TestUpstream::start().await;
    let proxy = TestProxy::start(config(old.addr, "", "", "")).await;
    let misses = |round: usize| {
        let urls: Vec<String> = (0..4)
            .map(|i| proxy.url(&format!("/restart/{round}/{i}")))
            .collect();
        async move {
            let all = urls.iter().map(|u| fetch(u));
            futures_util::future::join_all(all).await
        }
    };
    // Four connections in the pool (four misses at once, never stored: no freshness).
    for round in 0..3 {
        for (got, _) in misses(round).await {
            assert_eq!(got, Ok(200));
        }
    }
    // The old process stops answering on the connections it had, the new one listens on the
    // same port.
    old.stop();
    let new = TestUpstream::start_on(old.addr).await;
    let mut failed = Vec::new();
    for round in 3..13 {
        for (got, _) in misses(round).await {
            if got != Ok(200) {
                failed.push(got);
            }
        }
    }
    assert!(failed.is_empty(), "failed GETs: {failed:?}");
    assert_eq!(new.total(), 40, "every miss reached the new upstream once");
    assert!(proxy.metric("augur_upstream_retries_total").await >= 1.0);
}
