//! The steps of one lookup, which the loop in `mod.rs` runs in order: the leader's (ask L2,
//! else fetch, then tell the waiters), the follower's (wait for the leader, then make of its
//! word an answer for this request, or a reason to fetch alone or look again), and the
//! settling of a fetch into an [`Outcome`] for the caller, a [`Flight`] for the waiters, and
//! what is stored where (`store`: the primary key, or the variant its `Vary` selects).

use std::future::Future;
use std::sync::Arc;

use super::entry::Entry;
use super::flight::{Flight, FlightGuard, Wait};
use super::policy::{self, Use};
use super::{Ask, Cache, Fetched, Outcome};
use crate::key::CacheKey;

/// What a waiter makes of its flight's end.
pub(super) enum Followed {
    /// The answer.
    Done(Outcome),
    /// Fetch alone (the leader passed or timed out, or its entry may not answer this request).
    Alone,
    /// Look again under this key (another variant, or the leader left no answer for us).
    Retry(CacheKey),
}

impl Cache {
    /// The leader's part: L2 (for a primary key), else the fetch; either way the waiters hear
    /// how it ended, through `guard`.
    pub(super) async fn lead<F, Fut>(
        &self,
        guard: FlightGuard,
        ask: Ask<'_>,
        fetch: &F,
        key: &mut CacheKey,
    ) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        // L2 holds entries under primary keys only (see `store`). What it has is promoted into
        // L1 and judged like an L1 entry: fresh answers at once; a stale one within its window
        // is served stale (and refreshed) when the request allows; otherwise it is what the
        // fetch revalidates, or stands in for a failing upstream.
        if *key == ask.primary {
            if let Some(entry) = self.l2_lookup(key).await {
                match self.answer_from(entry, ask.want) {
                    Some(Outcome::Hit(entry)) => {
                        guard.finish(Flight::FromL2(entry.clone()));
                        return Outcome::HitL2(entry);
                    }
                    Some(Outcome::Stale { entry, refresh }) => {
                        guard.finish(Flight::Stale(entry.clone()));
                        return Outcome::Stale { entry, refresh };
                    }
                    _ => {}
                }
            }
        }
        let fetched = fetch().await;
        let remember = matches!(fetched, Fetched::Pass { remember: true, .. });
        let (outcome, flight) = self.settle(fetched, ask, key);
        // Marked before the flight ends, so a request arriving after it fetches alone rather
        // than leading a new flight.
        if remember {
            self.pass_marks.mark(*key, self.clock.now_ms());
        }
        guard.finish(flight);
        outcome
    }

    /// A waiter's part: wait for the leader (at most `coalesce_timeout`) and make of its word
    /// an answer for this request, or a reason to fetch alone or to look again.
    pub(super) async fn follow(
        &self,
        wait: Wait,
        Ask {
            primary,
            headers,
            want,
        }: Ask<'_>,
        key: &CacheKey,
    ) -> Followed {
        let Some(flight) = wait.until(self.coalesce_timeout).await else {
            tracing::debug!(key = %key, "coalesce wait timed out; fetching alone");
            return Followed::Alone;
        };
        let mine = self.variant_key(&primary, headers);
        match flight {
            // The leader's response selected another variant than ours.
            Flight::Stored(_, at, _) if at != mine => Followed::Retry(mine),
            Flight::Stored(entry, _, _) | Flight::Stale(entry) if !want.accepts_fetched(&entry) => {
                Followed::Alone
            }
            Flight::Stored(entry, _, revalidated) => {
                self.metrics.coalesced.increment(1);
                Followed::Done(Outcome::Coalesced { entry, revalidated })
            }
            Flight::FromL2(entry) => {
                // Fresh for the leader's request; this one may ask for more (`max-age=0`,
                // `no-cache`, credentials): it is in L1 now, so the next round judges it
                // like any L1 entry.
                let now = self.clock.now_ms();
                if policy::usable(&entry, &want.directives, want.credentials, now) == Use::Fresh {
                    self.metrics.coalesced.increment(1);
                    return Followed::Done(Outcome::HitL2(entry));
                }
                Followed::Retry(*key)
            }
            Flight::Stale(entry) => {
                self.metrics.coalesced.increment(1);
                Followed::Done(Outcome::Stale {
                    entry,
                    refresh: false,
                })
            }
            Flight::Failed(e) => {
                self.metrics.coalesced.increment(1);
                Followed::Done(Outcome::Failed(e))
            }
            Flight::Pass => Followed::Alone,
            Flight::Abandoned | Flight::Pending => match self.lookup(key) {
                Some(entry) if want.accepts_fetched(&entry) => Followed::Done(Outcome::Hit(entry)),
                _ => Followed::Retry(*key),
            },
        }
    }

    /// Fetch without joining a flight (after a pass, a timeout, or for a pass-marked key).
    /// `at`: updated to the key a stored answer went under.
    pub(super) async fn fetch_alone<F, Fut>(
        &self,
        ask: Ask<'_>,
        fetch: &F,
        at: &mut CacheKey,
    ) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        self.settle(fetch().await, ask, at).0
    }

    /// Store what a fetch allows and say what it means, for this caller ([`Outcome`]) and for
    /// the waiters of a flight it led ([`Flight`]). `at`: updated to the key a stored answer
    /// went under.
    fn settle(
        &self,
        fetched: Fetched,
        Ask {
            primary, headers, ..
        }: Ask<'_>,
        at: &mut CacheKey,
    ) -> (Outcome, Flight) {
        match fetched {
            Fetched::Stored(entry) => {
                *at = self.store(primary, headers, entry.clone());
                (
                    Outcome::Miss(entry.clone()),
                    Flight::Stored(entry, *at, false),
                )
            }
            Fetched::Revalidated(entry) => {
                *at = self.store(primary, headers, entry.clone());
                (
                    Outcome::Revalidated(entry.clone()),
                    Flight::Stored(entry, *at, true),
                )
            }
            Fetched::Stale(entry) => (
                Outcome::Stale {
                    entry: entry.clone(),
                    refresh: false,
                },
                Flight::Stale(entry),
            ),
            Fetched::Pass { response, .. } => (Outcome::Pass(response), Flight::Pass),
            Fetched::Failed(e) => (Outcome::Failed(e.clone()), Flight::Failed(e)),
        }
    }

    /// The leader's L2 step: a verified entry from Redis, fresh or within its stale window,
    /// promoted into L1 as it is (its response time, initial age and lifetime travel with it,
    /// so the age carries over and it expires here when it would have expired where it was
    /// fetched).
    async fn l2_lookup(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let l2 = self.l2.as_ref()?;
        let entry = Arc::new(l2.get(key, || self.clock.now_ms()).await?);
        self.memory.insert(*key, entry.clone());
        Some(entry)
    }

    /// How long Redis keeps an entry: its remaining freshness plus its stale window
    /// (`stale-while-revalidate`, `stale-if-error`, route grace), so that another instance can
    /// still serve it stale, revalidate it, or stand it in for a failing upstream.
    fn l2_ttl_ms(&self, entry: &Entry) -> u64 {
        entry.keep_ms(self.clock.now_ms())
    }

    /// Store a fetched `entry` for a request with `headers`, and say under which key: `primary`
    /// when the response does not vary, else the variant its `Vary` and the request's headers
    /// select. Variants live in L1 only: L2 is purged by primary key, and another instance
    /// could not name a variant it never saw.
    fn store(&self, primary: CacheKey, headers: &http::HeaderMap, entry: Arc<Entry>) -> CacheKey {
        // `policy::decide` refuses `Vary: *`, so an entry always has a name list.
        let names = policy::vary_names(&entry.headers).unwrap_or_default();
        let key = if names.is_empty() {
            for old in self.variants.forget(&primary) {
                self.memory.remove(&old);
            }
            if let Some(l2) = &self.l2 {
                l2.put(primary, entry.clone(), self.l2_ttl_ms(&entry));
            }
            primary
        } else {
            let key = primary.variant(&names, headers);
            for old in self.variants.add(primary, names, key) {
                self.memory.remove(&old);
            }
            key
        };
        self.pass_marks.clear(&primary);
        self.pass_marks.clear(&key);
        self.memory.insert(key, entry);
        self.metrics.cache_stored.increment(1);
        key
    }
}
