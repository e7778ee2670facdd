//! Typed metrics in an explicit registry (a leaf), rendered as Prometheus text on the admin
//! listener.
//!
//! Every handle is registered once at start-up, so recording on the request path is an atomic
//! add with no name lookup and no label hashing. Each proxy instance owns its own registry
//! (no global recorder), which keeps tests that run several proxies in one process honest.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

// The verdict vocabulary lives with the cache; re-exported so `metrics::CacheStatus` still resolves.
pub use crate::cache::CacheStatus;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

/// Upstream and request latency buckets, in seconds: sub-millisecond hits up to slow upstreams.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The help text of every series [`Metrics::new`] registers.
const HELP: [(&str, &str); 13] = [
    (
        "augur_requests_total",
        "Requests answered, by route, cache verdict and status class.",
    ),
    (
        "augur_request_duration_seconds",
        "Time from request to response head, by route and cache verdict.",
    ),
    (
        "augur_upstream_duration_seconds",
        "Upstream time to response head, by route.",
    ),
    (
        "augur_upstream_errors_total",
        "Upstream connect errors, timeouts and protocol errors, by route.",
    ),
    (
        "augur_cache_entries",
        "Entries in the in-process store (L1).",
    ),
    (
        "augur_cache_bytes",
        "Bytes the L1 entries occupy (compressed bodies + headers + overhead).",
    ),
    ("augur_cache_capacity_bytes", "The L1 memory budget."),
    (
        "augur_cache_evictions_total",
        "L1 entries evicted to stay within the memory budget.",
    ),
    ("augur_cache_stored_total", "Responses stored in L1."),
    (
        "augur_cache_invalidated_total",
        "Stored responses dropped because an unsafe request changed them (RFC 9111 §4.4).",
    ),
    (
        "augur_compression_saved_bytes_total",
        "Body bytes saved by zstd on store (original minus compressed).",
    ),
    (
        "augur_coalesced_total",
        "Requests that waited for another request's upstream fetch instead of making their own.",
    ),
    (
        "augur_credentialed_requests_total",
        "GET/HEAD requests with credentials outside their key (Authorization, cache.credential_headers): answered only from entries the origin marked shareable.",
    ),
];

/// The help text of the Redis tier's series, registered by [`Metrics::l2`].
const L2_HELP: [(&str, &str); 9] = [
    (
        "augur_l2_requests_total",
        "L2 (Redis) lookups by result: hit, miss, error, timeout, corrupt, skipped.",
    ),
    (
        "augur_l2_writes_total",
        "L2 (Redis) write-behind SETs by result: ok, error, timeout, skipped, too_large, busy (max_pending_writes reached).",
    ),
    (
        "augur_l2_duration_seconds",
        "L2 (Redis) operation latency, by op (get, set).",
    ),
    (
        "augur_l2_breaker_state",
        "L2 circuit breaker: 0 closed, 1 open (Redis skipped), 2 half-open (probing).",
    ),
    (
        "augur_l2_connected",
        "1 once a Redis connection is established, 0 while connecting.",
    ),
    (
        "augur_l2_invalidations_received_total",
        "Invalidation messages received over Redis pub/sub and applied to L1.",
    ),
    (
        "augur_l2_rejected_total",
        "L2 values refused (a miss, never served) by reason: mac (no valid MAC for this key), bounds (size, header count or body length over the limits), decode (malformed).",
    ),
    (
        "augur_l2_invalidations_rejected_total",
        "Invalidation messages ignored for lack of a valid MAC (forged, or another secret).",
    ),
    (
        "augur_l2_subscription_lost_total",
        "Invalidation subscriptions lost (closed, or no answer to the heartbeat PING); each clears L1.",
    ),
];

/// The help text of the connection and in-flight limits' series, registered by
/// [`Metrics::connections`] and [`Metrics::upstream_limits`].
const LIMITS_HELP: [(&str, &str); 6] = [
    ("augur_connections_open", "Client connections open now."),
    (
        "augur_connections_refused_total",
        "Client connections closed on accept, by limit: max_connections, max_connections_per_ip.",
    ),
    (
        "augur_connections_closed_total",
        "Client connections closed by Augur, by reason: first_request_timeout, idle, client_resets.",
    ),
    (
        "augur_upstream_inflight_bytes",
        "Bytes of upstream bodies being buffered for the store now (upstream.max_inflight_bytes).",
    ),
    (
        "augur_upstream_store_skipped_total",
        "Storable responses streamed through unstored because upstream.max_inflight_bytes was spent.",
    ),
    (
        "augur_upstream_retries_total",
        "GET/HEAD requests retried once on a fresh upstream connection after failing before any response byte (a stale keep-alive).",
    ),
];

/// Handles of the client connection limits (`[server]`).
pub struct ConnMetrics {
    pub open: Gauge,
    pub refused_max: Counter,
    pub refused_per_ip: Counter,
    pub closed_first_request: Counter,
    pub closed_idle: Counter,
    pub closed_resets: Counter,
}

/// Handles of the in-flight byte budget (`upstream.max_inflight_bytes`).
pub struct UpstreamLimitMetrics {
    pub inflight_bytes: Gauge,
    pub store_skipped: Counter,
    /// `augur_upstream_retries_total`
    pub retries: Counter,
}

/// Per-route handles.
pub struct RouteMetrics {
    /// `[cache status][status class]`
    requests: Vec<Counter>,
    /// `[cache status]`
    duration: Vec<Histogram>,
    pub upstream_duration: Histogram,
    pub upstream_errors: Counter,
}

impl RouteMetrics {
    /// Every handle of route `name`: one counter per verdict × status class and one latency
    /// histogram per verdict, so that recording never registers anything.
    fn register(r: &PrometheusRecorder, name: &str) -> RouteMetrics {
        let mut requests = Vec::new();
        let mut duration = Vec::new();
        for cs in CacheStatus::ALL {
            for class in CLASSES {
                requests.push(counter(
                    r,
                    "augur_requests_total",
                    &[("route", name), ("cache", cs.as_str()), ("status", class)],
                ));
            }
            duration.push(histogram(
                r,
                "augur_request_duration_seconds",
                &[("route", name), ("cache", cs.as_str())],
            ));
        }
        RouteMetrics {
            requests,
            duration,
            upstream_duration: histogram(r, "augur_upstream_duration_seconds", &[("route", name)]),
            upstream_errors: counter(r, "augur_upstream_errors_total", &[("route", name)]),
        }
    }

    /// One finished request: its verdict, HTTP status and time to response head.
    pub fn record(&self, cache: CacheStatus, status: u16, elapsed: Duration) {
        let i = cache as usize;
        if let Some(c) = self.requests.get(i * CLASSES.len() + class_index(status)) {
            c.increment(1);
        }
        if let Some(h) = self.duration.get(i) {
            h.record(elapsed.as_secs_f64());
        }
    }
}

/// Handles of the Redis second tier, registered only when `[redis]` is configured
/// ([`Metrics::l2`]), so an instance without Redis exposes exactly what it did before.
pub struct L2Metrics {
    /// `augur_l2_requests_total{result}`: lookups by outcome.
    pub get_hit: Counter,
    pub get_miss: Counter,
    pub get_error: Counter,
    pub get_timeout: Counter,
    /// A value that failed to decode or verify (never served).
    pub get_corrupt: Counter,
    /// Not asked: not connected yet, or the breaker is open.
    pub get_skipped: Counter,
    /// `augur_l2_writes_total{result}`: write-behind SETs by outcome.
    pub set_ok: Counter,
    pub set_error: Counter,
    pub set_timeout: Counter,
    pub set_skipped: Counter,
    pub set_too_large: Counter,
    /// Not written: `[redis] max_pending_writes` SETs were already in flight.
    pub set_busy: Counter,
    /// `augur_l2_duration_seconds{op}`
    pub get_duration: Histogram,
    pub set_duration: Histogram,
    /// `augur_l2_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: Gauge,
    /// `augur_l2_connected`: 1 once a connection is established.
    pub connected: Gauge,
    /// `augur_l2_invalidations_received_total`: pub/sub messages applied to L1.
    pub invalidations: Counter,
    /// `augur_l2_rejected_total{reason}`: values refused, by [`L2Metrics::rejected`] reason.
    pub rejected_mac: Counter,
    pub rejected_bounds: Counter,
    pub rejected_decode: Counter,
    /// `augur_l2_invalidations_rejected_total`: pub/sub messages without a valid MAC.
    pub invalidations_rejected: Counter,
    /// `augur_l2_subscription_lost_total`: subscriptions found dead.
    pub subscription_lost: Counter,
}

impl L2Metrics {
    /// The `augur_l2_rejected_total` counter of `reason` ("mac", "bounds", else "decode").
    pub fn rejected(&self, reason: &str) -> &Counter {
        match reason {
            "mac" => &self.rejected_mac,
            "bounds" => &self.rejected_bounds,
            _ => &self.rejected_decode,
        }
    }
}

/// The registry and every handle Augur records into.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    routes: Vec<RouteMetrics>,
    /// Requests that matched no route (404).
    pub no_route: Counter,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub cache_capacity: Gauge,
    pub cache_evictions: Counter,
    pub cache_stored: Counter,
    pub cache_invalidated: Counter,
    pub compression_saved: Counter,
    pub coalesced: Counter,
    /// Cacheable requests that carried credentials outside their key.
    pub credentialed: Counter,
}

impl Metrics {
    pub fn new(route_names: &[&str]) -> Metrics {
        // set_buckets only fails on an empty slice.
        let builder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let r = &recorder;

        for (name, help) in HELP {
            describe(r, name, help);
        }

        let routes = route_names
            .iter()
            .map(|name| RouteMetrics::register(r, name))
            .collect();

        Metrics {
            no_route: counter(
                r,
                "augur_requests_total",
                &[("route", ""), ("cache", "BYPASS"), ("status", "4xx")],
            ),
            cache_entries: gauge(r, "augur_cache_entries"),
            cache_bytes: gauge(r, "augur_cache_bytes"),
            cache_capacity: gauge(r, "augur_cache_capacity_bytes"),
            cache_evictions: counter(r, "augur_cache_evictions_total", &[]),
            cache_stored: counter(r, "augur_cache_stored_total", &[]),
            cache_invalidated: counter(r, "augur_cache_invalidated_total", &[]),
            compression_saved: counter(r, "augur_compression_saved_bytes_total", &[]),
            coalesced: counter(r, "augur_coalesced_total", &[]),
            credentialed: counter(r, "augur_credentialed_requests_total", &[]),
            routes,
            handle,
            recorder,
        }
    }

    /// Handles of route `idx` (as numbered by the route table).
    pub fn route(&self, idx: usize) -> Option<&RouteMetrics> {
        self.routes.get(idx)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; call every few seconds so that
    /// samples do not pile up between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Register the Redis tier's handles (once, when `[redis]` is configured).
    pub fn l2(&self) -> L2Metrics {
        let r = &self.recorder;
        for (name, help) in L2_HELP {
            describe(r, name, help);
        }
        let get = |result: &str| counter(r, "augur_l2_requests_total", &[("result", result)]);
        let set = |result: &str| counter(r, "augur_l2_writes_total", &[("result", result)]);
        let dur = |op: &str| histogram(r, "augur_l2_duration_seconds", &[("op", op)]);
        let rejected = |reason: &str| counter(r, "augur_l2_rejected_total", &[("reason", reason)]);
        L2Metrics {
            get_hit: get("hit"),
            get_miss: get("miss"),
            get_error: get("error"),
            get_timeout: get("timeout"),
            get_corrupt: get("corrupt"),
            get_skipped: get("skipped"),
            set_ok: set("ok"),
            set_error: set("error"),
            set_timeout: set("timeout"),
            set_skipped: set("skipped"),
            set_too_large: set("too_large"),
            set_busy: set("busy"),
            get_duration: dur("get"),
            set_duration: dur("set"),
            breaker_state: gauge(r, "augur_l2_breaker_state"),
            connected: gauge(r, "augur_l2_connected"),
            invalidations: counter(r, "augur_l2_invalidations_received_total", &[]),
            rejected_mac: rejected("mac"),
            rejected_bounds: rejected("bounds"),
            rejected_decode: rejected("decode"),
            invalidations_rejected: counter(r, "augur_l2_invalidations_rejected_total", &[]),
            subscription_lost: counter(r, "augur_l2_subscription_lost_total", &[]),
        }
    }

    /// The recorder, for registering further handles (later subsystems).
    pub fn connections(&self) -> ConnMetrics {
        let r = &self.recorder;
        for (name, help) in LIMITS_HELP {
            describe(r, name, help);
        }
        let refused = |limit| counter(r, "augur_connections_refused_total", &[("limit", limit)]);
        let closed = |reason| counter(r, "augur_connections_closed_total", &[("reason", reason)]);
        ConnMetrics {
            open: gauge(r, "augur_connections_open"),
            refused_max: refused("max_connections"),
            refused_per_ip: refused("max_connections_per_ip"),
            closed_first_request: closed("first_request_timeout"),
            closed_idle: closed("idle"),
            closed_resets: closed("client_resets"),
        }
    }

    pub fn upstream_limits(&self) -> UpstreamLimitMetrics {
        let r = &self.recorder;
        for (name, help) in LIMITS_HELP {
            describe(r, name, help);
        }
        UpstreamLimitMetrics {
            inflight_bytes: gauge(r, "augur_upstream_inflight_bytes"),
            store_skipped: counter(r, "augur_upstream_store_skipped_total", &[]),
            retries: counter(r, "augur_upstream_retries_total", &[]),
        }
    }

    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, (*v).to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

pub(crate) fn describe(r: &PrometheusRecorder, name: &'static str, help: &'static str) {
    // The exporter keeps one description per name whatever the kind.
    r.describe_counter(name.into(), None, help.into());
}

pub(crate) fn counter(
    r: &PrometheusRecorder,
    name: &'static str,
    labels: &[(&'static str, &str)],
) -> Counter {
    r.register_counter(&key(name, labels), &META)
}

pub(crate) fn gauge(r: &PrometheusRecorder, name: &'static str) -> Gauge {
    r.register_gauge(&key(name, &[]), &META)
}

fn histogram(
    r: &PrometheusRecorder,
    name: &'static str,
    labels: &[(&'static str, &str)],
) -> Histogram {
    r.register_histogram(&key(name, labels), &META)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_series_with_help() {
        let m = Metrics::new(&["users"]);
        if let Some(r) = m.route(0) {
            r.record(CacheStatus::Hit, 200, Duration::from_micros(50));
        }
        m.coalesced.increment(3);
        m.upkeep();
        let text = m.render();
        assert!(
            text.contains(r#"augur_requests_total{route="users",cache="HIT",status="2xx"} 1"#),
            "{text}"
        );
        assert!(text.contains("augur_coalesced_total 3"), "{text}");
        assert!(text.contains("# HELP augur_coalesced_total"), "{text}");
        assert!(
            text.contains("augur_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn status_classes() {
        assert_eq!(CLASSES[class_index(200)], "2xx");
        assert_eq!(CLASSES[class_index(504)], "5xx");
        assert_eq!(CLASSES[class_index(99)], "1xx");
        assert_eq!(CLASSES[class_index(999)], "5xx");
    }
}
