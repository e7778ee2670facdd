//! Revalidation (RFC 9111 §4.3): a fetch for a key whose stored entry is stale but has
//! validators asks conditionally; a 304 answers with the stored body and the stored headers
//! updated from the 304, judged afresh by `policy` (the 304 may shorten, lengthen or forbid
//! storing).

use std::sync::Arc;

use super::fetch::{entry, Answer, Target};
use super::Proxy;
use crate::cache::entry::{Entry, Flags};
use crate::cache::policy::{self, Decision};
use crate::cache::Fetched;
use crate::key::CacheKey;

impl Proxy {
    /// What L1 holds for `key`, which may be revalidated or stand in if the upstream fails;
    /// for a request with `credentials`, only an entry the origin marked shareable (the one a
    /// hit could have served it): any other is not this client's to see.
    pub(super) fn revalidatable(&self, key: CacheKey, credentials: bool) -> Option<Arc<Entry>> {
        self.cache
            .peek(&key)
            .filter(|e| !credentials || e.flags.contains(Flags::AUTH_OK))
    }

    /// A 304 to a revalidation (§4.3.4): the stored entry freshened, stored again; or, when the
    /// merged headers forbid storing, answered once and dropped everywhere.
    pub(super) fn freshen(
        &self,
        target: &Target<'_>,
        key: CacheKey,
        prev: &Entry,
        not_modified: &Answer,
    ) -> Fetched {
        let merged = policy::freshen(&prev.headers, &not_modified.parts.headers);
        let input = self.policy_input(target, not_modified, Some((prev.status, &merged)));
        let (request_time, response_time) = (not_modified.request_time, not_modified.response_time);
        match policy::decide(&input) {
            Decision::Store(s) => Fetched::Revalidated(Arc::new(entry(
                prev.status,
                merged,
                prev.body.clone(),
                s,
                request_time,
                response_time,
            ))),
            Decision::DontStore(reason) => {
                // Still a valid answer for this request, but no longer storable.
                tracing::debug!(
                    pq = target.pq,
                    reason = reason.as_str(),
                    "revalidated response no longer storable"
                );
                // Dropped here, and from Redis (which may keep it for its stale window) and the
                // fleet's L1s, in the background.
                self.cache.remove(&key);
                self.cache.invalidate_behind(key);
                let once = Entry {
                    headers: merged,
                    body: prev.body.clone(),
                    request_time,
                    response_time,
                    initial_age: 0,
                    lifetime: 0,
                    stale_while_revalidate: 0,
                    stale_if_error: 0,
                    ..*prev
                };
                Fetched::Pass {
                    response: self.respond_identity(&once, key),
                    remember: false,
                }
            }
        }
    }
}
