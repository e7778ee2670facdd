//! The prefetcher's metrics, registered in the proxy's registry: what it issued, what was
//! used or wasted, what it skipped and why, and the model's size.

use metrics::{Counter, Gauge};

use crate::metrics::{self as m, Metrics};

/// Prefetch metrics, registered in the proxy's registry.
pub(super) struct PrefetchMetrics {
    pub(super) issued: Counter,
    pub(super) used: Counter,
    pub(super) hits: Counter,
    pub(super) wasted: Counter,
    pub(super) wasted_evicted: Counter,
    pub(super) failed: Counter,
    pub(super) dropped_budget: Counter,
    pub(super) dropped_concurrency: Counter,
    pub(super) dropped_queue: Counter,
    pub(super) dropped_client_budget: Counter,
    pub(super) skipped_long_url: Counter,
    pub(super) skipped_pass: Counter,
    pub(super) save_errors: Counter,
    pub(super) precision: Gauge,
    pub(super) budget_scale: Gauge,
    pub(super) in_flight: Gauge,
    pub(super) states: Gauge,
    pub(super) transitions: Gauge,
    pub(super) model_bytes: Gauge,
    pub(super) dropped_states: Gauge,
}

impl PrefetchMetrics {
    pub(super) fn new(metrics: &Metrics) -> PrefetchMetrics {
        let r = metrics.recorder();
        let c = |name: &'static str, help: &'static str| {
            m::describe(r, name, help);
            m::counter(r, name, &[])
        };
        let g = |name: &'static str, help: &'static str| {
            m::describe(r, name, help);
            m::gauge(r, name)
        };
        PrefetchMetrics {
            issued: c(
                "augur_prefetch_issued_total",
                "Prefetches fetched from the upstream and stored.",
            ),
            used: c(
                "augur_prefetch_used_total",
                "Prefetched entries used by a real request (HIT, or waited for while in flight).",
            ),
            hits: c(
                "augur_prefetch_hits_total",
                "Client HITs (x-cache: HIT) served from a prefetched entry.",
            ),
            wasted: c(
                "augur_prefetch_wasted_total",
                "Prefetches not used: unused within use_window, evicted or expired first, or never stored (failed or uncacheable).",
            ),
            wasted_evicted: c(
                "augur_prefetch_wasted_evicted_total",
                "Of the wasted: gone from the cache (evicted or purged) before their window ended.",
            ),
            failed: c(
                "augur_prefetch_failed_total",
                "Prefetches whose response failed or was not storable (also counted as wasted).",
            ),
            dropped_budget: c(
                "augur_prefetch_dropped_budget_total",
                "Predicted prefetches skipped because the budget was spent.",
            ),
            dropped_concurrency: c(
                "augur_prefetch_dropped_concurrency_total",
                "Predicted prefetches skipped because max_concurrency were in flight.",
            ),
            dropped_queue: c(
                "augur_prefetch_dropped_observations_total",
                "Observations dropped because the prefetch worker's queue was full (queue or queue_bytes).",
            ),
            dropped_client_budget: c(
                "augur_prefetch_dropped_client_budget_total",
                "Predicted prefetches skipped because the requesting client's client_budget was spent.",
            ),
            skipped_long_url: c(
                "augur_prefetch_skipped_long_url_total",
                "Requests not observed because host + path + query is longer than max_url_bytes.",
            ),
            skipped_pass: c(
                "augur_prefetch_skipped_pass_total",
                "Predicted prefetches skipped because the key is marked hit-for-pass (last answer uncacheable).",
            ),
            save_errors: c(
                "augur_prefetch_save_errors_total",
                "Periodic saves of the model to state_file that failed.",
            ),
            precision: g(
                "augur_prefetch_precision",
                "used / (used + wasted) since start.",
            ),
            budget_scale: g(
                "augur_prefetch_budget_scale",
                "Fraction of the configured budget in use: below 1 while recent precision is under the floor.",
            ),
            in_flight: g(
                "augur_prefetch_in_flight",
                "Prefetches waiting on the upstream or being stored.",
            ),
            states: g("augur_prefetch_model_states", "States in the Markov model."),
            transitions: g(
                "augur_prefetch_model_transitions",
                "Transitions kept in the Markov model.",
            ),
            model_bytes: g(
                "augur_prefetch_model_bytes",
                "Approximate memory held by the Markov model.",
            ),
            dropped_states: g(
                "augur_prefetch_model_dropped_states",
                "States dropped (least recently used) to stay under max_states.",
            ),
        }
    }
}
