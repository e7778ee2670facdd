//! The prefetcher's metrics, registered in the proxy's registry: what it issued, what was
//! used or wasted, what it skipped and why, and the model's size.

use metrics::{Counter, Gauge};

use crate::metrics::{self as m, Metrics};

/// The help text of every series [`PrefetchMetrics::new`] registers.
const HELP: [(&str, &str); 20] = [
    (
        "augur_prefetch_issued_total",
        "Prefetches fetched from the upstream and stored.",
    ),
    (
        "augur_prefetch_used_total",
        "Prefetched entries used by a real request (HIT, or waited for while in flight).",
    ),
    (
        "augur_prefetch_hits_total",
        "Client HITs (x-cache: HIT) served from a prefetched entry.",
    ),
    (
        "augur_prefetch_wasted_total",
        "Prefetches not used: unused within use_window, evicted or expired first, or never stored (failed or uncacheable).",
    ),
    (
        "augur_prefetch_wasted_evicted_total",
        "Of the wasted: gone from the cache (evicted or purged) before their window ended.",
    ),
    (
        "augur_prefetch_failed_total",
        "Prefetches whose response failed or was not storable (also counted as wasted).",
    ),
    (
        "augur_prefetch_dropped_budget_total",
        "Predicted prefetches skipped because the budget was spent.",
    ),
    (
        "augur_prefetch_dropped_concurrency_total",
        "Predicted prefetches skipped because max_concurrency were in flight.",
    ),
    (
        "augur_prefetch_dropped_observations_total",
        "Observations dropped because the prefetch worker's queue was full (queue or queue_bytes).",
    ),
    (
        "augur_prefetch_dropped_client_budget_total",
        "Predicted prefetches skipped because the requesting client's client_budget was spent.",
    ),
    (
        "augur_prefetch_skipped_long_url_total",
        "Requests not observed because host + path + query is longer than max_url_bytes.",
    ),
    (
        "augur_prefetch_skipped_pass_total",
        "Predicted prefetches skipped because the key is marked hit-for-pass (last answer uncacheable).",
    ),
    (
        "augur_prefetch_save_errors_total",
        "Periodic saves of the model to state_file that failed.",
    ),
    (
        "augur_prefetch_precision",
        "used / (used + wasted) since start.",
    ),
    (
        "augur_prefetch_budget_scale",
        "Fraction of the configured budget in use: below 1 while recent precision is under the floor.",
    ),
    (
        "augur_prefetch_in_flight",
        "Prefetches waiting on the upstream or being stored.",
    ),
    (
        "augur_prefetch_model_states",
        "States in the Markov model.",
    ),
    (
        "augur_prefetch_model_transitions",
        "Transitions kept in the Markov model.",
    ),
    (
        "augur_prefetch_model_bytes",
        "Approximate memory held by the Markov model.",
    ),
    (
        "augur_prefetch_model_dropped_states",
        "States dropped (least recently used) to stay under max_states.",
    ),
];

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
        for (name, help) in HELP {
            m::describe(r, name, help);
        }
        let c = |name| m::counter(r, name, &[]);
        let g = |name| m::gauge(r, name);
        PrefetchMetrics {
            issued: c("augur_prefetch_issued_total"),
            used: c("augur_prefetch_used_total"),
            hits: c("augur_prefetch_hits_total"),
            wasted: c("augur_prefetch_wasted_total"),
            wasted_evicted: c("augur_prefetch_wasted_evicted_total"),
            failed: c("augur_prefetch_failed_total"),
            dropped_budget: c("augur_prefetch_dropped_budget_total"),
            dropped_concurrency: c("augur_prefetch_dropped_concurrency_total"),
            dropped_queue: c("augur_prefetch_dropped_observations_total"),
            dropped_client_budget: c("augur_prefetch_dropped_client_budget_total"),
            skipped_long_url: c("augur_prefetch_skipped_long_url_total"),
            skipped_pass: c("augur_prefetch_skipped_pass_total"),
            save_errors: c("augur_prefetch_save_errors_total"),
            precision: g("augur_prefetch_precision"),
            budget_scale: g("augur_prefetch_budget_scale"),
            in_flight: g("augur_prefetch_in_flight"),
            states: g("augur_prefetch_model_states"),
            transitions: g("augur_prefetch_model_transitions"),
            model_bytes: g("augur_prefetch_model_bytes"),
            dropped_states: g("augur_prefetch_model_dropped_states"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The help table and the registrations name the same series: each one registered is
    /// rendered with its help text, and no help line is left without a series.
    #[test]
    fn every_registered_series_has_its_help() {
        let metrics = Metrics::new(&["api"]);
        let _prefetch = PrefetchMetrics::new(&metrics);
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|name| name.starts_with("augur_prefetch_"))
            .collect();
        assert_eq!(series.len(), HELP.len(), "{text}");
        for (name, help) in HELP {
            assert!(series.contains(&name), "{name} not registered: {text}");
            assert!(text.contains(&format!("# HELP {name} {help}")), "{text}");
        }
    }
}
