//! The background half of `stale-while-revalidate` (RFC 5861): a stale hit inside the window
//! is answered at once and queues one refresh of its key, which runs the same coalesced fetch
//! a miss makes (revalidating the stale entry, or replacing it). A burst of stale hits queues
//! one refresh; a full queue drops the job (the next stale hit asks again).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderMap;

use super::exchange::Exchange;
use super::fetch::{Sender, Target};
use super::Proxy;
use crate::cache::Want;
use crate::key::CacheKey;

/// Background refreshes waiting to start; more are dropped (the next stale hit asks again).
pub(super) const QUEUE: usize = 1024;

/// A refresh to run in the background (owned: it outlives the request).
pub(super) struct Refresh {
    key: CacheKey,
    /// The variant being refreshed (`key` itself unless responses vary).
    at: CacheKey,
    route: usize,
    pq: String,
    headers: HeaderMap,
    peer: SocketAddr,
    trusted: bool,
    host: String,
}

impl Proxy {
    /// Start the background refresher (`stale-while-revalidate`); the server calls this once.
    /// Without it (benches driving `handle` directly) stale entries are still served within
    /// their window, and refreshed by the first request after it.
    pub fn spawn_refresher(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let mut rx = self.refresh_rx.lock().take()?;
        let proxy = self.clone();
        Some(tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let proxy = proxy.clone();
                tokio::spawn(async move { proxy.refresh(job).await });
            }
        }))
    }

    /// Queue one background refresh of the variant `at` of this request's key, unless one is
    /// already queued or running.
    ///
    /// The refresh updates the copy stored for everyone, not this client's answer (it already
    /// has the stale one): it goes without the client's credentials, so that no one client's
    /// identity decides what the others are served next.
    pub(super) fn queue_refresh(&self, ex: &Exchange<'_>, at: CacheKey) {
        if !self.refreshing.lock().insert(at) {
            return;
        }
        let mut headers = ex.headers().clone();
        self.credentials
            .strip(&mut headers, &ex.route.cfg.key_headers);
        let job = Refresh {
            key: ex.key,
            at,
            route: ex.route.idx,
            pq: ex.pq.to_owned(),
            headers,
            peer: ex.peer,
            trusted: ex.trusted,
            host: ex.host.to_owned(),
        };
        if self.refresh_tx.try_send(job).is_err() {
            self.refreshing.lock().remove(&at);
        }
    }

    async fn refresh(&self, job: Refresh) {
        if let Some(route) = self.routes.iter().find(|r| r.idx == job.route) {
            // Credentials left after `strip` are keyed ones, or a keyed `Authorization`.
            let credentials = self
                .credentials
                .carried(&job.headers, &route.cfg.key_headers);
            let want = Want {
                credentials,
                ..Want::default()
            };
            let fetch = || {
                let target = Target {
                    route,
                    host: &job.host,
                    pq: &job.pq,
                    headers: &job.headers,
                    key: job.key,
                    sender: Sender::Client {
                        peer: job.peer,
                        trusted: job.trusted,
                    },
                    credentials,
                };
                self.fetch_for_store(target, None)
            };
            let _ = self
                .cache
                .lookup_or_fetch_for(job.key, &job.headers, &want, fetch)
                .await;
        }
        self.refreshing.lock().remove(&job.at);
    }
}
