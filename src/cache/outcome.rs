//! The cache's verdicts, in one place: what a fetch produced ([`Fetched`], handed to the cache
//! by the caller's fetch), what a lookup produced ([`Outcome`], handed back), and the two ways
//! the rest of the proxy labels an outcome: [`CacheStatus`] (the `x-cache` header and the
//! metric label) and [`Served`] (what the prefetcher learns). The translations live here, next
//! to the enums, so that a new verdict is one match to extend, not three.

use std::sync::Arc;

use http::Response;

use super::entry::Entry;
use crate::body::Body;
use crate::error::ProxyError;

/// What a fetch produced.
pub enum Fetched {
    /// A storable response, already built into an entry.
    Stored(Arc<Entry>),
    /// A response for this caller only (uncacheable, or too large to store), streamed through.
    /// `remember`: the response said it is uncacheable (not a transient failure), so later
    /// requests for the key skip coalescing for a while.
    Pass {
        response: Response<Body>,
        remember: bool,
    },
    /// The upstream failed.
    Failed(ProxyError),
    /// The stored entry was revalidated (304): freshened, to be stored again.
    Revalidated(Arc<Entry>),
    /// The upstream failed and the stored entry may stand in (`stale-if-error`, grace):
    /// served, not stored again.
    Stale(Arc<Entry>),
}

/// What a lookup produced.
pub enum Outcome {
    /// Fresh in L1.
    Hit(Arc<Entry>),
    /// Fresh in L2 (Redis), promoted into L1 (also for waiters of a leader that found it there).
    HitL2(Arc<Entry>),
    /// Fetched by this caller and stored.
    Miss(Arc<Entry>),
    /// Fetched by a concurrent request this caller waited for; `revalidated`: that fetch was a
    /// revalidation answered 304 (so the response is labelled `REVALIDATED`, not `MISS`).
    Coalesced {
        entry: Arc<Entry>,
        revalidated: bool,
    },
    /// A stale entry, revalidated upstream with a 304 and stored again.
    Revalidated(Arc<Entry>),
    /// Served stale; `refresh`: the caller should start a background refresh
    /// (`stale-while-revalidate`).
    Stale {
        entry: Arc<Entry>,
        refresh: bool,
    },
    /// Fetched by this caller, not stored.
    Pass(Response<Body>),
    Failed(ProxyError),
}

impl Outcome {
    /// The label of the response: an L2 hit is a `HIT` (the tier has its own header), and a
    /// coalesced answer is labelled by what its leader's fetch was.
    pub fn status(&self) -> CacheStatus {
        match self {
            Outcome::Hit(_) | Outcome::HitL2(_) => CacheStatus::Hit,
            Outcome::Coalesced {
                revalidated: true, ..
            }
            | Outcome::Revalidated(_) => CacheStatus::Revalidated,
            Outcome::Stale { .. } => CacheStatus::Stale,
            Outcome::Miss(_)
            | Outcome::Coalesced {
                revalidated: false, ..
            }
            | Outcome::Pass(_)
            | Outcome::Failed(_) => CacheStatus::Miss,
        }
    }

    /// What the prefetcher learns: a stale answer came from the store like a hit, and a pass or
    /// a failure went upstream like a miss.
    pub fn served(&self) -> Served {
        match self {
            Outcome::Hit(_) | Outcome::HitL2(_) | Outcome::Stale { .. } => Served::Hit,
            Outcome::Coalesced { .. } => Served::Coalesced,
            Outcome::Miss(_) | Outcome::Revalidated(_) | Outcome::Pass(_) | Outcome::Failed(_) => {
                Served::Fetched
            }
        }
    }

    /// The stored entry that answers, when one does (not for a pass or a failure).
    pub fn entry(&self) -> Option<&Arc<Entry>> {
        match self {
            Outcome::Hit(e)
            | Outcome::HitL2(e)
            | Outcome::Miss(e)
            | Outcome::Revalidated(e)
            | Outcome::Coalesced { entry: e, .. }
            | Outcome::Stale { entry: e, .. } => Some(e),
            Outcome::Pass(_) | Outcome::Failed(_) => None,
        }
    }
}

/// The cache verdict of one response: the `x-cache` header value and the `cache` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the store, fresh.
    Hit,
    /// Looked up, not usable; fetched from the upstream (and stored when allowed).
    Miss,
    /// Not looked up: the request is not one a cache may answer (method, Range, body…).
    Bypass,
    /// Served from the store past its freshness lifetime, as `stale-while-revalidate`,
    /// `stale-if-error`, a route's grace or the client's `max-stale` allowed.
    Stale,
    /// A stale stored response, revalidated upstream with a 304 and served.
    Revalidated,
}

impl CacheStatus {
    pub const ALL: [CacheStatus; 5] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Bypass,
        CacheStatus::Stale,
        CacheStatus::Revalidated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
        }
    }
}

/// How the cache served a request, as the prefetcher credits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Hit,
    /// Waited for a fetch already in flight (perhaps a prefetch).
    Coalesced,
    /// Fetched by this request (or passed through).
    Fetched,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::{Flags, StoredBody};
    use http::{HeaderMap, StatusCode};

    fn entry() -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: StoredBody::Raw(bytes::Bytes::from_static(b"x")),
            request_time: 0,
            response_time: 0,
            initial_age: 0,
            lifetime: 1_000,
            flags: Flags::default(),
            stale_while_revalidate: 0,
            stale_if_error: 0,
        })
    }

    /// The table `Proxy::through_cache` applies by hand: outcome ─► (label, prefetch credit).
    #[test]
    fn status_and_served_of_every_outcome() {
        let e = entry();
        let table: Vec<(Outcome, CacheStatus, Served, bool)> = vec![
            (Outcome::Hit(e.clone()), CacheStatus::Hit, Served::Hit, true),
            (
                Outcome::HitL2(e.clone()),
                CacheStatus::Hit,
                Served::Hit,
                true,
            ),
            (
                Outcome::Miss(e.clone()),
                CacheStatus::Miss,
                Served::Fetched,
                true,
            ),
            (
                Outcome::Coalesced {
                    entry: e.clone(),
                    revalidated: false,
                },
                CacheStatus::Miss,
                Served::Coalesced,
                true,
            ),
            (
                Outcome::Coalesced {
                    entry: e.clone(),
                    revalidated: true,
                },
                CacheStatus::Revalidated,
                Served::Coalesced,
                true,
            ),
            (
                Outcome::Revalidated(e.clone()),
                CacheStatus::Revalidated,
                Served::Fetched,
                true,
            ),
            (
                Outcome::Stale {
                    entry: e.clone(),
                    refresh: false,
                },
                CacheStatus::Stale,
                Served::Hit,
                true,
            ),
            (
                Outcome::Stale {
                    entry: e.clone(),
                    refresh: true,
                },
                CacheStatus::Stale,
                Served::Hit,
                true,
            ),
            (
                Outcome::Pass(Response::new(Body::empty())),
                CacheStatus::Miss,
                Served::Fetched,
                false,
            ),
            (
                Outcome::Failed(ProxyError::NotCached),
                CacheStatus::Miss,
                Served::Fetched,
                false,
            ),
        ];
        for (i, (outcome, status, served, has_entry)) in table.into_iter().enumerate() {
            assert_eq!(outcome.status(), status, "row {i}");
            assert_eq!(outcome.served(), served, "row {i}");
            match outcome.entry() {
                Some(got) => assert!(has_entry && Arc::ptr_eq(got, &e), "row {i}"),
                None => assert!(!has_entry, "row {i}"),
            }
        }
    }

    #[test]
    fn labels() {
        let labels: Vec<_> = CacheStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(labels, ["HIT", "MISS", "BYPASS", "STALE", "REVALIDATED"]);
    }
}
