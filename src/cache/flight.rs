//! Coalescing: the in-flight table, joined by every lookup that L1 could not answer. The first
//! caller for a key leads (asks L2, fetches, stores); the others wait for the one word the
//! leader publishes when it is done, and all of them get it at once.
//!
//! Augur's own table rather than quick_cache's placeholder guard: when a guard's holder does not
//! insert (the response was uncacheable, or failed), quick_cache hands the guard to the next
//! waiter, one at a time, and a burst of N requests for an uncacheable URL would take N upstream
//! round trips in series. Here a finished flight tells all its waiters at once what happened
//! ([`Flight`]); what they do with it is `Cache`'s business. A waiter stops waiting at its
//! deadline ([`Wait::until`]), so a stuck leader cannot hang the rest, and a leader dropped
//! mid-flight (client gone) publishes [`Flight::Abandoned`] from its guard's `Drop`, so its
//! waiters wake and one of them leads.
//!
//! The table does not know `Cache`: it is shared through an `Arc`, so a guard owns what it
//! needs to publish and the protocol is unit-tested on its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::entry::Entry;
use crate::error::ProxyError;
use crate::key::CacheKey;

/// How a flight ended, as its waiters see it.
#[derive(Clone)]
pub(super) enum Flight {
    Pending,
    /// Stored, under this key (a variant key when the response varies); `true` when the
    /// fetch was a revalidation answered 304.
    Stored(Arc<Entry>, CacheKey, bool),
    FromL2(Arc<Entry>),
    Stale(Arc<Entry>),
    Pass,
    Failed(ProxyError),
    Abandoned,
}

type Table = Mutex<HashMap<CacheKey, watch::Sender<Flight>>>;

/// The in-flight table: one entry per key being fetched, removed when its flight ends.
#[derive(Default)]
pub(super) struct Flights {
    table: Arc<Table>,
}

/// What joining a flight made of the caller.
pub(super) enum Role {
    /// Nobody was fetching the key: this caller does, and must say how it went.
    Leader(FlightGuard),
    /// Somebody is: wait for their word.
    Waiter(Wait),
}

impl Flights {
    pub(super) fn join(&self, key: CacheKey) -> Role {
        let mut table = self.table.lock();
        if let Some(tx) = table.get(&key) {
            return Role::Waiter(Wait(tx.subscribe()));
        }
        let (tx, _rx) = watch::channel(Flight::Pending);
        table.insert(key, tx);
        Role::Leader(FlightGuard {
            table: self.table.clone(),
            key,
            done: false,
        })
    }
}

/// Held by the leader of a flight; tells the waiters how it ended, also when dropped early.
pub(super) struct FlightGuard {
    table: Arc<Table>,
    key: CacheKey,
    done: bool,
}

impl FlightGuard {
    /// End the flight: every waiter gets `outcome`, and the next join for the key leads anew.
    pub(super) fn finish(mut self, outcome: Flight) {
        self.publish(outcome);
        self.done = true;
    }

    fn publish(&self, outcome: Flight) {
        if let Some(tx) = self.table.lock().remove(&self.key) {
            tx.send_replace(outcome);
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.done {
            self.publish(Flight::Abandoned);
        }
    }
}

/// A waiter's ticket for one flight.
pub(super) struct Wait(watch::Receiver<Flight>);

impl Wait {
    /// How the flight ended, or `None` when `timeout` passed first (the leader may still
    /// finish; this caller no longer waits for it).
    pub(super) async fn until(mut self, timeout: Duration) -> Option<Flight> {
        let waited = tokio::time::timeout(timeout, async {
            // Clone out of the watch guard at once: it must not live across awaits.
            self.0
                .wait_for(|f| !matches!(f, Flight::Pending))
                .await
                .map(|f| f.clone())
        })
        .await;
        match waited {
            Ok(Ok(f)) => Some(f),
            // The sender is gone without a word: treat as abandoned.
            Ok(Err(_)) => Some(Flight::Abandoned),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    const KEY: CacheKey = CacheKey([7; 16]);
    const LONG: Duration = Duration::from_secs(30);

    fn lead(flights: &Flights) -> FlightGuard {
        match flights.join(KEY) {
            Role::Leader(g) => g,
            Role::Waiter(_) => panic!("expected to lead"),
        }
    }

    /// `n` waiters, each reporting how its wait ended and when.
    fn waiters(flights: &Flights, n: usize) -> Vec<JoinHandle<(Option<Flight>, Instant)>> {
        (0..n)
            .map(|_| match flights.join(KEY) {
                Role::Waiter(w) => {
                    tokio::spawn(async move { (w.until(LONG).await, Instant::now()) })
                }
                Role::Leader(_) => panic!("expected to wait"),
            })
            .collect()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pass_releases_every_waiter_at_once() {
        let flights = Flights::default();
        let guard = lead(&flights);
        let waiting = waiters(&flights, 50);
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle().await;
        assert!(
            waiting.iter().all(|h| !h.is_finished()),
            "nobody ends before the leader"
        );
        let finished_at = Instant::now();
        guard.finish(Flight::Pass);
        for h in waiting {
            let (flight, at) = h.await.unwrap();
            assert!(matches!(flight, Some(Flight::Pass)));
            // Released by the one publish, not one after another nor by their deadlines.
            assert_eq!(at, finished_at);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_deadline_and_the_leader_still_finishes() {
        let flights = Flights::default();
        let guard = lead(&flights);
        let Role::Waiter(w) = flights.join(KEY) else {
            panic!("expected to wait");
        };
        let start = Instant::now();
        assert!(w.until(Duration::from_millis(250)).await.is_none());
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        // The flight is still on: a late arrival waits for it, and gets the leader's word.
        let late = waiters(&flights, 1);
        guard.finish(Flight::Failed(ProxyError::NotCached));
        let (flight, _) = late.into_iter().next().unwrap().await.unwrap();
        assert!(matches!(
            flight,
            Some(Flight::Failed(ProxyError::NotCached))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_leader_wakes_its_waiters_and_hands_over() {
        let flights = Flights::default();
        let guard = lead(&flights);
        let waiting = waiters(&flights, 3);
        settle().await;
        drop(guard);
        for h in waiting {
            let (flight, _) = h.await.unwrap();
            assert!(matches!(flight, Some(Flight::Abandoned)));
        }
        // Nobody is in flight any more: the next caller leads.
        lead(&flights).finish(Flight::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_leader_task_wakes_its_waiters() {
        let flights = Flights::default();
        let guard = lead(&flights);
        let leader = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        let waiting = waiters(&flights, 3);
        settle().await;
        leader.abort();
        for h in waiting {
            let (flight, _) = h.await.unwrap();
            assert!(matches!(flight, Some(Flight::Abandoned)));
        }
        assert!(matches!(flights.join(KEY), Role::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_after_finish_starts_a_new_flight() {
        let flights = Flights::default();
        lead(&flights).finish(Flight::Pass);
        let second = lead(&flights);
        // A waiter of the new flight does not see the old flight's word.
        let Role::Waiter(w) = flights.join(KEY) else {
            panic!("expected to wait");
        };
        assert!(w.until(Duration::from_secs(1)).await.is_none());
        let waiting = waiters(&flights, 1);
        second.finish(Flight::Abandoned);
        let (flight, _) = waiting.into_iter().next().unwrap().await.unwrap();
        assert!(matches!(flight, Some(Flight::Abandoned)));
    }
}
