//! A body too large to store streams through without being held in memory. Its own test
//! binary, so the process's memory is this test's alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{config, TestProxy, TestUpstream};
use http::Request;
use http_body_util::{BodyExt, Full};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Stream the body, counting bytes, and return (bytes, peak RSS growth seen while reading).
async fn stream_through(url: &str) -> (u64, u64, String) {
    let before = rss_bytes();
    let resp = common::client()
        .request(
            Request::get(url)
                .body(Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let x_cache = resp.headers()["x-cache"].to_str().unwrap().to_owned();
    let mut body = resp.into_body();
    let (mut total, mut peak) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len() as u64;
            peak = peak.max(rss_bytes().saturating_sub(before));
        }
    }
    (total, peak, x_cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_stream_through_with_bounded_memory() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    // Chunked (no Content-Length): the proxy starts buffering for the store, passes 8 MiB,
    // and switches to streaming. Then with Content-Length: streamed from the start.
    for pq in [
        format!("/download?size={SIZE}&stream=1&cc=max-age%3D60"),
        format!("/download?size={SIZE}&cc=max-age%3D60"),
    ] {
        let (total, peak, x_cache) = stream_through(&proxy.url(&pq)).await;
        assert_eq!(total, SIZE, "{pq}");
        assert_eq!(x_cache, "MISS");
        // The non-streamed upstream variant holds its own 50 MB body in this process, so the
        // bound is checked for the streamed one; the proxy's share stays at max_entry_size.
        if pq.contains("stream=1") {
            assert!(
                peak < 24 * 1024 * 1024,
                "RSS grew by {peak} bytes while streaming {SIZE}"
            );
        }
        // Too large to store: a second request goes upstream again.
        let (again, _, x_cache) = stream_through(&proxy.url(&pq)).await;
        assert_eq!((again, x_cache.as_str()), (SIZE, "MISS"));
        assert_eq!(up.count(&pq), 2);
    }
}
